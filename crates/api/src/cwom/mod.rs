//! CWOM routes (`/cwom`, reference §3.3): create, get and list the seven core kinds, change an Issue's status,
//! update a Run, and refuse changes to immutable objects. Thin: parse, call one `app::cwom` function, map the
//! outcome to a per-operation response enum, so every status code and error body appears in the spec.

mod model;

use app::cwom::{
    ArtifactFilter, ConstraintSnapshotFilter, CwomError, DoctrineRefFilter, IssueFilter, Page, RepoFilter, RunFilter,
};
use app::App;
use domain::cwom::Rejection;
use domain::event::EntityKind;
use domain::validation::ValidationError;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::{MaybeUndefined, ToJSON};
use poem_openapi::{ApiResponse, OpenApi, Union};
use serde_json::{Map, Value};

use crate::body::ValidJson;
use crate::doc::Doc;
use crate::error::{internal, validation_error, ErrorDetail, HttpValidationError, UnprocessableEntity};
use crate::middleware::TraceId;
use crate::tasks::is_ulid;
use crate::ApiTags;

use model::*;

/// A 422 of a CWOM command: the body does not match its schema (a list), or an object it references does not
/// exist (`{"detail": "Referenced Issue '<id>' does not exist"}`).
#[derive(Debug, Clone, Union)]
#[oai(one_of)]
pub enum CwomUnprocessable {
    Validation(HttpValidationError),
    MissingReference(ErrorDetail),
}

fn invalid_body(message: String) -> CwomUnprocessable {
    let errors = [ValidationError::new(vec!["body".into()], "value_error", message)];
    match validation_error(&errors) {
        UnprocessableEntity::Validation(errors) => CwomUnprocessable::Validation(errors),
        UnprocessableEntity::Policy(_) => unreachable!("validation_error makes validation errors"),
    }
}

/// What a create did, before it is mapped to the operation's response.
enum Created {
    Ok(Value),
    Conflict(ErrorDetail),
    Unprocessable(CwomUnprocessable),
}

/// Creates an object of `kind` from its parsed create body.
async fn create(app: &App, kind: EntityKind, body: &impl ToJSON, trace: &TraceId) -> poem::Result<Created> {
    let body = body.to_json().unwrap_or_default();
    match app::cwom::create(app, kind, &body, &trace.0).await {
        Ok(document) => Ok(Created::Ok(document)),
        Err(CwomError::Rejected(
            rejection @ (Rejection::DuplicateSlug { .. } | Rejection::DuplicateDoctrine { .. }),
        )) => Ok(Created::Conflict(ErrorDetail::new(rejection.to_string()))),
        Err(CwomError::Rejected(rejection)) => {
            Ok(Created::Unprocessable(CwomUnprocessable::MissingReference(ErrorDetail::new(rejection.to_string()))))
        }
        Err(CwomError::Invalid(message)) => Ok(Created::Unprocessable(invalid_body(message))),
        Err(CwomError::Internal(error)) => Err(internal(&error)),
    }
}

/// A conflict from a kind without unique keys: cannot happen.
fn unexpected(detail: ErrorDetail) -> poem::Error {
    internal(&anyhow::anyhow!("unexpected conflict: {}", detail.detail))
}

fn not_found(kind: EntityKind) -> ErrorDetail {
    ErrorDetail::new(format!("{kind} not found"))
}

/// The outcome of reading one object.
enum Lookup {
    Found(Value),
    /// An unknown id, or one that is not a ULID (never looked up).
    Missing,
    BadAsOf(UnprocessableEntity),
}

/// An object's GET shape, live or (with `as_of`) as it was at a position or time, folded from its events.
async fn get(app: &App, kind: EntityKind, id: &str, as_of: Option<String>) -> poem::Result<Lookup> {
    let as_of = match crate::audit::parse_as_of(as_of) {
        Ok(as_of) => as_of,
        Err(error) => return Ok(Lookup::BadAsOf(error)),
    };
    if !is_ulid(id) {
        return Ok(Lookup::Missing);
    }
    let document = match as_of {
        Some(as_of) => app::audit::cwom_as_of(app, kind, id, as_of).await,
        None => app::cwom::get(app, kind, id).await,
    };
    Ok(document.map_err(|error| internal(&error))?.map_or(Lookup::Missing, Lookup::Found))
}

/// The wire spelling of an enum value.
fn text<T: ToJSON>(value: Option<T>) -> Option<String> {
    value.and_then(|value| value.to_json()?.as_str().map(str::to_owned))
}

fn docs<T>(documents: anyhow::Result<Vec<Value>>) -> poem::Result<Json<Vec<Doc<T>>>> {
    documents.map(|documents| Json(documents.into_iter().map(Doc::new).collect())).map_err(|error| internal(&error))
}

fn default_limit() -> i64 {
    100
}

fn success() -> String {
    "success".into()
}

fn immutable(message: &str, object_id: String) -> ImmutableResponse {
    ImmutableResponse::MethodNotAllowed(Json(ImmutabilityViolationError {
        detail: ImmutabilityViolation { error: "IMMUTABILITY_VIOLATION".into(), message: message.into(), object_id },
    }))
}

const CONTEXT_PACKET_IMMUTABLE: &str =
    "ContextPackets are immutable. Create a new ContextPacket with an incremented version instead.";
const CONSTRAINT_SNAPSHOT_IMMUTABLE: &str =
    "ConstraintSnapshots are immutable. Create a new ConstraintSnapshot instead.";

// ---------------------------------------------------------------------------------------------------------
// Responses.

/// A get by id: the object, 401, 404 (`$not_found`: the response's description), 422 for `as_of`, 503.
macro_rules! get_response {
    ($name:ident, $ty:ty, $ok:literal, $not_found:literal) => {
        #[derive(ApiResponse)]
        pub enum $name {
            #[doc = $ok]
            #[oai(status = 200)]
            Ok(Json<Doc<$ty>>),
            /// A key is configured and the request did not carry it.
            #[oai(status = 401)]
            Unauthorized(Json<ErrorDetail>),
            #[doc = $not_found]
            #[oai(status = 404)]
            NotFound(Json<ErrorDetail>),
            /// An invalid `as_of`.
            #[oai(status = 422)]
            Unprocessable(Json<UnprocessableEntity>),
            /// The database is unavailable for now (restarting, unreachable, or no connection free in time):
            /// `{"detail": "The database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command
            /// answered 503 may still have been recorded: an enqueue sent again with its `idempotency_key` is safe.
            #[oai(status = 503)]
            Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
        }
    };
}

get_response!(
    GetRepoResponse,
    Repo,
    "The Repo.",
    "No such Repo (also for an id that is not a ULID): `{\"detail\": \"Repo not found\"}`."
);
get_response!(
    GetIssueResponse,
    Issue,
    "The Issue.",
    "No such Issue (also for an id that is not a ULID): `{\"detail\": \"Issue not found\"}`."
);
get_response!(
    GetContextPacketResponse,
    ContextPacket,
    "The ContextPacket.",
    "No such ContextPacket (also for an id that is not a ULID): `{\"detail\": \"ContextPacket not found\"}`."
);
get_response!(
    GetConstraintSnapshotResponse,
    ConstraintSnapshot,
    "The ConstraintSnapshot.",
    "No such ConstraintSnapshot (also for an id that is not a ULID): `{\"detail\": \"ConstraintSnapshot not found\"}`."
);
get_response!(
    GetDoctrineRefResponse,
    DoctrineRef,
    "The DoctrineRef.",
    "No such DoctrineRef (also for an id that is not a ULID): `{\"detail\": \"DoctrineRef not found\"}`."
);
get_response!(
    GetRunResponse,
    Run,
    "The Run.",
    "No such Run (also for an id that is not a ULID): `{\"detail\": \"Run not found\"}`."
);
get_response!(
    GetArtifactResponse,
    Artifact,
    "The Artifact.",
    "No such Artifact (also for an id that is not a ULID): `{\"detail\": \"Artifact not found\"}`."
);

macro_rules! list_response {
    ($name:ident, $ty:ty, $what:literal) => {
        #[derive(ApiResponse)]
        pub enum $name {
            #[doc = $what]
            #[oai(status = 200)]
            Ok(Json<Vec<Doc<$ty>>>),
            /// A key is configured and the request did not carry it.
            #[oai(status = 401)]
            Unauthorized(Json<ErrorDetail>),
            /// An invalid query parameter (`limit` outside 1..1000, a negative `offset`, an unknown enum value).
            #[oai(status = 422)]
            Unprocessable(Json<HttpValidationError>),
            /// The database is unavailable for now (restarting, unreachable, or no connection free in time):
            /// `{"detail": "The database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command
            /// answered 503 may still have been recorded: an enqueue sent again with its `idempotency_key` is safe.
            #[oai(status = 503)]
            Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
        }
    };
}

list_response!(ListReposResponse, Repo, "Repos, newest first.");
list_response!(ListIssuesResponse, Issue, "Issues, newest first.");
list_response!(
    ListContextPacketsResponse,
    ContextPacket,
    "The issue's ContextPackets, newest first (empty for an unknown issue)."
);
list_response!(ListConstraintSnapshotsResponse, ConstraintSnapshot, "ConstraintSnapshots, newest first.");
list_response!(ListDoctrineRefsResponse, DoctrineRef, "DoctrineRefs by namespace, then name.");
list_response!(ListRunsResponse, Run, "Runs, newest first.");
list_response!(ListArtifactsResponse, Artifact, "Artifacts, newest first (empty for an unknown run or issue).");

/// Create a Repo.
#[derive(ApiResponse)]
pub enum CreateRepoResponse {
    /// The Repo was created.
    #[oai(status = 201)]
    Created(Json<RepoResult>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
    /// Another Repo has this slug: `{"detail": "Repo with slug '<slug>' already exists"}`.
    #[oai(status = 409)]
    Conflict(Json<ErrorDetail>),
    /// The body is larger than the limit (default 1 MiB).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorDetail>),
    /// The body does not match the schema (unknown fields included).
    #[oai(status = 422)]
    Unprocessable(Json<CwomUnprocessable>),
    /// The database is unavailable for now (restarting, unreachable, or no connection free in time): `{"detail": "The
    /// database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command answered 503 may still have
    /// been recorded: an enqueue sent again with its `idempotency_key` is safe.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
}

/// Create an object that references others.
macro_rules! create_response {
    ($name:ident, $result:ty, $created:literal, $refs:literal) => {
        #[derive(ApiResponse)]
        pub enum $name {
            #[doc = $created]
            #[oai(status = 201)]
            Created(Json<$result>),
            /// A key is configured and the request did not carry it.
            #[oai(status = 401)]
            Unauthorized(Json<ErrorDetail>),
            /// The body is larger than the limit (default 1 MiB).
            #[oai(status = 413)]
            PayloadTooLarge(Json<ErrorDetail>),
            #[doc = $refs]
            #[oai(status = 422)]
            Unprocessable(Json<CwomUnprocessable>),
            /// The database is unavailable for now (restarting, unreachable, or no connection free in time):
            /// `{"detail": "The database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command
            /// answered 503 may still have been recorded: an enqueue sent again with its `idempotency_key` is safe.
            #[oai(status = 503)]
            Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
        }
    };
}

create_response!(
    CreateIssueResponse,
    IssueResult,
    "The Issue was created.",
    "The body does not match the schema (unknown fields included), or its Repo does not exist: \
     `{\"detail\": \"Referenced Repo '<id>' does not exist\"}`."
);
create_response!(
    CreateContextPacketResponse,
    ContextPacketResult,
    "The ContextPacket was created.",
    "The body does not match the schema (unknown fields included), or its Issue does not exist: \
     `{\"detail\": \"Referenced Issue '<id>' does not exist\"}`."
);
create_response!(
    CreateConstraintSnapshotResponse,
    ConstraintSnapshotResult,
    "The ConstraintSnapshot was created.",
    "The body does not match the schema (unknown fields included)."
);
create_response!(
    CreateRunResponse,
    RunResult,
    "The Run was created.",
    "The body does not match the schema (unknown fields included), or its Issue (checked first) or its \
     Repo does not exist: `{\"detail\": \"Referenced Issue '<id>' does not \
     exist\"}`."
);
create_response!(
    CreateArtifactResponse,
    ArtifactResult,
    "The Artifact was created.",
    "The body does not match the schema (unknown fields included), or its Run (checked first) or its \
     Issue does not exist: `{\"detail\": \"Referenced Run '<id>' does not \
     exist\"}`."
);

/// Create a DoctrineRef.
#[derive(ApiResponse)]
pub enum CreateDoctrineRefResponse {
    /// The DoctrineRef was created.
    #[oai(status = 201)]
    Created(Json<DoctrineRefResult>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
    /// Another DoctrineRef has this namespace, name and version:
    /// `{"detail": "DoctrineRef '<namespace>/<name>@<version>' already exists"}`.
    #[oai(status = 409)]
    Conflict(Json<ErrorDetail>),
    /// The body is larger than the limit (default 1 MiB).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorDetail>),
    /// The body does not match the schema (unknown fields included).
    #[oai(status = 422)]
    Unprocessable(Json<CwomUnprocessable>),
    /// The database is unavailable for now (restarting, unreachable, or no connection free in time): `{"detail": "The
    /// database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command answered 503 may still have
    /// been recorded: an enqueue sent again with its `idempotency_key` is safe.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
}

#[derive(ApiResponse)]
pub enum UpdateIssueStatusResponse {
    /// The status was changed (and audited as `status_changed`).
    #[oai(status = 200)]
    Ok(Json<IssueResult>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
    /// No such Issue: `{"detail": "Issue not found"}`.
    #[oai(status = 404)]
    NotFound(Json<ErrorDetail>),
    /// `status` is missing or not a status.
    #[oai(status = 422)]
    Unprocessable(Json<HttpValidationError>),
    /// The database is unavailable for now (restarting, unreachable, or no connection free in time): `{"detail": "The
    /// database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command answered 503 may still have
    /// been recorded: an enqueue sent again with its `idempotency_key` is safe.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
}

#[derive(ApiResponse)]
pub enum UpdateRunResponse {
    /// The Run was changed (audited as `status_changed` when its status changed, else `updated`).
    #[oai(status = 200)]
    Ok(Json<RunResult>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
    /// No such Run: `{"detail": "Run not found"}`.
    #[oai(status = 404)]
    NotFound(Json<ErrorDetail>),
    /// The body is larger than the limit (default 1 MiB).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorDetail>),
    /// The body does not match the schema (unknown fields included).
    #[oai(status = 422)]
    Unprocessable(Json<CwomUnprocessable>),
    /// The database is unavailable for now (restarting, unreachable, or no connection free in time): `{"detail": "The
    /// database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command answered 503 may still have
    /// been recorded: an enqueue sent again with its `idempotency_key` is safe.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
}

#[derive(ApiResponse)]
pub enum ImmutableResponse {
    /// Always: the object is immutable (whether or not it exists).
    #[oai(status = 405)]
    MethodNotAllowed(Json<ImmutabilityViolationError>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
}

// ---------------------------------------------------------------------------------------------------------
// Routes.

/// CWOM routes.
pub struct CwomApi;

#[OpenApi(prefix_path = "/cwom", tag = "ApiTags::Cwom")]
impl CwomApi {
    /// Create a Repo. The slug is unique (409 otherwise) and never changes.
    #[oai(path = "/repos", method = "post", operation_id = "createRepo")]
    async fn create_repo(
        &self,
        app: Data<&App>,
        trace: Data<&TraceId>,
        /// Trace id for every event of this request: 1..128 printable characters; generated when absent.
        #[oai(name = "X-Trace-Id", validator(min_length = 1, max_length = 128, pattern = r"^[\x20-\x7E]+$"))]
        _trace_header: Header<Option<String>>,
        body: ValidJson<RepoCreate>,
    ) -> poem::Result<CreateRepoResponse> {
        Ok(match create(&app, EntityKind::Repo, &body.0, &trace).await? {
            Created::Ok(repo) => {
                CreateRepoResponse::Created(Json(RepoResult { status: success(), repo: Doc::new(repo) }))
            }
            Created::Conflict(detail) => CreateRepoResponse::Conflict(Json(detail)),
            Created::Unprocessable(detail) => CreateRepoResponse::Unprocessable(Json(detail)),
        })
    }

    /// One Repo by id.
    #[oai(path = "/repos/:repo_id", method = "get", operation_id = "getRepo")]
    async fn get_repo(
        &self,
        app: Data<&App>,
        repo_id: Path<String>,
        /// Forensics: the object as it was at this audit-log position (an integer) or time (RFC 3339), folded
        /// from its events. 404 if it did not exist yet.
        as_of: Query<Option<String>>,
    ) -> poem::Result<GetRepoResponse> {
        Ok(match get(&app, EntityKind::Repo, &repo_id, as_of.0).await? {
            Lookup::Found(repo) => GetRepoResponse::Ok(Json(Doc::new(repo))),
            Lookup::Missing => GetRepoResponse::NotFound(Json(not_found(EntityKind::Repo))),
            Lookup::BadAsOf(error) => GetRepoResponse::Unprocessable(Json(error)),
        })
    }

    /// Repos, newest first, filtered by exact matches.
    #[oai(path = "/repos", method = "get", operation_id = "listRepos")]
    async fn list_repos(
        &self,
        app: Data<&App>,
        visibility: Query<Option<Visibility>>,
        /// 1..1000, default 100.
        #[oai(default = "default_limit", validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<i64>,
        /// 0 or more, default 0.
        #[oai(default, validator(minimum(value = "0")))]
        offset: Query<i64>,
    ) -> poem::Result<ListReposResponse> {
        let filter = RepoFilter { visibility: text(visibility.0) };
        let page = Page { limit: limit.0, offset: offset.0 };
        Ok(ListReposResponse::Ok(docs(app::cwom::list_repos(&app, &filter, page).await)?))
    }

    /// Create an Issue in an existing Repo. Doctrine refs, constraint snapshots and context packets listed in
    /// the body that exist are linked to it (each link an event); the others are ignored.
    #[oai(path = "/issues", method = "post", operation_id = "createIssue")]
    async fn create_issue(
        &self,
        app: Data<&App>,
        trace: Data<&TraceId>,
        /// Trace id for every event of this request: 1..128 printable characters; generated when absent.
        #[oai(name = "X-Trace-Id", validator(min_length = 1, max_length = 128, pattern = r"^[\x20-\x7E]+$"))]
        _trace_header: Header<Option<String>>,
        body: ValidJson<IssueCreate>,
    ) -> poem::Result<CreateIssueResponse> {
        Ok(match create(&app, EntityKind::Issue, &body.0, &trace).await? {
            Created::Ok(issue) => {
                CreateIssueResponse::Created(Json(IssueResult { status: success(), issue: Doc::new(issue) }))
            }
            Created::Conflict(detail) => return Err(unexpected(detail)),
            Created::Unprocessable(detail) => CreateIssueResponse::Unprocessable(Json(detail)),
        })
    }

    /// One Issue by id, with the doctrine refs, constraint snapshots and context packets linked to it.
    #[oai(path = "/issues/:issue_id", method = "get", operation_id = "getIssue")]
    async fn get_issue(
        &self,
        app: Data<&App>,
        issue_id: Path<String>,
        /// Forensics: the object as it was at this audit-log position (an integer) or time (RFC 3339), folded
        /// from its events. 404 if it did not exist yet.
        as_of: Query<Option<String>>,
    ) -> poem::Result<GetIssueResponse> {
        Ok(match get(&app, EntityKind::Issue, &issue_id, as_of.0).await? {
            Lookup::Found(issue) => GetIssueResponse::Ok(Json(Doc::new(issue))),
            Lookup::Missing => GetIssueResponse::NotFound(Json(not_found(EntityKind::Issue))),
            Lookup::BadAsOf(error) => GetIssueResponse::Unprocessable(Json(error)),
        })
    }

    /// Issues, newest first, filtered by exact matches.
    #[allow(clippy::too_many_arguments)]
    #[oai(path = "/issues", method = "get", operation_id = "listIssues")]
    async fn list_issues(
        &self,
        app: Data<&App>,
        /// The Repo's id, exact match.
        repo_id: Query<Option<String>>,
        status: Query<Option<Status>>,
        /// The issue type.
        #[oai(name = "type")]
        issue_type: Query<Option<IssueType>>,
        priority: Query<Option<Priority>>,
        /// 1..1000, default 100.
        #[oai(default = "default_limit", validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<i64>,
        /// 0 or more, default 0.
        #[oai(default, validator(minimum(value = "0")))]
        offset: Query<i64>,
    ) -> poem::Result<ListIssuesResponse> {
        let filter = IssueFilter {
            repo_id: repo_id.0,
            status: text(status.0),
            issue_type: text(issue_type.0),
            priority: text(priority.0),
        };
        let page = Page { limit: limit.0, offset: offset.0 };
        Ok(ListIssuesResponse::Ok(docs(app::cwom::list_issues(&app, &filter, page).await)?))
    }

    /// Set an Issue's status. Any status may follow any other; the change is audited as `status_changed` with
    /// the old and new status.
    #[oai(path = "/issues/:issue_id/status", method = "patch", operation_id = "updateIssueStatus")]
    async fn update_issue_status(
        &self,
        app: Data<&App>,
        trace: Data<&TraceId>,
        /// Trace id for every event of this request: 1..128 printable characters; generated when absent.
        #[oai(name = "X-Trace-Id", validator(min_length = 1, max_length = 128, pattern = r"^[\x20-\x7E]+$"))]
        _trace_header: Header<Option<String>>,
        issue_id: Path<String>,
        /// The new status.
        status: Query<Status>,
    ) -> poem::Result<UpdateIssueStatusResponse> {
        if !is_ulid(&issue_id) {
            return Ok(UpdateIssueStatusResponse::NotFound(Json(not_found(EntityKind::Issue))));
        }
        match app::cwom::change_issue_status(&app, &issue_id, status.0.to_domain(), &trace.0 .0).await {
            Ok(issue) => {
                Ok(UpdateIssueStatusResponse::Ok(Json(IssueResult { status: success(), issue: Doc::new(issue) })))
            }
            Err(CwomError::Rejected(rejection)) => {
                Ok(UpdateIssueStatusResponse::NotFound(Json(ErrorDetail::new(rejection.to_string()))))
            }
            Err(CwomError::Invalid(message)) => Err(internal(&anyhow::anyhow!(message))),
            Err(CwomError::Internal(error)) => Err(internal(&error)),
        }
    }

    /// The ContextPackets made for an Issue, newest first; empty for an unknown issue.
    #[oai(path = "/issues/:issue_id/context-packets", method = "get", operation_id = "listIssueContextPackets")]
    async fn list_issue_context_packets(
        &self,
        app: Data<&App>,
        issue_id: Path<String>,
        /// 1..1000, default 100.
        #[oai(default = "default_limit", validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<i64>,
        /// 0 or more, default 0.
        #[oai(default, validator(minimum(value = "0")))]
        offset: Query<i64>,
    ) -> poem::Result<ListContextPacketsResponse> {
        if !is_ulid(&issue_id) {
            return Ok(ListContextPacketsResponse::Ok(Json(Vec::new())));
        }
        let page = Page { limit: limit.0, offset: offset.0 };
        Ok(ListContextPacketsResponse::Ok(docs(app::cwom::list_context_packets(&app, &issue_id, page).await)?))
    }

    /// The Artifacts produced for an Issue, newest first; empty for an unknown issue.
    #[oai(path = "/issues/:issue_id/artifacts", method = "get", operation_id = "listIssueArtifacts")]
    async fn list_issue_artifacts(
        &self,
        app: Data<&App>,
        issue_id: Path<String>,
        /// The artifact type.
        #[oai(name = "type")]
        artifact_type: Query<Option<ArtifactType>>,
        /// 1..1000, default 100.
        #[oai(default = "default_limit", validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<i64>,
        /// 0 or more, default 0.
        #[oai(default, validator(minimum(value = "0")))]
        offset: Query<i64>,
    ) -> poem::Result<ListArtifactsResponse> {
        if !is_ulid(&issue_id) {
            return Ok(ListArtifactsResponse::Ok(Json(Vec::new())));
        }
        let filter = ArtifactFilter { run_id: None, issue_id: Some(issue_id.0), artifact_type: text(artifact_type.0) };
        let page = Page { limit: limit.0, offset: offset.0 };
        Ok(ListArtifactsResponse::Ok(docs(app::cwom::list_artifacts(&app, &filter, page).await)?))
    }

    /// Create a ContextPacket for an existing Issue. It is immutable; the Issue collects it (a `linked` event),
    /// and the doctrine refs it lists that exist are linked to it.
    #[oai(path = "/context-packets", method = "post", operation_id = "createContextPacket")]
    async fn create_context_packet(
        &self,
        app: Data<&App>,
        trace: Data<&TraceId>,
        /// Trace id for every event of this request: 1..128 printable characters; generated when absent.
        #[oai(name = "X-Trace-Id", validator(min_length = 1, max_length = 128, pattern = r"^[\x20-\x7E]+$"))]
        _trace_header: Header<Option<String>>,
        body: ValidJson<ContextPacketCreate>,
    ) -> poem::Result<CreateContextPacketResponse> {
        Ok(match create(&app, EntityKind::ContextPacket, &body.0, &trace).await? {
            Created::Ok(packet) => CreateContextPacketResponse::Created(Json(ContextPacketResult {
                status: success(),
                context_packet: Doc::new(packet),
            })),
            Created::Conflict(detail) => return Err(unexpected(detail)),
            Created::Unprocessable(detail) => CreateContextPacketResponse::Unprocessable(Json(detail)),
        })
    }

    /// One ContextPacket by id.
    #[oai(path = "/context-packets/:context_packet_id", method = "get", operation_id = "getContextPacket")]
    async fn get_context_packet(
        &self,
        app: Data<&App>,
        context_packet_id: Path<String>,
        /// Forensics: the object as it was at this audit-log position (an integer) or time (RFC 3339), folded
        /// from its events. 404 if it did not exist yet.
        as_of: Query<Option<String>>,
    ) -> poem::Result<GetContextPacketResponse> {
        Ok(match get(&app, EntityKind::ContextPacket, &context_packet_id, as_of.0).await? {
            Lookup::Found(packet) => GetContextPacketResponse::Ok(Json(Doc::new(packet))),
            Lookup::Missing => GetContextPacketResponse::NotFound(Json(not_found(EntityKind::ContextPacket))),
            Lookup::BadAsOf(error) => GetContextPacketResponse::Unprocessable(Json(error)),
        })
    }

    /// Always 405: ContextPackets are immutable; create a new one with an incremented version instead.
    #[oai(path = "/context-packets/:context_packet_id", method = "put", operation_id = "replaceContextPacket")]
    async fn replace_context_packet(&self, context_packet_id: Path<String>) -> ImmutableResponse {
        immutable(CONTEXT_PACKET_IMMUTABLE, context_packet_id.0)
    }

    /// Always 405: ContextPackets are immutable; create a new one with an incremented version instead.
    #[oai(path = "/context-packets/:context_packet_id", method = "patch", operation_id = "patchContextPacket")]
    async fn patch_context_packet(&self, context_packet_id: Path<String>) -> ImmutableResponse {
        immutable(CONTEXT_PACKET_IMMUTABLE, context_packet_id.0)
    }

    /// Capture a ConstraintSnapshot. It is immutable; `captured_at` is the server's time.
    #[oai(path = "/constraint-snapshots", method = "post", operation_id = "createConstraintSnapshot")]
    async fn create_constraint_snapshot(
        &self,
        app: Data<&App>,
        trace: Data<&TraceId>,
        /// Trace id for every event of this request: 1..128 printable characters; generated when absent.
        #[oai(name = "X-Trace-Id", validator(min_length = 1, max_length = 128, pattern = r"^[\x20-\x7E]+$"))]
        _trace_header: Header<Option<String>>,
        body: ValidJson<ConstraintSnapshotCreate>,
    ) -> poem::Result<CreateConstraintSnapshotResponse> {
        Ok(match create(&app, EntityKind::ConstraintSnapshot, &body.0, &trace).await? {
            Created::Ok(snapshot) => CreateConstraintSnapshotResponse::Created(Json(ConstraintSnapshotResult {
                status: success(),
                constraint_snapshot: Doc::new(snapshot),
            })),
            Created::Conflict(detail) => return Err(unexpected(detail)),
            Created::Unprocessable(detail) => CreateConstraintSnapshotResponse::Unprocessable(Json(detail)),
        })
    }

    /// One ConstraintSnapshot by id.
    #[oai(
        path = "/constraint-snapshots/:constraint_snapshot_id",
        method = "get",
        operation_id = "getConstraintSnapshot"
    )]
    async fn get_constraint_snapshot(
        &self,
        app: Data<&App>,
        constraint_snapshot_id: Path<String>,
        /// Forensics: the object as it was at this audit-log position (an integer) or time (RFC 3339), folded
        /// from its events. 404 if it did not exist yet.
        as_of: Query<Option<String>>,
    ) -> poem::Result<GetConstraintSnapshotResponse> {
        Ok(match get(&app, EntityKind::ConstraintSnapshot, &constraint_snapshot_id, as_of.0).await? {
            Lookup::Found(snapshot) => GetConstraintSnapshotResponse::Ok(Json(Doc::new(snapshot))),
            Lookup::Missing => GetConstraintSnapshotResponse::NotFound(Json(not_found(EntityKind::ConstraintSnapshot))),
            Lookup::BadAsOf(error) => GetConstraintSnapshotResponse::Unprocessable(Json(error)),
        })
    }

    /// ConstraintSnapshots, newest first, filtered by exact matches.
    #[oai(path = "/constraint-snapshots", method = "get", operation_id = "listConstraintSnapshots")]
    async fn list_constraint_snapshots(
        &self,
        app: Data<&App>,
        scope: Query<Option<ConstraintScope>>,
        /// The owner's `actor_id`, exact match.
        owner_id: Query<Option<String>>,
        /// 1..1000, default 100.
        #[oai(default = "default_limit", validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<i64>,
        /// 0 or more, default 0.
        #[oai(default, validator(minimum(value = "0")))]
        offset: Query<i64>,
    ) -> poem::Result<ListConstraintSnapshotsResponse> {
        let filter = ConstraintSnapshotFilter { scope: text(scope.0), owner_id: owner_id.0 };
        let page = Page { limit: limit.0, offset: offset.0 };
        Ok(ListConstraintSnapshotsResponse::Ok(docs(app::cwom::list_constraint_snapshots(&app, &filter, page).await)?))
    }

    /// Always 405: ConstraintSnapshots are immutable; capture a new one instead.
    #[oai(
        path = "/constraint-snapshots/:constraint_snapshot_id",
        method = "put",
        operation_id = "replaceConstraintSnapshot"
    )]
    async fn replace_constraint_snapshot(&self, constraint_snapshot_id: Path<String>) -> ImmutableResponse {
        immutable(CONSTRAINT_SNAPSHOT_IMMUTABLE, constraint_snapshot_id.0)
    }

    /// Always 405: ConstraintSnapshots are immutable; capture a new one instead.
    #[oai(
        path = "/constraint-snapshots/:constraint_snapshot_id",
        method = "patch",
        operation_id = "patchConstraintSnapshot"
    )]
    async fn patch_constraint_snapshot(&self, constraint_snapshot_id: Path<String>) -> ImmutableResponse {
        immutable(CONSTRAINT_SNAPSHOT_IMMUTABLE, constraint_snapshot_id.0)
    }

    /// Create a DoctrineRef. Its namespace, name and version are unique together (409 otherwise).
    #[oai(path = "/doctrine-refs", method = "post", operation_id = "createDoctrineRef")]
    async fn create_doctrine_ref(
        &self,
        app: Data<&App>,
        trace: Data<&TraceId>,
        /// Trace id for every event of this request: 1..128 printable characters; generated when absent.
        #[oai(name = "X-Trace-Id", validator(min_length = 1, max_length = 128, pattern = r"^[\x20-\x7E]+$"))]
        _trace_header: Header<Option<String>>,
        body: ValidJson<DoctrineRefCreate>,
    ) -> poem::Result<CreateDoctrineRefResponse> {
        Ok(match create(&app, EntityKind::DoctrineRef, &body.0, &trace).await? {
            Created::Ok(doctrine) => CreateDoctrineRefResponse::Created(Json(DoctrineRefResult {
                status: success(),
                doctrine_ref: Doc::new(doctrine),
            })),
            Created::Conflict(detail) => CreateDoctrineRefResponse::Conflict(Json(detail)),
            Created::Unprocessable(detail) => CreateDoctrineRefResponse::Unprocessable(Json(detail)),
        })
    }

    /// One DoctrineRef by id.
    #[oai(path = "/doctrine-refs/:doctrine_ref_id", method = "get", operation_id = "getDoctrineRef")]
    async fn get_doctrine_ref(
        &self,
        app: Data<&App>,
        doctrine_ref_id: Path<String>,
        /// Forensics: the object as it was at this audit-log position (an integer) or time (RFC 3339), folded
        /// from its events. 404 if it did not exist yet.
        as_of: Query<Option<String>>,
    ) -> poem::Result<GetDoctrineRefResponse> {
        Ok(match get(&app, EntityKind::DoctrineRef, &doctrine_ref_id, as_of.0).await? {
            Lookup::Found(doctrine) => GetDoctrineRefResponse::Ok(Json(Doc::new(doctrine))),
            Lookup::Missing => GetDoctrineRefResponse::NotFound(Json(not_found(EntityKind::DoctrineRef))),
            Lookup::BadAsOf(error) => GetDoctrineRefResponse::Unprocessable(Json(error)),
        })
    }

    /// DoctrineRefs by namespace, then name, filtered by exact matches.
    #[oai(path = "/doctrine-refs", method = "get", operation_id = "listDoctrineRefs")]
    async fn list_doctrine_refs(
        &self,
        app: Data<&App>,
        /// Exact match.
        namespace: Query<Option<String>>,
        /// The doctrine type.
        #[oai(name = "type")]
        doctrine_type: Query<Option<DoctrineType>>,
        priority: Query<Option<DoctrinePriority>>,
        /// 1..1000, default 100.
        #[oai(default = "default_limit", validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<i64>,
        /// 0 or more, default 0.
        #[oai(default, validator(minimum(value = "0")))]
        offset: Query<i64>,
    ) -> poem::Result<ListDoctrineRefsResponse> {
        let filter = DoctrineRefFilter {
            namespace: namespace.0,
            doctrine_type: text(doctrine_type.0),
            priority: text(priority.0),
        };
        let page = Page { limit: limit.0, offset: offset.0 };
        Ok(ListDoctrineRefsResponse::Ok(docs(app::cwom::list_doctrine_refs(&app, &filter, page).await)?))
    }

    /// Plan a Run for an existing Issue in an existing Repo; it starts `planned`. The context packets and
    /// doctrine refs of its inputs that exist are linked to it.
    #[oai(path = "/runs", method = "post", operation_id = "createRun")]
    async fn create_run(
        &self,
        app: Data<&App>,
        trace: Data<&TraceId>,
        /// Trace id for every event of this request: 1..128 printable characters; generated when absent.
        #[oai(name = "X-Trace-Id", validator(min_length = 1, max_length = 128, pattern = r"^[\x20-\x7E]+$"))]
        _trace_header: Header<Option<String>>,
        body: ValidJson<RunCreate>,
    ) -> poem::Result<CreateRunResponse> {
        Ok(match create(&app, EntityKind::Run, &body.0, &trace).await? {
            Created::Ok(run) => CreateRunResponse::Created(Json(RunResult { status: success(), run: Doc::new(run) })),
            Created::Conflict(detail) => return Err(unexpected(detail)),
            Created::Unprocessable(detail) => CreateRunResponse::Unprocessable(Json(detail)),
        })
    }

    /// One Run by id.
    #[oai(path = "/runs/:run_id", method = "get", operation_id = "getRun")]
    async fn get_run(
        &self,
        app: Data<&App>,
        run_id: Path<String>,
        /// Forensics: the object as it was at this audit-log position (an integer) or time (RFC 3339), folded
        /// from its events. 404 if it did not exist yet.
        as_of: Query<Option<String>>,
    ) -> poem::Result<GetRunResponse> {
        Ok(match get(&app, EntityKind::Run, &run_id, as_of.0).await? {
            Lookup::Found(run) => GetRunResponse::Ok(Json(Doc::new(run))),
            Lookup::Missing => GetRunResponse::NotFound(Json(not_found(EntityKind::Run))),
            Lookup::BadAsOf(error) => GetRunResponse::Unprocessable(Json(error)),
        })
    }

    /// Runs, newest first, filtered by exact matches.
    #[allow(clippy::too_many_arguments)]
    #[oai(path = "/runs", method = "get", operation_id = "listRuns")]
    async fn list_runs(
        &self,
        app: Data<&App>,
        /// The Issue's id, exact match.
        issue_id: Query<Option<String>>,
        /// The Repo's id, exact match.
        repo_id: Query<Option<String>>,
        status: Query<Option<Status>>,
        mode: Query<Option<RunMode>>,
        /// 1..1000, default 100.
        #[oai(default = "default_limit", validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<i64>,
        /// 0 or more, default 0.
        #[oai(default, validator(minimum(value = "0")))]
        offset: Query<i64>,
    ) -> poem::Result<ListRunsResponse> {
        let filter = RunFilter { issue_id: issue_id.0, repo_id: repo_id.0, status: text(status.0), mode: text(mode.0) };
        let page = Page { limit: limit.0, offset: offset.0 };
        Ok(ListRunsResponse::Ok(docs(app::cwom::list_runs(&app, &filter, page).await)?))
    }

    /// Change a Run: each given field (`status`, `telemetry`, `cost`, `outputs`, `failure`) replaces the old
    /// value wholesale. Audited as `status_changed` when the status changes, else as `updated`.
    #[oai(path = "/runs/:run_id", method = "patch", operation_id = "updateRun")]
    async fn update_run(
        &self,
        app: Data<&App>,
        trace: Data<&TraceId>,
        /// Trace id for every event of this request: 1..128 printable characters; generated when absent.
        #[oai(name = "X-Trace-Id", validator(min_length = 1, max_length = 128, pattern = r"^[\x20-\x7E]+$"))]
        _trace_header: Header<Option<String>>,
        run_id: Path<String>,
        body: ValidJson<RunUpdate>,
    ) -> poem::Result<UpdateRunResponse> {
        if !is_ulid(&run_id) {
            return Ok(UpdateRunResponse::NotFound(Json(not_found(EntityKind::Run))));
        }
        let RunUpdate { status, telemetry, cost, outputs, failure } = body.0;
        let mut update = Map::new();
        let mut given = |field: &str, value: Option<Value>| {
            if let Some(value) = value {
                update.insert(field.to_owned(), value);
            }
        };
        given("status", status.and_then(|status| status.to_json()));
        given("telemetry", telemetry.and_then(|telemetry| telemetry.to_json()));
        given("cost", cost.and_then(|cost| cost.to_json()));
        given("outputs", outputs.and_then(|outputs| outputs.to_json()));
        given(
            "failure",
            match failure {
                MaybeUndefined::Undefined => None,
                MaybeUndefined::Null => Some(Value::Null),
                MaybeUndefined::Value(failure) => failure.to_json(),
            },
        );
        match app::cwom::update_run(&app, &run_id, &update, &trace.0 .0).await {
            Ok(run) => Ok(UpdateRunResponse::Ok(Json(RunResult { status: success(), run: Doc::new(run) }))),
            Err(CwomError::Rejected(rejection)) => {
                Ok(UpdateRunResponse::NotFound(Json(ErrorDetail::new(rejection.to_string()))))
            }
            Err(CwomError::Invalid(message)) => Ok(UpdateRunResponse::Unprocessable(Json(invalid_body(message)))),
            Err(CwomError::Internal(error)) => Err(internal(&error)),
        }
    }

    /// The Artifacts a Run produced, newest first; empty for an unknown run.
    #[oai(path = "/runs/:run_id/artifacts", method = "get", operation_id = "listRunArtifacts")]
    async fn list_run_artifacts(
        &self,
        app: Data<&App>,
        run_id: Path<String>,
        /// The artifact type.
        #[oai(name = "type")]
        artifact_type: Query<Option<ArtifactType>>,
        /// 1..1000, default 100.
        #[oai(default = "default_limit", validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<i64>,
        /// 0 or more, default 0.
        #[oai(default, validator(minimum(value = "0")))]
        offset: Query<i64>,
    ) -> poem::Result<ListArtifactsResponse> {
        if !is_ulid(&run_id) {
            return Ok(ListArtifactsResponse::Ok(Json(Vec::new())));
        }
        let filter = ArtifactFilter { run_id: Some(run_id.0), issue_id: None, artifact_type: text(artifact_type.0) };
        let page = Page { limit: limit.0, offset: offset.0 };
        Ok(ListArtifactsResponse::Ok(docs(app::cwom::list_artifacts(&app, &filter, page).await)?))
    }

    /// Record an Artifact produced by an existing Run for an existing Issue.
    #[oai(path = "/artifacts", method = "post", operation_id = "createArtifact")]
    async fn create_artifact(
        &self,
        app: Data<&App>,
        trace: Data<&TraceId>,
        /// Trace id for every event of this request: 1..128 printable characters; generated when absent.
        #[oai(name = "X-Trace-Id", validator(min_length = 1, max_length = 128, pattern = r"^[\x20-\x7E]+$"))]
        _trace_header: Header<Option<String>>,
        body: ValidJson<ArtifactCreate>,
    ) -> poem::Result<CreateArtifactResponse> {
        Ok(match create(&app, EntityKind::Artifact, &body.0, &trace).await? {
            Created::Ok(artifact) => CreateArtifactResponse::Created(Json(ArtifactResult {
                status: success(),
                artifact: Doc::new(artifact),
            })),
            Created::Conflict(detail) => return Err(unexpected(detail)),
            Created::Unprocessable(detail) => CreateArtifactResponse::Unprocessable(Json(detail)),
        })
    }

    /// One Artifact by id.
    #[oai(path = "/artifacts/:artifact_id", method = "get", operation_id = "getArtifact")]
    async fn get_artifact(
        &self,
        app: Data<&App>,
        artifact_id: Path<String>,
        /// Forensics: the object as it was at this audit-log position (an integer) or time (RFC 3339), folded
        /// from its events. 404 if it did not exist yet.
        as_of: Query<Option<String>>,
    ) -> poem::Result<GetArtifactResponse> {
        Ok(match get(&app, EntityKind::Artifact, &artifact_id, as_of.0).await? {
            Lookup::Found(artifact) => GetArtifactResponse::Ok(Json(Doc::new(artifact))),
            Lookup::Missing => GetArtifactResponse::NotFound(Json(not_found(EntityKind::Artifact))),
            Lookup::BadAsOf(error) => GetArtifactResponse::Unprocessable(Json(error)),
        })
    }
}
