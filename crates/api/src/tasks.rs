//! Task routes: enqueue, get, list. Thin: parse, call one `app` function, map the outcome.

use std::collections::BTreeMap;

use app::tasks::{CancelOutcome, EnqueueError, EnqueueOutcome, EnqueueRequest};
use app::{App, TaskFilter};
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde_json::Value;

use crate::body::RawJson;
use crate::doc::{Doc, JsonText};
use crate::error::{
    internal, validation_error, ErrorDetail, PolicyViolation, PolicyViolationError, UnprocessableEntity,
};
use crate::middleware::TraceId;
use crate::ApiTags;

/// Who asked for a task: `human`, `agent` or `system`.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ActorKind {
    Human,
    Agent,
    System,
}

/// The kind of work.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum Operation {
    CodeChange,
    Docs,
    Analysis,
    Ops,
}

/// A task's status. `pending` exists only inside the enqueue command and is never returned.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum TaskStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

/// The requester.
#[derive(Debug, Clone, Object)]
pub struct RequestedBy {
    pub kind: ActorKind,
    /// 1..128 characters.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub id: String,
    /// 1..256 characters.
    #[oai(nullable, validator(min_length = 1, max_length = 256))]
    pub label: Option<String>,
}

/// Where the work happens.
#[derive(Debug, Clone, Object)]
pub struct Target {
    /// Repository, `owner/name`. Normalised: trimmed, one trailing `.git` removed, lowercased.
    #[oai(validator(min_length = 1, max_length = 256))]
    pub repo: String,
    /// Git ref; default `main`.
    #[oai(rename = "ref", default = "default_ref", validator(min_length = 1, max_length = 256))]
    pub git_ref: String,
    /// Path within the repository; default `""` (the root).
    #[oai(default, validator(max_length = 512))]
    pub path: String,
}

fn default_ref() -> String {
    "main".into()
}

fn default_time_budget() -> u32 {
    900
}

/// Limits the work must respect. In V1 the policy gate rejects `allow_network` and `allow_secrets`.
#[derive(Debug, Clone, Object)]
pub struct Constraints {
    /// Seconds, 30..86400; default 900.
    #[oai(default = "default_time_budget", validator(minimum(value = "30"), maximum(value = "86400")))]
    pub time_budget_seconds: u32,
    #[oai(default)]
    pub allow_network: bool,
    #[oai(default)]
    pub allow_secrets: bool,
}

/// TaskSpec v1 (`TaskCreateV1`). Also accepted: the legacy form, with `type` for `operation`, `payload` for
/// `inputs` and `target.repository` for `target.repo`; unknown top-level fields are accepted and dropped.
#[derive(Debug, Clone, Object)]
#[oai(rename = "TaskCreateV1")]
pub struct TaskCreate {
    /// Always `"1.0"`.
    #[oai(default = "default_version", validator(pattern = r"^1\.0$"))]
    pub version: String,
    /// Makes the request safe to retry: a repeat gets 409 with the original task. 1..256 characters.
    #[oai(validator(min_length = 1, max_length = 256))]
    pub idempotency_key: Option<String>,
    pub requested_by: RequestedBy,
    /// 5..4000 characters after trimming.
    #[oai(validator(min_length = 5, max_length = 4000))]
    pub objective: String,
    pub operation: Operation,
    pub target: Target,
    pub constraints: Option<Constraints>,
    /// Free-form inputs for the handler.
    #[oai(default)]
    pub inputs: BTreeMap<String, Value>,
    #[oai(default)]
    pub acceptance_criteria: Vec<String>,
    #[oai(default)]
    pub evidence_requirements: Vec<String>,
    #[oai(default)]
    pub metadata: BTreeMap<String, Value>,
}

fn default_version() -> String {
    "1.0".into()
}

/// A task as stored: the normalised spec plus its lifecycle.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Task")]
pub struct TaskDocument {
    /// ULID.
    pub task_id: String,
    pub version: String,
    #[oai(nullable)]
    pub idempotency_key: Option<String>,
    pub requested_by: RequestedBy,
    /// Trimmed.
    pub objective: String,
    pub operation: Operation,
    pub target: Target,
    pub constraints: Constraints,
    pub inputs: BTreeMap<String, Value>,
    pub acceptance_criteria: Vec<String>,
    pub evidence_requirements: Vec<String>,
    pub metadata: BTreeMap<String, Value>,
    pub status: TaskStatus,
    /// RFC 3339.
    pub created_at: String,
    #[oai(nullable)]
    pub queued_at: Option<String>,
    #[oai(nullable)]
    pub started_at: Option<String>,
    #[oai(nullable)]
    pub completed_at: Option<String>,
    /// The worker that holds or held the task.
    #[oai(nullable)]
    pub assigned_to: Option<String>,
    /// The handler's outputs.
    #[oai(nullable)]
    pub result: Option<Value>,
    #[oai(nullable)]
    pub error: Option<String>,
    /// `file://` URI of the trace folder.
    #[oai(nullable)]
    pub trace_path: Option<String>,
    #[oai(nullable)]
    pub cwom_issue_id: Option<String>,
    #[oai(nullable)]
    pub trace_id: Option<String>,
}

/// The CWOM objects created with a task.
#[derive(Debug, Clone, Object)]
pub struct CwomRefs {
    pub repo_id: String,
    pub issue_id: String,
    pub context_packet_id: String,
    pub constraint_snapshot_id: String,
}

/// 201: the task was created and queued.
#[derive(Debug, Object)]
pub struct EnqueueCreated {
    /// `success`.
    pub status: String,
    pub task_id: String,
    pub trace_id: String,
    pub message: String,
    pub task: Doc<TaskDocument>,
    /// Present when `create_cwom` is true.
    #[oai(skip_serializing_if_is_none)]
    pub cwom: Option<CwomRefs>,
    /// Position of the command's last event in the audit log.
    pub position: i64,
}

/// 409: the idempotency key belongs to an earlier task; nothing was created.
#[derive(Debug, Object)]
pub struct EnqueueConflict {
    /// `conflict`.
    pub status: String,
    pub task_id: String,
    /// The original task's trace id.
    pub trace_id: String,
    pub message: String,
    pub task: Doc<TaskDocument>,
}

#[derive(ApiResponse)]
pub enum EnqueueResponse {
    /// The task was created and queued (with its CWOM objects when `create_cwom` is true).
    #[oai(status = 201)]
    Created(Json<EnqueueCreated>),
    /// A task with this `idempotency_key` exists; it is returned and nothing is created.
    #[oai(status = 409)]
    Conflict(Json<EnqueueConflict>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
    /// The body is larger than the limit (default 1 MiB).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorDetail>),
    /// The body does not match TaskSpec v1, or the policy gate rejected it.
    #[oai(status = 422)]
    Unprocessable(Json<UnprocessableEntity>),
    /// The database is unavailable for now (restarting, unreachable, or no connection free in time): `{"detail": "The
    /// database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command answered 503 may still have
    /// been recorded: an enqueue sent again with its `idempotency_key` is safe.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
}

#[derive(ApiResponse)]
pub enum GetTaskResponse {
    /// The task (as it was at `as_of`, when given).
    #[oai(status = 200)]
    Ok(JsonText<TaskDocument>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
    /// No such task (also for an id that is not a ULID).
    #[oai(status = 404)]
    NotFound(Json<ErrorDetail>),
    /// An invalid `as_of`.
    #[oai(status = 422)]
    Unprocessable(Json<UnprocessableEntity>),
    /// The database is unavailable for now (restarting, unreachable, or no connection free in time): `{"detail": "The
    /// database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command answered 503 may still have
    /// been recorded: an enqueue sent again with its `idempotency_key` is safe.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
}

#[derive(ApiResponse)]
pub enum ListTasksResponse {
    /// Tasks, newest first.
    #[oai(status = 200)]
    Ok(Json<Vec<Doc<TaskDocument>>>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
    /// An invalid query parameter.
    #[oai(status = 422)]
    Unprocessable(Json<UnprocessableEntity>),
    /// The database is unavailable for now (restarting, unreachable, or no connection free in time): `{"detail": "The
    /// database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command answered 503 may still have
    /// been recorded: an enqueue sent again with its `idempotency_key` is safe.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
}

#[derive(ApiResponse)]
pub enum CancelTaskResponse {
    /// The task is cancelled; a running attempt's handler is stopped by its worker within about a second.
    #[oai(status = 200)]
    Ok(Json<Doc<TaskDocument>>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
    /// No such task (also for an id that is not a ULID).
    #[oai(status = 404)]
    NotFound(Json<ErrorDetail>),
    /// The task already completed, failed or was cancelled; nothing changed.
    #[oai(status = 409)]
    Conflict(Json<ErrorDetail>),
    /// An invalid `X-Trace-Id` header (1..128 printable characters).
    #[oai(status = 422)]
    Unprocessable(Json<UnprocessableEntity>),
    /// The database is unavailable for now (restarting, unreachable, or no connection free in time): `{"detail": "The
    /// database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command answered 503 may still have
    /// been recorded: an enqueue sent again with its `idempotency_key` is safe.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
}

/// Whether `text` is a ULID (26 Crockford base32 characters). Anything else is a 404 that never reaches storage.
pub fn is_ulid(text: &str) -> bool {
    text.len() == 26 && ulid::Ulid::from_string(text).is_ok()
}

/// Task routes.
pub struct TasksApi;

#[OpenApi]
impl TasksApi {
    /// Submit a task. The body is TaskSpec v1; the policy gate admits or rejects it; an idempotency key makes
    /// retries safe. With `create_cwom` (default true) the Repo (get-or-create by normalised slug),
    /// ConstraintSnapshot, Issue and ContextPacket are created in the same transaction as the task.
    #[oai(path = "/tasks/enqueue", method = "post", operation_id = "enqueueTask", tag = "ApiTags::Tasks")]
    async fn enqueue(
        &self,
        app: Data<&App>,
        trace: Data<&TraceId>,
        /// Create the task's CWOM objects (default true).
        create_cwom: Query<Option<bool>>,
        /// Trace id for every event of this request: 1..128 printable characters; generated when absent.
        #[oai(name = "X-Trace-Id")]
        _trace_header: Header<Option<String>>,
        body: RawJson<TaskCreate>,
    ) -> poem::Result<EnqueueResponse> {
        let request = EnqueueRequest {
            body: body.value,
            create_cwom: create_cwom.0.unwrap_or(true),
            trace_id: trace.0 .0.clone(),
        };
        match app::tasks::enqueue(&app, request).await {
            Ok(EnqueueOutcome::Created { task, cwom, position }) => {
                Ok(EnqueueResponse::Created(Json(EnqueueCreated {
                    status: "success".into(),
                    task_id: task["task_id"].as_str().unwrap_or_default().to_owned(),
                    trace_id: trace.0 .0.clone(),
                    message: "Task enqueued successfully".into(),
                    cwom: cwom.map(|ids| CwomRefs {
                        repo_id: ids.repo_id,
                        issue_id: ids.issue_id,
                        context_packet_id: ids.context_packet_id,
                        constraint_snapshot_id: ids.constraint_snapshot_id,
                    }),
                    task: Doc::new(task),
                    position,
                })))
            }
            Ok(EnqueueOutcome::Duplicate { task }) => Ok(EnqueueResponse::Conflict(Json(EnqueueConflict {
                status: "conflict".into(),
                task_id: task["task_id"].as_str().unwrap_or_default().to_owned(),
                trace_id: task["trace_id"].as_str().unwrap_or_default().to_owned(),
                message: "Task with this idempotency_key already exists".into(),
                task: Doc::new(task),
            }))),
            Err(EnqueueError::Invalid(errors)) => Ok(EnqueueResponse::Unprocessable(Json(validation_error(&errors)))),
            Err(EnqueueError::Policy(policy)) => {
                Ok(EnqueueResponse::Unprocessable(Json(UnprocessableEntity::Policy(PolicyViolationError {
                    detail: PolicyViolation {
                        error: "policy_violation".into(),
                        code: policy.code.to_owned(),
                        message: policy.message,
                    },
                }))))
            }
            Err(EnqueueError::Internal(error)) => Err(internal(&error)),
        }
    }

    /// One task by id.
    #[oai(path = "/tasks/:task_id", method = "get", operation_id = "getTask", tag = "ApiTags::Tasks")]
    async fn get(
        &self,
        app: Data<&App>,
        task_id: Path<String>,
        /// Forensics: the task as it was at this audit-log position (an integer) or time (RFC 3339), folded
        /// from its events. 404 if it did not exist yet.
        as_of: Query<Option<String>>,
    ) -> poem::Result<GetTaskResponse> {
        let as_of = match crate::audit::parse_as_of(as_of.0) {
            Ok(as_of) => as_of,
            Err(error) => return Ok(GetTaskResponse::Unprocessable(Json(error))),
        };
        if !is_ulid(&task_id) {
            return Ok(GetTaskResponse::NotFound(Json(ErrorDetail::new("Task not found"))));
        }
        let task = match as_of {
            Some(as_of) => app::audit::task_as_of(&app, &task_id, as_of)
                .await
                .map(|task| task.map(|task| JsonText::from_value(&task))),
            None => app::tasks::get_text(&app, &task_id).await.map(|task| task.map(JsonText::new)),
        };
        match task.map_err(|error| internal(&error))? {
            Some(task) => Ok(GetTaskResponse::Ok(task)),
            None => Ok(GetTaskResponse::NotFound(Json(ErrorDetail::new("Task not found")))),
        }
    }

    /// Cancel a task: a queued task is cancelled at once and never runs; a running task is cancelled too, and its
    /// worker stops the handler (it notices within about a second). The events carry this request's trace id.
    #[oai(path = "/tasks/:task_id/cancel", method = "post", operation_id = "cancelTask", tag = "ApiTags::Tasks")]
    async fn cancel(
        &self,
        app: Data<&App>,
        trace: Data<&TraceId>,
        task_id: Path<String>,
        /// Trace id for every event of this request: 1..128 printable characters; generated when absent.
        #[oai(name = "X-Trace-Id")]
        _trace_header: Header<Option<String>>,
    ) -> poem::Result<CancelTaskResponse> {
        if !is_ulid(&task_id) {
            return Ok(CancelTaskResponse::NotFound(Json(ErrorDetail::new("Task not found"))));
        }
        match app::tasks::cancel(&app, &task_id, &trace.0 .0).await.map_err(|error| internal(&error))? {
            CancelOutcome::Cancelled { task, .. } => Ok(CancelTaskResponse::Ok(Json(Doc::new(task)))),
            CancelOutcome::NotFound => Ok(CancelTaskResponse::NotFound(Json(ErrorDetail::new("Task not found")))),
            CancelOutcome::AlreadyFinished { status } => Ok(CancelTaskResponse::Conflict(Json(ErrorDetail::new(
                format!("Task is already {status} and cannot be cancelled"),
            )))),
        }
    }

    /// Tasks, newest first, filtered by exact matches.
    #[oai(path = "/tasks", method = "get", operation_id = "listTasks", tag = "ApiTags::Tasks")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        app: Data<&App>,
        status: Query<Option<TaskStatus>>,
        operation: Query<Option<Operation>>,
        requester_kind: Query<Option<ActorKind>>,
        /// Normalised repository, exact match.
        target_repo: Query<Option<String>>,
        /// 1..1000, default 100.
        #[oai(default = "default_limit", validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<i64>,
        /// 0 or more, default 0.
        #[oai(default, validator(minimum(value = "0")))]
        offset: Query<i64>,
    ) -> poem::Result<ListTasksResponse> {
        let filter = TaskFilter {
            status: status.0.map(enum_text),
            operation: operation.0.map(enum_text),
            requester_kind: requester_kind.0.map(enum_text),
            target_repo: target_repo.0,
        };
        let tasks = app::tasks::list(&app, &filter, limit.0, offset.0).await.map_err(|error| internal(&error))?;
        Ok(ListTasksResponse::Ok(Json(tasks.into_iter().map(Doc::new).collect())))
    }
}

/// The wire spelling of an enum value.
fn enum_text<T: ToJSON>(value: T) -> String {
    value.to_json().and_then(|json| json.as_str().map(str::to_owned)).unwrap_or_default()
}

fn default_limit() -> i64 {
    100
}
