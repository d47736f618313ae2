//! Task use cases: enqueue (with its CWOM objects), get, list.

use chrono::{DateTime, Utc};
use domain::cwom::repo_slug_key;
use domain::event::{EntityKind, StreamId};
use domain::task::lifecycle::{self, idempotency_key_claim, EnqueueTask};
use domain::task::{evaluate, parse_task_spec, task_to_cwom, CwomIds, PolicyError, TaskCwom};
use domain::validation::ValidationError;
use projections::tasks::TaskFilter;
use serde_json::Value;
use store::{AppendError, ExpectedVersion, NewCommand};

use crate::App;

/// How often enqueue re-decides after losing a race to create the same Repo.
const MAX_ENQUEUE_ATTEMPTS: usize = 5;

/// `POST /tasks/enqueue` as the use case sees it.
pub struct EnqueueRequest {
    pub body: Value,
    pub create_cwom: bool,
    pub trace_id: String,
}

/// What enqueue did.
#[derive(Debug)]
pub enum EnqueueOutcome {
    /// The task was created and queued.
    Created { task: Value, cwom: Option<CwomIds>, position: i64 },
    /// The idempotency key belongs to an earlier task; nothing was written.
    Duplicate { task: Value },
}

/// Why enqueue refused.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("invalid task spec")]
    Invalid(Vec<ValidationError>),
    #[error("{0}")]
    Policy(PolicyError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Validates, applies the policy gate, and appends the task, its CWOM objects and links in one command.
pub async fn enqueue(app: &App, request: EnqueueRequest) -> Result<EnqueueOutcome, EnqueueError> {
    let spec = parse_task_spec(&request.body).map_err(EnqueueError::Invalid)?;
    // The policy runs before the idempotency lookup, as in the original: a now-disallowed repo is a 422.
    let spec = evaluate(&spec, &app.config().policy).map_err(EnqueueError::Policy)?;
    // A repeated idempotency key is found by the append itself (it checks every key under the append lock),
    // so a new task pays no round trip for the lookup; a repeat pays one batch and writes nothing.
    for _ in 0..MAX_ENQUEUE_ATTEMPTS {
        let task_id = ulid::Ulid::new().to_string();
        let now = now();
        let cwom: Option<TaskCwom> = if request.create_cwom {
            let existing_repo =
                app.store().claim_owner(&repo_slug_key(&spec.target.repo)).await?.map(|(repo, _)| repo.id);
            let fresh_ids = CwomIds {
                repo_id: ulid::Ulid::new().to_string(),
                constraint_snapshot_id: ulid::Ulid::new().to_string(),
                issue_id: ulid::Ulid::new().to_string(),
                context_packet_id: ulid::Ulid::new().to_string(),
            };
            Some(task_to_cwom(&spec, &request.trace_id, now, fresh_ids, existing_repo.as_deref()))
        } else {
            None
        };
        let decision =
            EnqueueTask { spec: &spec, task_id: &task_id, trace_id: &request.trace_id, now, cwom: cwom.as_ref() };
        let command = NewCommand {
            events: lifecycle::enqueue(&decision),
            expected: vec![(StreamId::new(EntityKind::Task, &task_id), ExpectedVersion::NoStream)],
            versions_read: Vec::new(),
            idempotency_key: spec.idempotency_key.clone(),
            trace_id: Some(request.trace_id.clone()),
            correlation_id: Some(request.trace_id.clone()),
            causation_id: None,
            blobs: Vec::new(),
        };
        match app.store().append(command).await {
            Ok(appended) => {
                let position = appended.last_position();
                app.wait_for_appended(&appended).await?;
                // The task as the read model now holds it, folded from the events rather than read back.
                let task = projections::tasks::new_task_document(&appended.events, &task_id)?
                    .ok_or_else(|| anyhow::anyhow!("the command for task {task_id} did not create it"))?;
                return Ok(EnqueueOutcome::Created { task, cwom: cwom.map(|cwom| cwom.ids), position });
            }
            Err(AppendError::DuplicateIdempotencyKey { key, .. }) => {
                let task = existing_task_for_key(app, &key)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("idempotency key {key:?} is claimed but has no task"))?;
                return Ok(EnqueueOutcome::Duplicate { task });
            }
            // Another command created this Repo meanwhile: decide again, reusing it.
            Err(AppendError::UniqueKeyTaken { .. }) => continue,
            Err(AppendError::Invalid(message)) => {
                return Err(EnqueueError::Invalid(vec![ValidationError::new(
                    vec!["body".into()],
                    "value_error",
                    message,
                )]))
            }
            Err(error) => return Err(EnqueueError::Internal(error.into())),
        }
    }
    Err(EnqueueError::Internal(anyhow::anyhow!("enqueue kept losing races to create its Repo; try again")))
}

async fn existing_task_for_key(app: &App, key: &str) -> anyhow::Result<Option<Value>> {
    let Some((stream, position)) = app.store().claim_owner(&idempotency_key_claim(key)).await? else {
        return Ok(None);
    };
    app.wait_for(position).await?;
    projections::tasks::get_task(app.pool(), &stream.id).await
}

/// A task's GET shape, or `None`.
pub async fn get(app: &App, task_id: &str) -> anyhow::Result<Option<Value>> {
    projections::tasks::get_task(app.pool(), task_id).await
}

/// A task's GET shape as JSON text, or `None`.
pub async fn get_text(app: &App, task_id: &str) -> anyhow::Result<Option<String>> {
    projections::tasks::get_task_text(app.pool(), task_id).await
}

/// Tasks matching `filter`, newest first.
pub async fn list(app: &App, filter: &TaskFilter, limit: i64, offset: i64) -> anyhow::Result<Vec<Value>> {
    projections::tasks::list_tasks(app.pool(), filter, limit, offset).await
}

/// What `POST /tasks/{id}/cancel` did.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The task is now `cancelled` (a running attempt's worker stops its handler within about a second).
    Cancelled {
        task: Value,
        position: i64,
    },
    NotFound,
    /// The task had already completed, failed or been cancelled; nothing was written.
    AlreadyFinished {
        status: &'static str,
    },
}

/// Cancels a queued or running task. The events carry the request's trace id and are correlated with the
/// task's own trace id.
pub async fn cancel(app: &App, task_id: &str, trace_id: &str) -> anyhow::Result<CancelOutcome> {
    let actor = domain::event::Actor::system("task-cancel");
    let mut state = crate::worker::load_state(app, task_id).await?;
    let decided = crate::worker::append_decision(app, &mut state, Some(trace_id), |state| {
        domain::task::run::decide_cancel(
            state,
            &domain::task::run::Cancel { now: now(), actor: &actor, reason: Some("cancelled through the API") },
        )
    })
    .await?;
    match decided {
        Ok(appended) => {
            let position = appended.last_position();
            app.wait_for_appended(&appended).await?;
            let task = get(app, task_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("task {task_id} is missing from its read model"))?;
            Ok(CancelOutcome::Cancelled { task, position })
        }
        Err(domain::task::run::Refusal::Terminal(status)) => {
            Ok(CancelOutcome::AlreadyFinished { status: status.as_str() })
        }
        Err(domain::task::run::Refusal::NotFound) => Ok(CancelOutcome::NotFound),
        Err(refusal) => Err(anyhow::anyhow!("cancel refused unexpectedly: {refusal}")),
    }
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now is representable")
}
