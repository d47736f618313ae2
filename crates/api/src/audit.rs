//! Audit and forensics routes: query the log, a trace's timeline, an entity's history, verify the chain.

use app::audit::{AsOf, InvalidCursor};
use app::App;
use domain::event::{EntityKind, StreamId};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;

use crate::doc::Doc;
use crate::error::{internal, validation_error, ErrorDetail, UnprocessableEntity};
use crate::ApiTags;

/// One event of the audit log.
#[derive(Debug, Object)]
pub struct AuditEvent {
    /// Global order; gapless; equal to commit order.
    pub position: i64,
    /// ULID.
    pub event_id: String,
    /// RFC 3339 commit time.
    pub ts: String,
    /// Task, Repo, Issue, ContextPacket, ConstraintSnapshot, DoctrineRef, Run or Artifact.
    pub entity_kind: String,
    pub entity_id: String,
    /// 1, 2, 3 ... within the entity's stream.
    pub stream_version: i32,
    /// Past-tense fact, e.g. `TaskEnqueued`.
    pub event_type: String,
    /// Version of the payload's schema.
    pub schema_version: i32,
    /// The fact, complete enough to fold read models from.
    pub payload: Value,
    /// created, updated, status_changed, linked, unlinked or deleted.
    pub action: String,
    /// human, agent or system.
    pub actor_kind: String,
    pub actor_id: String,
    /// The entity before (its GET shape, or `{"status": ...}` for status changes).
    #[oai(nullable)]
    pub before: Option<Value>,
    /// The entity after.
    #[oai(nullable)]
    pub after: Option<Value>,
    #[oai(nullable)]
    pub note: Option<String>,
    #[oai(nullable)]
    pub trace_id: Option<String>,
    #[oai(nullable)]
    pub correlation_id: Option<String>,
    #[oai(nullable)]
    pub causation_id: Option<String>,
    /// The idempotency key of the command that appended it.
    #[oai(nullable)]
    pub idempotency_key: Option<String>,
    /// Unique keys the event claimed (`idempotency:<key>`, `repo_slug:<slug>`, ...).
    pub unique_keys: Vec<String>,
    /// Hex SHA-256 of the previous event.
    pub prev_hash: String,
    /// Hex SHA-256 of the previous hash and this event's canonical bytes.
    pub hash: String,
}

/// A page of events.
#[derive(Debug, Object)]
pub struct AuditEventPage {
    pub events: Vec<Doc<AuditEvent>>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// The result of recomputing the hash chain.
#[derive(Debug, Object)]
pub struct VerifyResult {
    pub ok: bool,
    pub events_checked: i64,
    /// The first position that does not verify: altered, missing or out of place.
    #[oai(nullable)]
    pub first_bad_position: Option<i64>,
    #[oai(nullable)]
    pub reason: Option<String>,
    /// Hex hash of the last verified event; keep it elsewhere to detect truncation.
    pub head_hash: String,
}

/// An object a trace touched.
#[derive(Debug, Object)]
pub struct TraceObject {
    pub entity_kind: String,
    pub entity_id: String,
    pub events: i64,
    pub first_position: i64,
    pub last_position: i64,
    pub last_event_type: String,
}

/// A trace folder of a task in the trace.
#[derive(Debug, Object)]
pub struct TraceFolder {
    pub task_id: String,
    /// `file://` URI.
    pub uri: String,
    pub files: Vec<String>,
}

/// The causality timeline of one trace.
#[derive(Debug, Object)]
pub struct TraceTimeline {
    pub trace_id: String,
    /// Every event of the trace in position order (at most 10,000; see `truncated`).
    pub events: Vec<Doc<AuditEvent>>,
    /// More events exist; page through them with `GET /audit/events?trace_id=`.
    pub truncated: bool,
    pub objects: Vec<TraceObject>,
    pub trace_folders: Vec<TraceFolder>,
}

/// The events of one entity.
#[derive(Debug, Object)]
pub struct EntityHistory {
    pub entity_kind: String,
    pub entity_id: String,
    pub events: Vec<Doc<AuditEvent>>,
}

#[derive(ApiResponse)]
pub enum EventsResponse {
    /// A page of the events that match, and the cursor of the next.
    #[oai(status = 200)]
    Ok(Json<AuditEventPage>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
    /// An invalid filter or cursor.
    #[oai(status = 422)]
    Unprocessable(Json<UnprocessableEntity>),
    /// The database is unavailable for now (restarting, unreachable, or no connection free in time): `{"detail": "The
    /// database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command answered 503 may still have
    /// been recorded: an enqueue sent again with its `idempotency_key` is safe.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
}

#[derive(ApiResponse)]
pub enum VerifyResponse {
    /// The report; `ok` is false when the chain does not verify.
    #[oai(status = 200)]
    Ok(Json<VerifyResult>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
    /// The database is unavailable for now (restarting, unreachable, or no connection free in time): `{"detail": "The
    /// database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command answered 503 may still have
    /// been recorded: an enqueue sent again with its `idempotency_key` is safe.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
}

#[derive(ApiResponse)]
pub enum TraceResponse {
    /// The trace's events, the objects they touched and the trace folders of its tasks.
    #[oai(status = 200)]
    Ok(Json<Doc<TraceTimeline>>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
    /// No event carries this trace id.
    #[oai(status = 404)]
    NotFound(Json<ErrorDetail>),
    /// The database is unavailable for now (restarting, unreachable, or no connection free in time): `{"detail": "The
    /// database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command answered 503 may still have
    /// been recorded: an enqueue sent again with its `idempotency_key` is safe.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
}

#[derive(ApiResponse)]
pub enum HistoryResponse {
    /// The entity's events, in log order.
    #[oai(status = 200)]
    Ok(Json<EntityHistory>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
    /// No such entity (also for an id that is not a ULID).
    #[oai(status = 404)]
    NotFound(Json<ErrorDetail>),
    /// The database is unavailable for now (restarting, unreachable, or no connection free in time): `{"detail": "The
    /// database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command answered 503 may still have
    /// been recorded: an enqueue sent again with its `idempotency_key` is safe.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
}

/// Audit and forensics routes.
pub struct AuditApi;

fn query_error(field: &str, message: String) -> UnprocessableEntity {
    validation_error(&[domain::validation::ValidationError::new(
        vec!["query".into(), field.into()],
        "value_error",
        message,
    )])
}

fn parse_time(field: &str, text: Option<String>) -> Result<Option<chrono::DateTime<chrono::Utc>>, UnprocessableEntity> {
    text.map(|text| {
        chrono::DateTime::parse_from_rfc3339(&text)
            .map(|ts| ts.with_timezone(&chrono::Utc))
            .map_err(|_| query_error(field, format!("{text:?} is not an RFC 3339 timestamp")))
    })
    .transpose()
}

/// Parses `as_of` for the GET routes that take it.
pub fn parse_as_of(text: Option<String>) -> Result<Option<AsOf>, UnprocessableEntity> {
    text.map(|text| {
        AsOf::parse(&text).ok_or_else(|| {
            query_error("as_of", format!("{text:?} is neither a position (integer >= 0) nor an RFC 3339 timestamp"))
        })
    })
    .transpose()
}

async fn entity_history(app: &App, kind: EntityKind, id: &str) -> poem::Result<HistoryResponse> {
    let not_found = || HistoryResponse::NotFound(Json(ErrorDetail::new(format!("{kind} not found"))));
    if !crate::tasks::is_ulid(id) {
        return Ok(not_found());
    }
    match app::audit::history(app, &StreamId::new(kind, id)).await.map_err(|error| internal(&error))? {
        Some(events) => Ok(HistoryResponse::Ok(Json(EntityHistory {
            entity_kind: kind.as_str().to_owned(),
            entity_id: id.to_owned(),
            events: events.into_iter().map(Doc::new).collect(),
        }))),
        None => Ok(not_found()),
    }
}

#[OpenApi]
impl AuditApi {
    /// Events of the audit log in position order, filtered by any combination of trace, entity, actor,
    /// action, event type, time range (`since` inclusive, `until` exclusive) and position range, one page at a
    /// time: pass the previous page's `next_cursor` as `cursor`.
    #[oai(path = "/audit/events", method = "get", operation_id = "listAuditEvents", tag = "ApiTags::Audit")]
    #[allow(clippy::too_many_arguments)]
    async fn events(
        &self,
        app: Data<&App>,
        trace_id: Query<Option<String>>,
        /// Task, Repo, Issue, ContextPacket, ConstraintSnapshot, DoctrineRef, Run or Artifact.
        entity_kind: Query<Option<String>>,
        entity_id: Query<Option<String>>,
        /// human, agent or system.
        actor_kind: Query<Option<String>>,
        actor_id: Query<Option<String>>,
        /// created, updated, status_changed, linked, unlinked or deleted.
        action: Query<Option<String>>,
        event_type: Query<Option<String>>,
        /// RFC 3339; events at or after it.
        since: Query<Option<String>>,
        /// RFC 3339; events before it.
        until: Query<Option<String>>,
        /// Events at or after this position.
        #[oai(validator(minimum(value = "0")))]
        from_position: Query<Option<i64>>,
        /// Events at or before this position.
        #[oai(validator(minimum(value = "0")))]
        to_position: Query<Option<i64>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// 1..1000, default 100.
        #[oai(default = "default_limit", validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<i64>,
    ) -> poem::Result<EventsResponse> {
        if let Some(kind) = entity_kind.0.as_deref() {
            if EntityKind::parse(kind).is_none() {
                return Ok(EventsResponse::Unprocessable(Json(query_error(
                    "entity_kind",
                    format!("unknown entity kind {kind:?}"),
                ))));
            }
        }
        if let Some(kind) = actor_kind.0.as_deref() {
            if domain::event::ActorKind::parse(kind).is_none() {
                return Ok(EventsResponse::Unprocessable(Json(query_error(
                    "actor_kind",
                    format!("unknown actor kind {kind:?}"),
                ))));
            }
        }
        if let Some(action) = action.0.as_deref() {
            if domain::event::Action::parse(action).is_none() {
                return Ok(EventsResponse::Unprocessable(Json(query_error(
                    "action",
                    format!("unknown action {action:?}"),
                ))));
            }
        }
        let (since, until) = match (parse_time("since", since.0), parse_time("until", until.0)) {
            (Ok(since), Ok(until)) => (since, until),
            (Err(error), _) | (_, Err(error)) => return Ok(EventsResponse::Unprocessable(Json(error))),
        };
        let filter = store_filter(
            trace_id.0,
            entity_kind.0,
            entity_id.0,
            actor_kind.0,
            actor_id.0,
            action.0,
            event_type.0,
            since,
            until,
            from_position.0,
            to_position.0,
        );
        match app::audit::events(&app, &filter, cursor.0.as_deref(), limit.0).await.map_err(|error| internal(&error))? {
            Ok(page) => Ok(EventsResponse::Ok(Json(AuditEventPage {
                events: page.events.into_iter().map(Doc::new).collect(),
                next_cursor: page.next_cursor,
            }))),
            Err(InvalidCursor(cursor)) => Ok(EventsResponse::Unprocessable(Json(query_error(
                "cursor",
                format!("invalid cursor {cursor:?}: pass the next_cursor of a previous page"),
            )))),
        }
    }

    /// Recompute the hash chain over the whole log and name the first position that does not verify.
    #[oai(path = "/audit/verify", method = "get", operation_id = "verifyAuditLog", tag = "ApiTags::Audit")]
    async fn verify(&self, app: Data<&App>) -> poem::Result<VerifyResponse> {
        let report = app::audit::verify(&app).await.map_err(|error| internal(&error))?;
        Ok(VerifyResponse::Ok(Json(VerifyResult {
            ok: report.ok,
            events_checked: report.events_checked,
            first_bad_position: report.first_bad_position,
            reason: report.reason,
            head_hash: report.head_hash,
        })))
    }

    /// The causality timeline of one trace: every event in order, the objects it touched, and the trace
    /// folders of its tasks.
    #[oai(path = "/traces/:trace_id", method = "get", operation_id = "getTrace", tag = "ApiTags::Audit")]
    async fn trace(&self, app: Data<&App>, trace_id: Path<String>) -> poem::Result<TraceResponse> {
        match app::audit::trace(&app, &trace_id).await.map_err(|error| internal(&error))? {
            Some(timeline) => Ok(TraceResponse::Ok(Json(Doc::new(timeline)))),
            None => Ok(TraceResponse::NotFound(Json(ErrorDetail::new("Trace not found")))),
        }
    }

    /// The events of one task, in order.
    #[oai(path = "/tasks/:task_id/history", method = "get", operation_id = "getTaskHistory", tag = "ApiTags::Audit")]
    async fn task_history(&self, app: Data<&App>, task_id: Path<String>) -> poem::Result<HistoryResponse> {
        entity_history(&app, EntityKind::Task, &task_id).await
    }

    /// The events of one Repo, in order.
    #[oai(path = "/cwom/repos/:id/history", method = "get", operation_id = "getRepoHistory", tag = "ApiTags::Audit")]
    async fn repo_history(&self, app: Data<&App>, id: Path<String>) -> poem::Result<HistoryResponse> {
        entity_history(&app, EntityKind::Repo, &id).await
    }

    /// The events of one Issue, in order.
    #[oai(path = "/cwom/issues/:id/history", method = "get", operation_id = "getIssueHistory", tag = "ApiTags::Audit")]
    async fn issue_history(&self, app: Data<&App>, id: Path<String>) -> poem::Result<HistoryResponse> {
        entity_history(&app, EntityKind::Issue, &id).await
    }

    /// The events of one ContextPacket, in order.
    #[oai(
        path = "/cwom/context-packets/:id/history",
        method = "get",
        operation_id = "getContextPacketHistory",
        tag = "ApiTags::Audit"
    )]
    async fn context_packet_history(&self, app: Data<&App>, id: Path<String>) -> poem::Result<HistoryResponse> {
        entity_history(&app, EntityKind::ContextPacket, &id).await
    }

    /// The events of one ConstraintSnapshot, in order.
    #[oai(
        path = "/cwom/constraint-snapshots/:id/history",
        method = "get",
        operation_id = "getConstraintSnapshotHistory",
        tag = "ApiTags::Audit"
    )]
    async fn constraint_snapshot_history(&self, app: Data<&App>, id: Path<String>) -> poem::Result<HistoryResponse> {
        entity_history(&app, EntityKind::ConstraintSnapshot, &id).await
    }

    /// The events of one DoctrineRef, in order.
    #[oai(
        path = "/cwom/doctrine-refs/:id/history",
        method = "get",
        operation_id = "getDoctrineRefHistory",
        tag = "ApiTags::Audit"
    )]
    async fn doctrine_ref_history(&self, app: Data<&App>, id: Path<String>) -> poem::Result<HistoryResponse> {
        entity_history(&app, EntityKind::DoctrineRef, &id).await
    }

    /// The events of one Run, in order.
    #[oai(path = "/cwom/runs/:id/history", method = "get", operation_id = "getRunHistory", tag = "ApiTags::Audit")]
    async fn run_history(&self, app: Data<&App>, id: Path<String>) -> poem::Result<HistoryResponse> {
        entity_history(&app, EntityKind::Run, &id).await
    }

    /// The events of one Artifact, in order.
    #[oai(
        path = "/cwom/artifacts/:id/history",
        method = "get",
        operation_id = "getArtifactHistory",
        tag = "ApiTags::Audit"
    )]
    async fn artifact_history(&self, app: Data<&App>, id: Path<String>) -> poem::Result<HistoryResponse> {
        entity_history(&app, EntityKind::Artifact, &id).await
    }
}

#[allow(clippy::too_many_arguments)]
fn store_filter(
    trace_id: Option<String>,
    entity_kind: Option<String>,
    entity_id: Option<String>,
    actor_kind: Option<String>,
    actor_id: Option<String>,
    action: Option<String>,
    event_type: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    from_position: Option<i64>,
    to_position: Option<i64>,
) -> app::audit::AuditFilter {
    app::audit::AuditFilter {
        trace_id,
        entity_kind,
        entity_id,
        actor_kind,
        actor_id,
        action,
        event_type,
        since,
        until,
        from_position,
        to_position,
    }
}

fn default_limit() -> i64 {
    100
}
