//! CWOM decisions and fold: given what exists, when a command arrives, then these events or this rejection.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};

use super::*;
use crate::event::{Action, ActorKind, EntityKind, NewEvent, StreamId};

const REPO: &str = "01J0000000000000000000REPO";
const ISSUE: &str = "01J000000000000000000ISSUE";
const PACKET: &str = "01J00000000000000000PACKET";
const SNAPSHOT: &str = "01J0000000000000000SNAPSHT";
const DOCTRINE: &str = "01J0000000000000000DOCTRIN";
const RUN: &str = "01J00000000000000000000RUN";
const NEW: &str = "01J00000000000000000000NEW";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
}

const NOW: &str = "2026-01-02T03:04:05.000000Z";

fn command(body: &Value) -> NewObject<'_> {
    NewObject { id: NEW, trace_id: "trace-1", now: now(), body }
}

fn existing(objects: &[(EntityKind, &str)]) -> Loaded {
    let mut loaded = Loaded::default();
    for (kind, id) in objects {
        loaded.existing.insert(*kind, *id);
    }
    loaded
}

fn types(events: &[NewEvent]) -> Vec<&str> {
    events.iter().map(|event| event.data.event_type.as_str()).collect()
}

fn reference(kind: &str, id: &str) -> Value {
    json!({"kind": kind, "id": id, "role": null})
}

fn repo_body() -> Value {
    json!({
        "name": "svc", "slug": "acme/svc",
        "source": {"system": "github", "external_id": null, "url": null},
        "default_branch": "main", "visibility": "private", "owners": [], "policy": null,
        "links": [], "tags": ["x"], "meta": {"a": 1}
    })
}

fn issue_body() -> Value {
    json!({
        "repo": {"kind": "Issue", "id": REPO, "role": "home"},
        "title": "Fix it", "description": "", "type": "bug", "priority": "P2", "status": "planned",
        "assignees": [], "watchers": [],
        "doctrine_refs": [reference("DoctrineRef", DOCTRINE), reference("DoctrineRef", DOCTRINE),
                          reference("DoctrineRef", "01J000000000000000000GHOST")],
        "constraints": [reference("ConstraintSnapshot", SNAPSHOT)],
        "context_packets": [],
        "acceptance": {"criteria": [], "tests_expected": null},
        "relationships": {"parent": null, "blocks": [], "blocked_by": [], "duplicates": []},
        "tags": [], "meta": {}
    })
}

fn packet_body() -> Value {
    json!({
        "for_issue": reference("Issue", ISSUE), "version": "1.0", "summary": "What we know",
        "inputs": {"documents": [], "data_blobs": [], "links": []},
        "assumptions": [], "open_questions": [], "instructions": "",
        "doctrine_refs": [reference("DoctrineRef", DOCTRINE)],
        "constraint_snapshot": reference("ConstraintSnapshot", SNAPSHOT),
        "tags": [], "meta": {}
    })
}

fn run_body() -> Value {
    json!({
        "for_issue": reference("Issue", ISSUE), "repo": reference("Repo", REPO), "mode": "agent",
        "executor": {"actor": {"actor_kind": "agent", "actor_id": "a1", "display": null},
                     "runtime": "local", "toolchain": []},
        "inputs": {"context_packets": [reference("ContextPacket", PACKET)],
                   "doctrine_refs": [reference("DoctrineRef", DOCTRINE)],
                   "constraint_snapshot": null},
        "plan": {"steps": [], "risk_notes": []}, "tags": [], "meta": {}
    })
}

fn artifact_body() -> Value {
    json!({
        "produced_by": reference("Run", RUN), "for_issue": reference("Issue", ISSUE), "type": "pr",
        "title": "The PR", "uri": "https://example.com/pr/1", "digest": null, "media_type": null,
        "size_bytes": null, "preview": null,
        "verification": {"status": "unverified", "checks": []}, "tags": [], "meta": {}
    })
}

#[test]
fn a_repo_is_created_with_its_whole_get_shape_and_claims_its_slug() {
    let body = repo_body();
    let events = create(EntityKind::Repo, &command(&body), &Loaded::default()).unwrap();
    assert_eq!(types(&events), ["RepoCreated"]);
    let event = &events[0];
    assert_eq!(event.unique_keys, ["repo_slug:acme/svc"]);
    assert_eq!(event.actor.kind, ActorKind::System);
    assert_eq!(event.actor.id, "cwom-service");
    assert_eq!(event.data.action, Action::Created);
    assert_eq!(event.data.before, None);
    assert_eq!(event.data.note, None);
    let object = &event.data.payload["object"];
    assert_eq!(event.data.after.as_ref(), Some(object));
    assert_eq!(
        *object,
        json!({
            "kind": "Repo", "id": NEW, "trace_id": "trace-1", "name": "svc", "slug": "acme/svc",
            "source": {"system": "github", "external_id": null, "url": null},
            "default_branch": "main", "visibility": "private", "owners": [], "policy": null,
            "links": [], "tags": ["x"], "meta": {"a": 1}, "created_at": NOW, "updated_at": NOW
        })
    );
}

#[test]
fn a_taken_slug_or_doctrine_identity_is_refused_with_the_original_messages() {
    let taken = Loaded { unique_key_taken: true, ..Loaded::default() };
    let body = repo_body();
    let rejection = create(EntityKind::Repo, &command(&body), &taken).unwrap_err();
    assert_eq!(rejection.to_string(), "Repo with slug 'acme/svc' already exists");

    let doctrine = json!({"namespace": "org", "name": "tests", "version": "1", "type": "policy"});
    assert_eq!(unique_key(EntityKind::DoctrineRef, &doctrine).as_deref(), Some("doctrine:org/tests@1"));
    let rejection = create(EntityKind::DoctrineRef, &command(&doctrine), &taken).unwrap_err();
    assert_eq!(rejection.to_string(), "DoctrineRef 'org/tests@1' already exists");
    let events = create(EntityKind::DoctrineRef, &command(&doctrine), &Loaded::default()).unwrap();
    assert_eq!(types(&events), ["DoctrineRefCreated"]);
    assert_eq!(events[0].unique_keys, ["doctrine:org/tests@1"]);
}

#[test]
fn an_issue_needs_its_repo() {
    let body = issue_body();
    let rejection = create(EntityKind::Issue, &command(&body), &Loaded::default()).unwrap_err();
    assert_eq!(rejection, Rejection::MissingReference { kind: EntityKind::Repo, id: REPO.into() });
    assert_eq!(rejection.to_string(), format!("Referenced Repo '{REPO}' does not exist"));
}

#[test]
fn an_issue_links_each_existing_listed_object_once_and_ignores_the_rest() {
    let body = issue_body();
    let loaded = existing(&[
        (EntityKind::Repo, REPO),
        (EntityKind::DoctrineRef, DOCTRINE),
        (EntityKind::ConstraintSnapshot, SNAPSHOT),
    ]);
    let events = create(EntityKind::Issue, &command(&body), &loaded).unwrap();
    assert_eq!(types(&events), ["IssueCreated", "IssueLinked", "IssueLinked"]);
    let object = &events[0].data.payload["object"];
    assert_eq!(
        object["repo"],
        json!({"kind": "Repo", "id": REPO, "role": null}),
        "a foreign-key ref: the target's kind, no role"
    );
    for list in ["doctrine_refs", "constraints", "context_packets", "runs"] {
        assert_eq!(object[list], json!([]), "{list} is filled by links only");
    }
    assert_eq!(object["type"], "bug");
    let link = &events[1];
    assert_eq!(link.data.stream, StreamId::new(EntityKind::Issue, NEW));
    assert_eq!(link.data.action, Action::Linked);
    assert_eq!(link.data.payload, json!({"issue_id": NEW, "linked_kind": "DoctrineRef", "linked_id": DOCTRINE}));
    assert_eq!(link.data.after, Some(json!({"linked_kind": "DoctrineRef", "linked_id": DOCTRINE})));
    assert_eq!(link.data.note.as_deref(), Some(format!("Linked to DoctrineRef:{DOCTRINE}").as_str()));
    assert_eq!(events[2].data.payload["linked_kind"], "ConstraintSnapshot");

    // Folded, the Issue shows its links.
    let issue = fold(EntityKind::Issue, events.iter().map(|event| (event.data.action, &event.data.payload))).unwrap();
    assert_eq!(issue["doctrine_refs"], json!([{"kind": "DoctrineRef", "id": DOCTRINE}]));
    assert_eq!(issue["constraints"], json!([{"kind": "ConstraintSnapshot", "id": SNAPSHOT}]));
}

#[test]
fn a_context_packet_is_immutable_links_its_doctrine_and_is_collected_by_its_issue() {
    let body = packet_body();
    let rejection = create(EntityKind::ContextPacket, &command(&body), &Loaded::default());
    assert_eq!(rejection.unwrap_err().to_string(), format!("Referenced Issue '{ISSUE}' does not exist"));
    let loaded = existing(&[(EntityKind::Issue, ISSUE), (EntityKind::DoctrineRef, DOCTRINE)]);
    let events = create(EntityKind::ContextPacket, &command(&body), &loaded).unwrap();
    assert_eq!(types(&events), ["ContextPacketCreated", "ContextPacketLinked", "IssueLinked"]);
    assert_eq!(events[0].data.note.as_deref(), Some("Immutable object created"));
    let object = &events[0].data.payload["object"];
    assert_eq!(object["constraint_snapshot"], json!({"kind": "ConstraintSnapshot", "id": SNAPSHOT}));
    assert_eq!(object["for_issue"], reference("Issue", ISSUE));
    assert_eq!(object["doctrine_refs"], json!([]));
    assert_eq!(
        events[1].data.payload,
        json!({"context_packet_id": NEW, "linked_kind": "DoctrineRef", "linked_id": DOCTRINE})
    );
    assert_eq!(events[2].data.stream, StreamId::new(EntityKind::Issue, ISSUE));
    assert_eq!(events[2].data.payload, json!({"issue_id": ISSUE, "linked_kind": "ContextPacket", "linked_id": NEW}));
}

#[test]
fn a_constraint_snapshot_is_captured_now_and_has_no_created_at() {
    let body = json!({
        "scope": "repo", "owner": {"actor_kind": "human", "actor_id": "ann", "display": null},
        "constraints": {"time": null, "energy": null, "health": null, "budget": null, "tools": null,
                        "environment": null, "risk": null},
        "tags": [], "meta": {}
    });
    let events = create(EntityKind::ConstraintSnapshot, &command(&body), &Loaded::default()).unwrap();
    assert_eq!(types(&events), ["ConstraintSnapshotCaptured"]);
    let object = &events[0].data.payload["object"];
    assert_eq!(object["captured_at"], NOW);
    assert!(object.get("created_at").is_none() && object.get("updated_at").is_none());
    assert_eq!(object["kind"], "ConstraintSnapshot");
}

#[test]
fn a_run_checks_its_issue_then_its_repo_starts_planned_and_links_its_inputs() {
    let body = run_body();
    let rejection = create(EntityKind::Run, &command(&body), &Loaded::default()).unwrap_err();
    assert_eq!(
        rejection.to_string(),
        format!("Referenced Issue '{ISSUE}' does not exist"),
        "the issue is checked first"
    );
    let rejection = create(EntityKind::Run, &command(&body), &existing(&[(EntityKind::Issue, ISSUE)])).unwrap_err();
    assert_eq!(rejection.to_string(), format!("Referenced Repo '{REPO}' does not exist"));
    let loaded = existing(&[
        (EntityKind::Issue, ISSUE),
        (EntityKind::Repo, REPO),
        (EntityKind::ContextPacket, PACKET),
        (EntityKind::DoctrineRef, DOCTRINE),
    ]);
    let events = create(EntityKind::Run, &command(&body), &loaded).unwrap();
    assert_eq!(types(&events), ["RunCreated", "RunLinked", "RunLinked"]);
    let object = &events[0].data.payload["object"];
    assert_eq!(object["status"], "planned");
    assert_eq!(object["telemetry"], json!({}));
    assert_eq!(object["cost"], json!({}));
    assert_eq!(object["outputs"], json!({}));
    assert_eq!(object["failure"], Value::Null);
    assert_eq!(object["artifact_root_uri"], Value::Null);
    assert_eq!(object["inputs"], body["inputs"], "inputs are kept as given");
    assert_eq!(events[1].data.payload, json!({"run_id": NEW, "linked_kind": "ContextPacket", "linked_id": PACKET}));
    assert_eq!(events[2].data.payload["linked_kind"], "DoctrineRef");
    // Runs have no list field: the fold leaves the document as created.
    let run = fold(EntityKind::Run, events.iter().map(|event| (event.data.action, &event.data.payload))).unwrap();
    assert_eq!(&run, object);
}

#[test]
fn an_artifact_checks_its_run_then_its_issue() {
    let body = artifact_body();
    let rejection = create(EntityKind::Artifact, &command(&body), &Loaded::default()).unwrap_err();
    assert_eq!(rejection.to_string(), format!("Referenced Run '{RUN}' does not exist"));
    let rejection = create(EntityKind::Artifact, &command(&body), &existing(&[(EntityKind::Run, RUN)])).unwrap_err();
    assert_eq!(rejection.to_string(), format!("Referenced Issue '{ISSUE}' does not exist"));
    let loaded = existing(&[(EntityKind::Run, RUN), (EntityKind::Issue, ISSUE)]);
    let events = create(EntityKind::Artifact, &command(&body), &loaded).unwrap();
    assert_eq!(types(&events), ["ArtifactCreated"]);
    assert_eq!(events[0].data.payload["object"]["produced_by"], reference("Run", RUN));
}

#[test]
fn references_lists_what_a_decision_must_look_up() {
    assert_eq!(
        references(EntityKind::Run, &run_body()),
        [
            (EntityKind::Issue, ISSUE.to_owned()),
            (EntityKind::Repo, REPO.to_owned()),
            (EntityKind::ContextPacket, PACKET.to_owned()),
            (EntityKind::DoctrineRef, DOCTRINE.to_owned()),
        ]
    );
    assert!(references(EntityKind::Repo, &repo_body()).is_empty());
}

fn issue_document() -> Value {
    let body = issue_body();
    let loaded = existing(&[(EntityKind::Repo, REPO)]);
    let events = create(EntityKind::Issue, &command(&body), &loaded).unwrap();
    events[0].data.payload["object"].clone()
}

#[test]
fn a_status_change_records_before_after_and_the_original_note() {
    let issue = issue_document();
    let later = Utc.with_ymd_and_hms(2026, 1, 3, 0, 0, 0).unwrap();
    let event = change_status(EntityKind::Issue, &issue, Status::Running, later, None);
    assert_eq!(event.data.event_type, "IssueStatusChanged");
    assert_eq!(event.data.stream, StreamId::new(EntityKind::Issue, NEW));
    assert_eq!(event.data.action, Action::StatusChanged);
    assert_eq!(event.data.before, Some(json!({"status": "planned"})));
    assert_eq!(event.data.after, Some(json!({"status": "running"})));
    assert_eq!(event.data.note.as_deref(), Some("Status changed: planned -> running"));
    assert_eq!(
        event.data.payload,
        json!({"changes": {"status": "running", "updated_at": "2026-01-03T00:00:00.000000Z"}})
    );
    let after = apply(Some(issue.clone()), EntityKind::Issue, event.data.action, &event.data.payload).unwrap();
    assert_eq!(after["status"], "running");
    assert_eq!(after["updated_at"], "2026-01-03T00:00:00.000000Z");
    assert_eq!(after["created_at"], issue["created_at"]);
}

fn run_document() -> Value {
    let body = run_body();
    let loaded = existing(&[(EntityKind::Issue, ISSUE), (EntityKind::Repo, REPO)]);
    create(EntityKind::Run, &command(&body), &loaded).unwrap()[0].data.payload["object"].clone()
}

#[test]
fn a_run_update_that_changes_the_status_is_one_status_changed_event_with_every_change() {
    let run = run_document();
    let mut update = Map::new();
    update.insert("status".into(), json!("running"));
    update.insert("cost".into(), json!({"usd": 1.5, "tokens": null, "compute_s": null}));
    update.insert("bogus".into(), json!(1));
    let event = update_run(&run, &update, now());
    assert_eq!(event.data.event_type, "RunStatusChanged");
    assert_eq!(event.data.action, Action::StatusChanged);
    assert_eq!(event.data.before, Some(json!({"status": "planned"})));
    assert_eq!(event.data.after, Some(json!({"status": "running"})));
    assert_eq!(
        event.data.payload["changes"],
        json!({"status": "running", "cost": {"usd": 1.5, "tokens": null, "compute_s": null},
               "updated_at": NOW}),
        "only the updatable fields"
    );
}

#[test]
fn a_run_update_without_a_status_change_is_updated_with_the_whole_run_before_and_after() {
    let run = run_document();
    let mut update = Map::new();
    update.insert("status".into(), json!("planned"));
    update.insert("failure".into(), json!({"category": "test", "message": "red"}));
    let later = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
    let event = update_run(&run, &update, later);
    assert_eq!(event.data.event_type, "RunUpdated");
    assert_eq!(event.data.action, Action::Updated);
    assert_eq!(event.data.before.as_ref(), Some(&run));
    let after = event.data.after.clone().unwrap();
    assert_eq!(after["failure"], json!({"category": "test", "message": "red"}));
    assert_eq!(after["updated_at"], "2026-02-01T00:00:00.000000Z");
    assert_eq!(event.data.note, None);
    let folded = apply(Some(run), EntityKind::Run, event.data.action, &event.data.payload);
    assert_eq!(folded, Some(after), "the fold reaches the recorded after");
}

#[test]
fn the_fold_follows_the_generic_contract() {
    let object = json!({"kind": "Issue", "id": ISSUE, "status": "planned", "context_packets": []});
    let created = json!({"object": object});
    let link = json!({"issue_id": ISSUE, "linked_kind": "ContextPacket", "linked_id": PACKET});
    let unknown_link = json!({"linked_kind": "Run", "linked_id": RUN});
    let changes = json!({"changes": {"status": "done", "updated_at": NOW}});
    let second_created = json!({"object": {"kind": "Issue", "id": "other"}});
    let stream = [
        (Action::Linked, &link), // before created: nothing to link
        (Action::Created, &created),
        (Action::Linked, &link),
        (Action::Linked, &link),
        (Action::Linked, &unknown_link),
        (Action::StatusChanged, &changes),
        (Action::Created, &second_created),
        (Action::Deleted, &created),
    ];
    let issue = fold(EntityKind::Issue, stream).unwrap();
    assert_eq!(
        issue,
        json!({
            "kind": "Issue", "id": ISSUE, "status": "done", "updated_at": NOW,
            "context_packets": [{"kind": "ContextPacket", "id": PACKET}]
        })
    );
    // A created event without an object creates nothing; a missing list is started.
    assert_eq!(fold(EntityKind::Run, [(Action::Created, &json!({}))]), None);
    let bare = json!({"object": {"kind": "ContextPacket", "id": PACKET}});
    let doctrine = json!({"linked_kind": "DoctrineRef", "linked_id": DOCTRINE});
    let packet = fold(EntityKind::ContextPacket, [(Action::Created, &bare), (Action::Linked, &doctrine)]).unwrap();
    assert_eq!(packet["doctrine_refs"], json!([{"kind": "DoctrineRef", "id": DOCTRINE}]));
}

#[test]
fn cwom_kinds_and_link_lists() {
    assert!(KINDS.iter().all(|kind| is_cwom(*kind)));
    assert!(!is_cwom(EntityKind::Task));
    assert_eq!(link_list(EntityKind::Issue, EntityKind::ConstraintSnapshot), Some("constraints"));
    assert_eq!(link_list(EntityKind::Run, EntityKind::ContextPacket), None);
    assert_eq!(Status::parse("under_review"), Some(Status::UnderReview));
    assert_eq!(Status::parse("cancelled"), None);
}

#[test]
fn the_objects_enqueue_creates_fold_to_the_shapes_the_adapter_builds() {
    use crate::task::lifecycle::{enqueue, EnqueueTask};
    use crate::task::{evaluate, parse_task_spec, task_to_cwom, CwomIds, PolicyConfig};

    let body = json!({
        "requested_by": {"kind": "human", "id": "ann"},
        "objective": "Add a health check",
        "operation": "code_change",
        "target": {"repo": "acme/svc"}
    });
    let spec = parse_task_spec(&body).unwrap();
    let spec = evaluate(&spec, &PolicyConfig::from_prefixes("acme/")).unwrap();
    let ids = CwomIds {
        repo_id: REPO.into(),
        constraint_snapshot_id: SNAPSHOT.into(),
        issue_id: ISSUE.into(),
        context_packet_id: PACKET.into(),
    };
    let cwom = task_to_cwom(&spec, "trace-1", now(), ids, None);
    let events =
        enqueue(&EnqueueTask { spec: &spec, task_id: NEW, trace_id: "trace-1", now: now(), cwom: Some(&cwom) });
    let folded = |kind: EntityKind, id: &str| {
        fold(
            kind,
            events
                .iter()
                .filter(|event| event.data.stream == StreamId::new(kind, id))
                .map(|event| (event.data.action, &event.data.payload)),
        )
    };
    assert_eq!(folded(EntityKind::Repo, REPO).as_ref(), cwom.repo.as_ref());
    assert_eq!(folded(EntityKind::ConstraintSnapshot, SNAPSHOT), Some(cwom.constraint_snapshot.clone()));
    assert_eq!(folded(EntityKind::Issue, ISSUE), Some(cwom.issue.clone()));
    assert_eq!(folded(EntityKind::ContextPacket, PACKET), Some(cwom.context_packet.clone()));
}
