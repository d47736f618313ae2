//! Audit and forensics: query the log, a trace's causality timeline, an entity's history, as-of reads, and
//! verification of the hash chain.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use domain::event::{EntityKind, StreamId};
use serde_json::{json, Value};
pub use store::audit::AuditFilter;
use store::verify::VerifyReport;

use crate::App;

/// One page of audit events.
#[derive(Debug)]
pub struct Page {
    pub events: Vec<Value>,
    /// The cursor of the next page, when there may be one.
    pub next_cursor: Option<String>,
}

/// Why a cursor was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid cursor {0:?}: pass the next_cursor of a previous page")]
pub struct InvalidCursor(pub String);

/// Events matching `filter` after `cursor`, in position order.
pub async fn events(
    app: &App,
    filter: &AuditFilter,
    cursor: Option<&str>,
    limit: i64,
) -> anyhow::Result<Result<Page, InvalidCursor>> {
    let after = match cursor {
        None => 0,
        Some(text) => match text.parse::<i64>() {
            Ok(position) if position >= 0 => position,
            _ => return Ok(Err(InvalidCursor(text.to_owned()))),
        },
    };
    let mut events = store::audit::query_events(app.pool(), filter, after, limit + 1).await?;
    let next_cursor = if events.len() as i64 > limit {
        events.truncate(limit as usize);
        events.last().map(|event| event.position.to_string())
    } else {
        None
    };
    Ok(Ok(Page { events: events.iter().map(store::RecordedEvent::to_json).collect(), next_cursor }))
}

/// Recomputes the hash chain.
pub async fn verify(app: &App) -> anyhow::Result<VerifyReport> {
    store::verify::verify_chain(app.pool()).await
}

/// The most events a trace timeline returns; a larger trace is read with `GET /audit/events?trace_id=`.
pub const TRACE_EVENT_LIMIT: i64 = 10_000;

/// The causality timeline of one trace: every event, the objects it touched, and their trace folders.
pub async fn trace(app: &App, trace_id: &str) -> anyhow::Result<Option<Value>> {
    let filter = AuditFilter { trace_id: Some(trace_id.to_owned()), ..AuditFilter::default() };
    let events = store::audit::query_events(app.pool(), &filter, 0, TRACE_EVENT_LIMIT + 1).await?;
    if events.is_empty() {
        return Ok(None);
    }
    let truncated = events.len() as i64 > TRACE_EVENT_LIMIT;
    let mut objects: BTreeMap<(String, String), Value> = BTreeMap::new();
    for event in events.iter().take(TRACE_EVENT_LIMIT as usize) {
        let key = (event.stream.kind.as_str().to_owned(), event.stream.id.clone());
        let object = objects.entry(key).or_insert_with(|| {
            json!({
                "entity_kind": event.stream.kind.as_str(),
                "entity_id": event.stream.id,
                "first_position": event.position,
                "events": 0,
            })
        });
        object["last_position"] = json!(event.position);
        object["events"] = json!(object["events"].as_i64().unwrap_or(0) + 1);
        object["last_event_type"] = json!(event.event_type);
    }
    let mut trace_folders = Vec::new();
    for (kind, id) in objects.keys() {
        if kind != EntityKind::Task.as_str() {
            continue;
        }
        if let Some(task) = projections::tasks::get_task(app.pool(), id).await? {
            if let Some(uri) = task["trace_path"].as_str() {
                trace_folders.push(json!({ "task_id": id, "uri": uri, "files": list_folder(uri) }));
            }
        }
    }
    Ok(Some(json!({
        "trace_id": trace_id,
        "events": events.iter().take(TRACE_EVENT_LIMIT as usize).map(store::RecordedEvent::to_json).collect::<Vec<_>>(),
        "truncated": truncated,
        "objects": objects.into_values().collect::<Vec<_>>(),
        "trace_folders": trace_folders,
    })))
}

/// The names of the files in a `file://` trace folder, sorted; empty when it cannot be read.
fn list_folder(uri: &str) -> Vec<String> {
    let path = PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Every event of one entity, in order; `None` when it has none.
pub async fn history(app: &App, stream: &StreamId) -> anyhow::Result<Option<Vec<Value>>> {
    let events = store::read::read_stream(app.pool(), stream, None).await?;
    Ok((!events.is_empty()).then(|| events.iter().map(store::RecordedEvent::to_json).collect()))
}

/// A point in the log's history: a position, or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    Position(i64),
    Time(DateTime<Utc>),
}

impl AsOf {
    /// Parses `as_of`: a non-negative integer is a position, anything else must be an RFC 3339 timestamp.
    pub fn parse(text: &str) -> Option<AsOf> {
        if let Ok(position) = text.parse::<i64>() {
            return (position >= 0).then_some(AsOf::Position(position));
        }
        DateTime::parse_from_rfc3339(text).ok().map(|ts| AsOf::Time(ts.with_timezone(&Utc)))
    }

    /// The position this point stands for.
    pub async fn position(self, app: &App) -> anyhow::Result<i64> {
        match self {
            AsOf::Position(position) => Ok(position),
            AsOf::Time(ts) => store::audit::position_at(app.pool(), ts).await,
        }
    }
}

/// A task as it was at `as_of`, folded from its events by the `tasks` projection; `None` if it did not exist.
pub async fn task_as_of(app: &App, task_id: &str, as_of: AsOf) -> anyhow::Result<Option<Value>> {
    let position = as_of.position(app).await?;
    let stream = StreamId::new(EntityKind::Task, task_id);
    let mut tx = projections::asof::fold_stream(
        app.pool(),
        &projections::tasks::TasksProjection,
        app.upcasters(),
        &stream,
        position,
    )
    .await?;
    let task = projections::tasks::get_task_on(&mut tx, task_id).await?;
    tx.rollback().await?;
    Ok(task)
}

/// A CWOM object as it was at `as_of`, folded from its stream by the CWOM event contract; `None` if it did not
/// exist then.
pub async fn cwom_as_of(app: &App, kind: EntityKind, id: &str, as_of: AsOf) -> anyhow::Result<Option<Value>> {
    let position = as_of.position(app).await?;
    let events = store::read::read_stream(app.pool(), &StreamId::new(kind, id), Some(position)).await?;
    let events: Vec<_> = events.into_iter().map(|event| app.upcasters().upcast(event)).collect();
    Ok(domain::cwom::fold(kind, events.iter().map(|event| (event.action, &event.payload))))
}
