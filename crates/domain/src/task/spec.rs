//! TaskSpec v1: the request contract of `POST /tasks/enqueue` (canonical `TaskCreateV1` or the legacy model with
//! its aliases), parsed from JSON into one canonical [`TaskSpec`] with pydantic-compatible validation errors.

use std::fmt;

use serde_json::{json, Map, Value};

use crate::event::ActorKind;
use crate::validation::{child, find_nul_char, Checker, LocPart, ValidationError};

/// The only accepted `version`.
pub const SPEC_VERSION: &str = "1.0";
/// `constraints.time_budget_seconds` when absent.
pub const DEFAULT_TIME_BUDGET_SECONDS: u32 = 900;
/// Schema bounds of `constraints.time_budget_seconds` (inclusive).
pub const MIN_TIME_BUDGET_SECONDS: u32 = 30;
/// See [`MIN_TIME_BUDGET_SECONDS`].
pub const MAX_TIME_BUDGET_SECONDS: u32 = 86_400;
/// `target.ref` when absent.
pub const DEFAULT_REF: &str = "main";

/// What kind of work a task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `code_change` (CWOM issue type `feature`).
    CodeChange,
    /// `docs` (`doc`).
    Docs,
    /// `analysis` (`research`).
    Analysis,
    /// `ops` (`ops`).
    Ops,
}

impl Operation {
    /// In the schema's declaration order.
    pub const ALL: [Operation; 4] = [Operation::CodeChange, Operation::Docs, Operation::Analysis, Operation::Ops];

    /// `"code_change"`, `"docs"`, `"analysis"` or `"ops"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::CodeChange => "code_change",
            Operation::Docs => "docs",
            Operation::Analysis => "analysis",
            Operation::Ops => "ops",
        }
    }

    /// The inverse of [`Operation::as_str`].
    pub fn parse(text: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|operation| operation.as_str() == text)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who asked for the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedBy {
    /// `human`, `agent` or `system`.
    pub kind: ActorKind,
    /// 1..128 characters.
    pub id: String,
    /// 1..256 characters when present.
    pub label: Option<String>,
}

/// Where the work happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// 1..256 characters; normalised (trimmed, one `.git` removed, lowercase) only by the policy gate.
    pub repo: String,
    /// 1..256 characters, default `"main"`. (`ref` is a Rust keyword.)
    pub git_ref: String,
    /// 0..512 characters, default `""` (the repository root).
    pub path: String,
}

/// The task's execution limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Constraints {
    /// 30..=86400, default 900.
    pub time_budget_seconds: u32,
    /// The schema accepts `true`; the policy gate rejects it.
    pub allow_network: bool,
    /// The schema accepts `true`; the policy gate rejects it.
    pub allow_secrets: bool,
}

impl Default for Constraints {
    fn default() -> Constraints {
        Constraints { time_budget_seconds: DEFAULT_TIME_BUDGET_SECONDS, allow_network: false, allow_secrets: false }
    }
}

/// A valid TaskSpec v1 in canonical form (`TaskCreateV1`, legacy aliases resolved, unknown fields dropped).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// Always `"1.0"`.
    pub version: String,
    /// 1..256 characters when present.
    pub idempotency_key: Option<String>,
    /// Who asked.
    pub requested_by: RequestedBy,
    /// Trimmed by [`parse_task_spec`]; 5..4000 characters after trimming.
    pub objective: String,
    /// What kind of work.
    pub operation: Operation,
    /// Where.
    pub target: Target,
    /// Limits.
    pub constraints: Constraints,
    /// Free-form JSON object.
    pub inputs: Map<String, Value>,
    /// Kept on the task (SPEC §9.5); default `[]`.
    pub acceptance_criteria: Vec<String>,
    /// Kept on the task (SPEC §9.5); default `[]`.
    pub evidence_requirements: Vec<String>,
    /// Free-form JSON object.
    pub metadata: Map<String, Value>,
}

impl TaskSpec {
    /// The canonical `TaskCreateV1` JSON with every key present (nulls included). Feeding it back to
    /// [`parse_task_spec`] gives the same spec, so it is fit for event payloads.
    pub fn to_json(&self) -> Value {
        json!({
            "version": self.version,
            "idempotency_key": self.idempotency_key,
            "requested_by": {
                "kind": self.requested_by.kind.as_str(),
                "id": self.requested_by.id,
                "label": self.requested_by.label,
            },
            "objective": self.objective,
            "operation": self.operation.as_str(),
            "target": {"repo": self.target.repo, "ref": self.target.git_ref, "path": self.target.path},
            "constraints": {
                "time_budget_seconds": self.constraints.time_budget_seconds,
                "allow_network": self.constraints.allow_network,
                "allow_secrets": self.constraints.allow_secrets,
            },
            "inputs": self.inputs,
            "acceptance_criteria": self.acceptance_criteria,
            "evidence_requirements": self.evidence_requirements,
            "metadata": self.metadata,
        })
    }
}

/// Validates a request body as TaskSpec v1, the way the original's union `TaskCreateV1 | TaskCreateLegacyV1` did:
///
/// 1. canonical: unknown fields forbidden at the top level and in `target` (dropped in `requested_by` and
///    `constraints`);
/// 2. legacy: unknown fields ignored everywhere; aliases `type`→`operation`, `payload`→`inputs` (only when
///    `inputs` is absent or `{}`), `target.repository`→`target.repo`; the canonical name wins.
///
/// When both fail the legacy model's errors are returned (they are the real problems), each `loc` starting with
/// `"body"`. Before that, a body that is not an object gives one error at `["body"]`, and any string or key
/// containing U+0000 gives one error at its location. The objective is trimmed and its length (5..4000) is
/// checked after trimming (SPEC §9.3).
pub fn parse_task_spec(body: &Value) -> Result<TaskSpec, Vec<ValidationError>> {
    let base = vec![LocPart::from("body")];
    let Value::Object(object) = body else {
        let mut checker = Checker::default();
        checker.model(body, &base);
        return Err(checker.errors);
    };
    if let Some(loc) = find_nul_char(body) {
        let mut full = base;
        full.extend(loc);
        return Err(vec![ValidationError::nul_char(full)]);
    }
    validate(object, &base, Model::Canonical).or_else(|_| validate(object, &base, Model::Legacy))
}

/// Which member of the union is being tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Model {
    /// `TaskCreateV1`.
    Canonical,
    /// `TaskCreateLegacyV1` (aliases, unknown fields ignored).
    Legacy,
}

const TOP_LEVEL_FIELDS: [&str; 11] = [
    "version",
    "idempotency_key",
    "requested_by",
    "objective",
    "operation",
    "target",
    "constraints",
    "inputs",
    "acceptance_criteria",
    "evidence_requirements",
    "metadata",
];
const TARGET_FIELDS: [&str; 3] = ["repo", "ref", "path"];
const OPERATIONS: [&str; 4] = ["code_change", "docs", "analysis", "ops"];
const ACTOR_KINDS: [&str; 3] = ["human", "agent", "system"];

/// `object[name]`, treating an explicit `null` as absent (for `Optional[...] = None` fields).
fn optional<'v>(object: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    object.get(name).filter(|value| !value.is_null())
}

/// Validates one member of the union; the errors are that member's, in field declaration order.
pub(crate) fn validate(
    object: &Map<String, Value>,
    base: &[LocPart],
    model: Model,
) -> Result<TaskSpec, Vec<ValidationError>> {
    let legacy = model == Model::Legacy;
    let mut checker = Checker::default();
    let at = |name: &str| child(base, name);

    let version = match object.get("version") {
        None => Some(SPEC_VERSION),
        Some(value) => checker.literal(value, &at("version"), &[SPEC_VERSION]),
    };

    let idempotency_key = match optional(object, "idempotency_key") {
        None => Some(None),
        Some(value) => checker.string(value, &at("idempotency_key"), 1, 256).map(Some),
    };

    let requested_by = match object.get("requested_by") {
        None => {
            checker.missing(at("requested_by"));
            None
        }
        Some(value) => checker
            .model(value, &at("requested_by"))
            .and_then(|fields| requested_by(&mut checker, fields, &at("requested_by"))),
    };

    let objective = match object.get("objective") {
        None => {
            checker.missing(at("objective"));
            None
        }
        Some(Value::String(text)) => {
            let trimmed = py_strip(text);
            checker.length(trimmed, &at("objective"), 5, 4000).then(|| trimmed.to_owned())
        }
        Some(value) => checker.string(value, &at("objective"), 5, 4000),
    };

    // Some(None): legitimately absent (legacy only); None: invalid.
    let operation = match (model, object.get("operation")) {
        (Model::Canonical, None) => {
            checker.missing(at("operation"));
            None
        }
        (Model::Legacy, None | Some(Value::Null)) => Some(None),
        (_, Some(value)) => checker.literal(value, &at("operation"), &OPERATIONS).and_then(Operation::parse).map(Some),
    };
    let legacy_type = match optional(object, "type").filter(|_| legacy) {
        None => Some(None),
        Some(value) => checker.literal(value, &at("type"), &OPERATIONS).and_then(Operation::parse).map(Some),
    };

    let target = match object.get("target") {
        None => {
            checker.missing(at("target"));
            None
        }
        Some(value) => {
            checker.model(value, &at("target")).and_then(|fields| target(&mut checker, fields, &at("target"), model))
        }
    };

    let constraints = match object.get("constraints") {
        None => Some(Constraints::default()),
        Some(value) => checker
            .model(value, &at("constraints"))
            .and_then(|fields| constraints(&mut checker, fields, &at("constraints"))),
    };

    let inputs = match object.get("inputs") {
        None => Some(Map::new()),
        Some(value) => checker.dict(value, &at("inputs")),
    };
    let payload = match optional(object, "payload").filter(|_| legacy) {
        None => Some(None),
        Some(value) => checker.dict(value, &at("payload")).map(Some),
    };

    let mut string_list = |name: &str| match object.get(name) {
        None => Some(Vec::new()),
        Some(value) => checker.string_list(value, &at(name)),
    };
    let acceptance_criteria = string_list("acceptance_criteria");
    let evidence_requirements = string_list("evidence_requirements");

    let metadata = match object.get("metadata") {
        None => Some(Map::new()),
        Some(value) => checker.dict(value, &at("metadata")),
    };

    if model == Model::Canonical {
        for key in object.keys().filter(|key| !TOP_LEVEL_FIELDS.contains(&key.as_str())) {
            checker.extra_forbidden(at(key));
        }
    }

    let (
        Some(version),
        Some(idempotency_key),
        Some(requested_by),
        Some(objective),
        Some(operation),
        Some(legacy_type),
        Some((repo, git_ref, path)),
        Some(constraints),
        Some(inputs),
        Some(payload),
        Some(acceptance_criteria),
        Some(evidence_requirements),
        Some(metadata),
        true,
    ) = (
        version,
        idempotency_key,
        requested_by,
        objective,
        operation,
        legacy_type,
        target,
        constraints,
        inputs,
        payload,
        acceptance_criteria,
        evidence_requirements,
        metadata,
        checker.errors.is_empty(),
    )
    else {
        return Err(checker.errors);
    };

    // The legacy model's after-validator: one error, at the model itself, operation first.
    let Some(operation) = operation.or(legacy_type) else {
        return Err(vec![value_error(base, "Either 'operation' or 'type' must be provided")]);
    };
    let Some(repo) = repo else {
        return Err(vec![value_error(base, "Either 'repo' or 'repository' must be provided")]);
    };
    let inputs = match payload {
        Some(payload) if inputs.is_empty() => payload,
        _ => inputs,
    };

    Ok(TaskSpec {
        version: version.to_owned(),
        idempotency_key,
        requested_by,
        objective,
        operation,
        target: Target { repo, git_ref, path },
        constraints,
        inputs,
        acceptance_criteria,
        evidence_requirements,
        metadata,
    })
}

fn value_error(loc: &[LocPart], message: &str) -> ValidationError {
    ValidationError::new(loc.to_vec(), "value_error", format!("Value error, {message}"))
}

/// `requested_by` (unknown keys dropped in both models).
fn requested_by(checker: &mut Checker, fields: &Map<String, Value>, loc: &[LocPart]) -> Option<RequestedBy> {
    let kind = match fields.get("kind") {
        None => {
            checker.missing(child(loc, "kind"));
            None
        }
        Some(value) => checker.literal(value, &child(loc, "kind"), &ACTOR_KINDS).and_then(ActorKind::parse),
    };
    let id = match fields.get("id") {
        None => {
            checker.missing(child(loc, "id"));
            None
        }
        Some(value) => checker.string(value, &child(loc, "id"), 1, 128),
    };
    let label = match optional(fields, "label") {
        None => Some(None),
        Some(value) => checker.string(value, &child(loc, "label"), 1, 256).map(Some),
    };
    Some(RequestedBy { kind: kind?, id: id?, label: label? })
}

/// `target`: `(repo, ref, path)`; `repo` is `None` only in the legacy model when neither `repo` nor `repository`
/// is given (the caller reports that).
fn target(
    checker: &mut Checker,
    fields: &Map<String, Value>,
    loc: &[LocPart],
    model: Model,
) -> Option<(Option<String>, String, String)> {
    let repo = match (model, fields.get("repo")) {
        (Model::Canonical, None) => {
            checker.missing(child(loc, "repo"));
            None
        }
        (Model::Legacy, None | Some(Value::Null)) => Some(None),
        (_, Some(value)) => checker.string(value, &child(loc, "repo"), 1, 256).map(Some),
    };
    let repository = match optional(fields, "repository").filter(|_| model == Model::Legacy) {
        None => Some(None),
        Some(value) => checker.string(value, &child(loc, "repository"), 1, 256).map(Some),
    };
    let git_ref = match fields.get("ref") {
        None => Some(DEFAULT_REF.to_owned()),
        Some(value) => checker.string(value, &child(loc, "ref"), 1, 256),
    };
    let path = match fields.get("path") {
        None => Some(String::new()),
        Some(value) => checker.string(value, &child(loc, "path"), 0, 512),
    };
    if model == Model::Canonical {
        for key in fields.keys().filter(|key| !TARGET_FIELDS.contains(&key.as_str())) {
            checker.extra_forbidden(child(loc, key.as_str()));
        }
    }
    let repo = repo?;
    Some((repo.or(repository?), git_ref?, path?))
}

/// `constraints` (unknown keys dropped in both models).
fn constraints(checker: &mut Checker, fields: &Map<String, Value>, loc: &[LocPart]) -> Option<Constraints> {
    let time_budget_seconds = match fields.get("time_budget_seconds") {
        None => Some(DEFAULT_TIME_BUDGET_SECONDS),
        Some(value) => checker
            .int(
                value,
                &child(loc, "time_budget_seconds"),
                i64::from(MIN_TIME_BUDGET_SECONDS),
                i64::from(MAX_TIME_BUDGET_SECONDS),
            )
            .and_then(|seconds| u32::try_from(seconds).ok()),
    };
    let mut flag = |name: &str| match fields.get(name) {
        None => Some(false),
        Some(value) => checker.bool(value, &child(loc, name)),
    };
    let allow_network = flag("allow_network");
    let allow_secrets = flag("allow_secrets");
    Some(Constraints {
        time_budget_seconds: time_budget_seconds?,
        allow_network: allow_network?,
        allow_secrets: allow_secrets?,
    })
}

/// Python's `str.strip()`: trims Unicode whitespace plus the separators U+001C..U+001F, which Python also counts
/// as whitespace.
pub(crate) fn py_strip(text: &str) -> &str {
    text.trim_matches(|character: char| character.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&character))
}
