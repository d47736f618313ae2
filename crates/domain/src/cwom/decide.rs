//! The decisions of the `/cwom` routes: which events a create, a status change or a run update appends, and
//! which rules refuse it (references must exist, slugs and doctrine identities are unique). Pure: the caller
//! loads what a decision needs ([`references`], [`unique_key`], the current document) and passes it in.
//!
//! Create bodies arrive validated (types, lengths, enums, no unknown fields) and complete: every field of the
//! create schema present, defaults applied, absent optionals `null`, nested value objects with all their keys.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::event::{Action, Actor, EntityKind, EventData, NewEvent, StreamId};
use crate::task::lifecycle::format_ts;

use super::{doctrine_key, events, repo_slug_key, Status};

/// The actor of every `/cwom` command, as in the original.
pub const ACTOR_ID: &str = "cwom-service";

/// The note of the `created` event of an immutable object (ContextPacket, ConstraintSnapshot).
const IMMUTABLE_NOTE: &str = "Immutable object created";

/// Why a CWOM command is refused. `Display` is the original's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A reference that must exist does not (422).
    #[error("Referenced {kind} '{id}' does not exist")]
    MissingReference { kind: EntityKind, id: String },
    /// The slug belongs to another Repo (409).
    #[error("Repo with slug '{slug}' already exists")]
    DuplicateSlug { slug: String },
    /// The (namespace, name, version) belongs to another DoctrineRef (409).
    #[error("DoctrineRef '{namespace}/{name}@{version}' already exists")]
    DuplicateDoctrine { namespace: String, name: String, version: String },
    /// The object to change does not exist (404).
    #[error("{0} not found")]
    NotFound(EntityKind),
}

/// A create command: the new object's id, the request's trace id, the time, and the validated body.
#[derive(Debug, Clone, Copy)]
pub struct NewObject<'a> {
    pub id: &'a str,
    pub trace_id: &'a str,
    pub now: DateTime<Utc>,
    pub body: &'a Value,
}

/// The objects that exist among those a command references (see [`references`]).
#[derive(Debug, Clone, Default)]
pub struct Existing(HashSet<(EntityKind, String)>);

impl Existing {
    pub fn insert(&mut self, kind: EntityKind, id: impl Into<String>) {
        self.0.insert((kind, id.into()));
    }

    pub fn contains(&self, kind: EntityKind, id: &str) -> bool {
        self.0.contains(&(kind, id.to_owned()))
    }
}

/// What the caller loaded for a create decision.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Which of [`references`] exist.
    pub existing: Existing,
    /// Whether [`unique_key`] already belongs to another object.
    pub unique_key_taken: bool,
}

/// References that must exist, in the order the original checks them: JSON pointer into the body, kind.
fn required_refs(kind: EntityKind) -> &'static [(&'static str, EntityKind)] {
    match kind {
        EntityKind::Issue => &[("/repo/id", EntityKind::Repo)],
        EntityKind::ContextPacket => &[("/for_issue/id", EntityKind::Issue)],
        EntityKind::Run => &[("/for_issue/id", EntityKind::Issue), ("/repo/id", EntityKind::Repo)],
        EntityKind::Artifact => &[("/produced_by/id", EntityKind::Run), ("/for_issue/id", EntityKind::Issue)],
        _ => &[],
    }
}

/// Lists of refs in a create body that become links (each existing object once, in order; the others are
/// ignored, as the original ignored failed link inserts): JSON pointer, kind of the linked objects.
fn link_sources(kind: EntityKind) -> &'static [(&'static str, EntityKind)] {
    match kind {
        EntityKind::Issue => &[
            ("/doctrine_refs", EntityKind::DoctrineRef),
            ("/constraints", EntityKind::ConstraintSnapshot),
            ("/context_packets", EntityKind::ContextPacket),
        ],
        EntityKind::ContextPacket => &[("/doctrine_refs", EntityKind::DoctrineRef)],
        EntityKind::Run => &[
            ("/inputs/context_packets", EntityKind::ContextPacket),
            ("/inputs/doctrine_refs", EntityKind::DoctrineRef),
        ],
        _ => &[],
    }
}

fn text_at<'a>(body: &'a Value, pointer: &str) -> &'a str {
    body.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn ref_ids<'a>(body: &'a Value, pointer: &str) -> impl Iterator<Item = &'a str> {
    body.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("id").and_then(Value::as_str))
}

/// Every object a create body of `kind` references whose existence the decision needs.
pub fn references(kind: EntityKind, body: &Value) -> Vec<(EntityKind, String)> {
    let mut found: Vec<(EntityKind, String)> =
        required_refs(kind).iter().map(|(pointer, target)| (*target, text_at(body, pointer).to_owned())).collect();
    for (pointer, target) in link_sources(kind) {
        for id in ref_ids(body, pointer) {
            found.push((*target, id.to_owned()));
        }
    }
    found
}

/// The unique key a create body of `kind` claims (a Repo's slug, a DoctrineRef's identity), if any.
pub fn unique_key(kind: EntityKind, body: &Value) -> Option<String> {
    match kind {
        EntityKind::Repo => Some(repo_slug_key(text_at(body, "/slug"))),
        EntityKind::DoctrineRef => {
            Some(doctrine_key(text_at(body, "/namespace"), text_at(body, "/name"), text_at(body, "/version")))
        }
        _ => None,
    }
}

/// The rejection of a create body of `kind` whose [`unique_key`] belongs to another object.
pub fn duplicate(kind: EntityKind, body: &Value) -> Option<Rejection> {
    match kind {
        EntityKind::Repo => Some(Rejection::DuplicateSlug { slug: text_at(body, "/slug").to_owned() }),
        EntityKind::DoctrineRef => Some(Rejection::DuplicateDoctrine {
            namespace: text_at(body, "/namespace").to_owned(),
            name: text_at(body, "/name").to_owned(),
            version: text_at(body, "/version").to_owned(),
        }),
        _ => None,
    }
}

fn service_actor() -> Actor {
    Actor::system(ACTOR_ID)
}

/// Decides the events of creating an object of `kind`: its `created` event, then one `linked` event per link.
pub fn create(kind: EntityKind, command: &NewObject<'_>, loaded: &Loaded) -> Result<Vec<NewEvent>, Rejection> {
    let body = command.body;
    for (pointer, target) in required_refs(kind) {
        let id = text_at(body, pointer);
        if !loaded.existing.contains(*target, id) {
            return Err(Rejection::MissingReference { kind: *target, id: id.to_owned() });
        }
    }
    let key = unique_key(kind, body);
    if loaded.unique_key_taken {
        if let Some(rejection) = duplicate(kind, body) {
            return Err(rejection);
        }
    }

    let object = document(kind, command);
    let (event_type, note) = match kind {
        EntityKind::Repo => (events::REPO_CREATED, None),
        EntityKind::Issue => (events::ISSUE_CREATED, None),
        EntityKind::ContextPacket => (events::CONTEXT_PACKET_CREATED, Some(IMMUTABLE_NOTE)),
        EntityKind::ConstraintSnapshot => (events::CONSTRAINT_SNAPSHOT_CAPTURED, Some(IMMUTABLE_NOTE)),
        EntityKind::DoctrineRef => (events::DOCTRINE_REF_CREATED, None),
        EntityKind::Run => (events::RUN_CREATED, None),
        EntityKind::Artifact => (events::ARTIFACT_CREATED, None),
        EntityKind::Task => unreachable!("tasks are not CWOM objects"),
    };
    let mut created = NewEvent::new(
        EventData {
            stream: StreamId::new(kind, command.id),
            event_type: event_type.into(),
            schema_version: 1,
            payload: json!({ "object": object }),
            action: Action::Created,
            before: None,
            after: Some(object.clone()),
            note: note.map(str::to_owned),
        },
        service_actor(),
    );
    if let Some(key) = key {
        created = created.claiming(key);
    }

    let mut new_events = vec![created];
    for (pointer, target) in link_sources(kind) {
        let mut seen = HashSet::new();
        for id in ref_ids(body, pointer) {
            if loaded.existing.contains(*target, id) && seen.insert(id) {
                new_events.push(linked(kind, command.id, *target, id));
            }
        }
    }
    if kind == EntityKind::ContextPacket {
        // The Issue collects its packets: the original's automatic Issue↔ContextPacket link.
        let issue_id = text_at(body, "/for_issue/id");
        new_events.push(linked(EntityKind::Issue, issue_id, EntityKind::ContextPacket, command.id));
    }
    Ok(new_events)
}

/// `owner` gained a link to `linked_kind:linked_id`; the audit columns read as the original's `linked` entries.
/// On an Issue stream this is the same event the enqueue command appends.
pub fn linked(owner: EntityKind, owner_id: &str, linked_kind: EntityKind, linked_id: &str) -> NewEvent {
    let (event_type, id_field) = match owner {
        EntityKind::Issue => (events::ISSUE_LINKED, "issue_id"),
        EntityKind::ContextPacket => (events::CONTEXT_PACKET_LINKED, "context_packet_id"),
        _ => (events::RUN_LINKED, "run_id"),
    };
    NewEvent::new(
        EventData {
            stream: StreamId::new(owner, owner_id),
            event_type: event_type.into(),
            schema_version: 1,
            payload: json!({
                id_field: owner_id,
                "linked_kind": linked_kind.as_str(),
                "linked_id": linked_id,
            }),
            action: Action::Linked,
            before: None,
            after: Some(json!({ "linked_kind": linked_kind.as_str(), "linked_id": linked_id })),
            note: Some(format!("Linked to {linked_kind}:{linked_id}")),
        },
        service_actor(),
    )
}

/// A reference as the original renders one built from a foreign-key column: its kind is the target's.
fn fk_ref(kind: EntityKind, body: &Value, pointer: &str) -> Value {
    json!({ "kind": kind.as_str(), "id": text_at(body, pointer), "role": null })
}

/// The GET shape of a new object of `kind`.
fn document(kind: EntityKind, command: &NewObject<'_>) -> Value {
    let body = command.body;
    let now = format_ts(command.now);
    let mut object = Map::new();
    object.insert("kind".into(), json!(kind.as_str()));
    object.insert("id".into(), json!(command.id));
    object.insert("trace_id".into(), json!(command.trace_id));
    let copy = |fields: &[&str], object: &mut Map<String, Value>| {
        for field in fields {
            let value = body.get(*field).cloned().unwrap_or(Value::Null);
            object.insert((*field).to_owned(), value);
        }
    };
    match kind {
        EntityKind::Repo => copy(
            &["name", "slug", "source", "default_branch", "visibility", "owners", "policy", "links", "tags", "meta"],
            &mut object,
        ),
        EntityKind::Issue => {
            object.insert("repo".into(), fk_ref(EntityKind::Repo, body, "/repo/id"));
            copy(
                &[
                    "title",
                    "description",
                    "type",
                    "priority",
                    "status",
                    "assignees",
                    "watchers",
                    "acceptance",
                    "relationships",
                    "tags",
                    "meta",
                ],
                &mut object,
            );
            // Filled by `linked` events only.
            for list in ["doctrine_refs", "constraints", "context_packets"] {
                object.insert(list.into(), json!([]));
            }
            // The original never populates it.
            object.insert("runs".into(), json!([]));
        }
        EntityKind::ContextPacket => {
            object.insert("for_issue".into(), fk_ref(EntityKind::Issue, body, "/for_issue/id"));
            copy(
                &["version", "summary", "inputs", "assumptions", "open_questions", "instructions", "tags", "meta"],
                &mut object,
            );
            object.insert("doctrine_refs".into(), json!([]));
            let snapshot = match body.pointer("/constraint_snapshot/id") {
                Some(id) => json!({ "kind": "ConstraintSnapshot", "id": id }),
                None => Value::Null,
            };
            object.insert("constraint_snapshot".into(), snapshot);
        }
        EntityKind::ConstraintSnapshot => {
            copy(&["scope", "owner", "constraints", "tags", "meta"], &mut object);
            object.insert("captured_at".into(), json!(now));
        }
        EntityKind::DoctrineRef => copy(
            &[
                "namespace",
                "name",
                "version",
                "type",
                "priority",
                "statement",
                "rationale",
                "links",
                "applicability",
                "tags",
                "meta",
            ],
            &mut object,
        ),
        EntityKind::Run => {
            object.insert("for_issue".into(), fk_ref(EntityKind::Issue, body, "/for_issue/id"));
            object.insert("repo".into(), fk_ref(EntityKind::Repo, body, "/repo/id"));
            copy(&["mode", "executor", "inputs", "plan", "tags", "meta"], &mut object);
            object.insert("status".into(), json!(Status::Planned.as_str()));
            object.insert("telemetry".into(), json!({}));
            object.insert("cost".into(), json!({}));
            object.insert("outputs".into(), json!({}));
            object.insert("failure".into(), Value::Null);
            object.insert("artifact_root_uri".into(), Value::Null);
        }
        EntityKind::Artifact => {
            object.insert("produced_by".into(), fk_ref(EntityKind::Run, body, "/produced_by/id"));
            object.insert("for_issue".into(), fk_ref(EntityKind::Issue, body, "/for_issue/id"));
            copy(
                &[
                    "type",
                    "title",
                    "uri",
                    "digest",
                    "media_type",
                    "size_bytes",
                    "preview",
                    "verification",
                    "tags",
                    "meta",
                ],
                &mut object,
            );
        }
        EntityKind::Task => unreachable!("tasks are not CWOM objects"),
    }
    if kind != EntityKind::ConstraintSnapshot {
        object.insert("created_at".into(), json!(now));
        object.insert("updated_at".into(), json!(now));
    }
    Value::Object(object)
}

/// Decides a status change of an Issue or a Run (`current` is its GET shape): one `status_changed` event with
/// the original's `{"status": ...}` before/after and note, and `payload.changes` = status and `updated_at`.
/// Any status may follow any other (reference §4.6); `note` replaces the default note.
pub fn change_status(
    kind: EntityKind,
    current: &Value,
    status: Status,
    now: DateTime<Utc>,
    note: Option<String>,
) -> NewEvent {
    let changes = json!({ "status": status.as_str(), "updated_at": format_ts(now) });
    status_changed(kind, current, changes, note)
}

fn status_changed(kind: EntityKind, current: &Value, changes: Value, note: Option<String>) -> NewEvent {
    let old = current.get("status").cloned().unwrap_or(Value::Null);
    let new = changes["status"].clone();
    let event_type = match kind {
        EntityKind::Issue => events::ISSUE_STATUS_CHANGED,
        _ => events::RUN_STATUS_CHANGED,
    };
    let note = note.unwrap_or_else(|| {
        format!("Status changed: {} -> {}", old.as_str().unwrap_or_default(), new.as_str().unwrap_or_default())
    });
    NewEvent::new(
        EventData {
            stream: StreamId::new(kind, current["id"].as_str().unwrap_or_default()),
            event_type: event_type.into(),
            schema_version: 1,
            payload: json!({ "changes": changes }),
            action: Action::StatusChanged,
            before: Some(json!({ "status": old })),
            after: Some(json!({ "status": new })),
            note: Some(note),
        },
        service_actor(),
    )
}

/// The fields `PATCH /cwom/runs/{id}` may change; each given one replaces the old value wholesale.
const RUN_UPDATE_FIELDS: [&str; 5] = ["status", "telemetry", "cost", "outputs", "failure"];

/// Decides `PATCH /cwom/runs/{id}` (`current` is the Run's GET shape, `update` the given fields): as in the
/// original, a `status_changed` event when the status changes (that event alone, carrying every change), else
/// an `updated` event with the whole Run before and after.
pub fn update_run(current: &Value, update: &Map<String, Value>, now: DateTime<Utc>) -> NewEvent {
    let mut changes = Map::new();
    for field in RUN_UPDATE_FIELDS {
        if let Some(value) = update.get(field) {
            changes.insert(field.to_owned(), value.clone());
        }
    }
    changes.insert("updated_at".into(), json!(format_ts(now)));
    let status_changes = changes.get("status").is_some_and(|status| Some(status) != current.get("status"));
    if status_changes {
        return status_changed(EntityKind::Run, current, Value::Object(changes), None);
    }
    let mut after = current.clone();
    if let Some(document) = after.as_object_mut() {
        for (field, value) in &changes {
            document.insert(field.clone(), value.clone());
        }
    }
    NewEvent::new(
        EventData {
            stream: StreamId::new(EntityKind::Run, current["id"].as_str().unwrap_or_default()),
            event_type: events::RUN_UPDATED.into(),
            schema_version: 1,
            payload: json!({ "changes": changes }),
            action: Action::Updated,
            before: Some(current.clone()),
            after: Some(after),
            note: None,
        },
        service_actor(),
    )
}
