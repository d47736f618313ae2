//! CWOM v0.1 through HTTP: every `/cwom` route of the seven core kinds and its errors (404, 405, 409, 422), the
//! events and audit columns behind each change, objects created by enqueue seen through `/cwom`, the causality
//! chain Issue + ContextPacket + ConstraintSnapshot + DoctrineRef → Run → Artifact, and the `cwom` read model
//! rebuilt from the log.

use domain::event::{Action, Actor, EntityKind, EventData, NewEvent, StreamId};
use serde_json::{json, Value};

use crate::harness::{status_and_json, test_config, valid_task, TestApp};

const UNKNOWN: &str = "01J00000000000000000000000";

async fn post(test: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    post_traced(test, path, body, "cwom-trace").await
}

async fn post_traced(test: &TestApp, path: &str, body: &Value, trace: &str) -> (u16, Value) {
    let response = test.client.post(path).header("X-Trace-Id", trace).body_json(body).send().await;
    status_and_json(response).await
}

async fn get(test: &TestApp, path: &str) -> (u16, Value) {
    status_and_json(test.client.get(path).send().await).await
}

async fn patch(test: &TestApp, path: &str, body: Option<&Value>) -> (u16, Value) {
    let request = test.client.patch(path).header("X-Trace-Id", "cwom-trace");
    let request = match body {
        Some(body) => request.body_json(body),
        None => request,
    };
    status_and_json(request.send().await).await
}

/// Creates an object and returns it; panics unless the answer is 201 `{"status": "success", key: {...}}`.
async fn create(test: &TestApp, path: &str, key: &str, body: &Value) -> Value {
    let (status, created) = post(test, path, body).await;
    assert_eq!(status, 201, "POST {path}: {created}");
    assert_eq!(created["status"], "success");
    assert_eq!(created.as_object().unwrap().len(), 2, "{created}");
    created[key].clone()
}

fn id(object: &Value) -> &str {
    object["id"].as_str().expect("an id")
}

fn reference(kind: &str, id: &str) -> Value {
    json!({"kind": kind, "id": id})
}

fn repo_body(slug: &str) -> Value {
    json!({"name": "Service", "slug": slug, "source": {"system": "github"}})
}

fn issue_body(repo_id: &str) -> Value {
    json!({"repo": reference("Repo", repo_id), "title": "Add a health check", "type": "feature"})
}

fn packet_body(issue_id: &str) -> Value {
    json!({"for_issue": reference("Issue", issue_id), "version": "1.0", "summary": "What we know"})
}

fn snapshot_body() -> Value {
    json!({"scope": "repo", "owner": {"actor_kind": "human", "actor_id": "ann"}})
}

fn doctrine_body(namespace: &str, name: &str, version: &str) -> Value {
    json!({
        "namespace": namespace, "name": name, "version": version, "type": "policy",
        "statement": "Every change has a test."
    })
}

fn run_body(issue_id: &str, repo_id: &str) -> Value {
    json!({
        "for_issue": reference("Issue", issue_id), "repo": reference("Repo", repo_id), "mode": "agent",
        "executor": {"actor": {"actor_kind": "agent", "actor_id": "claude"}, "runtime": "local"}
    })
}

fn artifact_body(run_id: &str, issue_id: &str) -> Value {
    json!({
        "produced_by": reference("Run", run_id), "for_issue": reference("Issue", issue_id), "type": "pr",
        "title": "The pull request", "uri": "https://example.com/pr/1"
    })
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array().unwrap_or_else(|| panic!("a list: {list}")).iter().map(id).collect()
}

fn assert_timestamp(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("a timestamp: {value}"));
    let bytes = text.as_bytes();
    let shape_ok = text.len() == 27
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            4 | 7 => *byte == b'-',
            10 => *byte == b'T',
            13 | 16 => *byte == b':',
            19 => *byte == b'.',
            26 => *byte == b'Z',
            _ => byte.is_ascii_digit(),
        });
    assert!(shape_ok, "RFC 3339 with microseconds and Z: {text}");
}

/// 422 with a FastAPI-style list whose first error is at `loc_start`.
fn assert_validation_error(status: u16, body: &Value, loc_start: &str) {
    assert_eq!(status, 422, "{body}");
    let errors = body["detail"].as_array().unwrap_or_else(|| panic!("a list: {body}"));
    assert_eq!(errors[0]["loc"][0], loc_start, "{body}");
    assert!(errors[0]["msg"].is_string() && errors[0]["type"].is_string());
}

#[tokio::test]
async fn repos_are_created_read_listed_and_their_slugs_are_unique() {
    let test = TestApp::spawn().await;
    let repo = create(&test, "/cwom/repos", "repo", &repo_body("acme/svc")).await;
    assert_eq!(id(&repo).len(), 26, "a ULID");
    assert_eq!(
        repo,
        json!({
            "kind": "Repo", "id": id(&repo), "trace_id": "cwom-trace", "name": "Service", "slug": "acme/svc",
            "source": {"system": "github", "external_id": null, "url": null},
            "default_branch": "main", "visibility": "private", "owners": [], "policy": null,
            "links": [], "tags": [], "meta": {},
            "created_at": repo["created_at"], "updated_at": repo["created_at"]
        })
    );
    assert_timestamp(&repo["created_at"]);
    let (status, fetched) = get(&test, &format!("/cwom/repos/{}", id(&repo))).await;
    assert_eq!((status, &fetched), (200, &repo));

    // A duplicate slug is a 409 with the original's message, and writes nothing.
    let n_events = test.events().await.len();
    let (status, conflict) = post(&test, "/cwom/repos", &repo_body("acme/svc")).await;
    assert_eq!((status, conflict), (409, json!({"detail": "Repo with slug 'acme/svc' already exists"})));
    assert_eq!(test.events().await.len(), n_events);

    let public = json!({
        "name": "Lib", "slug": "acme/lib", "source": {"system": "gitlab", "url": "https://gitlab.com/acme/lib"},
        "default_branch": "trunk", "visibility": "public",
        "owners": [{"actor_kind": "human", "actor_id": "ann", "display": "Ann"}],
        "policy": {"allowed_tools": ["git"]}, "links": ["https://acme.dev"], "tags": ["core"],
        "meta": {"tier": 1}
    });
    let lib = create(&test, "/cwom/repos", "repo", &public).await;
    assert_eq!(lib["policy"], json!({"allowed_tools": ["git"], "secrets_profile": null}));
    assert_eq!(lib["owners"][0]["display"], "Ann");
    let (_, all) = get(&test, "/cwom/repos").await;
    assert_eq!(ids(&all), [id(&lib), id(&repo)], "newest first");
    let (_, public_only) = get(&test, "/cwom/repos?visibility=public").await;
    assert_eq!(ids(&public_only), [id(&lib)]);
    let (_, internal) = get(&test, "/cwom/repos?visibility=internal").await;
    assert_eq!(internal, json!([]));
    let (_, page) = get(&test, "/cwom/repos?limit=1&offset=1").await;
    assert_eq!(ids(&page), [id(&repo)]);
    let (status, _) = get(&test, "/cwom/repos?limit=1000&offset=0").await;
    assert_eq!(status, 200);

    for bad in ["?limit=0", "?limit=1001", "?offset=-1", "?limit=x", "?visibility=secret"] {
        let (status, body) = get(&test, &format!("/cwom/repos{bad}")).await;
        assert_validation_error(status, &body, "query");
    }
    for missing in [UNKNOWN, "not-a-ulid", "x'%20or%201=1"] {
        let (status, body) = get(&test, &format!("/cwom/repos/{missing}")).await;
        assert_eq!((status, body), (404, json!({"detail": "Repo not found"})), "{missing}");
    }
}

#[tokio::test]
async fn create_bodies_are_validated_strictly() {
    let test = TestApp::spawn().await;
    let repo = create(&test, "/cwom/repos", "repo", &repo_body("acme/svc")).await;
    let mut with_unknown = repo_body("acme/other");
    with_unknown["bogus"] = json!(1);
    let mut nested_unknown = repo_body("acme/other");
    nested_unknown["source"]["bogus"] = json!(1);
    let mut bad_visibility = repo_body("acme/other");
    bad_visibility["visibility"] = json!("secret");
    let mut no_name = repo_body("acme/other");
    no_name.as_object_mut().unwrap().remove("name");
    let mut empty_slug = repo_body("acme/other");
    empty_slug["slug"] = json!("");
    let mut bad_issue_type = issue_body(id(&repo));
    bad_issue_type["type"] = json!("epic");
    let mut bad_ref_kind = issue_body(id(&repo));
    bad_ref_kind["repo"]["kind"] = json!("Planet");
    let mut nul = repo_body("acme/other");
    nul["name"] = json!("a\u{0}b");
    let mut negative_size = artifact_body(UNKNOWN, UNKNOWN);
    negative_size["size_bytes"] = json!(-1);
    let mut bad_energy = snapshot_body();
    bad_energy["constraints"] = json!({"energy": {"score_0_5": 6}});
    let mut bad_deadline = snapshot_body();
    bad_deadline["constraints"] = json!({"time": {"deadline": "tomorrow"}});
    let cases = [
        ("/cwom/repos", with_unknown),
        ("/cwom/repos", nested_unknown),
        ("/cwom/repos", bad_visibility),
        ("/cwom/repos", no_name),
        ("/cwom/repos", empty_slug),
        ("/cwom/repos", nul),
        ("/cwom/issues", bad_issue_type),
        ("/cwom/issues", bad_ref_kind),
        ("/cwom/artifacts", negative_size),
        ("/cwom/constraint-snapshots", bad_energy),
        ("/cwom/constraint-snapshots", bad_deadline),
        ("/cwom/doctrine-refs", json!({"namespace": "x"})),
        ("/cwom/context-packets", json!([1, 2])),
        ("/cwom/runs", json!("text")),
    ];
    let n_events = test.events().await.len();
    for (path, body) in cases {
        let (status, rejected) = post(&test, path, &body).await;
        assert_validation_error(status, &rejected, "body");
    }
    for raw in ["", "{", "null"] {
        let response =
            test.client.post("/cwom/repos").content_type("application/json").body(raw.to_owned()).send().await;
        let (status, rejected) = status_and_json(response).await;
        assert_validation_error(status, &rejected, "body");
    }
    assert_eq!(test.events().await.len(), n_events, "nothing was written");

    let big = json!({
        "name": "Big", "slug": "acme/big", "source": {"system": "github"},
        "meta": {"blob": "x".repeat(1024 * 1024)}
    });
    let (status, body) = post(&test, "/cwom/repos", &big).await;
    assert_eq!((status, body), (413, json!({"detail": "Request body is too large"})));
}

#[tokio::test]
async fn issues_need_their_repo_link_what_they_list_and_change_status_with_an_audit_trail() {
    let test = TestApp::spawn().await;
    let (status, body) = post(&test, "/cwom/issues", &issue_body(UNKNOWN)).await;
    assert_eq!((status, body), (422, json!({"detail": format!("Referenced Repo '{UNKNOWN}' does not exist")})));
    let repo = create(&test, "/cwom/repos", "repo", &repo_body("acme/svc")).await;
    let doctrine = create(&test, "/cwom/doctrine-refs", "doctrine_ref", &doctrine_body("org", "tests", "1")).await;
    let snapshot = create(&test, "/cwom/constraint-snapshots", "constraint_snapshot", &snapshot_body()).await;

    let mut body = issue_body(id(&repo));
    body["repo"] = json!({"kind": "Issue", "id": id(&repo), "role": "home"});
    body["doctrine_refs"] = json!([
        reference("DoctrineRef", id(&doctrine)),
        reference("DoctrineRef", id(&doctrine)),
        reference("DoctrineRef", UNKNOWN)
    ]);
    body["constraints"] = json!([reference("ConstraintSnapshot", id(&snapshot))]);
    body["priority"] = json!("P1");
    body["assignees"] = json!([{"actor_kind": "agent", "actor_id": "claude"}]);
    body["acceptance"] = json!({"criteria": ["It answers 200"]});
    let issue = create(&test, "/cwom/issues", "issue", &body).await;
    assert_eq!(
        issue["repo"],
        json!({"kind": "Repo", "id": id(&repo), "role": null}),
        "the repo ref is the target's, as the original renders a foreign key"
    );
    assert_eq!(
        issue["doctrine_refs"],
        json!([reference("DoctrineRef", id(&doctrine))]),
        "existing listed objects are linked once; unknown ones are ignored"
    );
    assert_eq!(issue["constraints"], json!([reference("ConstraintSnapshot", id(&snapshot))]));
    assert_eq!(issue["context_packets"], json!([]));
    assert_eq!(issue["runs"], json!([]));
    assert_eq!(issue["status"], "planned");
    assert_eq!(issue["type"], "feature");
    assert_eq!(issue["description"], "");
    assert_eq!(issue["acceptance"], json!({"criteria": ["It answers 200"], "tests_expected": null}));
    assert_eq!(issue["relationships"], json!({"parent": null, "blocks": [], "blocked_by": [], "duplicates": []}));
    assert_eq!(issue["assignees"], json!([{"actor_kind": "agent", "actor_id": "claude", "display": null}]));
    let (_, fetched) = get(&test, &format!("/cwom/issues/{}", id(&issue))).await;
    assert_eq!(fetched, issue);
    let issue_events: Vec<_> = test.events().await.into_iter().filter(|event| event.stream.id == id(&issue)).collect();
    let types: Vec<&str> = issue_events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["IssueCreated", "IssueLinked", "IssueLinked"]);
    assert_eq!(issue_events[1].after, Some(json!({"linked_kind": "DoctrineRef", "linked_id": id(&doctrine)})));
    assert_eq!(issue_events[1].note.as_deref(), Some(format!("Linked to DoctrineRef:{}", id(&doctrine)).as_str()));

    // Status: any value from any value, audited with before, after and the original's note.
    let path = format!("/cwom/issues/{}/status?status=running", id(&issue));
    let (status, changed) = patch(&test, &path, None).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["status"], "success");
    assert_eq!(changed["issue"]["status"], "running");
    assert_ne!(changed["issue"]["updated_at"], issue["updated_at"]);
    assert_eq!(changed["issue"]["created_at"], issue["created_at"]);
    assert_eq!(changed["issue"]["doctrine_refs"], issue["doctrine_refs"]);
    let path = format!("/cwom/issues/{}/status?status=under_review", id(&issue));
    let (status, _) = patch(&test, &path, None).await;
    assert_eq!(status, 200);
    let events = test.events().await;
    let changes: Vec<_> = events.iter().filter(|event| event.event_type == "IssueStatusChanged").collect();
    assert_eq!(changes.len(), 2);
    let last = changes[1];
    assert_eq!(last.action.as_str(), "status_changed");
    assert_eq!(last.before, Some(json!({"status": "running"})));
    assert_eq!(last.after, Some(json!({"status": "under_review"})));
    assert_eq!(last.note.as_deref(), Some("Status changed: running -> under_review"));
    assert_eq!(last.actor_id, "cwom-service");
    assert_eq!(last.trace_id.as_deref(), Some("cwom-trace"));
    let (_, fetched) = get(&test, &format!("/cwom/issues/{}", id(&issue))).await;
    assert_eq!(fetched["status"], "under_review");

    for (path, expected) in [
        (format!("/cwom/issues/{UNKNOWN}/status?status=done"), 404),
        ("/cwom/issues/nope/status?status=done".to_owned(), 404),
        (format!("/cwom/issues/{}/status?status=cancelled", id(&issue)), 422),
        (format!("/cwom/issues/{}/status", id(&issue)), 422),
    ] {
        let (status, body) = patch(&test, &path, None).await;
        assert_eq!(status, expected, "{path}: {body}");
        if expected == 404 {
            assert_eq!(body, json!({"detail": "Issue not found"}));
        } else {
            assert_validation_error(status, &body, "query");
        }
    }

    // Lists and their filters.
    let other = create(
        &test,
        "/cwom/issues",
        "issue",
        &json!({"repo": reference("Repo", id(&repo)), "title": "Fix a bug", "type": "bug", "priority": "P0"}),
    )
    .await;
    let (_, all) = get(&test, "/cwom/issues").await;
    assert_eq!(ids(&all), [id(&other), id(&issue)]);
    for (query, expected) in [
        (format!("?repo_id={}", id(&repo)), vec![id(&other), id(&issue)]),
        (format!("?repo_id={UNKNOWN}"), vec![]),
        ("?status=under_review".to_owned(), vec![id(&issue)]),
        ("?type=bug".to_owned(), vec![id(&other)]),
        ("?priority=P1".to_owned(), vec![id(&issue)]),
        ("?priority=P1&type=bug".to_owned(), vec![]),
    ] {
        let (status, listed) = get(&test, &format!("/cwom/issues{query}")).await;
        assert_eq!(status, 200, "{query}: {listed}");
        assert_eq!(ids(&listed), expected, "{query}");
    }
    for bad in ["?status=sleeping", "?type=epic", "?priority=P9", "?limit=0", "?limit=1001", "?repo_id=a%00b"] {
        let (status, body) = get(&test, &format!("/cwom/issues{bad}")).await;
        assert_validation_error(status, &body, "query");
    }
    for missing in [UNKNOWN, "bad"] {
        let (status, body) = get(&test, &format!("/cwom/issues/{missing}")).await;
        assert_eq!((status, body), (404, json!({"detail": "Issue not found"})));
    }
}

#[tokio::test]
async fn context_packets_are_immutable_collected_by_their_issue_and_link_their_doctrine() {
    let test = TestApp::spawn().await;
    let (status, body) = post(&test, "/cwom/context-packets", &packet_body(UNKNOWN)).await;
    assert_eq!((status, body), (422, json!({"detail": format!("Referenced Issue '{UNKNOWN}' does not exist")})));
    let repo = create(&test, "/cwom/repos", "repo", &repo_body("acme/svc")).await;
    let issue = create(&test, "/cwom/issues", "issue", &issue_body(id(&repo))).await;
    let doctrine = create(&test, "/cwom/doctrine-refs", "doctrine_ref", &doctrine_body("org", "tests", "1")).await;
    let snapshot = create(&test, "/cwom/constraint-snapshots", "constraint_snapshot", &snapshot_body()).await;
    let mut body = packet_body(id(&issue));
    body["doctrine_refs"] = json!([reference("DoctrineRef", id(&doctrine)), reference("DoctrineRef", UNKNOWN)]);
    body["constraint_snapshot"] = json!({"kind": "ConstraintSnapshot", "id": id(&snapshot), "role": "pin"});
    body["inputs"] = json!({"documents": [{"title": "Spec", "uri": "https://example.com/spec"}]});
    body["assumptions"] = json!(["main is green"]);
    let first = create(&test, "/cwom/context-packets", "context_packet", &body).await;
    assert_eq!(first["for_issue"], json!({"kind": "Issue", "id": id(&issue), "role": null}));
    assert_eq!(first["doctrine_refs"], json!([reference("DoctrineRef", id(&doctrine))]));
    assert_eq!(first["constraint_snapshot"], reference("ConstraintSnapshot", id(&snapshot)));
    assert_eq!(
        first["inputs"],
        json!({"documents": [{"title": "Spec", "uri": "https://example.com/spec", "digest": null,
                              "excerpt": null}], "data_blobs": [], "links": []})
    );
    assert_eq!(first["instructions"], "");
    assert_timestamp(&first["updated_at"]);

    let mut newer = packet_body(id(&issue));
    newer["version"] = json!("1.1");
    let second = create(&test, "/cwom/context-packets", "context_packet", &newer).await;
    assert_eq!(second["constraint_snapshot"], Value::Null);
    let (_, issue_now) = get(&test, &format!("/cwom/issues/{}", id(&issue))).await;
    assert_eq!(
        issue_now["context_packets"],
        json!([reference("ContextPacket", id(&first)), reference("ContextPacket", id(&second))]),
        "the issue collects its packets, in order"
    );
    let path = format!("/cwom/issues/{}/context-packets", id(&issue));
    let (_, listed) = get(&test, &path).await;
    assert_eq!(ids(&listed), [id(&second), id(&first)], "newest first");
    let (_, paged) = get(&test, &format!("{path}?limit=1&offset=1")).await;
    assert_eq!(ids(&paged), [id(&first)]);
    for unknown in [UNKNOWN, "bad"] {
        let (status, listed) = get(&test, &format!("/cwom/issues/{unknown}/context-packets")).await;
        assert_eq!((status, listed), (200, json!([])));
    }
    let (status, body) = get(&test, &format!("{path}?limit=0")).await;
    assert_validation_error(status, &body, "query");
    let (_, fetched) = get(&test, &format!("/cwom/context-packets/{}", id(&first))).await;
    assert_eq!(fetched, first);

    let events = test.events().await;
    let packet_events: Vec<_> = events
        .iter()
        .filter(|event| event.stream.id == id(&first) || event.payload["linked_id"] == id(&first))
        .collect();
    let types: Vec<&str> = packet_events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["ContextPacketCreated", "ContextPacketLinked", "IssueLinked"]);
    assert_eq!(packet_events[0].note.as_deref(), Some("Immutable object created"));
    assert_eq!(packet_events[2].stream.id, id(&issue));
    assert_eq!(packet_events[2].after, Some(json!({"linked_kind": "ContextPacket", "linked_id": id(&first)})));

    // PUT and PATCH are always 405, whether or not the packet exists, and change nothing.
    let n_events = events.len();
    for object_id in [id(&first), UNKNOWN, "not-even-an-id"] {
        for method in ["PUT", "PATCH"] {
            let path = format!("/cwom/context-packets/{object_id}");
            let request = match method {
                "PUT" => test.client.put(&path),
                _ => test.client.patch(&path),
            };
            let (status, body) = status_and_json(request.body_json(&json!({"summary": "changed"})).send().await).await;
            assert_eq!(status, 405, "{method} {path}");
            assert_eq!(
                body,
                json!({"detail": {
                    "error": "IMMUTABILITY_VIOLATION",
                    "message": "ContextPackets are immutable. Create a new ContextPacket with an incremented version instead.",
                    "object_id": object_id
                }})
            );
        }
    }
    assert_eq!(test.events().await.len(), n_events);
    for missing in [UNKNOWN, "bad"] {
        let (status, body) = get(&test, &format!("/cwom/context-packets/{missing}")).await;
        assert_eq!((status, body), (404, json!({"detail": "ContextPacket not found"})));
    }
}

#[tokio::test]
async fn constraint_snapshots_are_captured_immutable_and_listed_by_scope_and_owner() {
    let test = TestApp::spawn().await;
    let full = json!({
        "scope": "personal", "owner": {"actor_kind": "human", "actor_id": "bob", "display": "Bob"},
        "constraints": {
            "time": {"available_minutes": 90, "deadline": "2026-03-01T12:00:00+01:00"},
            "energy": {"score_0_5": 3},
            "budget": {"usd_available": 12.5},
            "tools": {"allowed": ["git"]},
            "environment": {"location": "home"},
            "risk": {}
        },
        "tags": ["focus"], "meta": {"source": "test"}
    });
    let personal = create(&test, "/cwom/constraint-snapshots", "constraint_snapshot", &full).await;
    assert_eq!(
        personal["constraints"],
        json!({
            "time": {"available_minutes": 90, "deadline": "2026-03-01T11:00:00.000000Z"},
            "energy": {"score_0_5": 3, "notes": null},
            "health": null,
            "budget": {"usd_available": 12.5, "burn_limit_usd": null},
            "tools": {"allowed": ["git"], "blocked": []},
            "environment": {"location": "home", "connectivity": "ok", "device": null},
            "risk": {"tolerance": "medium", "notes": null}
        }),
        "every key present, defaults applied, timestamps normalised"
    );
    assert!(personal.get("created_at").is_none() && personal.get("updated_at").is_none());
    assert_timestamp(&personal["captured_at"]);
    assert_eq!(personal["kind"], "ConstraintSnapshot");
    assert_eq!(personal["trace_id"], "cwom-trace");
    let repo_scope = create(&test, "/cwom/constraint-snapshots", "constraint_snapshot", &snapshot_body()).await;
    assert_eq!(
        repo_scope["constraints"],
        json!({"time": null, "energy": null, "health": null, "budget": null, "tools": null,
               "environment": null, "risk": null})
    );
    let (_, fetched) = get(&test, &format!("/cwom/constraint-snapshots/{}", id(&personal))).await;
    assert_eq!(fetched, personal);
    for (query, expected) in [
        ("", vec![id(&repo_scope), id(&personal)]),
        ("?scope=personal", vec![id(&personal)]),
        ("?owner_id=ann", vec![id(&repo_scope)]),
        ("?owner_id=ann&scope=personal", vec![]),
    ] {
        let (status, listed) = get(&test, &format!("/cwom/constraint-snapshots{query}")).await;
        assert_eq!(status, 200);
        assert_eq!(ids(&listed), expected, "{query}");
    }
    let (status, body) = get(&test, "/cwom/constraint-snapshots?scope=galaxy").await;
    assert_validation_error(status, &body, "query");
    for method in ["PUT", "PATCH"] {
        let path = format!("/cwom/constraint-snapshots/{}", id(&personal));
        let request = match method {
            "PUT" => test.client.put(&path),
            _ => test.client.patch(&path),
        };
        let (status, body) = status_and_json(request.send().await).await;
        assert_eq!(
            (status, body),
            (
                405,
                json!({"detail": {
                    "error": "IMMUTABILITY_VIOLATION",
                    "message": "ConstraintSnapshots are immutable. Create a new ConstraintSnapshot instead.",
                    "object_id": id(&personal)
                }})
            )
        );
    }
    let (status, body) = get(&test, &format!("/cwom/constraint-snapshots/{UNKNOWN}")).await;
    assert_eq!((status, body), (404, json!({"detail": "ConstraintSnapshot not found"})));
}

#[tokio::test]
async fn doctrine_refs_are_unique_by_namespace_name_and_version_and_listed_by_name() {
    let test = TestApp::spawn().await;
    let tests_v1 = create(&test, "/cwom/doctrine-refs", "doctrine_ref", &doctrine_body("org", "tests", "1")).await;
    assert_eq!(tests_v1["priority"], "should");
    assert_eq!(tests_v1["rationale"], Value::Null);
    assert_eq!(tests_v1["applicability"], json!({"repo_refs": [], "issue_types": [], "tags": []}));
    let (status, conflict) = post(&test, "/cwom/doctrine-refs", &doctrine_body("org", "tests", "1")).await;
    assert_eq!((status, conflict), (409, json!({"detail": "DoctrineRef 'org/tests@1' already exists"})));
    let tests_v2 = create(&test, "/cwom/doctrine-refs", "doctrine_ref", &doctrine_body("org", "tests", "2")).await;
    let mut must = doctrine_body("org", "review", "1");
    must["type"] = json!("procedure");
    must["priority"] = json!("must");
    let review = create(&test, "/cwom/doctrine-refs", "doctrine_ref", &must).await;
    let team = create(&test, "/cwom/doctrine-refs", "doctrine_ref", &doctrine_body("a-team", "style", "1")).await;
    let (_, all) = get(&test, "/cwom/doctrine-refs").await;
    assert_eq!(ids(&all), [id(&team), id(&review), id(&tests_v1), id(&tests_v2)], "by namespace, then name");
    for (query, expected) in [
        ("?namespace=org", vec![id(&review), id(&tests_v1), id(&tests_v2)]),
        ("?type=procedure", vec![id(&review)]),
        ("?priority=should", vec![id(&team), id(&tests_v1), id(&tests_v2)]),
        ("?namespace=none", vec![]),
    ] {
        let (_, listed) = get(&test, &format!("/cwom/doctrine-refs{query}")).await;
        assert_eq!(ids(&listed), expected, "{query}");
    }
    for bad in ["?type=law", "?priority=always", "?limit=1001"] {
        let (status, body) = get(&test, &format!("/cwom/doctrine-refs{bad}")).await;
        assert_validation_error(status, &body, "query");
    }
    let (status, fetched) = get(&test, &format!("/cwom/doctrine-refs/{}", id(&review))).await;
    assert_eq!((status, fetched), (200, review));
    let (status, body) = get(&test, &format!("/cwom/doctrine-refs/{UNKNOWN}")).await;
    assert_eq!((status, body), (404, json!({"detail": "DoctrineRef not found"})));
}

#[tokio::test]
async fn runs_check_issue_then_repo_link_their_inputs_and_record_updates() {
    let test = TestApp::spawn().await;
    let repo = create(&test, "/cwom/repos", "repo", &repo_body("acme/svc")).await;
    let issue = create(&test, "/cwom/issues", "issue", &issue_body(id(&repo))).await;
    for (body, missing) in [(run_body(UNKNOWN, UNKNOWN), "Issue"), (run_body(id(&issue), UNKNOWN), "Repo")] {
        let (status, rejected) = post(&test, "/cwom/runs", &body).await;
        assert_eq!(
            (status, rejected),
            (422, json!({"detail": format!("Referenced {missing} '{UNKNOWN}' does not exist")}))
        );
    }
    let packet = create(&test, "/cwom/context-packets", "context_packet", &packet_body(id(&issue))).await;
    let doctrine = create(&test, "/cwom/doctrine-refs", "doctrine_ref", &doctrine_body("org", "tests", "1")).await;
    let mut body = run_body(id(&issue), id(&repo));
    body["inputs"] = json!({
        "context_packets": [reference("ContextPacket", id(&packet)), reference("ContextPacket", UNKNOWN)],
        "doctrine_refs": [reference("DoctrineRef", id(&doctrine))]
    });
    body["plan"] = json!({"steps": ["write the test", "make it pass"]});
    let run = create(&test, "/cwom/runs", "run", &body).await;
    assert_eq!(run["status"], "planned");
    assert_eq!(run["for_issue"], json!({"kind": "Issue", "id": id(&issue), "role": null}));
    assert_eq!(run["repo"], json!({"kind": "Repo", "id": id(&repo), "role": null}));
    assert_eq!(
        run["executor"],
        json!({"actor": {"actor_kind": "agent", "actor_id": "claude", "display": null},
               "runtime": "local", "toolchain": []})
    );
    assert_eq!(
        run["inputs"],
        json!({
            "context_packets": [{"kind": "ContextPacket", "id": id(&packet), "role": null},
                                {"kind": "ContextPacket", "id": UNKNOWN, "role": null}],
            "doctrine_refs": [{"kind": "DoctrineRef", "id": id(&doctrine), "role": null}],
            "constraint_snapshot": null
        }),
        "inputs are kept as given"
    );
    assert_eq!(run["plan"], json!({"steps": ["write the test", "make it pass"], "risk_notes": []}));
    for empty in ["telemetry", "cost", "outputs"] {
        assert_eq!(run[empty], json!({}), "{empty}");
    }
    assert_eq!(run["failure"], Value::Null);
    assert_eq!(run["artifact_root_uri"], Value::Null);
    let links: Vec<(String, String)> = sqlx::query_as("select run_id, context_packet_id from cwom_run_context_packets")
        .fetch_all(&test.pool)
        .await
        .unwrap();
    assert_eq!(links, [(id(&run).to_owned(), id(&packet).to_owned())], "only existing packets are linked");
    let links: i64 =
        sqlx::query_scalar("select count(*) from cwom_run_doctrine_refs").fetch_one(&test.pool).await.unwrap();
    assert_eq!(links, 1);

    // PATCH with a status change: one status_changed event carrying every change.
    let path = format!("/cwom/runs/{}", id(&run));
    let update = json!({
        "status": "running",
        "telemetry": {"started_at": "2026-01-01T10:00:00Z"},
        "cost": {"tokens": 1200}
    });
    let (status, changed) = patch(&test, &path, Some(&update)).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["status"], "success");
    let changed = &changed["run"];
    assert_eq!(changed["status"], "running");
    assert_eq!(
        changed["telemetry"],
        json!({"started_at": "2026-01-01T10:00:00.000000Z", "ended_at": null, "duration_s": null})
    );
    assert_eq!(changed["cost"], json!({"usd": null, "tokens": 1200, "compute_s": null}));
    assert_eq!(changed["outputs"], json!({}), "fields not given are kept");
    let events = test.events().await;
    let last = events.last().unwrap();
    assert_eq!(last.event_type, "RunStatusChanged");
    assert_eq!(last.action.as_str(), "status_changed");
    assert_eq!(last.before, Some(json!({"status": "planned"})));
    assert_eq!(last.after, Some(json!({"status": "running"})));
    assert_eq!(last.note.as_deref(), Some("Status changed: planned -> running"));
    assert_eq!(last.trace_id.as_deref(), Some("cwom-trace"));

    // Without a status change: `updated`, with the whole run before and after.
    let update = json!({
        "status": "running",
        "outputs": {"result_summary": "done", "artifacts": [reference("Artifact", UNKNOWN)]},
        "failure": {"category": "test", "message": "one test is red"}
    });
    let (status, changed) = patch(&test, &path, Some(&update)).await;
    assert_eq!(status, 200, "{changed}");
    let changed = changed["run"].clone();
    assert_eq!(
        changed["outputs"],
        json!({"artifacts": [{"kind": "Artifact", "id": UNKNOWN, "role": null}],
               "result_summary": "done", "decision_log": []})
    );
    assert_eq!(changed["failure"], json!({"category": "test", "message": "one test is red"}));
    let events = test.events().await;
    let last = events.last().unwrap();
    assert_eq!(last.event_type, "RunUpdated");
    assert_eq!(last.action.as_str(), "updated");
    assert_eq!(last.before.as_ref().unwrap()["failure"], Value::Null);
    assert_eq!(last.after.as_ref(), Some(&changed), "after is the GET shape");

    // `failure: null` clears it; `null` elsewhere means "not given".
    let (status, cleared) = patch(&test, &path, Some(&json!({"failure": null, "cost": null}))).await;
    assert_eq!(status, 200);
    assert_eq!(cleared["run"]["failure"], Value::Null);
    assert_eq!(cleared["run"]["cost"], changed["cost"]);

    for (bad, loc) in [
        (json!({"status": "paused"}), "body"),
        (json!({"bogus": 1}), "body"),
        (json!({"cost": {"usd": -1}}), "body"),
        (json!({"failure": {"category": "cosmic", "message": "x"}}), "body"),
    ] {
        let (status, body) = patch(&test, &path, Some(&bad)).await;
        assert_validation_error(status, &body, loc);
    }
    for missing in [UNKNOWN, "bad"] {
        let (status, body) = patch(&test, &format!("/cwom/runs/{missing}"), Some(&json!({"status": "done"}))).await;
        assert_eq!((status, body), (404, json!({"detail": "Run not found"})));
        let (status, body) = get(&test, &format!("/cwom/runs/{missing}")).await;
        assert_eq!((status, body), (404, json!({"detail": "Run not found"})));
    }

    // Lists.
    let other = create(&test, "/cwom/runs", "run", &{
        let mut body = run_body(id(&issue), id(&repo));
        body["mode"] = json!("human");
        body
    })
    .await;
    for (query, expected) in [
        (String::new(), vec![id(&other), id(&run)]),
        (format!("?issue_id={}", id(&issue)), vec![id(&other), id(&run)]),
        (format!("?repo_id={}", id(&repo)), vec![id(&other), id(&run)]),
        (format!("?issue_id={UNKNOWN}"), vec![]),
        ("?status=running".to_owned(), vec![id(&run)]),
        ("?status=planned&mode=human".to_owned(), vec![id(&other)]),
        ("?mode=hybrid".to_owned(), vec![]),
    ] {
        let (_, listed) = get(&test, &format!("/cwom/runs{query}")).await;
        assert_eq!(ids(&listed), expected, "{query}");
    }
    for bad in ["?status=paused", "?mode=robot", "?limit=0"] {
        let (status, body) = get(&test, &format!("/cwom/runs{bad}")).await;
        assert_validation_error(status, &body, "query");
    }
}

#[tokio::test]
async fn artifacts_check_run_then_issue_and_are_listed_per_run_and_per_issue() {
    let test = TestApp::spawn().await;
    let repo = create(&test, "/cwom/repos", "repo", &repo_body("acme/svc")).await;
    let issue = create(&test, "/cwom/issues", "issue", &issue_body(id(&repo))).await;
    let run = create(&test, "/cwom/runs", "run", &run_body(id(&issue), id(&repo))).await;
    for (body, missing) in [(artifact_body(UNKNOWN, UNKNOWN), "Run"), (artifact_body(id(&run), UNKNOWN), "Issue")] {
        let (status, rejected) = post(&test, "/cwom/artifacts", &body).await;
        assert_eq!(
            (status, rejected),
            (422, json!({"detail": format!("Referenced {missing} '{UNKNOWN}' does not exist")}))
        );
    }
    let pr = create(&test, "/cwom/artifacts", "artifact", &artifact_body(id(&run), id(&issue))).await;
    assert_eq!(
        pr,
        json!({
            "kind": "Artifact", "id": id(&pr), "trace_id": "cwom-trace",
            "produced_by": {"kind": "Run", "id": id(&run), "role": null},
            "for_issue": {"kind": "Issue", "id": id(&issue), "role": null},
            "type": "pr", "title": "The pull request", "uri": "https://example.com/pr/1",
            "digest": null, "media_type": null, "size_bytes": null, "preview": null,
            "verification": {"status": "unverified", "checks": []}, "tags": [], "meta": {},
            "created_at": pr["created_at"], "updated_at": pr["updated_at"]
        })
    );
    let mut log_body = artifact_body(id(&run), id(&issue));
    log_body["type"] = json!("log");
    log_body["digest"] = json!("sha256:abc");
    log_body["size_bytes"] = json!(42);
    log_body["verification"] = json!({"status": "passed", "checks": [{"name": "lint", "status": "passed"}]});
    let log = create(&test, "/cwom/artifacts", "artifact", &log_body).await;
    assert_eq!(
        log["verification"],
        json!({"status": "passed", "checks": [{"name": "lint", "status": "passed", "evidence_uri": null}]})
    );
    let (status, fetched) = get(&test, &format!("/cwom/artifacts/{}", id(&log))).await;
    assert_eq!((status, fetched), (200, log.clone()));
    for (path, expected) in [
        (format!("/cwom/runs/{}/artifacts", id(&run)), vec![id(&log), id(&pr)]),
        (format!("/cwom/runs/{}/artifacts?type=pr", id(&run)), vec![id(&pr)]),
        (format!("/cwom/issues/{}/artifacts", id(&issue)), vec![id(&log), id(&pr)]),
        (format!("/cwom/issues/{}/artifacts?type=log&limit=1", id(&issue)), vec![id(&log)]),
        (format!("/cwom/issues/{}/artifacts?offset=2", id(&issue)), vec![]),
        (format!("/cwom/runs/{UNKNOWN}/artifacts"), vec![]),
        ("/cwom/runs/bad/artifacts".to_owned(), vec![]),
        ("/cwom/issues/bad/artifacts".to_owned(), vec![]),
    ] {
        let (status, listed) = get(&test, &path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(ids(&listed), expected, "{path}");
    }
    for bad in [
        format!("/cwom/runs/{}/artifacts?type=movie", id(&run)),
        format!("/cwom/issues/{}/artifacts?limit=1001", id(&issue)),
    ] {
        let (status, body) = get(&test, &bad).await;
        assert_validation_error(status, &body, "query");
    }
    let (status, body) = get(&test, &format!("/cwom/artifacts/{UNKNOWN}")).await;
    assert_eq!((status, body), (404, json!({"detail": "Artifact not found"})));
}

#[tokio::test]
async fn objects_created_by_enqueue_appear_through_the_cwom_routes_with_their_links() {
    let test = TestApp::spawn().await;
    let (status, enqueued) = status_and_json(test.enqueue(&valid_task()).await).await;
    assert_eq!(status, 201, "{enqueued}");
    let cwom = &enqueued["cwom"];
    let trace_id = enqueued["trace_id"].as_str().unwrap();
    let repo_id = cwom["repo_id"].as_str().unwrap();
    let issue_id = cwom["issue_id"].as_str().unwrap();
    let packet_id = cwom["context_packet_id"].as_str().unwrap();
    let snapshot_id = cwom["constraint_snapshot_id"].as_str().unwrap();

    let (status, repo) = get(&test, &format!("/cwom/repos/{repo_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(repo["slug"], "testorg/test-repo");
    assert_eq!(repo["trace_id"], trace_id);
    let (_, issue) = get(&test, &format!("/cwom/issues/{issue_id}")).await;
    assert_eq!(issue["repo"]["id"], repo_id);
    assert_eq!(issue["constraints"], json!([reference("ConstraintSnapshot", snapshot_id)]));
    assert_eq!(issue["context_packets"], json!([reference("ContextPacket", packet_id)]));
    assert_eq!(issue["title"], "Add a /healthz endpoint with a test");
    let (_, packet) = get(&test, &format!("/cwom/context-packets/{packet_id}")).await;
    assert_eq!(packet["for_issue"]["id"], issue_id);
    assert_eq!(packet["constraint_snapshot"], reference("ConstraintSnapshot", snapshot_id));
    let (_, snapshot) = get(&test, &format!("/cwom/constraint-snapshots/{snapshot_id}")).await;
    assert_eq!(snapshot["constraints"]["time"]["available_minutes"], 5);
    let (_, packets) = get(&test, &format!("/cwom/issues/{issue_id}/context-packets")).await;
    assert_eq!(ids(&packets), [packet_id]);
    let (_, issues) = get(&test, &format!("/cwom/issues?repo_id={repo_id}&status=planned")).await;
    assert_eq!(ids(&issues), [issue_id]);
    let joined: i64 = sqlx::query_scalar("select count(*) from cwom_issue_constraint_snapshots where issue_id = $1")
        .bind(issue_id)
        .fetch_one(&test.pool)
        .await
        .unwrap();
    assert_eq!(joined, 1);

    // A slug taken by enqueue is taken for /cwom/repos too.
    let (status, conflict) = post(&test, "/cwom/repos", &repo_body("testorg/test-repo")).await;
    assert_eq!((status, conflict), (409, json!({"detail": "Repo with slug 'testorg/test-repo' already exists"})));
    // And work continues on it over /cwom.
    let path = format!("/cwom/issues/{issue_id}/status?status=ready");
    let (status, changed) = patch(&test, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(changed["issue"]["context_packets"], issue["context_packets"]);
}

#[tokio::test]
async fn the_causality_chain_is_built_over_http_and_read_back_with_one_trace() {
    let test = TestApp::spawn().await;
    let trace = "chain-trace-1";
    let created = |path: &'static str, key: &'static str, body: Value| {
        let test = &test;
        async move {
            let (status, created) = post_traced(test, path, &body, trace).await;
            assert_eq!(status, 201, "{path}: {created}");
            created[key].clone()
        }
    };
    let repo = created("/cwom/repos", "repo", repo_body("acme/chain")).await;
    let doctrine = created("/cwom/doctrine-refs", "doctrine_ref", doctrine_body("org", "tests", "1")).await;
    let snapshot = created("/cwom/constraint-snapshots", "constraint_snapshot", snapshot_body()).await;
    let mut issue_body = issue_body(id(&repo));
    issue_body["doctrine_refs"] = json!([reference("DoctrineRef", id(&doctrine))]);
    issue_body["constraints"] = json!([reference("ConstraintSnapshot", id(&snapshot))]);
    let issue = created("/cwom/issues", "issue", issue_body).await;
    let mut packet_body = packet_body(id(&issue));
    packet_body["doctrine_refs"] = json!([reference("DoctrineRef", id(&doctrine))]);
    packet_body["constraint_snapshot"] = reference("ConstraintSnapshot", id(&snapshot));
    let packet = created("/cwom/context-packets", "context_packet", packet_body).await;
    let mut run_body = run_body(id(&issue), id(&repo));
    run_body["inputs"] = json!({
        "context_packets": [reference("ContextPacket", id(&packet))],
        "doctrine_refs": [reference("DoctrineRef", id(&doctrine))],
        "constraint_snapshot": reference("ConstraintSnapshot", id(&snapshot))
    });
    let run = created("/cwom/runs", "run", run_body).await;
    let artifact = created("/cwom/artifacts", "artifact", artifact_body(id(&run), id(&issue))).await;
    let response = test
        .client
        .patch(format!("/cwom/runs/{}", id(&run)))
        .header("X-Trace-Id", trace)
        .body_json(&json!({"status": "done",
                            "outputs": {"artifacts": [reference("Artifact", id(&artifact))]}}))
        .send()
        .await;
    assert_eq!(response.0.status(), 200);
    let response = test
        .client
        .patch(format!("/cwom/issues/{}/status?status=done", id(&issue)))
        .header("X-Trace-Id", trace)
        .send()
        .await;
    assert_eq!(response.0.status(), 200);

    // Read the chain back, from the artifact to everything it stands on.
    let (_, artifact) = get(&test, &format!("/cwom/artifacts/{}", id(&artifact))).await;
    let run_id = artifact["produced_by"]["id"].as_str().unwrap();
    let (_, run) = get(&test, &format!("/cwom/runs/{run_id}")).await;
    assert_eq!(run["status"], "done");
    assert_eq!(run["outputs"]["artifacts"][0]["id"], artifact["id"]);
    let issue_id = run["for_issue"]["id"].as_str().unwrap();
    assert_eq!(artifact["for_issue"]["id"], issue_id);
    let (_, issue) = get(&test, &format!("/cwom/issues/{issue_id}")).await;
    assert_eq!(issue["status"], "done");
    assert_eq!(issue["repo"]["id"], run["repo"]["id"]);
    assert_eq!(issue["doctrine_refs"], json!([reference("DoctrineRef", id(&doctrine))]));
    assert_eq!(issue["constraints"], json!([reference("ConstraintSnapshot", id(&snapshot))]));
    assert_eq!(issue["context_packets"], json!([reference("ContextPacket", id(&packet))]));
    let packet_id = run["inputs"]["context_packets"][0]["id"].as_str().unwrap();
    let (_, packet) = get(&test, &format!("/cwom/context-packets/{packet_id}")).await;
    assert_eq!(packet["for_issue"]["id"], issue_id);
    assert_eq!(packet["doctrine_refs"], json!([reference("DoctrineRef", id(&doctrine))]));
    let snapshot_id = packet["constraint_snapshot"]["id"].as_str().unwrap();
    assert_eq!(run["inputs"]["constraint_snapshot"]["id"], snapshot_id);
    let (status, _) = get(&test, &format!("/cwom/constraint-snapshots/{snapshot_id}")).await;
    assert_eq!(status, 200);
    let doctrine_id = run["inputs"]["doctrine_refs"][0]["id"].as_str().unwrap();
    let (status, _) = get(&test, &format!("/cwom/doctrine-refs/{doctrine_id}")).await;
    assert_eq!(status, 200);
    let (_, run_artifacts) = get(&test, &format!("/cwom/runs/{run_id}/artifacts")).await;
    let (_, issue_artifacts) = get(&test, &format!("/cwom/issues/{issue_id}/artifacts")).await;
    assert_eq!(ids(&run_artifacts), [id(&artifact)]);
    assert_eq!(run_artifacts, issue_artifacts);
    for object in [&repo, &doctrine, &snapshot, &issue, &packet, &run, &artifact] {
        assert_eq!(object["trace_id"], trace, "{object}");
    }

    // Every event of the chain carries the trace id and the CWOM service as its actor.
    let events = test.events().await;
    let types: Vec<&str> = events.iter().map(|event| event.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "RepoCreated",
            "DoctrineRefCreated",
            "ConstraintSnapshotCaptured",
            "IssueCreated",
            "IssueLinked",
            "IssueLinked",
            "ContextPacketCreated",
            "ContextPacketLinked",
            "IssueLinked",
            "RunCreated",
            "RunLinked",
            "RunLinked",
            "ArtifactCreated",
            "RunStatusChanged",
            "IssueStatusChanged",
        ]
    );
    for event in &events {
        assert_eq!(event.trace_id.as_deref(), Some(trace), "{}", event.event_type);
        assert_eq!(event.actor_kind.as_str(), "system");
        assert_eq!(event.actor_id, "cwom-service");
    }
    for event in events.iter().filter(|event| event.action.as_str() == "created") {
        assert_eq!(event.before, None);
        assert_eq!(event.after.as_ref(), Some(&event.payload["object"]));
    }
}

#[tokio::test]
async fn with_api_keys_every_cwom_route_needs_one() {
    let http = api::HttpConfig { api_keys: vec!["key-one".into()], ..api::HttpConfig::default() };
    let test = TestApp::spawn_with(test_config(), http).await;
    let unauthorized = json!({"detail": "Invalid or missing API key"});
    let (status, body) = post(&test, "/cwom/repos", &json!({"bogus": 1})).await;
    assert_eq!((status, &body), (401, &unauthorized), "auth before the body");
    let (status, _) = get(&test, "/cwom/issues").await;
    assert_eq!(status, 401);
    let response = test.client.put(format!("/cwom/context-packets/{UNKNOWN}")).send().await;
    assert_eq!(response.0.status(), 401);
    let response = test
        .client
        .post("/cwom/repos")
        .header("Authorization", "Bearer key-one")
        .body_json(&repo_body("acme/svc"))
        .send()
        .await;
    assert_eq!(response.0.status(), 201);
}

#[tokio::test]
async fn the_cwom_read_model_rebuilt_from_the_log_equals_the_live_one() {
    let test = TestApp::spawn().await;
    let (_, enqueued) = status_and_json(test.enqueue(&valid_task()).await).await;
    let issue_id = enqueued["cwom"]["issue_id"].as_str().unwrap().to_owned();
    let repo_id = enqueued["cwom"]["repo_id"].as_str().unwrap().to_owned();
    let doctrine = create(&test, "/cwom/doctrine-refs", "doctrine_ref", &doctrine_body("org", "tests", "1")).await;
    let mut packet = packet_body(&issue_id);
    packet["doctrine_refs"] = json!([reference("DoctrineRef", id(&doctrine))]);
    let packet = create(&test, "/cwom/context-packets", "context_packet", &packet).await;
    let mut run = run_body(&issue_id, &repo_id);
    run["inputs"] = json!({"context_packets": [reference("ContextPacket", id(&packet))],
                           "doctrine_refs": [reference("DoctrineRef", id(&doctrine))]});
    let run = create(&test, "/cwom/runs", "run", &run).await;
    create(&test, "/cwom/artifacts", "artifact", &artifact_body(id(&run), &issue_id)).await;
    create(&test, "/cwom/constraint-snapshots", "constraint_snapshot", &snapshot_body()).await;
    patch(
        &test,
        &format!("/cwom/runs/{}", id(&run)),
        Some(&json!({"status": "failed",
        "failure": {"category": "build", "message": "no"}})),
    )
    .await;
    patch(&test, &format!("/cwom/runs/{}", id(&run)), Some(&json!({"cost": {"usd": 0.5}}))).await;
    patch(&test, &format!("/cwom/issues/{issue_id}/status?status=blocked"), None).await;

    let tables = crate::cwom_batch::TABLES;
    let checksums = |pool: sqlx::PgPool| async move {
        let mut sums = Vec::new();
        for table in tables {
            let sum: (String, i64) = sqlx::query_as(&format!(
                "select md5(coalesce(string_agg(t::text, '|' order by t::text), '')), count(*) from {table} t"
            ))
            .fetch_one(&pool)
            .await
            .unwrap();
            sums.push((table, sum));
        }
        sums
    };
    let live = checksums(test.pool.clone()).await;
    for (table, (_, count)) in &live {
        let expected_empty = *table == "cwom_issue_doctrine_refs";
        assert_eq!(*count == 0, expected_empty, "{table} has {count} rows");
    }
    let head = test.events().await.len() as u64;
    let rebuilt =
        projections::rebuild::rebuild(&test.pool, &projections::cwom::CwomProjection, &app::upcasters(), &|_| {})
            .await
            .unwrap();
    assert_eq!(rebuilt.applied, head, "the whole log was folded");
    assert_eq!(checksums(test.pool.clone()).await, live);
    let (status, issue) = get(&test, &format!("/cwom/issues/{issue_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(issue["status"], "blocked");
    assert_eq!(issue["context_packets"].as_array().unwrap().len(), 2);

    // The fold commands decide on (domain::cwom::fold) agrees with the projection on every object.
    let mut n_objects = 0;
    for (kind, table) in [
        (EntityKind::Repo, "cwom_repos"),
        (EntityKind::Issue, "cwom_issues"),
        (EntityKind::ContextPacket, "cwom_context_packets"),
        (EntityKind::ConstraintSnapshot, "cwom_constraint_snapshots"),
        (EntityKind::DoctrineRef, "cwom_doctrine_refs"),
        (EntityKind::Run, "cwom_runs"),
        (EntityKind::Artifact, "cwom_artifacts"),
    ] {
        let rows: Vec<(String, Value)> =
            sqlx::query_as(&format!("select id, document from {table}")).fetch_all(&test.pool).await.unwrap();
        for (object_id, document) in rows {
            let stream = store::read::read_stream(&test.pool, &StreamId::new(kind, &object_id), None).await.unwrap();
            let folded = domain::cwom::fold(kind, stream.iter().map(|event| (event.action, &event.payload)));
            assert_eq!(folded.as_ref(), Some(&document), "{kind} {object_id}");
            n_objects += 1;
        }
    }
    assert_eq!(n_objects, 9, "four from enqueue, five over /cwom");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_of_one_object_each_record_the_state_they_changed() {
    let test = std::sync::Arc::new(TestApp::spawn().await);
    let repo = create(&test, "/cwom/repos", "repo", &repo_body("acme/svc")).await;
    let issue = create(&test, "/cwom/issues", "issue", &issue_body(id(&repo))).await;
    let statuses = ["ready", "running", "blocked", "done", "failed", "canceled", "under_review", "planned"];
    let requests: Vec<_> = statuses
        .iter()
        .map(|status| {
            let test = test.clone();
            let path = format!("/cwom/issues/{}/status?status={status}", id(&issue));
            tokio::spawn(async move { patch(&test, &path, None).await.0 })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    let changes: Vec<_> =
        test.events().await.into_iter().filter(|event| event.event_type == "IssueStatusChanged").collect();
    assert_eq!(changes.len(), statuses.len());
    let mut current = json!("planned");
    for change in &changes {
        assert_eq!(change.before, Some(json!({"status": current})), "each change saw the state before it");
        current = change.after.as_ref().unwrap()["status"].clone();
    }
    let (_, fetched) = get(&test, &format!("/cwom/issues/{}", id(&issue))).await;
    assert_eq!(fetched["status"], current);
}

/// Appends one event as another writer (the worker, say) would, and waits for the read models.
async fn append_raw(test: &TestApp, kind: EntityKind, id: &str, event_type: &str, action: Action, payload: Value) {
    let event = NewEvent::new(
        EventData {
            stream: StreamId::new(kind, id),
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            action,
            before: None,
            after: None,
            note: None,
        },
        Actor::system("worker-test"),
    );
    let command = store::NewCommand { events: vec![event], trace_id: Some("raw".into()), ..Default::default() };
    let appended = test.app.store().append(command).await.expect("append");
    test.app.wait_for(appended.last_position()).await.expect("projections caught up");
}

#[tokio::test]
async fn events_of_any_type_that_follow_the_contract_are_folded_and_the_rest_are_ignored() {
    let test = TestApp::spawn().await;
    let (_, enqueued) = status_and_json(test.enqueue(&valid_task()).await).await;
    let issue_id = enqueued["cwom"]["issue_id"].as_str().unwrap().to_owned();
    let repo_id = enqueued["cwom"]["repo_id"].as_str().unwrap().to_owned();
    let packet_id = enqueued["cwom"]["context_packet_id"].as_str().unwrap().to_owned();
    let run_id = ulid::Ulid::new().to_string();
    let artifact_id = ulid::Ulid::new().to_string();
    let now = "2026-05-01T10:00:00.000000Z";
    let run = json!({
        "kind": "Run", "id": run_id, "trace_id": "raw",
        "for_issue": {"kind": "Issue", "id": issue_id, "role": null},
        "repo": {"kind": "Repo", "id": repo_id, "role": null},
        "status": "running", "mode": "system",
        "executor": {"actor": {"actor_kind": "system", "actor_id": "worker-1", "display": null},
                     "runtime": "local", "toolchain": ["stub/1"]},
        "inputs": {"context_packets": [{"kind": "ContextPacket", "id": packet_id}], "doctrine_refs": [],
                   "constraint_snapshot": null},
        "plan": {"steps": [], "risk_notes": []},
        "telemetry": {"started_at": now, "ended_at": null, "duration_s": null},
        "cost": {}, "outputs": {}, "failure": null, "artifact_root_uri": "file:///traces/t/",
        "tags": [], "meta": {"task_id": "t"}, "created_at": now, "updated_at": now
    });
    append_raw(&test, EntityKind::Run, &run_id, "RunStarted", Action::Created, json!({"object": run})).await;
    // Not fitting the contract: ignored, and the projection goes on.
    append_raw(&test, EntityKind::Artifact, &artifact_id, "ArtifactProduced", Action::Created, json!({"sha": 1})).await;
    append_raw(&test, EntityKind::Run, &run_id, "RunNoted", Action::Updated, json!({"changes": "not an object"})).await;
    append_raw(
        &test,
        EntityKind::Run,
        &run_id,
        "RunLinked",
        Action::Linked,
        json!({"linked_kind": "Planet", "linked_id": "x"}),
    )
    .await;
    append_raw(
        &test,
        EntityKind::Issue,
        UNKNOWN,
        "IssueStatusChanged",
        Action::StatusChanged,
        json!({"changes": {"status": "done"}}),
    )
    .await;
    // Fitting it, whatever the event type.
    let artifact = json!({
        "kind": "Artifact", "id": artifact_id, "trace_id": "raw",
        "produced_by": {"kind": "Run", "id": run_id, "role": null},
        "for_issue": {"kind": "Issue", "id": issue_id, "role": null},
        "type": "log", "title": "log.txt", "uri": "file:///traces/t/log.txt", "digest": "sha256:00",
        "media_type": "text/plain", "size_bytes": 10, "preview": null,
        "verification": {"status": "unverified", "checks": []}, "tags": [], "meta": {},
        "created_at": now, "updated_at": now
    });
    append_raw(
        &test,
        EntityKind::Artifact,
        &artifact_id,
        "ArtifactProduced",
        Action::Created,
        json!({"object": artifact}),
    )
    .await;
    append_raw(
        &test,
        EntityKind::Run,
        &run_id,
        "RunLinked",
        Action::Linked,
        json!({"run_id": run_id, "linked_kind": "ContextPacket", "linked_id": packet_id}),
    )
    .await;
    append_raw(
        &test,
        EntityKind::Run,
        &run_id,
        "RunFinished",
        Action::StatusChanged,
        json!({"changes": {"status": "done", "updated_at": "2026-05-01T10:00:05.000000Z",
                           "outputs": {"artifacts": [{"kind": "Artifact", "id": artifact_id}]}}}),
    )
    .await;
    append_raw(
        &test,
        EntityKind::Issue,
        &issue_id,
        "IssueMovedByWorker",
        Action::StatusChanged,
        json!({"changes": {"status": "done", "updated_at": "2026-05-01T10:00:05.000000Z"}}),
    )
    .await;

    let (status, fetched) = get(&test, &format!("/cwom/runs/{run_id}")).await;
    assert_eq!(status, 200);
    let mut expected = run.clone();
    expected["status"] = json!("done");
    expected["updated_at"] = json!("2026-05-01T10:00:05.000000Z");
    expected["outputs"] = json!({"artifacts": [{"kind": "Artifact", "id": artifact_id}]});
    assert_eq!(fetched, expected);
    let (_, runs) = get(&test, &format!("/cwom/runs?issue_id={issue_id}&status=done")).await;
    assert_eq!(ids(&runs), [run_id.as_str()], "filter columns follow the changes");
    let (_, fetched) = get(&test, &format!("/cwom/artifacts/{artifact_id}")).await;
    assert_eq!(fetched, artifact);
    let (_, artifacts) = get(&test, &format!("/cwom/runs/{run_id}/artifacts?type=log")).await;
    assert_eq!(ids(&artifacts), [artifact_id.as_str()]);
    let (_, issues) = get(&test, "/cwom/issues?status=done").await;
    assert_eq!(ids(&issues), [issue_id.as_str()]);
    let (status, _) = get(&test, &format!("/cwom/issues/{UNKNOWN}")).await;
    assert_eq!(status, 404, "a change to an unknown object creates nothing");
    let links: Vec<(String, String)> = sqlx::query_as("select run_id, context_packet_id from cwom_run_context_packets")
        .fetch_all(&test.pool)
        .await
        .unwrap();
    assert_eq!(links, [(run_id.clone(), packet_id.clone())]);
    let n_runs: i64 = sqlx::query_scalar("select count(*) from cwom_runs").fetch_one(&test.pool).await.unwrap();
    assert_eq!(n_runs, 1);

    // And a Run the worker started can be changed over HTTP.
    let (status, changed) =
        patch(&test, &format!("/cwom/runs/{run_id}"), Some(&json!({"status": "under_review"}))).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["run"]["outputs"], expected["outputs"]);
    assert_eq!(test.events().await.last().unwrap().before, Some(json!({"status": "done"})));
}

#[tokio::test]
async fn references_are_looked_up_by_key_even_when_planned_on_empty_tables_never_analysed() {
    let test = TestApp::spawn().await;
    // The seven object tables are empty and have never been analysed: the generic plan a pooled connection caches
    // then once hashed every table whole at each lookup.
    let sql = projections::cwom::EXISTING_SQL;
    let plan = devdb::generic_plan(&test.pool, sql, "'{Run,Issue}', '{a,b}'").await.unwrap();
    assert!(!plan.contains("Seq Scan") && !plan.contains("hashed SubPlan"), "{plan}");
    assert_eq!(plan.matches("Index Cond: (id = r.id)").count(), 7, "{plan}");
}
