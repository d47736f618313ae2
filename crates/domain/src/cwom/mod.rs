//! The Canonical Work Object Model v0.1: event names, the rules every CWOM object follows, the decisions of the
//! `/cwom` routes ([`decide`]) and the fold of a CWOM stream into its GET shape ([`fold`]).
//!
//! The seven core kinds are Repo, Issue, ContextPacket, ConstraintSnapshot, DoctrineRef, Run and Artifact. Each
//! object is one stream (`entity_kind` = the kind, `entity_id` = its ULID) and its state is its GET shape, a JSON
//! document.
//!
//! # The generic event contract
//!
//! Every writer of CWOM streams (the `/cwom` routes, the enqueue command, the worker) follows it, and the `cwom`
//! projection and [`fold::apply`] rely on nothing else, so a new event type needs no projection change:
//!
//! - **created**: an event whose `action` is `created` carries `payload.object`, the object's full GET shape
//!   (every key present, `kind`, `id`, `trace_id`, timestamps included). The object is inserted whatever the
//!   event type (`RepoCreated`, `IssueCreated`, the worker's `RunStarted` and `ArtifactProduced`, ...). A second
//!   `created` on the same stream is ignored.
//! - **updated / status_changed**: carries `payload.changes`, the changed top-level fields of the GET shape
//!   (e.g. `{"status": "done", "updated_at": "..."}`), merged into the document top-level (each given field
//!   replaces the old one wholesale).
//! - **linked**: on an Issue, Run or ContextPacket stream, carries `payload.linked_kind` and `payload.linked_id`.
//!   The link is recorded (the six link tables of the original), and the `{"kind", "id"}` ref is appended to the
//!   owner's list field where its GET shape has one ([`link_list`]: Issue `doctrine_refs` / `constraints` /
//!   `context_packets`, ContextPacket `doctrine_refs`) unless it is already there.
//! - Any other action leaves the object as it is. Applying is deterministic: timestamps come from payloads.
//!
//! The GET shapes are the OpenAPI schemas `Repo`, `Issue`, `ContextPacket`, `ConstraintSnapshot`,
//! `DoctrineRef`, `Run` and `Artifact` (reference §4.4); every timestamp is RFC 3339 with microseconds and `Z`
//! ([`crate::task::lifecycle::format_ts`]).

pub mod decide;
pub mod fold;
mod status;

#[cfg(test)]
mod tests;

use crate::event::EntityKind;

pub use decide::{
    change_status, create, duplicate, linked, references, unique_key, update_run, Existing, Loaded, NewObject,
    Rejection, ACTOR_ID,
};
pub use fold::{apply, fold};
pub use status::Status;

/// Stored event type names of CWOM streams. Never rename one.
pub mod events {
    pub const REPO_CREATED: &str = "RepoCreated";
    pub const ISSUE_CREATED: &str = "IssueCreated";
    pub const ISSUE_STATUS_CHANGED: &str = "IssueStatusChanged";
    /// An Issue gained a link to a ContextPacket, ConstraintSnapshot or DoctrineRef.
    pub const ISSUE_LINKED: &str = "IssueLinked";
    pub const CONTEXT_PACKET_CREATED: &str = "ContextPacketCreated";
    /// A ContextPacket gained a link to a DoctrineRef.
    pub const CONTEXT_PACKET_LINKED: &str = "ContextPacketLinked";
    pub const CONSTRAINT_SNAPSHOT_CAPTURED: &str = "ConstraintSnapshotCaptured";
    pub const DOCTRINE_REF_CREATED: &str = "DoctrineRefCreated";
    pub const RUN_CREATED: &str = "RunCreated";
    pub const RUN_UPDATED: &str = "RunUpdated";
    pub const RUN_STATUS_CHANGED: &str = "RunStatusChanged";
    /// A Run gained a link to a ContextPacket or DoctrineRef it consumed.
    pub const RUN_LINKED: &str = "RunLinked";
    pub const ARTIFACT_CREATED: &str = "ArtifactCreated";
}

/// The seven core CWOM kinds: the entity kinds whose streams follow the generic event contract.
pub const KINDS: [EntityKind; 7] = [
    EntityKind::Repo,
    EntityKind::Issue,
    EntityKind::ContextPacket,
    EntityKind::ConstraintSnapshot,
    EntityKind::DoctrineRef,
    EntityKind::Run,
    EntityKind::Artifact,
];

/// Whether streams of `kind` are CWOM streams.
pub fn is_cwom(kind: EntityKind) -> bool {
    KINDS.contains(&kind)
}

/// The list field of the owner's GET shape that a link to a `linked` object appends `{"kind", "id"}` to.
/// Links without one (Run → ContextPacket, Run → DoctrineRef) live in the link tables only.
pub fn link_list(owner: EntityKind, linked: EntityKind) -> Option<&'static str> {
    match (owner, linked) {
        (EntityKind::Issue, EntityKind::ContextPacket) => Some("context_packets"),
        (EntityKind::Issue, EntityKind::ConstraintSnapshot) => Some("constraints"),
        (EntityKind::Issue, EntityKind::DoctrineRef) => Some("doctrine_refs"),
        (EntityKind::ContextPacket, EntityKind::DoctrineRef) => Some("doctrine_refs"),
        _ => None,
    }
}

/// The unique key a Repo's slug claims in the store.
pub fn repo_slug_key(slug: &str) -> String {
    format!("repo_slug:{slug}")
}

/// The unique key a DoctrineRef's identity claims in the store.
pub fn doctrine_key(namespace: &str, name: &str, version: &str) -> String {
    format!("doctrine:{namespace}/{name}@{version}")
}
