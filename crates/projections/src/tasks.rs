//! The `tasks` read model: one row per task with its GET shape, folded from task events.

use anyhow::Context as _;
use async_trait::async_trait;
use domain::task::lifecycle::{events, format_ts};
use domain::task::run;
use serde::Deserialize as _;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgExecutor};
use store::RecordedEvent;

use crate::Projection;

/// Folds task events into `tasks`.
pub struct TasksProjection;

impl TasksProjection {
    pub const NAME: &'static str = "tasks";
    /// 2: folds the execution lifecycle (claims, completions, failures, retries, releases, cancellations).
    pub const VERSION: i32 = 2;
}

#[async_trait]
impl Projection for TasksProjection {
    fn name(&self) -> &'static str {
        TasksProjection::NAME
    }

    fn version(&self) -> i32 {
        TasksProjection::VERSION
    }

    fn schema(&self) -> &'static str {
        include_str!("../../../projections/tasks/schema.sql")
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> anyhow::Result<()> {
        let task_id = &event.stream.id;
        match event.event_type.as_str() {
            events::TASK_CREATED => {
                sqlx::query(include_str!("../../../projections/tasks/insert_task.sql"))
                    .bind(task_id)
                    .bind(&event.payload["task"])
                    .bind(event.position)
                    .execute(conn)
                    .await?;
            }
            events::TASK_ENQUEUED => {
                let changes = json!({ "status": "queued", "queued_at": event.payload["queued_at"] });
                update(conn, task_id, &changes).await?;
            }
            _ => {
                if let Some(changes) = execution_changes(event)? {
                    update(conn, task_id, &changes).await?;
                }
            }
        }
        Ok(())
    }
}

/// The task fields an execution event changes (`None`: it changes none).
///
/// `started_at` is the first attempt's start and stays; `assigned_to` is the worker of the latest attempt;
/// `error` is the latest failure's error while the task waits for a retry, and the last error when it failed.
/// A timed-out attempt shows as the retry or failure that follows it (status `queued` or `failed`, with an
/// error saying it timed out).
fn execution_changes(event: &RecordedEvent) -> anyhow::Result<Option<Value>> {
    let payload = &event.payload;
    let changes = match event.event_type.as_str() {
        events::TASK_CLAIMED => {
            let claimed = run::TaskClaimed::deserialize(payload)?;
            let mut changes = json!({
                "status": "running",
                "assigned_to": claimed.worker_id,
                "trace_path": claimed.trace_path,
            });
            if claimed.attempt == 1 {
                changes["started_at"] = json!(format_ts(claimed.claimed_at));
            }
            changes
        }
        events::TASK_COMPLETED => {
            let completed = run::TaskCompleted::deserialize(payload)?;
            json!({
                "status": "completed",
                "completed_at": format_ts(completed.completed_at),
                "result": completed.outputs,
                "error": null,
            })
        }
        events::TASK_FAILED => {
            let failed = run::TaskFailed::deserialize(payload)?;
            json!({
                "status": "failed",
                "completed_at": format_ts(failed.failed_at),
                "error": failed.error,
            })
        }
        events::TASK_RETRY_SCHEDULED => {
            let retry = run::TaskRetryScheduled::deserialize(payload)?;
            json!({ "status": "queued", "error": retry.error })
        }
        events::TASK_RELEASED => json!({ "status": "queued" }),
        events::TASK_CANCELLED => {
            let cancelled = run::TaskCancelled::deserialize(payload)?;
            json!({ "status": "cancelled", "completed_at": format_ts(cancelled.cancelled_at) })
        }
        _ => return Ok(None),
    };
    Ok(Some(changes))
}

async fn update(conn: &mut PgConnection, task_id: &str, changes: &Value) -> anyhow::Result<()> {
    sqlx::query(include_str!("../../../projections/tasks/update_task.sql"))
        .bind(task_id)
        .bind(changes)
        .execute(conn)
        .await
        .context("update task")?;
    Ok(())
}

/// A task's GET shape.
pub async fn get_task<'c>(executor: impl PgExecutor<'c>, task_id: &str) -> anyhow::Result<Option<Value>> {
    sqlx::query_scalar(include_str!("../../../projections/tasks/select_task.sql"))
        .bind(task_id)
        .fetch_optional(executor)
        .await
        .context("read task")
}

/// A task's GET shape, read on a given connection (e.g. inside an as-of transaction).
pub async fn get_task_on(conn: &mut PgConnection, task_id: &str) -> anyhow::Result<Option<Value>> {
    sqlx::query_scalar(include_str!("../../../projections/tasks/select_task.sql"))
        .bind(task_id)
        .fetch_optional(conn)
        .await
        .context("read task")
}

/// The exact-match filters of `GET /tasks`.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<String>,
    pub operation: Option<String>,
    pub requester_kind: Option<String>,
    pub target_repo: Option<String>,
}

/// Tasks matching `filter`, newest first.
pub async fn list_tasks<'c>(
    executor: impl PgExecutor<'c>,
    filter: &TaskFilter,
    limit: i64,
    offset: i64,
) -> anyhow::Result<Vec<Value>> {
    sqlx::query_scalar(include_str!("../../../projections/tasks/list_tasks.sql"))
        .bind(&filter.status)
        .bind(&filter.operation)
        .bind(&filter.requester_kind)
        .bind(&filter.target_repo)
        .bind(limit)
        .bind(offset)
        .fetch_all(executor)
        .await
        .context("list tasks")
}

/// How many tasks are in each status.
pub async fn count_by_status<'c>(executor: impl PgExecutor<'c>) -> anyhow::Result<Vec<(String, i64)>> {
    sqlx::query_as("select status, count(*) from tasks group by status order by status")
        .fetch_all(executor)
        .await
        .context("count tasks by status")
}
