//! CWOM use cases: create any of the seven core kinds (with its links), get and list them, change an Issue's
//! status, update a Run. Each command loads what its decision needs (the referenced objects from the `cwom`
//! read model, unique-key owners from the store, the object to change folded from its stream), decides in
//! `domain::cwom`, appends one command, and waits for the read models before answering.

use chrono::{DateTime, Utc};
use domain::cwom::{self, Loaded, NewObject, Rejection, Status};
use domain::event::{EntityKind, StreamId};
use serde_json::{Map, Value};
use store::{AppendError, ExpectedVersion, NewCommand};

use crate::App;

pub use projections::cwom::{
    ArtifactFilter, ConstraintSnapshotFilter, DoctrineRefFilter, IssueFilter, Page, RepoFilter, RunFilter,
};

/// How often a change re-decides after another command changed the same object meanwhile.
const MAX_CHANGE_ATTEMPTS: usize = 32;

/// Why a CWOM command did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CwomError {
    /// A rule of the domain refused it (missing reference, duplicate, unknown object).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The store refused the content (e.g. a NUL character).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now is representable")
}

/// Appends `events`, expecting `expected`, with the request's trace id.
async fn append(
    app: &App,
    events: Vec<domain::event::NewEvent>,
    expected: Vec<(StreamId, ExpectedVersion)>,
    trace_id: &str,
) -> Result<i64, AppendError> {
    let command = NewCommand {
        events,
        expected,
        versions_read: Vec::new(),
        idempotency_key: None,
        trace_id: Some(trace_id.to_owned()),
        correlation_id: Some(trace_id.to_owned()),
        causation_id: None,
        blobs: Vec::new(),
    };
    app.store().append(command).await.map(|appended| appended.last_position())
}

/// The objects among `references` that exist. A miss is checked again once the read model has caught up with
/// the log, so an object another process appended a moment ago is found.
async fn load_existing(app: &App, references: &[(EntityKind, String)]) -> anyhow::Result<cwom::Existing> {
    let mut found = projections::cwom::existing(app.pool(), references).await?;
    if references.iter().any(|reference| !found.contains(reference)) {
        let head = store::read::head_position(app.pool()).await?;
        app.wait_for(head).await?;
        found = projections::cwom::existing(app.pool(), references).await?;
    }
    let mut existing = cwom::Existing::default();
    for (kind, id) in found {
        existing.insert(kind, id);
    }
    Ok(existing)
}

/// Creates an object of `kind` from a validated, complete create body (see `domain::cwom::decide`), and
/// returns its GET shape as the read model shows it (links included).
pub async fn create(app: &App, kind: EntityKind, body: &Value, trace_id: &str) -> Result<Value, CwomError> {
    let id = ulid::Ulid::new().to_string();
    let references = cwom::references(kind, body);
    let existing = load_existing(app, &references).await?;
    let unique_key_taken = match cwom::unique_key(kind, body) {
        Some(key) => app.store().claim_owner(&key).await?.is_some(),
        None => false,
    };
    let loaded = Loaded { existing, unique_key_taken };
    let command = NewObject { id: &id, trace_id, now: now(), body };
    let events = cwom::create(kind, &command, &loaded)?;
    let stream = StreamId::new(kind, &id);
    let position = match append(app, events, vec![(stream, ExpectedVersion::NoStream)], trace_id).await {
        Ok(position) => position,
        // Another command claimed the slug or doctrine identity between the check and the append.
        Err(AppendError::UniqueKeyTaken { .. }) => {
            return Err(match cwom::duplicate(kind, body) {
                Some(rejection) => rejection.into(),
                None => anyhow::anyhow!("{kind} {id} claimed a unique key it has none of").into(),
            });
        }
        Err(error) => return Err(append_error(error)),
    };
    app.wait_for(position).await?;
    get(app, kind, &id).await?.ok_or_else(|| anyhow::anyhow!("{kind} {id} is missing from its read model").into())
}

fn append_error(error: AppendError) -> CwomError {
    match error {
        AppendError::Invalid(message) => CwomError::Invalid(message),
        other => CwomError::Internal(other.into()),
    }
}

/// An object's GET shape, or `None`.
pub async fn get(app: &App, kind: EntityKind, id: &str) -> anyhow::Result<Option<Value>> {
    projections::cwom::get(app.pool(), kind, id).await
}

/// The object as its stream folds to (the exact state the stream's version stands for), and that version.
async fn load(app: &App, kind: EntityKind, id: &str) -> anyhow::Result<(Option<Value>, i32)> {
    let events = store::read::read_stream(app.pool(), &StreamId::new(kind, id), None).await?;
    let version = events.last().map_or(0, |event| event.stream_version);
    let events: Vec<_> = events.into_iter().map(|event| app.upcasters().upcast(event)).collect();
    let document = cwom::fold(kind, events.iter().map(|event| (event.action, &event.payload)));
    Ok((document, version))
}

/// Loads the object, decides its change, and appends it expecting the version it was decided on; another
/// change in between makes it decide again on the new state.
async fn change(
    app: &App,
    kind: EntityKind,
    id: &str,
    trace_id: &str,
    decide: impl Fn(&Value) -> domain::event::NewEvent,
) -> Result<Value, CwomError> {
    for _ in 0..MAX_CHANGE_ATTEMPTS {
        let (Some(current), version) = load(app, kind, id).await? else {
            return Err(Rejection::NotFound(kind).into());
        };
        let event = decide(&current);
        let expected = vec![(StreamId::new(kind, id), ExpectedVersion::Exactly(version))];
        match append(app, vec![event], expected, trace_id).await {
            Ok(position) => {
                app.wait_for(position).await?;
                return get(app, kind, id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("{kind} {id} is missing from its read model").into());
            }
            Err(AppendError::Conflict { .. }) => continue,
            Err(error) => return Err(append_error(error)),
        }
    }
    Err(anyhow::anyhow!("{kind} {id} kept changing under this command; try again").into())
}

/// `PATCH /cwom/issues/{id}/status`: any status from any status, audited as `status_changed`.
pub async fn change_issue_status(
    app: &App,
    issue_id: &str,
    status: Status,
    trace_id: &str,
) -> Result<Value, CwomError> {
    change(app, EntityKind::Issue, issue_id, trace_id, |issue| {
        cwom::change_status(EntityKind::Issue, issue, status, now(), None)
    })
    .await
}

/// `PATCH /cwom/runs/{id}`: `update` holds the given fields (`status`, `telemetry`, `cost`, `outputs`,
/// `failure`), each replacing the old value wholesale.
pub async fn update_run(
    app: &App,
    run_id: &str,
    update: &Map<String, Value>,
    trace_id: &str,
) -> Result<Value, CwomError> {
    change(app, EntityKind::Run, run_id, trace_id, |run| cwom::update_run(run, update, now())).await
}

/// Repos, newest first.
pub async fn list_repos(app: &App, filter: &RepoFilter, page: Page) -> anyhow::Result<Vec<Value>> {
    projections::cwom::list_repos(app.pool(), filter, page).await
}

/// Issues, newest first.
pub async fn list_issues(app: &App, filter: &IssueFilter, page: Page) -> anyhow::Result<Vec<Value>> {
    projections::cwom::list_issues(app.pool(), filter, page).await
}

/// The ContextPackets made for an issue, newest first.
pub async fn list_context_packets(app: &App, issue_id: &str, page: Page) -> anyhow::Result<Vec<Value>> {
    projections::cwom::list_context_packets(app.pool(), issue_id, page).await
}

/// ConstraintSnapshots, newest first.
pub async fn list_constraint_snapshots(
    app: &App,
    filter: &ConstraintSnapshotFilter,
    page: Page,
) -> anyhow::Result<Vec<Value>> {
    projections::cwom::list_constraint_snapshots(app.pool(), filter, page).await
}

/// DoctrineRefs by namespace, then name.
pub async fn list_doctrine_refs(app: &App, filter: &DoctrineRefFilter, page: Page) -> anyhow::Result<Vec<Value>> {
    projections::cwom::list_doctrine_refs(app.pool(), filter, page).await
}

/// Runs, newest first.
pub async fn list_runs(app: &App, filter: &RunFilter, page: Page) -> anyhow::Result<Vec<Value>> {
    projections::cwom::list_runs(app.pool(), filter, page).await
}

/// Artifacts, newest first.
pub async fn list_artifacts(app: &App, filter: &ArtifactFilter, page: Page) -> anyhow::Result<Vec<Value>> {
    projections::cwom::list_artifacts(app.pool(), filter, page).await
}
