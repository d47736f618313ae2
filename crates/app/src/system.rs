//! System use cases: the database-side metrics for `/metrics`, and this process's appender's.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use domain::task::lifecycle::events;

use crate::App;

/// Events appended, projection lag, tasks by status, and worker claims and failures, in the Prometheus text
/// format. Read from the database at scrape time, so every process reports the same figures.
pub async fn database_metrics(app: &App) -> anyhow::Result<String> {
    let mut text = String::new();
    let head = store::read::head_position(app.pool()).await?;
    writeln!(text, "# HELP jct_events_appended_total Events in the audit log.")?;
    writeln!(text, "# TYPE jct_events_appended_total counter")?;
    writeln!(text, "jct_events_appended_total {head}")?;

    writeln!(text, "# HELP jct_projection_lag_events Events appended but not yet applied, per projection.")?;
    writeln!(text, "# TYPE jct_projection_lag_events gauge")?;
    for status in projections::runner::status(app.pool(), app.projections()).await? {
        writeln!(text, "jct_projection_lag_events{{projection=\"{}\"}} {}", status.name, status.lag.unwrap_or(head))?;
    }

    writeln!(text, "# HELP jct_tasks Tasks by status.")?;
    writeln!(text, "# TYPE jct_tasks gauge")?;
    for (status, count) in projections::tasks::count_by_status(app.pool()).await? {
        writeln!(text, "jct_tasks{{status=\"{status}\"}} {count}")?;
    }

    writeln!(text, "# HELP jct_worker_events_total Worker events appended, by event type.")?;
    writeln!(text, "# TYPE jct_worker_events_total counter")?;
    for (event_type, count) in worker_event_counts(app, head).await? {
        writeln!(text, "jct_worker_events_total{{event_type=\"{event_type}\"}} {count}")?;
    }
    Ok(text)
}

/// The worker's events that `/metrics` counts.
const WORKER_EVENT_TYPES: [&str; 8] = [
    events::TASK_CLAIMED,
    events::TASK_FAILED,
    events::TASK_RETRY_SCHEDULED,
    events::TASK_TIMED_OUT,
    events::TASK_COMPLETED,
    events::TASK_LEASE_EXPIRED,
    events::TASK_RELEASED,
    events::TASK_CANCELLED,
];

/// The worker's events this process has counted, by type, in the log up to position `up_to`.
#[derive(Debug, Default)]
pub(crate) struct WorkerEventCounts {
    up_to: i64,
    counts: BTreeMap<String, i64>,
}

/// The worker's events in the log up to `head`, by type. The log only grows and its positions become visible in
/// order (ADR 0002), so a scrape counts only the events after the head of the one before it. Counting the whole
/// log at every scrape took 0.5 s at 2,000,000 events and grew with it. A process's first scrape counts it once.
async fn worker_event_counts(app: &App, head: i64) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut counted = app.inner.worker_event_counts.lock().await;
    if head < counted.up_to {
        // Not this log (a database recreated under the process): count it afresh.
        *counted = WorkerEventCounts::default();
    }
    if head > counted.up_to {
        // Planned for its range each time: an index on the type for the first count, the primary key after.
        let since: Vec<(String, i64)> = sqlx::query_as(
            "select event_type, count(*) from audit_log \
              where position > $1 and position <= $2 and event_type = any($3) group by event_type",
        )
        .persistent(false)
        .bind(counted.up_to)
        .bind(head)
        .bind(&WORKER_EVENT_TYPES[..])
        .fetch_all(app.pool())
        .await?;
        for (event_type, count) in since {
            *counted.counts.entry(event_type).or_default() += count;
        }
        counted.up_to = head;
    }
    Ok(counted.counts.clone())
}

/// This process's appender since it started (`store::AppendStats`), in the Prometheus text format: how its batches
/// went, and how often a batch sent without a read missed (another process appended since, or a guess was wrong).
/// Unlike [`database_metrics`], each process reports its own.
pub fn append_metrics(app: &App) -> anyhow::Result<String> {
    let stats = app.store().stats();
    let mut text = String::new();
    for (name, help, value) in [
        (
            "jct_append_pipelined_batches_total",
            "Append batches through the pipeline, read models included (one flight, or two after a read).",
            stats.pipelined_batches,
        ),
        (
            "jct_append_speculative_batches_total",
            "Of those, batches sent on what the appender remembered, without a read under the lock.",
            stats.speculative_batches,
        ),
        (
            "jct_append_guessed_batches_total",
            "Batches sent on a guessed version of a stream the appender did not remember.",
            stats.guessed_batches,
        ),
        (
            "jct_append_speculative_misses_total",
            "Batches sent without a read that did not commit and were appended again after one.",
            stats.speculative_misses,
        ),
        ("jct_append_stepwise_batches_total", "Append batches a statement at a time.", stats.stepwise_batches),
    ] {
        writeln!(text, "# HELP {name} {help} This process's appender.")?;
        writeln!(text, "# TYPE {name} counter")?;
        writeln!(text, "{name} {value}")?;
    }
    Ok(text)
}
