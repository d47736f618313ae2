//! Task → CWOM: the four objects an enqueue creates (Repo get-or-create, ConstraintSnapshot, Issue,
//! ContextPacket), built as their GET JSON from the normalised spec (reference §5 with SPEC §9.4 and §9.9).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::spec::{Operation, TaskSpec};

/// Longest Issue title taken from the objective's first line, in characters.
const TITLE_MAX_CHARS: usize = 200;
/// CWOM `Repo.default_branch` limit, in characters (a task ref may be longer).
const DEFAULT_BRANCH_MAX_CHARS: usize = 128;

/// The ids of the four objects. As input to [`task_to_cwom`]: fresh ULIDs (`repo_id` is used only when the repo
/// is new). As output: the ids actually used (the existing repo's id when it was reused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CwomIds {
    /// The Repo (new, or the existing one with the same slug).
    pub repo_id: String,
    /// The ConstraintSnapshot.
    pub constraint_snapshot_id: String,
    /// The Issue (the task's `cwom_issue_id`).
    pub issue_id: String,
    /// The ContextPacket.
    pub context_packet_id: String,
}

impl CwomIds {
    /// The enqueue response's `cwom` block: `{repo_id, issue_id, context_packet_id, constraint_snapshot_id}`.
    pub fn to_json(&self) -> Value {
        json!({
            "repo_id": self.repo_id,
            "issue_id": self.issue_id,
            "context_packet_id": self.context_packet_id,
            "constraint_snapshot_id": self.constraint_snapshot_id,
        })
    }
}

/// The objects to create, each in its GET JSON shape with every key present. The caller also records the links
/// Issue↔ConstraintSnapshot and Issue↔ContextPacket (already reflected in the Issue's `constraints` and
/// `context_packets` lists).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskCwom {
    /// The ids used.
    pub ids: CwomIds,
    /// The new Repo; `None` when an existing repo (same slug) is reused unchanged.
    pub repo: Option<Value>,
    /// The ConstraintSnapshot (no `created_at`/`updated_at`; `captured_at` instead).
    pub constraint_snapshot: Value,
    /// The Issue, linked to the snapshot and the packet.
    pub issue: Value,
    /// The ContextPacket, for the Issue.
    pub context_packet: Value,
}

/// Builds the CWOM objects for an enqueued task.
///
/// * `spec`: the spec AFTER the policy gate (normalised repo, trimmed objective). The Repo slug is
///   `spec.target.repo`: look the existing repo up by that slug and pass its id as `existing_repo_id`.
/// * `trace_id`: the request's trace id, stamped on every object (SPEC §9.9).
/// * `now`: `created_at`/`updated_at` (and the snapshot's `captured_at`), rendered RFC 3339 with microseconds and
///   `Z`.
/// * `fresh_ids`: newly generated ULIDs.
pub fn task_to_cwom(
    spec: &TaskSpec,
    trace_id: &str,
    now: DateTime<Utc>,
    fresh_ids: CwomIds,
    existing_repo_id: Option<&str>,
) -> TaskCwom {
    let timestamp = now.to_rfc3339_opts(SecondsFormat::Micros, true);
    let ids = CwomIds { repo_id: existing_repo_id.map_or(fresh_ids.repo_id, str::to_owned), ..fresh_ids };
    let slug = spec.target.repo.as_str();
    let idempotency_key = spec.idempotency_key.as_deref();
    let constraints = spec.constraints;
    let requester = json!({
        "actor_kind": spec.requested_by.kind.as_str(),
        "actor_id": spec.requested_by.id,
        "display": spec.requested_by.label,
    });

    let repo = existing_repo_id.is_none().then(|| {
        json!({
            "kind": "Repo",
            "id": ids.repo_id,
            "trace_id": trace_id,
            "name": repo_name(slug),
            "slug": slug,
            "source": {"system": "jct", "external_id": slug, "url": null},
            "default_branch": truncate(&spec.target.git_ref, DEFAULT_BRANCH_MAX_CHARS),
            "visibility": "private",
            "owners": [],
            "policy": null,
            "links": [],
            "tags": [],
            "meta": {},
            "created_at": timestamp,
            "updated_at": timestamp,
        })
    });

    let tolerance = match (constraints.allow_network, constraints.allow_secrets) {
        (true, true) => "high",
        (true, false) | (false, true) => "medium",
        (false, false) => "low",
    };
    let constraint_snapshot = json!({
        "kind": "ConstraintSnapshot",
        "id": ids.constraint_snapshot_id,
        "trace_id": trace_id,
        "scope": "run",
        "captured_at": timestamp,
        "owner": requester,
        "constraints": {
            "time": {"available_minutes": constraints.time_budget_seconds / 60, "deadline": null},
            "energy": null,
            "health": null,
            "budget": null,
            "tools": null,
            "environment": null,
            "risk": {
                "tolerance": tolerance,
                "notes": format!(
                    "allow_network={}, allow_secrets={}",
                    python_bool(constraints.allow_network),
                    python_bool(constraints.allow_secrets)
                ),
            },
        },
        "tags": [],
        "meta": {
            "source": "jct_task",
            "idempotency_key": idempotency_key,
            "time_budget_seconds": constraints.time_budget_seconds,
            "allow_network": constraints.allow_network,
            "allow_secrets": constraints.allow_secrets,
        },
    });

    let criteria = if spec.acceptance_criteria.is_empty() {
        vec![spec.objective.clone()]
    } else {
        spec.acceptance_criteria.clone()
    };
    let issue = json!({
        "kind": "Issue",
        "id": ids.issue_id,
        "trace_id": trace_id,
        "repo": {"kind": "Repo", "id": ids.repo_id, "role": null},
        "title": issue_title(&spec.objective),
        "description": spec.objective,
        "type": issue_type(spec.operation),
        "priority": "P2",
        "status": "planned",
        "assignees": [requester],
        "watchers": [],
        "doctrine_refs": [],
        "constraints": [{"kind": "ConstraintSnapshot", "id": ids.constraint_snapshot_id}],
        "context_packets": [{"kind": "ContextPacket", "id": ids.context_packet_id}],
        "acceptance": {"criteria": criteria, "tests_expected": null},
        "relationships": {"parent": null, "blocks": [], "blocked_by": [], "duplicates": []},
        "runs": [],
        "tags": [],
        "meta": {
            "source": "jct_task",
            "idempotency_key": idempotency_key,
            "task_metadata": spec.metadata,
            "evidence_requirements": spec.evidence_requirements,
        },
        "created_at": timestamp,
        "updated_at": timestamp,
    });

    let working_path = if spec.target.path.is_empty() { "(root)" } else { spec.target.path.as_str() };
    let context_packet = json!({
        "kind": "ContextPacket",
        "id": ids.context_packet_id,
        "trace_id": trace_id,
        "for_issue": {"kind": "Issue", "id": ids.issue_id, "role": null},
        "version": "1.0",
        "summary": "Initial context from JCT task",
        "inputs": {"documents": [], "data_blobs": [], "links": []},
        "assumptions": [
            format!("Target branch: {}", spec.target.git_ref),
            format!("Working path: {working_path}"),
        ],
        "open_questions": [],
        "instructions": spec.objective,
        "doctrine_refs": [],
        "constraint_snapshot": {"kind": "ConstraintSnapshot", "id": ids.constraint_snapshot_id},
        "tags": [],
        "meta": {
            "source": "jct_task",
            "idempotency_key": idempotency_key,
            "acceptance_criteria": criteria,
            "evidence_requirements": spec.evidence_requirements,
            "task_ref": spec.target.git_ref,
            "task_path": spec.target.path,
            "task_inputs": spec.inputs,
        },
        "created_at": timestamp,
        "updated_at": timestamp,
    });

    TaskCwom { ids, repo, constraint_snapshot, issue, context_packet }
}

/// The CWOM IssueType for an operation.
fn issue_type(operation: Operation) -> &'static str {
    match operation {
        Operation::CodeChange => "feature",
        Operation::Docs => "doc",
        Operation::Analysis => "research",
        Operation::Ops => "ops",
    }
}

/// The first line of the objective (a trailing `\r` removed), cut to 200 characters; `"Untitled Task"` if blank.
fn issue_title(objective: &str) -> String {
    let first_line = objective.split('\n').next().unwrap_or_default();
    let first_line = first_line.strip_suffix('\r').unwrap_or(first_line);
    let title = truncate(first_line, TITLE_MAX_CHARS);
    if title.trim().is_empty() {
        "Untitled Task".to_owned()
    } else {
        title
    }
}

/// The part of the slug after the last `/`; the whole slug when that part is empty (e.g. `"org/"`), since a CWOM
/// Repo name must not be empty.
fn repo_name(slug: &str) -> &str {
    match slug.rsplit('/').next() {
        Some(name) if !name.is_empty() => name,
        _ => slug,
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// Python's spelling of a bool, as the original rendered it in the risk notes.
fn python_bool(flag: bool) -> &'static str {
    if flag {
        "True"
    } else {
        "False"
    }
}
