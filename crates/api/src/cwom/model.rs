//! The CWOM v0.1 wire types (reference §4.2–§4.4): enums, nested value objects, create and update bodies, and
//! the GET shapes the read model stores. Request objects deny unknown fields (422), as the original's
//! `extra="forbid"` models did; a field with a default takes `null` for its default, and the spec says so
//! (`nullable`). The GET shapes exist for the spec: responses are the stored documents, sent through
//! [`crate::doc::Doc`], and every writer of CWOM events stores documents of these shapes.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Datelike as _, Utc};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{MaybeUndefined, ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{Enum, Object};
use serde_json::Value;

use crate::doc::Doc;
use crate::tasks::ActorKind;

// ---------------------------------------------------------------------------------------------------------
// Enums (exact values of the original).

/// The kind of a CWOM object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "PascalCase")]
pub enum ObjectKind {
    Repo,
    Issue,
    ContextPacket,
    Run,
    Artifact,
    ConstraintSnapshot,
    DoctrineRef,
    EvidencePack,
    ReviewDecision,
}

/// The status of an Issue or a Run (spelled `canceled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum Status {
    Planned,
    Ready,
    Running,
    Blocked,
    Done,
    Failed,
    Canceled,
    UnderReview,
}

impl Status {
    pub fn to_domain(self) -> domain::cwom::Status {
        use domain::cwom::Status as S;
        match self {
            Status::Planned => S::Planned,
            Status::Ready => S::Ready,
            Status::Running => S::Running,
            Status::Blocked => S::Blocked,
            Status::Done => S::Done,
            Status::Failed => S::Failed,
            Status::Canceled => S::Canceled,
            Status::UnderReview => S::UnderReview,
        }
    }
}

/// The kind of work an Issue asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum IssueType {
    Feature,
    Bug,
    Chore,
    Research,
    Ops,
    Doc,
    Incident,
}

/// Issue priority, P0 (highest) to P4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "UPPERCASE")]
pub enum Priority {
    P0,
    P1,
    P2,
    P3,
    P4,
}

/// Who carries out a Run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum RunMode {
    Human,
    Agent,
    Hybrid,
    System,
}

/// The kind of an Artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ArtifactType {
    CodePatch,
    Commit,
    Pr,
    Build,
    ContainerImage,
    Doc,
    Report,
    Dataset,
    Log,
    Trace,
    Binary,
    Link,
}

/// Whether an Artifact, or one check of it, is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum VerificationStatus {
    Unverified,
    Passed,
    Failed,
}

/// The kind of a DoctrineRef.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum DoctrineType {
    Principle,
    Policy,
    Procedure,
    Heuristic,
    Pattern,
}

/// How binding a DoctrineRef is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum DoctrinePriority {
    Must,
    Should,
    May,
}

/// Who may see a Repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum Visibility {
    Public,
    Private,
    Internal,
}

/// What a ConstraintSnapshot applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ConstraintScope {
    Personal,
    Repo,
    Org,
    System,
    Run,
}

/// Network connectivity available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum Connectivity {
    Offline,
    Limited,
    Ok,
}

/// How much risk is acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum RiskTolerance {
    Low,
    Medium,
    High,
}

/// Why a Run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum FailureCategory {
    Policy,
    Build,
    Test,
    Runtime,
    Dependency,
    Unknown,
}

// ---------------------------------------------------------------------------------------------------------
// Timestamps.

/// An RFC 3339 date-time; stored and returned with microseconds and `Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

impl Type for Timestamp {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_date-time".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "date-time")))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Timestamp {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(text) => {
                let time = DateTime::parse_from_rfc3339(&text)
                    .map_err(|error| ParseError::custom(format!("not an RFC 3339 date-time: {error}")))?
                    .with_timezone(&Utc);
                // Years outside 1..9999 (in UTC) cannot be written back as RFC 3339.
                if !(1..=9999).contains(&time.year()) {
                    return Err(ParseError::custom("the year must be 1..9999 in UTC"));
                }
                Ok(Timestamp(time))
            }
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for Timestamp {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(domain::task::lifecycle::format_ts(self.0)))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Value objects (reference §4.3). Optional fields are `null` in stored documents.

/// Free-form metadata.
pub type Meta = BTreeMap<String, Value>;

/// A person, agent or system.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct Actor {
    pub actor_kind: ActorKind,
    /// 1..128 characters.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub actor_id: String,
    /// 1..256 characters.
    #[oai(nullable, validator(min_length = 1, max_length = 256))]
    pub display: Option<String>,
}

/// Where an object comes from.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct Source {
    /// 1..64 characters, e.g. `github`.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub system: String,
    #[oai(nullable, validator(min_length = 1, max_length = 256))]
    pub external_id: Option<String>,
    #[oai(nullable, validator(min_length = 1, max_length = 2000))]
    pub url: Option<String>,
}

/// A reference to a CWOM object. Only the id is checked, and only where the operation says so; the kind is
/// not checked against the object. Refs listed from links have no `role`.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct Ref {
    pub kind: ObjectKind,
    /// 1..128 characters.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub id: String,
    #[oai(nullable, validator(min_length = 1, max_length = 64))]
    pub role: Option<String>,
}

/// A document given as context.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct Document {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub title: String,
    #[oai(validator(min_length = 1, max_length = 2000))]
    pub uri: String,
    #[oai(nullable, validator(min_length = 1, max_length = 128))]
    pub digest: Option<String>,
    #[oai(nullable, validator(max_length = 4000))]
    pub excerpt: Option<String>,
}

/// Data given as context, inline or by URI.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct DataBlob {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub name: String,
    #[oai(validator(min_length = 1, max_length = 128))]
    pub media_type: String,
    #[oai(nullable, validator(min_length = 1, max_length = 2000))]
    pub uri: Option<String>,
    #[oai(nullable)]
    pub inline: Option<String>,
    #[oai(nullable, validator(min_length = 1, max_length = 128))]
    pub digest: Option<String>,
}

/// One verification check of an Artifact.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct VerificationCheck {
    #[oai(validator(min_length = 1, max_length = 128))]
    pub name: String,
    pub status: VerificationStatus,
    #[oai(nullable, validator(min_length = 1, max_length = 2000))]
    pub evidence_uri: Option<String>,
}

/// Time available.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct TimeConstraint {
    #[oai(nullable, validator(minimum(value = "0")))]
    pub available_minutes: Option<i64>,
    #[oai(nullable)]
    pub deadline: Option<Timestamp>,
}

/// Energy available, 0..5.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct EnergyConstraint {
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "5")))]
    pub score_0_5: Option<i64>,
    #[oai(nullable, validator(max_length = 500))]
    pub notes: Option<String>,
}

/// Health considerations.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct HealthConstraint {
    #[oai(nullable, default)]
    pub flags: Vec<String>,
    #[oai(nullable, validator(max_length = 500))]
    pub notes: Option<String>,
}

/// Money available.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct BudgetConstraint {
    #[oai(nullable, validator(minimum(value = "0")))]
    pub usd_available: Option<f64>,
    #[oai(nullable, validator(minimum(value = "0")))]
    pub burn_limit_usd: Option<f64>,
}

/// Tools allowed and blocked.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct ToolsConstraint {
    #[oai(nullable, default)]
    pub allowed: Vec<String>,
    #[oai(nullable, default)]
    pub blocked: Vec<String>,
}

/// Where the work happens.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct EnvironmentConstraint {
    #[oai(nullable, validator(max_length = 128))]
    pub location: Option<String>,
    /// Default `ok`.
    #[oai(nullable, default = "default_connectivity")]
    pub connectivity: Connectivity,
    #[oai(nullable, validator(max_length = 128))]
    pub device: Option<String>,
}

fn default_connectivity() -> Connectivity {
    Connectivity::Ok
}

/// Risk appetite.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct RiskConstraint {
    /// Default `medium`.
    #[oai(nullable, default = "default_tolerance")]
    pub tolerance: RiskTolerance,
    #[oai(nullable, validator(max_length = 500))]
    pub notes: Option<String>,
}

fn default_tolerance() -> RiskTolerance {
    RiskTolerance::Medium
}

/// The CWOM constraints (not a task's): every key present, `null` when absent.
#[derive(Debug, Clone, Object)]
#[oai(rename = "CwomConstraints", deny_unknown_fields)]
pub struct Constraints {
    #[oai(nullable)]
    pub time: Option<TimeConstraint>,
    #[oai(nullable)]
    pub energy: Option<EnergyConstraint>,
    #[oai(nullable)]
    pub health: Option<HealthConstraint>,
    #[oai(nullable)]
    pub budget: Option<BudgetConstraint>,
    #[oai(nullable)]
    pub tools: Option<ToolsConstraint>,
    #[oai(nullable)]
    pub environment: Option<EnvironmentConstraint>,
    #[oai(nullable)]
    pub risk: Option<RiskConstraint>,
}

fn no_constraints() -> Constraints {
    Constraints { time: None, energy: None, health: None, budget: None, tools: None, environment: None, risk: None }
}

/// When an Issue is done.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct Acceptance {
    #[oai(nullable, default)]
    pub criteria: Vec<String>,
    #[oai(nullable)]
    pub tests_expected: Option<Vec<String>>,
}

fn no_acceptance() -> Acceptance {
    Acceptance { criteria: Vec::new(), tests_expected: None }
}

/// How an Issue relates to others.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct IssueRelationships {
    #[oai(nullable)]
    pub parent: Option<Ref>,
    #[oai(nullable, default)]
    pub blocks: Vec<Ref>,
    #[oai(nullable, default)]
    pub blocked_by: Vec<Ref>,
    #[oai(nullable, default)]
    pub duplicates: Vec<Ref>,
}

fn no_relationships() -> IssueRelationships {
    IssueRelationships { parent: None, blocks: Vec::new(), blocked_by: Vec::new(), duplicates: Vec::new() }
}

/// Who or what executes a Run.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct Executor {
    pub actor: Actor,
    /// 1..64 characters, e.g. `local`, `ci`, `container`.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub runtime: String,
    #[oai(nullable, default)]
    pub toolchain: Vec<String>,
}

/// What a Run intends to do.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct RunPlan {
    #[oai(nullable, default)]
    pub steps: Vec<String>,
    #[oai(nullable, default)]
    pub risk_notes: Vec<String>,
}

fn no_plan() -> RunPlan {
    RunPlan { steps: Vec::new(), risk_notes: Vec::new() }
}

/// When a Run ran. A new Run has `{}`.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct Telemetry {
    #[oai(nullable)]
    pub started_at: Option<Timestamp>,
    #[oai(nullable)]
    pub ended_at: Option<Timestamp>,
    #[oai(nullable, validator(minimum(value = "0")))]
    pub duration_s: Option<f64>,
}

/// What a Run cost. A new Run has `{}`.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct Cost {
    #[oai(nullable, validator(minimum(value = "0")))]
    pub usd: Option<f64>,
    #[oai(nullable, validator(minimum(value = "0")))]
    pub tokens: Option<i64>,
    #[oai(nullable, validator(minimum(value = "0")))]
    pub compute_s: Option<f64>,
}

/// What a Run produced. A new Run has `{}`.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct RunOutputs {
    #[oai(nullable, default)]
    pub artifacts: Vec<Ref>,
    #[oai(nullable, validator(max_length = 4000))]
    pub result_summary: Option<String>,
    #[oai(nullable, default)]
    pub decision_log: Vec<String>,
}

/// Why a Run failed.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct Failure {
    pub category: FailureCategory,
    #[oai(validator(min_length = 1, max_length = 4000))]
    pub message: String,
}

/// An Artifact's verification.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct Verification {
    /// Default `unverified`.
    #[oai(nullable, default = "default_verification_status")]
    pub status: VerificationStatus,
    #[oai(nullable, default)]
    pub checks: Vec<VerificationCheck>,
}

fn default_verification_status() -> VerificationStatus {
    VerificationStatus::Unverified
}

fn unverified() -> Verification {
    Verification { status: VerificationStatus::Unverified, checks: Vec::new() }
}

/// A Repo's policy.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct RepoPolicy {
    #[oai(nullable, default)]
    pub allowed_tools: Vec<String>,
    #[oai(nullable, validator(max_length = 64))]
    pub secrets_profile: Option<String>,
}

/// Where a DoctrineRef applies.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct DoctrineApplicability {
    #[oai(nullable, default)]
    pub repo_refs: Vec<Ref>,
    #[oai(nullable, default)]
    pub issue_types: Vec<String>,
    #[oai(nullable, default)]
    pub tags: Vec<String>,
}

fn applies_everywhere() -> DoctrineApplicability {
    DoctrineApplicability { repo_refs: Vec::new(), issue_types: Vec::new(), tags: Vec::new() }
}

/// What a ContextPacket hands over.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct ContextInputs {
    #[oai(nullable, default)]
    pub documents: Vec<Document>,
    #[oai(nullable, default)]
    pub data_blobs: Vec<DataBlob>,
    #[oai(nullable, default)]
    pub links: Vec<String>,
}

fn no_context_inputs() -> ContextInputs {
    ContextInputs { documents: Vec::new(), data_blobs: Vec::new(), links: Vec::new() }
}

/// What a Run consumes. Its context packets and doctrine refs that exist are linked to the Run.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct RunInputs {
    #[oai(nullable, default)]
    pub context_packets: Vec<Ref>,
    #[oai(nullable, default)]
    pub doctrine_refs: Vec<Ref>,
    #[oai(nullable)]
    pub constraint_snapshot: Option<Ref>,
}

fn no_run_inputs() -> RunInputs {
    RunInputs { context_packets: Vec::new(), doctrine_refs: Vec::new(), constraint_snapshot: None }
}

fn default_branch() -> String {
    "main".into()
}

fn private() -> Visibility {
    Visibility::Private
}

fn p2() -> Priority {
    Priority::P2
}

fn planned() -> Status {
    Status::Planned
}

fn should() -> DoctrinePriority {
    DoctrinePriority::Should
}

// ---------------------------------------------------------------------------------------------------------
// Create and update bodies.

/// Create a Repo. Its slug is unique and never changes.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct RepoCreate {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub name: String,
    /// Unique, e.g. `acme/service`; 1..256 characters.
    #[oai(validator(min_length = 1, max_length = 256))]
    pub slug: String,
    pub source: Source,
    /// Default `main`.
    #[oai(nullable, default = "default_branch", validator(min_length = 1, max_length = 128))]
    pub default_branch: String,
    /// Default `private`.
    #[oai(nullable, default = "private")]
    pub visibility: Visibility,
    #[oai(nullable, default)]
    pub owners: Vec<Actor>,
    #[oai(nullable)]
    pub policy: Option<RepoPolicy>,
    #[oai(nullable, default)]
    pub links: Vec<String>,
    #[oai(nullable, default)]
    pub tags: Vec<String>,
    #[oai(nullable, default)]
    pub meta: Meta,
}

/// Create an Issue in an existing Repo. Listed doctrine refs, constraint snapshots and context packets that
/// exist are linked to it.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct IssueCreate {
    /// The Repo (must exist).
    pub repo: Ref,
    #[oai(validator(min_length = 1, max_length = 512))]
    pub title: String,
    #[oai(nullable, default, validator(max_length = 16000))]
    pub description: String,
    #[oai(rename = "type")]
    pub issue_type: IssueType,
    /// Default `P2`.
    #[oai(nullable, default = "p2")]
    pub priority: Priority,
    /// Default `planned`.
    #[oai(nullable, default = "planned")]
    pub status: Status,
    #[oai(nullable, default)]
    pub assignees: Vec<Actor>,
    #[oai(nullable, default)]
    pub watchers: Vec<Actor>,
    #[oai(nullable, default)]
    pub doctrine_refs: Vec<Ref>,
    #[oai(nullable, default)]
    pub constraints: Vec<Ref>,
    #[oai(nullable, default)]
    pub context_packets: Vec<Ref>,
    #[oai(nullable, default = "no_acceptance")]
    pub acceptance: Acceptance,
    #[oai(nullable, default = "no_relationships")]
    pub relationships: IssueRelationships,
    #[oai(nullable, default)]
    pub tags: Vec<String>,
    #[oai(nullable, default)]
    pub meta: Meta,
}

/// Create a ContextPacket for an existing Issue (immutable: new information means a new packet with a new
/// version). The Issue collects it; listed doctrine refs that exist are linked to it.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct ContextPacketCreate {
    /// The Issue (must exist).
    pub for_issue: Ref,
    /// Free text, 1..64 characters, e.g. `1.0`.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub version: String,
    #[oai(validator(min_length = 1, max_length = 4000))]
    pub summary: String,
    #[oai(nullable, default = "no_context_inputs")]
    pub inputs: ContextInputs,
    #[oai(nullable, default)]
    pub assumptions: Vec<String>,
    #[oai(nullable, default)]
    pub open_questions: Vec<String>,
    #[oai(nullable, default, validator(max_length = 8000))]
    pub instructions: String,
    #[oai(nullable, default)]
    pub doctrine_refs: Vec<Ref>,
    #[oai(nullable)]
    pub constraint_snapshot: Option<Ref>,
    #[oai(nullable, default)]
    pub tags: Vec<String>,
    #[oai(nullable, default)]
    pub meta: Meta,
}

/// Capture a ConstraintSnapshot (immutable; `captured_at` is set by the server).
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct ConstraintSnapshotCreate {
    pub scope: ConstraintScope,
    pub owner: Actor,
    #[oai(nullable, default = "no_constraints")]
    pub constraints: Constraints,
    #[oai(nullable, default)]
    pub tags: Vec<String>,
    #[oai(nullable, default)]
    pub meta: Meta,
}

/// Create a DoctrineRef; (namespace, name, version) is unique.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct DoctrineRefCreate {
    #[oai(validator(min_length = 1, max_length = 128))]
    pub namespace: String,
    #[oai(validator(min_length = 1, max_length = 256))]
    pub name: String,
    #[oai(validator(min_length = 1, max_length = 64))]
    pub version: String,
    #[oai(rename = "type")]
    pub doctrine_type: DoctrineType,
    /// Default `should`.
    #[oai(nullable, default = "should")]
    pub priority: DoctrinePriority,
    #[oai(validator(min_length = 1, max_length = 4000))]
    pub statement: String,
    #[oai(nullable, validator(max_length = 4000))]
    pub rationale: Option<String>,
    #[oai(nullable, default)]
    pub links: Vec<String>,
    #[oai(nullable, default = "applies_everywhere")]
    pub applicability: DoctrineApplicability,
    #[oai(nullable, default)]
    pub tags: Vec<String>,
    #[oai(nullable, default)]
    pub meta: Meta,
}

/// Plan a Run for an existing Issue in an existing Repo; it starts `planned`.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct RunCreate {
    /// The Issue (must exist; checked first).
    pub for_issue: Ref,
    /// The Repo (must exist).
    pub repo: Ref,
    pub mode: RunMode,
    pub executor: Executor,
    #[oai(nullable, default = "no_run_inputs")]
    pub inputs: RunInputs,
    #[oai(nullable, default = "no_plan")]
    pub plan: RunPlan,
    #[oai(nullable, default)]
    pub tags: Vec<String>,
    #[oai(nullable, default)]
    pub meta: Meta,
}

/// Change a Run: each given field replaces the old value wholesale; `failure: null` clears it.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct RunUpdate {
    /// The new status; any status may follow any other. `null` = not given.
    #[oai(nullable)]
    pub status: Option<Status>,
    /// `null` = not given.
    #[oai(nullable)]
    pub telemetry: Option<Telemetry>,
    /// `null` = not given.
    #[oai(nullable)]
    pub cost: Option<Cost>,
    /// `null` = not given.
    #[oai(nullable)]
    pub outputs: Option<RunOutputs>,
    #[oai(nullable)]
    pub failure: MaybeUndefined<Failure>,
}

/// Record an Artifact produced by an existing Run for an existing Issue.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct ArtifactCreate {
    /// The Run (must exist; checked first).
    pub produced_by: Ref,
    /// The Issue (must exist).
    pub for_issue: Ref,
    #[oai(rename = "type")]
    pub artifact_type: ArtifactType,
    #[oai(validator(min_length = 1, max_length = 512))]
    pub title: String,
    #[oai(validator(min_length = 1, max_length = 2000))]
    pub uri: String,
    #[oai(nullable, validator(min_length = 1, max_length = 128))]
    pub digest: Option<String>,
    #[oai(nullable, validator(min_length = 1, max_length = 128))]
    pub media_type: Option<String>,
    #[oai(nullable, validator(minimum(value = "0")))]
    pub size_bytes: Option<i64>,
    #[oai(nullable, validator(max_length = 4000))]
    pub preview: Option<String>,
    #[oai(nullable, default = "unverified")]
    pub verification: Verification,
    #[oai(nullable, default)]
    pub tags: Vec<String>,
    #[oai(nullable, default)]
    pub meta: Meta,
}

// ---------------------------------------------------------------------------------------------------------
// GET shapes (the stored documents).

/// A source repository.
#[derive(Debug, Clone, Object)]
pub struct Repo {
    /// `Repo`.
    pub kind: ObjectKind,
    /// ULID.
    pub id: String,
    /// The trace of the request that created it.
    #[oai(nullable)]
    pub trace_id: Option<String>,
    pub name: String,
    pub slug: String,
    pub source: Source,
    pub default_branch: String,
    pub visibility: Visibility,
    pub owners: Vec<Actor>,
    #[oai(nullable)]
    pub policy: Option<RepoPolicy>,
    pub links: Vec<String>,
    pub tags: Vec<String>,
    pub meta: Meta,
    /// RFC 3339.
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A unit of work.
#[derive(Debug, Clone, Object)]
pub struct Issue {
    /// `Issue`.
    pub kind: ObjectKind,
    pub id: String,
    #[oai(nullable)]
    pub trace_id: Option<String>,
    /// `{"kind": "Repo", "id", "role": null}`.
    pub repo: Ref,
    pub title: String,
    pub description: String,
    #[oai(rename = "type")]
    pub issue_type: IssueType,
    pub priority: Priority,
    pub status: Status,
    pub assignees: Vec<Actor>,
    pub watchers: Vec<Actor>,
    /// Linked DoctrineRefs, in link order.
    pub doctrine_refs: Vec<Ref>,
    /// Linked ConstraintSnapshots ("current" constraints), in link order.
    pub constraints: Vec<Ref>,
    /// The ContextPackets the Issue collected, in link order.
    pub context_packets: Vec<Ref>,
    pub acceptance: Acceptance,
    pub relationships: IssueRelationships,
    /// Always empty (as the original).
    pub runs: Vec<Ref>,
    pub tags: Vec<String>,
    pub meta: Meta,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The context handed to whoever works on an Issue. Immutable.
#[derive(Debug, Clone, Object)]
pub struct ContextPacket {
    /// `ContextPacket`.
    pub kind: ObjectKind,
    pub id: String,
    #[oai(nullable)]
    pub trace_id: Option<String>,
    /// `{"kind": "Issue", "id", "role": null}`.
    pub for_issue: Ref,
    pub version: String,
    pub summary: String,
    pub inputs: ContextInputs,
    pub assumptions: Vec<String>,
    pub open_questions: Vec<String>,
    pub instructions: String,
    /// Linked DoctrineRefs, in link order.
    pub doctrine_refs: Vec<Ref>,
    /// `{"kind": "ConstraintSnapshot", "id"}` or null.
    #[oai(nullable)]
    pub constraint_snapshot: Option<Ref>,
    pub tags: Vec<String>,
    pub meta: Meta,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The constraints in force at a moment. Immutable; it has `captured_at` and no `created_at`/`updated_at`.
#[derive(Debug, Clone, Object)]
pub struct ConstraintSnapshot {
    /// `ConstraintSnapshot`.
    pub kind: ObjectKind,
    pub id: String,
    #[oai(nullable)]
    pub trace_id: Option<String>,
    pub scope: ConstraintScope,
    pub captured_at: Timestamp,
    pub owner: Actor,
    pub constraints: Constraints,
    pub tags: Vec<String>,
    pub meta: Meta,
}

/// A versioned rule, policy or practice that governs work.
#[derive(Debug, Clone, Object)]
pub struct DoctrineRef {
    /// `DoctrineRef`.
    pub kind: ObjectKind,
    pub id: String,
    #[oai(nullable)]
    pub trace_id: Option<String>,
    pub namespace: String,
    pub name: String,
    pub version: String,
    #[oai(rename = "type")]
    pub doctrine_type: DoctrineType,
    pub priority: DoctrinePriority,
    pub statement: String,
    #[oai(nullable)]
    pub rationale: Option<String>,
    pub links: Vec<String>,
    pub applicability: DoctrineApplicability,
    pub tags: Vec<String>,
    pub meta: Meta,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One execution of work on an Issue.
#[derive(Debug, Clone, Object)]
pub struct Run {
    /// `Run`.
    pub kind: ObjectKind,
    pub id: String,
    #[oai(nullable)]
    pub trace_id: Option<String>,
    /// `{"kind": "Issue", "id", "role": null}`.
    pub for_issue: Ref,
    /// `{"kind": "Repo", "id", "role": null}`.
    pub repo: Ref,
    pub status: Status,
    pub mode: RunMode,
    pub executor: Executor,
    pub inputs: RunInputs,
    pub plan: RunPlan,
    pub telemetry: Telemetry,
    pub cost: Cost,
    pub outputs: RunOutputs,
    #[oai(nullable)]
    pub failure: Option<Failure>,
    /// URI of the run's trace folder, set by the worker.
    #[oai(nullable)]
    pub artifact_root_uri: Option<String>,
    pub tags: Vec<String>,
    pub meta: Meta,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Something a Run produced.
#[derive(Debug, Clone, Object)]
pub struct Artifact {
    /// `Artifact`.
    pub kind: ObjectKind,
    pub id: String,
    #[oai(nullable)]
    pub trace_id: Option<String>,
    /// `{"kind": "Run", "id", "role": null}`.
    pub produced_by: Ref,
    /// `{"kind": "Issue", "id", "role": null}`.
    pub for_issue: Ref,
    #[oai(rename = "type")]
    pub artifact_type: ArtifactType,
    pub title: String,
    pub uri: String,
    #[oai(nullable)]
    pub digest: Option<String>,
    #[oai(nullable)]
    pub media_type: Option<String>,
    #[oai(nullable)]
    pub size_bytes: Option<i64>,
    #[oai(nullable)]
    pub preview: Option<String>,
    pub verification: Verification,
    pub tags: Vec<String>,
    pub meta: Meta,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

// ---------------------------------------------------------------------------------------------------------
// Response wrappers.

/// 201/200: `{"status": "success", "repo": {...}}`.
#[derive(Debug, Object)]
pub struct RepoResult {
    /// `success`.
    pub status: String,
    pub repo: Doc<Repo>,
}

/// 201/200: `{"status": "success", "issue": {...}}`.
#[derive(Debug, Object)]
pub struct IssueResult {
    /// `success`.
    pub status: String,
    pub issue: Doc<Issue>,
}

/// 201: `{"status": "success", "context_packet": {...}}`.
#[derive(Debug, Object)]
pub struct ContextPacketResult {
    /// `success`.
    pub status: String,
    pub context_packet: Doc<ContextPacket>,
}

/// 201: `{"status": "success", "constraint_snapshot": {...}}`.
#[derive(Debug, Object)]
pub struct ConstraintSnapshotResult {
    /// `success`.
    pub status: String,
    pub constraint_snapshot: Doc<ConstraintSnapshot>,
}

/// 201: `{"status": "success", "doctrine_ref": {...}}`.
#[derive(Debug, Object)]
pub struct DoctrineRefResult {
    /// `success`.
    pub status: String,
    pub doctrine_ref: Doc<DoctrineRef>,
}

/// 201/200: `{"status": "success", "run": {...}}`.
#[derive(Debug, Object)]
pub struct RunResult {
    /// `success`.
    pub status: String,
    pub run: Doc<Run>,
}

/// 201: `{"status": "success", "artifact": {...}}`.
#[derive(Debug, Object)]
pub struct ArtifactResult {
    /// `success`.
    pub status: String,
    pub artifact: Doc<Artifact>,
}

/// The body of a 405 on an immutable object.
#[derive(Debug, Clone, Object)]
pub struct ImmutabilityViolation {
    /// `IMMUTABILITY_VIOLATION`.
    pub error: String,
    pub message: String,
    /// The id from the path (whether or not such an object exists).
    pub object_id: String,
}

/// `{"detail": ImmutabilityViolation}`.
#[derive(Debug, Clone, Object)]
pub struct ImmutabilityViolationError {
    pub detail: ImmutabilityViolation,
}
