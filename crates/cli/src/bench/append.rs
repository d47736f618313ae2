//! `jct bench append`: the event store's append path (batching, advisory lock, hash chain, NOTIFY) against
//! PostgreSQL's raw insert rate.

use std::time::{Duration, Instant};

use domain::event::{Action, Actor, EntityKind, EventData, NewEvent, StreamId};
use sqlx::PgPool;
use store::{EventStore, NewCommand};

use super::raw::kilobyte_payload;
use super::{raw, run_clients, Measured};

fn command(n_events: usize, seq: u64) -> NewCommand {
    let stream = StreamId::new(EntityKind::Task, ulid::Ulid::new().to_string());
    NewCommand {
        events: (0..n_events)
            .map(|_| {
                NewEvent::new(
                    EventData {
                        stream: stream.clone(),
                        event_type: "BenchHappened".into(),
                        schema_version: 1,
                        payload: kilobyte_payload(seq),
                        action: Action::Created,
                        before: None,
                        after: None,
                        note: None,
                    },
                    Actor::system("bench"),
                )
            })
            .collect(),
        trace_id: Some(format!("bench-{seq}")),
        ..NewCommand::default()
    }
}

async fn measure(pool: &PgPool, concurrency: usize, n_events: usize, duration: Duration) -> anyhow::Result<Measured> {
    let store = EventStore::new(pool.clone());
    let started = Instant::now();
    let (operations, _, latencies) = run_clients(concurrency, duration, move |_, seq| {
        let store = store.clone();
        async move {
            store.append(command(n_events, seq)).await?;
            Ok(true)
        }
    })
    .await?;
    Ok(Measured {
        label: format!("append {n_events}-event commands, c={concurrency}"),
        operations,
        elapsed: started.elapsed(),
        latencies,
    })
}

pub async fn run(pool: &PgPool, duration: Duration) -> anyhow::Result<()> {
    println!("# jct bench append ({} s per row; commands/s; every figure also as a ratio to raw inserts at the same concurrency)", duration.as_secs());
    let mut baselines = Vec::new();
    for concurrency in [1, 16] {
        let raw = raw::measure(pool, concurrency, duration).await?;
        raw.print(None);
        baselines.push((concurrency, raw.per_second()));
    }
    for n_events in [1, 7] {
        for (concurrency, baseline) in &baselines {
            let measured = measure(pool, *concurrency, n_events, duration).await?;
            measured.print(Some(*baseline));
            if n_events > 1 {
                println!(
                    "{:<44} {:>10.0}/s",
                    format!("  = events, c={concurrency}"),
                    measured.per_second() * n_events as f64
                );
            }
        }
    }
    let report = store::verify::verify_chain(pool).await?;
    println!("hash chain after the run: ok={} over {} events", report.ok, report.events_checked);
    Ok(())
}
