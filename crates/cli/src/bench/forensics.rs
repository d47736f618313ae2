//! `jct bench forensics`: a large log made through the store's own append path (enqueue-shaped commands,
//! eight events each), then: catching the read models up, audit queries by trace id, a full rebuild of each
//! projection alone and of all of them at once (with progress), whether the rebuilt read models equal the
//! caught-up ones, and verification of the hash chain. Each figure is printed beside issue 6's target for it.
//!
//! The figures depend on what else the machine is doing (PostgreSQL runs on it too), so the cores and the load
//! average are printed with them.

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
/// Issue 6's targets.
const TARGET_TRACE_QUERY_P50_MS: f64 = 5.0;
const TARGET_REBUILD_EVENTS_PER_SECOND: f64 = 50_000.0;
const TARGET_VERIFY_EVENTS_PER_SECOND: f64 = 200_000.0;
/// Least time between two progress lines of a rebuild.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// The tables of the event store itself; every other table in `public` belongs to a read model.
const STORE_TABLES: [&str; 5] = ["audit_log", "unique_claims", "projection_checkpoints", "blobs", "_sqlx_migrations"];

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

/// `met` or `MISSED`, for a figure beside its target.
fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// The 1-minute load average, if the platform has `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Vacuums and analyzes the scratch database (untimed), so the measurements that follow do not run beside
/// autovacuum, which a freshly appended million rows or freshly swapped tables would otherwise start.
async fn settle(pool: &PgPool) -> anyhow::Result<()> {
    let started = Instant::now();
    sqlx::raw_sql("vacuum (analyze)").execute(pool).await?;
    eprintln!("  vacuum (analyze), untimed: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Each read-model table in `public` with its row count and an order-independent checksum of its rows.
async fn read_model_checksums(pool: &PgPool) -> anyhow::Result<Vec<(String, i64, String)>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "select tablename::text from pg_tables where schemaname = 'public' and tablename <> all($1) order by 1",
    )
    .bind(&STORE_TABLES[..])
    .fetch_all(pool)
    .await?;
    let mut checksums = Vec::new();
    for table in tables {
        let (rows, sum): (i64, Option<String>) = sqlx::query_as(&format!(
            "select count(*), sum(hashtextextended(t::text, 0)::numeric)::text from public.{table} t"
        ))
        .fetch_one(pool)
        .await?;
        checksums.push((table, rows, sum.unwrap_or_default()));
    }
    Ok(checksums)
}

/// Appends `commands` enqueue-shaped commands through the store, `SEED_CONCURRENCY` at a time.
async fn seed(pool: &PgPool, store: &EventStore, commands: u64) -> anyhow::Result<()> {
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
                        eprintln!("  seeded {seq} commands ({} events)", seq * 8);
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
        "{:<46} {:>10.0} events/s  ({head} events in {:.1} s)",
        "seed (append, c=16, 8-event commands)",
        rate(head as u64, elapsed),
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// Drops every read model's tables and checkpoint, so that a reused log is caught up from the start again.
async fn reset_read_models(pool: &PgPool) -> anyhow::Result<()> {
    let tables: Vec<String> = sqlx::query_scalar(
        "select tablename::text from pg_tables where schemaname = 'public' and tablename <> all($1) order by 1",
    )
    .bind(&STORE_TABLES[..])
    .fetch_all(pool)
    .await?;
    for table in tables {
        sqlx::raw_sql(&format!("drop table public.{table} cascade")).execute(pool).await?;
    }
    sqlx::query("delete from projection_checkpoints").execute(pool).await?;
    Ok(())
}

/// Prints a rebuild's progress, one line per projection every [`PROGRESS_EVERY`] at most.
fn progress_printer(started: Instant) -> impl Fn(&str, projections::rebuild::Progress) + Sync {
    let last_lines = std::sync::Mutex::new(std::collections::HashMap::<String, Instant>::new());
    move |name, progress| {
        let mut last_lines = last_lines.lock().expect("not poisoned");
        let last_line = last_lines.entry(name.to_owned()).or_insert(started);
        if last_line.elapsed() >= PROGRESS_EVERY || progress.position == progress.head {
            *last_line = Instant::now();
            eprintln!(
                "  rebuild {name}: {:>3.0}% ({} of {} events, {:.0} events/s)",
                100.0 * progress.position as f64 / progress.head.max(1) as f64,
                progress.applied,
                progress.head,
                rate(progress.applied, started.elapsed())
            );
        }
    }
}

pub async fn run(pool: &PgPool, target_events: u64, queries: usize) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |cores| cores.get());
    println!("# jct bench forensics (a log of ~{target_events} events, appended through the store)");
    println!(
        "# {cores} cores shared with PostgreSQL; load average {} at the start. Figures vary with other load. The \
         database is vacuumed (untimed) after seeding and before verifying.",
        load_average()
    );
    let commands = target_events.div_ceil(8);
    let store = EventStore::new(pool.clone());
    let seeded = store::read::head_position(pool).await?;
    if seeded > 0 {
        reset_read_models(pool).await?;
        println!("# reusing a log of {seeded} events seeded earlier; its read models were dropped");
    } else {
        seed(pool, &store, commands).await?;
        settle(pool).await?;
    }
    let head = store::read::head_position(pool).await?;
    let commands = (head as u64).div_ceil(8);

    let all = app::all_projections();
    let upcasters = app::upcasters();
    let started = Instant::now();
    for projection in &all {
        projections::runner::install(pool, projection.as_ref(), &upcasters).await?;
        projections::runner::catch_up(pool, projection.as_ref(), &upcasters).await?;
    }
    let elapsed = started.elapsed();
    println!(
        "{:<46} {:>10.0} events/s  ({} projections one after another, {:.1} s)",
        "catch-up of every projection from 0",
        rate(head as u64 * all.len() as u64, elapsed),
        all.len(),
        elapsed.as_secs_f64()
    );
    let caught_up = read_model_checksums(pool).await?;

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
    let p50 = latencies.value_at_quantile(0.5) as f64 / 1000.0;
    println!(
        "{:<46} {:>10.0} queries/s  p50 {p50:.2} ms  p99 {:.2} ms  (target p50 <= {TARGET_TRACE_QUERY_P50_MS} ms: {})",
        format!("audit query by trace_id ({queries} queries)"),
        rate(queries as u64, started.elapsed()),
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        verdict(p50 <= TARGET_TRACE_QUERY_P50_MS)
    );

    // Each projection alone, for its own figure; then all of them at once (`rebuild_all`), for the figure of the
    // whole: the log's events over the wall time of rebuilding every projection.
    let mut one_after_another = Duration::ZERO;
    for projection in &all {
        let name = projection.name();
        let started = Instant::now();
        let print_progress = progress_printer(started);
        let on_progress = |progress: projections::rebuild::Progress| print_progress(name, progress);
        let rebuilt = projections::rebuild::rebuild(pool, projection.as_ref(), &upcasters, &on_progress).await?;
        let elapsed = started.elapsed();
        one_after_another += elapsed;
        let per_second = rate(rebuilt.applied, elapsed);
        let read = match projection.entity_kinds() {
            Some(kinds) => {
                let kinds: Vec<_> = kinds.iter().map(|kind| kind.as_str()).collect();
                format!("{} read: {} events only", rebuilt.read, kinds.join(", "))
            }
            None => "every event read".to_owned(),
        };
        println!(
            "{:<46} {per_second:>10.0} events/s  (target >= {TARGET_REBUILD_EVENTS_PER_SECOND:.0}: {}; {} events of \
             the log in {:.1} s, {read}; load {})",
            format!("rebuild {name}"),
            verdict(per_second >= TARGET_REBUILD_EVENTS_PER_SECOND),
            rebuilt.applied,
            elapsed.as_secs_f64(),
            load_average()
        );
    }
    let started = Instant::now();
    let print_progress = progress_printer(started);
    projections::rebuild::rebuild_all(pool, &all, &upcasters, &print_progress).await?;
    let elapsed = started.elapsed();
    let per_second = rate(head as u64, elapsed);
    println!(
        "{:<46} {per_second:>10.0} events/s  (target >= {TARGET_REBUILD_EVENTS_PER_SECOND:.0}: {}; {head} events, \
         {} projections at once in {:.1} s, one after another above in {:.1} s; load {})",
        "rebuild of every projection, in all",
        verdict(per_second >= TARGET_REBUILD_EVENTS_PER_SECOND),
        all.len(),
        elapsed.as_secs_f64(),
        one_after_another.as_secs_f64(),
        load_average()
    );
    let rebuilt = read_model_checksums(pool).await?;
    let differing: Vec<&str> = caught_up
        .iter()
        .zip(&rebuilt)
        .filter(|(before, after)| before != after)
        .map(|(before, _)| before.0.as_str())
        .collect();
    let identical = caught_up.len() == rebuilt.len() && differing.is_empty();
    println!(
        "{:<46} {}",
        "rebuilt read models equal the caught-up ones",
        if identical {
            format!("yes ({} tables, row counts and checksums)", rebuilt.len())
        } else {
            format!("NO: {differing:?} differ ({} tables before, {} after)", caught_up.len(), rebuilt.len())
        }
    );

    settle(pool).await?;
    let started = Instant::now();
    let report = store::verify::verify_chain(pool).await?;
    let elapsed = started.elapsed();
    let per_second = rate(report.events_checked as u64, elapsed);
    println!(
        "{:<46} {per_second:>10.0} events/s  (target >= {TARGET_VERIFY_EVENTS_PER_SECOND:.0}: {}; {} events in {:.1} \
         s, ok={})",
        "audit verify (hash chain)",
        verdict(per_second >= TARGET_VERIFY_EVENTS_PER_SECOND),
        report.events_checked,
        elapsed.as_secs_f64(),
        report.ok
    );
    println!("# load average {} at the end", load_average());
    Ok(())
}
