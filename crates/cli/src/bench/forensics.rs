//! `jct bench forensics`: a large log made through the store's own append path (enqueue-shaped commands,
//! eight events each), then: catching the read models up, audit queries by trace id, a full rebuild of every
//! projection, and verification of the hash chain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use domain::task::lifecycle::{self, EnqueueTask};
use domain::task::{evaluate, parse_task_spec, task_to_cwom, CwomIds, PolicyConfig};
use sqlx::PgPool;
use store::{EventStore, NewCommand};

use super::new_histogram;

/// Concurrent appenders while seeding.
const SEED_CONCURRENCY: usize = 16;

fn enqueue_command(seq: u64) -> NewCommand {
    let operation = ["code_change", "docs", "analysis", "ops"][(seq % 4) as usize];
    let body = serde_json::json!({
        "requested_by": {"kind": "agent", "id": format!("seeder-{}", seq % 97)},
        "objective": format!("Seeded task number {seq} for the forensics benchmark"),
        "operation": operation,
        "target": {"repo": format!("bench/repo-{seq}"), "ref": "main", "path": "src"},
        "inputs": {"seq": seq},
        "metadata": {"bench": true}
    });
    let spec = parse_task_spec(&body).expect("a valid seeded spec");
    let spec = evaluate(&spec, &PolicyConfig::from_prefixes("bench/")).expect("an allowed seeded spec");
    let now = Utc::now();
    let trace_id = format!("seed-trace-{seq}");
    let task_id = ulid::Ulid::new().to_string();
    let ids = CwomIds {
        repo_id: ulid::Ulid::new().to_string(),
        constraint_snapshot_id: ulid::Ulid::new().to_string(),
        issue_id: ulid::Ulid::new().to_string(),
        context_packet_id: ulid::Ulid::new().to_string(),
    };
    let cwom = task_to_cwom(&spec, &trace_id, now, ids, None);
    let events = lifecycle::enqueue(&EnqueueTask {
        spec: &spec,
        task_id: &task_id,
        trace_id: &trace_id,
        now,
        cwom: Some(&cwom),
    });
    NewCommand { events, trace_id: Some(trace_id), ..NewCommand::default() }
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

pub async fn run(pool: &PgPool, target_events: u64, queries: usize) -> anyhow::Result<()> {
    println!("# jct bench forensics (a log of ~{target_events} events, appended through the store)");
    let commands = target_events.div_ceil(8);
    let store = EventStore::new(pool.clone());
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seeders: Vec<_> = (0..SEED_CONCURRENCY)
        .map(|_| {
            let store = store.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seq >= commands {
                        return anyhow::Ok(());
                    }
                    store.append(enqueue_command(seq)).await?;
                    if seq > 0 && seq % 25_000 == 0 {
                        eprintln!("  seeded {seq} commands");
                    }
                }
            })
        })
        .collect();
    for seeder in seeders {
        seeder.await??;
    }
    let head = store::read::head_position(pool).await?;
    let elapsed = started.elapsed();
    println!(
        "{:<44} {:>10.0} events/s  ({head} events in {:.1} s)",
        "seed (append, c=16, 8-event commands)",
        rate(head as u64, elapsed),
        elapsed.as_secs_f64()
    );

    let all = app::all_projections();
    let upcasters = app::upcasters();
    let started = Instant::now();
    for projection in &all {
        projections::runner::install(pool, projection.as_ref(), &upcasters).await?;
        projections::runner::catch_up(pool, projection.as_ref(), &upcasters).await?;
    }
    let elapsed = started.elapsed();
    println!(
        "{:<44} {:>10.0} events/s  ({} projections, {:.1} s)",
        "catch-up of every projection from 0",
        rate(head as u64 * all.len() as u64, elapsed),
        all.len(),
        elapsed.as_secs_f64()
    );

    let mut latencies = new_histogram();
    let filter_of = |seq: u64| store::audit::AuditFilter {
        trace_id: Some(format!("seed-trace-{seq}")),
        ..store::audit::AuditFilter::default()
    };
    let started = Instant::now();
    for query_idx in 0..queries {
        let seq = (query_idx as u64 * 7_919) % commands;
        let began = Instant::now();
        let events = store::audit::query_events(pool, &filter_of(seq), 0, 1000).await?;
        latencies.record(began.elapsed().as_micros() as u64)?;
        anyhow::ensure!(events.len() == 8, "trace {seq} has {} events", events.len());
    }
    println!(
        "{:<44} {:>10.0} queries/s  p50 {:.2} ms  p99 {:.2} ms",
        format!("audit query by trace_id ({queries} queries)"),
        rate(queries as u64, started.elapsed()),
        latencies.value_at_quantile(0.5) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0
    );

    for projection in &all {
        let started = Instant::now();
        let rebuilt = projections::rebuild::rebuild(pool, projection.as_ref(), &upcasters, &|_| {}).await?;
        let elapsed = started.elapsed();
        println!(
            "{:<44} {:>10.0} events/s  ({} events, {:.1} s)",
            format!("rebuild {}", projection.name()),
            rate(rebuilt.applied, elapsed),
            rebuilt.applied,
            elapsed.as_secs_f64()
        );
    }

    let started = Instant::now();
    let report = store::verify::verify_chain(pool).await?;
    let elapsed = started.elapsed();
    println!(
        "{:<44} {:>10.0} events/s  ({} events, {:.1} s, ok={})",
        "audit verify (hash chain)",
        rate(report.events_checked as u64, elapsed),
        report.events_checked,
        elapsed.as_secs_f64(),
        report.ok
    );
    Ok(())
}
