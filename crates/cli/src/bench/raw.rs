//! PostgreSQL's own rate: autocommitted single-row inserts of a ~1 KB jsonb row into a scratch table.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::{new_histogram, Measured};

/// A ~1 KB JSON document, the size of a typical event payload.
pub fn kilobyte_payload(seq: u64) -> serde_json::Value {
    serde_json::json!({ "seq": seq, "filler": "x".repeat(960) })
}

pub async fn measure(pool: &PgPool, concurrency: usize, duration: Duration) -> anyhow::Result<Measured> {
    sqlx::raw_sql(
        "drop table if exists bench_raw; create table bench_raw (id bigserial primary key, body jsonb not null)",
    )
    .execute(pool)
    .await?;
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut latencies = new_histogram();
                let mut seq = 0_u64;
                while Instant::now() < deadline {
                    let began = Instant::now();
                    sqlx::query("insert into bench_raw (body) values ($1)")
                        .bind(kilobyte_payload(seq))
                        .execute(&pool)
                        .await?;
                    latencies.record(began.elapsed().as_micros() as u64)?;
                    seq += 1;
                }
                anyhow::Ok((seq, latencies))
            })
        })
        .collect();
    let mut operations = 0;
    let mut latencies = new_histogram();
    for worker in workers {
        let (count, histogram) = worker.await??;
        operations += count;
        latencies.add(histogram)?;
    }
    Ok(Measured {
        label: format!("postgres raw insert 1 KB jsonb, c={concurrency}"),
        operations,
        elapsed: started.elapsed(),
        latencies,
    })
}
