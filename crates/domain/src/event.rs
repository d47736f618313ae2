//! The vocabulary every stored event shares: entity kinds, audit actions, actors, and the event data a decision
//! returns before the store gives it a position.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kind of entity a stream belongs to. Stored in `audit_log.entity_kind`; never rename a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EntityKind {
    Task,
    Repo,
    Issue,
    ContextPacket,
    ConstraintSnapshot,
    DoctrineRef,
    Run,
    Artifact,
}

impl EntityKind {
    pub const ALL: [EntityKind; 8] = [
        EntityKind::Task,
        EntityKind::Repo,
        EntityKind::Issue,
        EntityKind::ContextPacket,
        EntityKind::ConstraintSnapshot,
        EntityKind::DoctrineRef,
        EntityKind::Run,
        EntityKind::Artifact,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Task => "Task",
            EntityKind::Repo => "Repo",
            EntityKind::Issue => "Issue",
            EntityKind::ContextPacket => "ContextPacket",
            EntityKind::ConstraintSnapshot => "ConstraintSnapshot",
            EntityKind::DoctrineRef => "DoctrineRef",
            EntityKind::Run => "Run",
            EntityKind::Artifact => "Artifact",
        }
    }

    pub fn parse(text: &str) -> Option<EntityKind> {
        EntityKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The original's audit action of an event (`audit_log.action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Created,
    Updated,
    StatusChanged,
    Linked,
    Unlinked,
    Deleted,
}

impl Action {
    pub const ALL: [Action; 6] =
        [Action::Created, Action::Updated, Action::StatusChanged, Action::Linked, Action::Unlinked, Action::Deleted];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::StatusChanged => "status_changed",
            Action::Linked => "linked",
            Action::Unlinked => "unlinked",
            Action::Deleted => "deleted",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|action| action.as_str() == text)
    }
}

/// Who acts: the original's `actor_kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Human,
    Agent,
    System,
}

impl ActorKind {
    pub const ALL: [ActorKind; 3] = [ActorKind::Human, ActorKind::Agent, ActorKind::System];

    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Human => "human",
            ActorKind::Agent => "agent",
            ActorKind::System => "system",
        }
    }

    pub fn parse(text: &str) -> Option<ActorKind> {
        ActorKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// The actor recorded on an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

impl Actor {
    pub fn system(id: &str) -> Actor {
        Actor { kind: ActorKind::System, id: id.to_owned() }
    }
}

/// The stream an event belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    pub kind: EntityKind,
    pub id: String,
}

impl StreamId {
    pub fn new(kind: EntityKind, id: impl Into<String>) -> StreamId {
        StreamId { kind, id: id.into() }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

/// One event as a decision produces it: what happened to which stream, with the original's audit columns.
/// The store adds the position, event id, timestamp, stream version, actor, trace and hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct EventData {
    pub stream: StreamId,
    /// Past-tense fact, e.g. `TaskEnqueued`. Stored names never change.
    pub event_type: String,
    /// Version of this event type's payload schema; a changed payload gets a new version and an upcaster.
    pub schema_version: i32,
    pub payload: Value,
    pub action: Action,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub note: Option<String>,
}

/// An event a decision wants appended: the data, who did it, and the unique keys it claims
/// (e.g. `repo_slug:acme/svc`); the store refuses a key that already belongs to another stream.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub data: EventData,
    pub actor: Actor,
    pub unique_keys: Vec<String>,
}

impl NewEvent {
    pub fn new(data: EventData, actor: Actor) -> NewEvent {
        NewEvent { data, actor, unique_keys: Vec::new() }
    }

    pub fn claiming(mut self, key: String) -> NewEvent {
        self.unique_keys.push(key);
        self
    }
}
