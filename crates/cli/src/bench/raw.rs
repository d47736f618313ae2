//! PostgreSQL's own rate: autocommitted single-row inserts of a ~1 KB jsonb row into a scratch table.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::{run_clients, Measured};

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
    let pool = pool.clone();
    let (operations, _, latencies) = run_clients(concurrency, duration, move |_, seq| {
        let pool = pool.clone();
        async move {
            sqlx::query("insert into bench_raw (body) values ($1)").bind(kilobyte_payload(seq)).execute(&pool).await?;
            Ok(true)
        }
    })
    .await?;
    Ok(Measured {
        label: format!("postgres raw insert 1 KB jsonb, c={concurrency}"),
        operations,
        elapsed: started.elapsed(),
        latencies,
    })
}
