//! The `tasks` read model: one row per task with its GET shape, folded from task events.

use std::collections::HashMap;

use anyhow::Context as _;
use async_trait::async_trait;
use domain::event::EntityKind;
use domain::task::lifecycle::{events, format_ts};
use domain::task::run;
use serde::Deserialize as _;
use serde_json::{json, Map, Value};
use sqlx::{PgConnection, PgExecutor};
use store::sql::{Param, Statement};
use store::RecordedEvent;

use crate::Projection;

/// Folds task events into `tasks`.
pub struct TasksProjection;

impl TasksProjection {
    pub const NAME: &'static str = "tasks";
    /// 2: folds the execution lifecycle (claims, completions, failures, retries, releases, cancellations).
    /// 3: no indexes on `trace_id` and `cwom_issue_id`, which no query used.
    pub const VERSION: i32 = 3;
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

    /// Task events only: every other kind of event leaves it unchanged.
    fn entity_kinds(&self) -> Option<&'static [EntityKind]> {
        Some(&[EntityKind::Task])
    }

    /// Its fold reads payloads only.
    fn folds_images(&self) -> bool {
        false
    }

    /// Set-based: the batch's new tasks inserted with their later changes already merged in, and the other
    /// tasks' changes merged per task, in two statements. Same rows as applying the events one by one.
    fn batch_statements<'e>(&self, events: &'e [RecordedEvent]) -> anyhow::Result<Option<Vec<Statement<'e>>>> {
        let mut created: Vec<(String, Value, i64)> = Vec::new();
        let mut created_index: HashMap<&str, usize> = HashMap::new();
        let mut changed: Vec<(String, Map<String, Value>)> = Vec::new();
        let mut changed_index: HashMap<&str, usize> = HashMap::new();
        for event in events {
            if event.stream.kind != EntityKind::Task {
                continue;
            }
            let task_id = event.stream.id.as_str();
            if event.event_type == events::TASK_CREATED {
                if !created_index.contains_key(task_id) && !changed_index.contains_key(task_id) {
                    created_index.insert(task_id, created.len());
                    created.push((task_id.to_owned(), event.payload["task"].clone(), event.position));
                }
                continue;
            }
            let Some(Value::Object(changes)) = changes_of(event)? else { continue };
            let target = match created_index.get(task_id) {
                Some(&index) => created[index].1.as_object_mut(),
                None => {
                    let index = *changed_index.entry(task_id).or_insert_with(|| {
                        changed.push((task_id.to_owned(), Map::new()));
                        changed.len() - 1
                    });
                    Some(&mut changed[index].1)
                }
            };
            if let Some(target) = target {
                target.extend(changes);
            }
        }
        let mut statements = Vec::new();
        if !created.is_empty() {
            let (ids, documents, positions): (Vec<String>, Vec<Value>, Vec<i64>) =
                created.into_iter().fold((Vec::new(), Vec::new(), Vec::new()), |mut columns, (id, document, at)| {
                    columns.0.push(id);
                    columns.1.push(document);
                    columns.2.push(at);
                    columns
                });
            statements.push(Statement::prepared(
                "insert tasks",
                include_str!("../../../projections/tasks/insert_tasks.sql"),
                vec![Param::OwnedTexts(ids), Param::OwnedJsonbs(documents), Param::Int8s(positions)],
            ));
        }
        if !changed.is_empty() {
            let (ids, changes): (Vec<String>, Vec<Value>) =
                changed.into_iter().map(|(id, changes)| (id, Value::Object(changes))).unzip();
            // Never a cached plan of PostgreSQL's choosing: one made while the table was nearly empty joins by a
            // scan of the whole table until the table's statistics are next updated, and a fresh database's first
            // minutes of status changes would each scan every task. Generic instead: an index on every path.
            statements.push(Statement::generic(
                "update tasks",
                include_str!("../../../projections/tasks/update_tasks.sql"),
                vec![Param::OwnedTexts(ids), Param::OwnedJsonbs(changes)],
            ));
        }
        Ok(Some(statements))
    }

    async fn apply_batch(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        crate::execute_all(conn, self.batch_statements(events)?).await
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> anyhow::Result<()> {
        if event.stream.kind != EntityKind::Task {
            return Ok(());
        }
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

/// A new task's GET shape folded from the command that created it (its `TaskCreated` and the changes after it),
/// the row the read model stores for it: what enqueue answers without reading the row back.
pub fn new_task_document(events: &[RecordedEvent], task_id: &str) -> anyhow::Result<Option<Value>> {
    let mut document: Option<Value> = None;
    for event in events.iter().filter(|event| event.stream.kind == EntityKind::Task && event.stream.id == task_id) {
        if event.event_type == events::TASK_CREATED {
            document = Some(event.payload["task"].clone());
        } else if let (Some(Value::Object(document)), Some(Value::Object(changes))) =
            (document.as_mut(), changes_of(event)?)
        {
            document.extend(changes);
        }
    }
    Ok(document)
}

/// The task fields any event other than `TaskCreated` changes (`None`: it changes none).
fn changes_of(event: &RecordedEvent) -> anyhow::Result<Option<Value>> {
    if event.stream.kind != EntityKind::Task {
        return Ok(None);
    }
    if event.event_type == events::TASK_ENQUEUED {
        return Ok(Some(json!({ "status": "queued", "queued_at": event.payload["queued_at"] })));
    }
    execution_changes(event)
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

/// A task's GET shape as JSON text, or `None`: for responses that send it on as it is.
pub async fn get_task_text<'c>(executor: impl PgExecutor<'c>, task_id: &str) -> anyhow::Result<Option<String>> {
    sqlx::query_scalar(include_str!("../../../projections/tasks/select_task_text.sql"))
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
    crate::list_query(include_str!("../../../projections/tasks/list_tasks.sql"))
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
