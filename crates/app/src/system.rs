//! System use cases: the database-side metrics for `/metrics`, and this process's appender's.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use domain::task::lifecycle::{events, TaskStatus};
use projections::queue::QueueProjection;

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
    for (status, count) in tasks_by_status(app).await? {
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

/// Events of some types in the log up to position `up_to`, by type, as this process has counted them.
#[derive(Debug, Default)]
pub(crate) struct EventCounts {
    up_to: i64,
    counts: BTreeMap<String, i64>,
}

impl EventCounts {
    /// Counts the events of `event_types` up to `to`: only those after the position counted up to before. The log
    /// only grows and its positions become visible in order (ADR 0002), so what was counted stays counted.
    /// Counting the whole log at every scrape took 0.5 s at 2,000,000 events and grew with it.
    async fn advance(&mut self, pool: &sqlx::PgPool, to: i64, event_types: &[&str]) -> anyhow::Result<()> {
        if to < self.up_to {
            // Not this log (a database recreated under the process), or a read model rebuilt behind where it
            // was: count afresh.
            *self = EventCounts::default();
        }
        if to > self.up_to {
            // Planned for its range each time: an index on the type for the first count, the primary key after.
            let since: Vec<(String, i64)> = sqlx::query_as(
                "select event_type, count(*) from audit_log \
                  where position > $1 and position <= $2 and event_type = any($3) group by event_type",
            )
            .persistent(false)
            .bind(self.up_to)
            .bind(to)
            .bind(event_types)
            .fetch_all(pool)
            .await?;
            for (event_type, count) in since {
                *self.counts.entry(event_type).or_default() += count;
            }
            self.up_to = to;
        }
        Ok(())
    }

    fn get(&self, event_type: &str) -> i64 {
        self.counts.get(event_type).copied().unwrap_or(0)
    }
}

/// The worker's events in the log up to `head`, by type. A process's first scrape counts them once; later ones
/// count only what is new.
async fn worker_event_counts(app: &App, head: i64) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut counted = app.inner.worker_event_counts.lock().await;
    counted.advance(app.pool(), head, &WORKER_EVENT_TYPES).await?;
    Ok(counted.counts.clone())
}

/// The events that end a task, each with the status it leaves the task in. A task has at most one of them: every
/// decision refuses a task that has ended.
const FINAL_EVENTS: [(&str, TaskStatus); 3] = [
    (events::TASK_COMPLETED, TaskStatus::Completed),
    (events::TASK_FAILED, TaskStatus::Failed),
    (events::TASK_CANCELLED, TaskStatus::Cancelled),
];

/// Tasks by status, every status listed, without reading every task: counting the `tasks` table took 0.2-0.8 s
/// at 1,000,000 tasks and grew with it. A task that has not ended is a row of `task_queue` (`queued`, or
/// `leased`: `running`); one that has ended had its final event, which never changes, so those are counted from
/// the log once and then only past the previous scrape. Both are read at the queue's checkpoint, the queue in the
/// same snapshot, so a task that ends meanwhile is counted once. `pending` exists only inside the enqueue command.
/// Without the queue among this process's read models, the `tasks` table is counted.
async fn tasks_by_status(app: &App) -> anyhow::Result<Vec<(&'static str, i64)>> {
    if !app.projections().iter().any(|projection| projection.name() == QueueProjection::NAME) {
        return count_tasks_table(app).await;
    }
    let Some(queue) = projections::queue::count_at_checkpoint(app.pool()).await? else {
        return count_tasks_table(app).await;
    };
    let mut finished = app.inner.finished_task_counts.lock().await;
    finished.advance(app.pool(), queue.checkpoint, &FINAL_EVENTS.map(|(event_type, _)| event_type)).await?;
    Ok(every_status(|status| match status {
        TaskStatus::Pending => 0,
        TaskStatus::Queued => queue.queued,
        TaskStatus::Running => queue.leased,
        ended => FINAL_EVENTS
            .iter()
            .find(|(_, final_status)| *final_status == ended)
            .map_or(0, |(event_type, _)| finished.get(event_type)),
    }))
}

/// Every status with its count in the `tasks` table.
async fn count_tasks_table(app: &App) -> anyhow::Result<Vec<(&'static str, i64)>> {
    let counted = projections::tasks::count_by_status(app.pool()).await?;
    Ok(every_status(|status| counted.iter().find(|(found, _)| found == status.as_str()).map_or(0, |(_, count)| *count)))
}

/// Each status, in [`TaskStatus::ALL`]'s order, with `count(status)`.
fn every_status(count: impl Fn(TaskStatus) -> i64) -> Vec<(&'static str, i64)> {
    TaskStatus::ALL.iter().map(|&status| (status.as_str(), count(status))).collect()
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
