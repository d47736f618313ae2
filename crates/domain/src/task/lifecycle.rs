//! The task lifecycle: its statuses, its stored events, and the decision that enqueues a task.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::cwom::{self, events as cwom_events};
use crate::event::{Action, Actor, ActorKind, EntityKind, EventData, NewEvent, StreamId};
use crate::task::{CwomIds, TaskCwom, TaskSpec};

/// Stored event type names of task streams. Never rename one.
pub mod events {
    /// The task exists (status `pending`, only ever inside the enqueue command).
    pub const TASK_CREATED: &str = "TaskCreated";
    /// The task is `queued`: the fact workers wake on.
    pub const TASK_ENQUEUED: &str = "TaskEnqueued";

    // The execution lifecycle (see `task::run`): every event below carries the attempt it belongs to.
    /// A worker claimed the task: a new attempt with a lease (`queued` → `running`).
    pub const TASK_CLAIMED: &str = "TaskClaimed";
    /// The attempt's handler started, with the exact input it was given.
    pub const RUN_STARTED: &str = "RunStarted";
    /// The worker holding the attempt renewed its lease (heartbeat).
    pub const TASK_LEASE_RENEWED: &str = "TaskLeaseRenewed";
    /// The attempt produced a file, stored content-addressed (SHA-256).
    pub const ARTIFACT_PRODUCED: &str = "ArtifactProduced";
    /// The attempt succeeded and the task is `completed`.
    pub const TASK_COMPLETED: &str = "TaskCompleted";
    /// The attempt ran out of its time budget and was stopped; a retry or a failure follows in the same command.
    pub const TASK_TIMED_OUT: &str = "TaskTimedOut";
    /// The attempt failed and another one will run at `retry_at` (`running` → `queued`).
    pub const TASK_RETRY_SCHEDULED: &str = "TaskRetryScheduled";
    /// The task is `failed`: its last attempt failed and no attempt is left.
    pub const TASK_FAILED: &str = "TaskFailed";
    /// The attempt's lease expired without renewal (its worker is presumed dead); a new claim or a failure
    /// follows in the same command.
    pub const TASK_LEASE_EXPIRED: &str = "TaskLeaseExpired";
    /// The worker gave the attempt back unfinished (graceful shutdown); the task is `queued` again at once.
    pub const TASK_RELEASED: &str = "TaskReleased";
    /// The task is `cancelled` (from `queued`, or stopping its running attempt).
    pub const TASK_CANCELLED: &str = "TaskCancelled";
}

/// A task's status. `pending` exists only inside the enqueue command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Pending,
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Pending,
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// Completed, failed and cancelled tasks never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    }
}

/// The unique key an idempotency key claims. The store keeps idempotency keys itself; this is for lookups.
pub fn idempotency_key_claim(key: &str) -> String {
    format!("idempotency:{key}")
}

/// RFC 3339 with microseconds and `Z`: the one timestamp format of every JSON document JCT writes.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Everything the enqueue decision needs, resolved by the caller beforehand.
pub struct EnqueueTask<'a> {
    /// The spec as the policy gate returned it (normalised).
    pub spec: &'a TaskSpec,
    pub task_id: &'a str,
    pub trace_id: &'a str,
    pub now: DateTime<Utc>,
    /// The CWOM objects to create with the task, when `create_cwom` is on.
    pub cwom: Option<&'a TaskCwom>,
}

/// The task's GET shape as it is created (`status: pending`).
pub fn task_document(command: &EnqueueTask<'_>) -> Value {
    let spec = command.spec;
    let mut document = spec.to_json();
    let fields = document.as_object_mut().expect("a spec is an object");
    let extra = json!({
        "task_id": command.task_id,
        "status": TaskStatus::Pending.as_str(),
        "created_at": format_ts(command.now),
        "queued_at": null,
        "started_at": null,
        "completed_at": null,
        "assigned_to": null,
        "result": null,
        "error": null,
        "trace_path": null,
        "cwom_issue_id": command.cwom.map(|cwom| cwom.ids.issue_id.clone()),
        "trace_id": command.trace_id,
    });
    for (key, value) in extra.as_object().expect("an object") {
        fields.insert(key.clone(), value.clone());
    }
    document
}

/// Decides the events of `POST /tasks/enqueue`: the task is created and queued, and, with CWOM on, the Repo
/// (unless it exists), ConstraintSnapshot, Issue and ContextPacket are created and linked, all in one command.
pub fn enqueue(command: &EnqueueTask<'_>) -> Vec<NewEvent> {
    let task = StreamId::new(EntityKind::Task, command.task_id);
    let document = task_document(command);
    let requester = Actor { kind: command.spec.requested_by.kind, id: command.spec.requested_by.id.clone() };
    let queued_at = format_ts(command.now);
    let mut new_events = vec![
        NewEvent::new(
            EventData {
                stream: task.clone(),
                event_type: events::TASK_CREATED.into(),
                schema_version: 1,
                payload: json!({ "task": document }),
                action: Action::Created,
                before: None,
                after: Some(document.clone()),
                note: Some("Task created via /tasks/enqueue".into()),
            },
            requester,
        ),
        NewEvent::new(
            EventData {
                stream: task,
                event_type: events::TASK_ENQUEUED.into(),
                schema_version: 1,
                payload: json!({ "task_id": command.task_id, "queued_at": queued_at }),
                action: Action::StatusChanged,
                before: Some(json!({ "status": "pending" })),
                after: Some(json!({ "status": "queued" })),
                note: Some("Status changed: pending -> queued".into()),
            },
            Actor::system("task-enqueue"),
        ),
    ];
    if let Some(cwom) = command.cwom {
        new_events.extend(cwom_events_of(cwom));
    }
    new_events
}

fn cwom_events_of(cwom: &TaskCwom) -> Vec<NewEvent> {
    let actor = Actor { kind: ActorKind::System, id: "cwom-service".into() };
    let created = |kind: EntityKind, id: &str, event_type: &str, object: &Value, note: Option<&str>| {
        NewEvent::new(
            EventData {
                stream: StreamId::new(kind, id),
                event_type: event_type.into(),
                schema_version: 1,
                payload: json!({ "object": object }),
                action: Action::Created,
                before: None,
                after: Some(object.clone()),
                note: note.map(str::to_owned),
            },
            actor.clone(),
        )
    };
    let CwomIds { repo_id, constraint_snapshot_id, issue_id, context_packet_id } = &cwom.ids;
    // The Issue is created without links; each link is its own event, as the original audited them.
    let mut issue = cwom.issue.clone();
    for list in ["constraints", "context_packets", "doctrine_refs"] {
        issue[list] = json!([]);
    }
    let mut new_events = Vec::new();
    if let Some(repo) = &cwom.repo {
        let slug = repo["slug"].as_str().unwrap_or_default();
        new_events.push(
            created(EntityKind::Repo, repo_id, cwom_events::REPO_CREATED, repo, None)
                .claiming(cwom::repo_slug_key(slug)),
        );
    }
    new_events.push(created(
        EntityKind::ConstraintSnapshot,
        constraint_snapshot_id,
        cwom_events::CONSTRAINT_SNAPSHOT_CAPTURED,
        &cwom.constraint_snapshot,
        Some("Immutable object created"),
    ));
    new_events.push(created(EntityKind::Issue, issue_id, cwom_events::ISSUE_CREATED, &issue, None));
    new_events.push(issue_linked(issue_id, EntityKind::ConstraintSnapshot, constraint_snapshot_id, &actor));
    new_events.push(created(
        EntityKind::ContextPacket,
        context_packet_id,
        cwom_events::CONTEXT_PACKET_CREATED,
        &cwom.context_packet,
        Some("Immutable object created"),
    ));
    new_events.push(issue_linked(issue_id, EntityKind::ContextPacket, context_packet_id, &actor));
    new_events
}

/// An Issue gained a link; the audit columns read as the original's `linked` entries.
pub fn issue_linked(issue_id: &str, linked_kind: EntityKind, linked_id: &str, actor: &Actor) -> NewEvent {
    let link = json!({ "linked_kind": linked_kind.as_str(), "linked_id": linked_id });
    NewEvent::new(
        EventData {
            stream: StreamId::new(EntityKind::Issue, issue_id),
            event_type: cwom_events::ISSUE_LINKED.into(),
            schema_version: 1,
            payload: json!({ "issue_id": issue_id, "linked_kind": linked_kind.as_str(), "linked_id": linked_id }),
            action: Action::Linked,
            before: None,
            after: Some(link),
            note: Some(format!("Linked to {linked_kind}:{linked_id}")),
        },
        actor.clone(),
    )
}
