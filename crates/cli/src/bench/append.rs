//! `jct bench append`: the event store's append path (batching, advisory lock, hash chain, NOTIFY) against
//! PostgreSQL's raw insert rate.

use std::time::{Duration, Instant};

use domain::event::{Action, Actor, EntityKind, EventData, NewEvent, StreamId};
use sqlx::PgPool;
use store::{EventStore, NewCommand};

use super::raw::kilobyte_payload;
use super::{new_histogram, raw, Measured};

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
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut latencies = new_histogram();
                let mut seq = 0_u64;
                while Instant::now() < deadline {
                    let began = Instant::now();
                    store.append(command(n_events, seq)).await?;
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
