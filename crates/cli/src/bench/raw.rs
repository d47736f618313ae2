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

/// How long each of [`Baseline`]'s two measurements runs.
const BASELINE_SECONDS: u64 = 2;

/// PostgreSQL's own single-row insert rate on this machine at one client and at 16, measured in the scratch
/// database right before a bench's phases: the yardstick the run's figures are read against, so that runs on
/// different machines, or hours of a shared one, can be compared with what PostgreSQL itself did in each.
pub struct Baseline {
    one: Measured,
    sixteen: Measured,
}

impl Baseline {
    /// Measures both rates, prints them, and drops the table they wrote.
    pub async fn measure(pool: &PgPool) -> anyhow::Result<Baseline> {
        let duration = Duration::from_secs(BASELINE_SECONDS);
        let one = measure(pool, 1, duration).await?;
        let sixteen = measure(pool, 16, duration).await?;
        sqlx::query("drop table bench_raw").execute(pool).await?;
        println!("# PostgreSQL's own rate in this run, the yardstick for the figures below:");
        one.print(None);
        sixteen.print(None);
        Ok(Baseline { one, sixteen })
    }

    /// `per_second` in percent of the raw insert rate at 16 clients.
    pub fn percent_of_rate(&self, per_second: f64) -> f64 {
        100.0 * per_second / self.sixteen.per_second()
    }

    /// `ms` in raw inserts (autocommitted, one client) done one after another: in multiples of their p50 latency.
    pub fn in_single_inserts(&self, ms: f64) -> f64 {
        ms / (self.one.latencies.value_at_quantile(0.50) as f64 / 1000.0)
    }
}
