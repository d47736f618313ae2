//! The Canonical Work Object Model v0.1: event names and the rules every CWOM object follows.

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

/// The unique key a Repo's slug claims in the store.
pub fn repo_slug_key(slug: &str) -> String {
    format!("repo_slug:{slug}")
}

/// The unique key a DoctrineRef's identity claims in the store.
pub fn doctrine_key(namespace: &str, name: &str, version: &str) -> String {
    format!("doctrine:{namespace}/{name}@{version}")
}
