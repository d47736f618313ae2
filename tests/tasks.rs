//! The task spine through HTTP: enqueue (validation, policy, normalisation, CWOM, idempotency), get, list,
//! trace ids, auth, limits, and the `tasks` read model rebuilt from the log.

use serde_json::{json, Value};

use crate::harness::{status_and_json, tasks_checksum, test_config, valid_task, TestApp};

/// `body` with the field at `pointer` set (created when the parent object exists).
fn with(mut body: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    let parent = if parent.is_empty() { &mut body } else { body.pointer_mut(parent).expect("parent exists") };
    parent.as_object_mut().expect("an object").insert(key.to_owned(), value);
    body
}

#[tokio::test]
async fn enqueue_creates_a_queued_task_with_normalised_fields_and_its_cwom_objects() {
    let test = TestApp::spawn().await;
    let body = with(valid_task(), "/target/repo", json!("  TestOrg/Svc.git "));
    let body = with(body, "/objective", json!("   Add a /healthz endpoint   "));
    let response = test.client.post("/tasks/enqueue").header("X-Trace-Id", "trace-abc").body_json(&body).send().await;
    assert_eq!(response.0.headers().get("x-trace-id").unwrap(), "trace-abc");
    let (status, created) = status_and_json(response).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "success");
    assert_eq!(created["message"], "Task enqueued successfully");
    assert_eq!(created["trace_id"], "trace-abc");
    let task = &created["task"];
    let task_id = created["task_id"].as_str().unwrap();
    assert_eq!(task_id.len(), 26, "a ULID");
    assert_eq!(task["task_id"], task_id);
    assert_eq!(task["status"], "queued");
    assert_eq!(task["target"], json!({"repo": "testorg/svc", "ref": "main", "path": ""}));
    assert_eq!(task["objective"], "Add a /healthz endpoint");
    assert_eq!(
        task["constraints"],
        json!({"time_budget_seconds": 300, "allow_network": false, "allow_secrets": false})
    );
    assert!(task["queued_at"].is_string());
    assert!(task["started_at"].is_null());
    assert_eq!(task["trace_id"], "trace-abc");
    assert_eq!(task["acceptance_criteria"], json!([]));
    for key in ["repo_id", "issue_id", "context_packet_id", "constraint_snapshot_id"] {
        assert_eq!(created["cwom"][key].as_str().unwrap().len(), 26, "{key}");
    }
    assert_eq!(task["cwom_issue_id"], created["cwom"]["issue_id"]);

    // Read-your-writes: the GET right after sees it.
    let (status, fetched) = status_and_json(test.get_task(task_id).await).await;
    assert_eq!(status, 200);
    assert_eq!(&fetched, task);

    // One command: task created and queued, Repo, ConstraintSnapshot, Issue, link, ContextPacket, link.
    let events = test.events().await;
    let types: Vec<&str> = events.iter().map(|event| event.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "TaskCreated",
            "TaskEnqueued",
            "RepoCreated",
            "ConstraintSnapshotCaptured",
            "IssueCreated",
            "IssueLinked",
            "ContextPacketCreated",
            "IssueLinked"
        ]
    );
    assert!(events.iter().all(|event| event.trace_id.as_deref() == Some("trace-abc")), "the trace reaches every event");
    assert!(events.iter().all(|event| event.ts == events[0].ts), "one transaction");
    assert_eq!(events[0].actor_id, "test-user");
    assert_eq!(events[0].action.as_str(), "created");
    assert_eq!(events[1].action.as_str(), "status_changed");
    assert_eq!(events[1].before, Some(json!({"status": "pending"})));
    assert_eq!(events[1].after, Some(json!({"status": "queued"})));
    assert_eq!(events[2].payload["object"]["slug"], "testorg/svc", "the CWOM Repo uses the normalised repo");
    assert_eq!(events[2].payload["object"]["name"], "svc");
    assert_eq!(
        events[5].after,
        Some(json!({"linked_kind": "ConstraintSnapshot", "linked_id": created["cwom"]["constraint_snapshot_id"]}))
    );
}

#[tokio::test]
async fn the_enqueue_answer_is_the_task_as_get_reads_it_numbers_included() {
    // Enqueue answers with the task folded from its events, not read back: it must equal the stored row,
    // whose jsonb rewrites numbers (`-0.0` → `0.0`, `1e2` → `100`, `1e-7` → `0.0000001`).
    let test = TestApp::spawn().await;
    let numbers = json!({"neg_zero": -0.0, "exp": 1e2, "frac": 1.5, "big": 12345678901234567890_u64, "tiny": 1e-7});
    let body = with(with(valid_task(), "/inputs", numbers.clone()), "/metadata", numbers);
    let (status, created) = status_and_json(test.client.post("/tasks/enqueue").body_json(&body).send().await).await;
    assert_eq!(status, 201, "{created}");
    let (status, fetched) = status_and_json(test.get_task(created["task_id"].as_str().unwrap()).await).await;
    assert_eq!(status, 200);
    assert_eq!(fetched, created["task"]);
}

#[tokio::test]
async fn a_second_task_on_the_same_repo_reuses_its_cwom_repo() {
    let test = TestApp::spawn().await;
    let (_, first) = status_and_json(test.enqueue(&valid_task()).await).await;
    let body = with(valid_task(), "/target/repo", json!("TESTORG/Test-Repo.git"));
    let (status, second) = status_and_json(test.enqueue(&body).await).await;
    assert_eq!(status, 201);
    assert_eq!(first["cwom"]["repo_id"], second["cwom"]["repo_id"]);
    let repos_created = test.events().await.iter().filter(|event| event.event_type == "RepoCreated").count();
    assert_eq!(repos_created, 1);
}

#[tokio::test]
async fn create_cwom_false_creates_the_task_alone() {
    let test = TestApp::spawn().await;
    let response =
        test.client.post("/tasks/enqueue").query("create_cwom", &"false").body_json(&valid_task()).send().await;
    let (status, created) = status_and_json(response).await;
    assert_eq!(status, 201);
    assert!(created.get("cwom").is_none());
    assert!(created["task"]["cwom_issue_id"].is_null());
    assert_eq!(test.events().await.len(), 2);
}

#[tokio::test]
async fn the_policy_gate_rejects_with_the_original_codes_and_messages_in_order() {
    let test = TestApp::spawn().await;
    let cases = [
        (
            with(valid_task(), "/target/repo", json!("Evil/Repo")),
            "REPO_NOT_ALLOWED",
            "Repository 'Evil/Repo' is not in the allowed namespace. Allowed prefixes: testorg/",
        ),
        (
            with(valid_task(), "/constraints/allow_network", json!(true)),
            "NETWORK_ACCESS_DENIED",
            "Network access is not allowed in V1. Set constraints.allow_network to false.",
        ),
        (
            with(valid_task(), "/constraints/allow_secrets", json!(true)),
            "SECRETS_ACCESS_DENIED",
            "Secrets access is not allowed in V1. Set constraints.allow_secrets to false.",
        ),
        (
            with(with(valid_task(), "/target/repo", json!("evil/r")), "/constraints/allow_network", json!(true)),
            "REPO_NOT_ALLOWED",
            "Repository 'evil/r' is not in the allowed namespace. Allowed prefixes: testorg/",
        ),
    ];
    for (body, code, message) in cases {
        let (status, rejected) = status_and_json(test.enqueue(&body).await).await;
        assert_eq!(status, 422);
        assert_eq!(rejected, json!({"detail": {"error": "policy_violation", "code": code, "message": message}}));
    }
    assert!(test.events().await.is_empty(), "a rejection changes nothing");
}

#[tokio::test]
async fn schema_errors_are_422_with_a_detail_list_and_change_nothing() {
    let test = TestApp::spawn().await;
    let mut missing_objective = valid_task();
    missing_objective.as_object_mut().unwrap().remove("objective");
    let cases = [
        (missing_objective, vec!["body", "objective"]),
        (with(valid_task(), "/objective", json!("      ")), vec!["body", "objective"]),
        (with(valid_task(), "/objective", json!("  abcd  ")), vec!["body", "objective"]),
        (with(valid_task(), "/operation", json!("deploy")), vec!["body", "operation"]),
        (
            with(valid_task(), "/constraints/time_budget_seconds", json!(29)),
            vec!["body", "constraints", "time_budget_seconds"],
        ),
        (
            with(valid_task(), "/constraints/time_budget_seconds", json!(86401)),
            vec!["body", "constraints", "time_budget_seconds"],
        ),
        (with(valid_task(), "/version", json!("2.0")), vec!["body", "version"]),
        (with(valid_task(), "/requested_by/kind", json!("robot")), vec!["body", "requested_by", "kind"]),
        (with(valid_task(), "/target/ref", json!("")), vec!["body", "target", "ref"]),
        (with(valid_task(), "/inputs", json!([1])), vec!["body", "inputs"]),
        (with(valid_task(), "/objective", json!("bad \u{0} byte")), vec!["body", "objective"]),
    ];
    for (body, loc) in cases {
        let (status, rejected) = status_and_json(test.enqueue(&body).await).await;
        assert_eq!(status, 422, "{body}");
        let errors = rejected["detail"].as_array().unwrap_or_else(|| panic!("a list for {body}: {rejected}"));
        assert!(errors.iter().any(|error| error["loc"] == json!(loc)), "{loc:?} in {rejected}");
        assert!(errors.iter().all(|error| error["msg"].is_string() && error["type"].is_string()));
    }
    for raw in ["", "{", "[1,2]", "\"text\"", "null"] {
        let response =
            test.client.post("/tasks/enqueue").body(raw.to_owned()).content_type("application/json").send().await;
        let (status, rejected) = status_and_json(response).await;
        assert_eq!(status, 422, "{raw:?}");
        assert!(rejected["detail"].is_array());
    }
    assert!(test.events().await.is_empty());
}

#[tokio::test]
async fn legacy_aliases_and_unknown_fields_are_accepted() {
    let test = TestApp::spawn().await;
    let legacy = json!({
        "requested_by": {"kind": "agent", "id": "jules-001"},
        "objective": "Run the nightly build",
        "type": "ops",
        "target": {"repository": "testorg/test"},
        "payload": {"build_id": 123},
        "bogus": 1
    });
    let (status, created) = status_and_json(test.enqueue(&legacy).await).await;
    assert_eq!(status, 201, "{created}");
    let task = &created["task"];
    assert_eq!(task["operation"], "ops");
    assert_eq!(task["target"]["repo"], "testorg/test");
    assert_eq!(task["inputs"], json!({"build_id": 123}));
    assert!(task.get("bogus").is_none() && task.get("type").is_none() && task.get("payload").is_none());
    assert_eq!(task["constraints"]["time_budget_seconds"], 900);
}

#[tokio::test]
async fn a_repeated_idempotency_key_gets_409_with_the_original_task_and_writes_nothing() {
    let test = TestApp::spawn().await;
    let body = with(valid_task(), "/idempotency_key", json!("key-1"));
    let first = test.client.post("/tasks/enqueue").header("X-Trace-Id", "first").body_json(&body).send().await;
    let (status, created) = status_and_json(first).await;
    assert_eq!(status, 201);
    let n_events = test.events().await.len();
    let changed = with(body.clone(), "/objective", json!("Something else entirely"));
    let again = test.client.post("/tasks/enqueue").header("X-Trace-Id", "second").body_json(&changed).send().await;
    let (status, conflict) = status_and_json(again).await;
    assert_eq!(status, 409);
    assert_eq!(conflict["status"], "conflict");
    assert_eq!(conflict["message"], "Task with this idempotency_key already exists");
    assert_eq!(conflict["task_id"], created["task_id"]);
    assert_eq!(conflict["trace_id"], "first", "the original task's trace id");
    assert_eq!(conflict["task"], created["task"]);
    assert!(conflict.get("cwom").is_none());
    assert_eq!(test.events().await.len(), n_events);

    // The policy runs first: the same key with a now-disallowed repo is a 422.
    let disallowed = with(body, "/target/repo", json!("evil/repo"));
    let (status, _) = status_and_json(test.enqueue(&disallowed).await).await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_duplicates_give_one_201_and_thirty_one_409s() {
    let test = std::sync::Arc::new(TestApp::spawn().await);
    let body = with(valid_task(), "/idempotency_key", json!("same-key"));
    let requests: Vec<_> = (0..32)
        .map(|_| {
            let test = test.clone();
            let body = body.clone();
            tokio::spawn(async move { status_and_json(test.enqueue(&body).await).await })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut task_ids = std::collections::HashSet::new();
    for request in requests {
        let (status, response) = request.await.unwrap();
        statuses.push(status);
        task_ids.insert(response["task_id"].as_str().unwrap().to_owned());
    }
    statuses.sort_unstable();
    assert_eq!(statuses.iter().filter(|status| **status == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|status| **status == 409).count(), 31, "{statuses:?}");
    assert_eq!(task_ids.len(), 1, "every answer names the one task");
    let stored: i64 = sqlx::query_scalar("select count(*) from tasks").fetch_one(&test.pool).await.unwrap();
    assert_eq!(stored, 1);
    let created = test.events().await.iter().filter(|event| event.event_type == "TaskCreated").count();
    assert_eq!(created, 1);
}

#[tokio::test]
async fn get_answers_404_for_unknown_and_malformed_ids() {
    let test = TestApp::spawn().await;
    for id in ["01J00000000000000000000000", "not-a-ulid", "x'%20or%201=1", "0000000000000000000000000000000000"] {
        let (status, body) = status_and_json(test.get_task(id).await).await;
        assert_eq!(status, 404, "{id}");
        assert_eq!(body, json!({"detail": "Task not found"}));
    }
}

#[tokio::test]
async fn list_filters_exactly_and_returns_newest_first() {
    let test = TestApp::spawn().await;
    let mut ids = Vec::new();
    for (operation, kind) in [("docs", "human"), ("ops", "agent"), ("docs", "agent")] {
        let body = with(with(valid_task(), "/operation", json!(operation)), "/requested_by/kind", json!(kind));
        let (_, created) = status_and_json(test.enqueue(&body).await).await;
        ids.push(created["task_id"].as_str().unwrap().to_owned());
    }
    let list = |query: &'static str| {
        let test = &test;
        async move {
            let (status, body) = status_and_json(test.client.get(format!("/tasks{query}")).send().await).await;
            (status, body)
        }
    };
    let (status, all) = list("").await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = all.as_array().unwrap().iter().map(|task| task["task_id"].as_str().unwrap()).collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]);
    let (_, docs) = list("?operation=docs").await;
    assert_eq!(docs.as_array().unwrap().len(), 2);
    let (_, agent_docs) = list("?operation=docs&requester_kind=agent").await;
    assert_eq!(agent_docs.as_array().unwrap().len(), 1);
    let (_, queued) = list("?status=queued&target_repo=testorg/test-repo").await;
    assert_eq!(queued.as_array().unwrap().len(), 3);
    let (_, none) = list("?target_repo=testorg/other").await;
    assert_eq!(none, json!([]));
    let (_, page) = list("?limit=1&offset=1").await;
    assert_eq!(page[0]["task_id"], ids[1].as_str());
    for bad in [
        "?target_repo=a%00b",
        "?limit=0",
        "?limit=1001",
        "?offset=-1",
        "?status=sleeping",
        "?operation=deploy",
        "?limit=abc",
    ] {
        let (status, body) = list(bad).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["detail"][0]["loc"][0], "query", "{bad}");
    }
}

#[tokio::test]
async fn trace_ids_are_validated_and_always_returned() {
    let test = TestApp::spawn().await;
    let response = test.client.get("/health").send().await;
    let generated = response.0.headers().get("x-trace-id").unwrap().to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 26);
    let too_long = "x".repeat(129);
    let response = test
        .client
        .post("/tasks/enqueue")
        .header("X-Trace-Id", too_long.as_str())
        .body_json(&valid_task())
        .send()
        .await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["header", "X-Trace-Id"]));
    assert!(test.events().await.is_empty());
}

#[tokio::test]
async fn with_api_keys_every_route_but_health_version_and_docs_needs_one() {
    let http = api::HttpConfig { api_keys: vec!["key-one".into(), "key-two".into()], ..api::HttpConfig::default() };
    let test = TestApp::spawn_with(test_config(), http).await;
    for path in ["/health", "/healthz", "/version", "/openapi.json"] {
        assert_eq!(test.client.get(path).send().await.0.status(), 200, "{path}");
    }
    // Auth is checked before the body: an invalid body without a key is a 401.
    let response = test.client.post("/tasks/enqueue").body("{").send().await;
    assert_eq!(response.0.headers().get("www-authenticate").unwrap(), "Bearer");
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, body), (401, json!({"detail": "Invalid or missing API key"})));
    for header in ["Bearer wrong", "Basic key-one", "key-one", "Bearer "] {
        let response = test.client.get("/tasks").header("Authorization", header).send().await;
        assert_eq!(response.0.status(), 401, "{header}");
    }
    for key in ["key-one", "key-two"] {
        let response = test.client.get("/tasks").header("Authorization", format!("Bearer {key}")).send().await;
        assert_eq!(response.0.status(), 200);
    }
    let response = test.client.get("/metrics").send().await;
    assert_eq!(response.0.status(), 401);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_changes_nothing() {
    let test = TestApp::spawn().await;
    let big = with(valid_task(), "/inputs", json!({"blob": "x".repeat(1024 * 1024)}));
    let (status, body) = status_and_json(test.enqueue(&big).await).await;
    assert_eq!(status, 413);
    assert_eq!(body, json!({"detail": "Request body is too large"}));
    assert!(test.events().await.is_empty());
}

#[tokio::test]
async fn health_version_and_metrics_answer() {
    let test = TestApp::spawn().await;
    test.enqueue(&valid_task()).await;
    let (_, health) = status_and_json(test.client.get("/health").send().await).await;
    assert_eq!(health, json!({"status": "ok"}));
    let (_, healthz) = status_and_json(test.client.get("/healthz").send().await).await;
    assert_eq!(healthz, json!({"ok": true, "db": true}));
    let (_, version) = status_and_json(test.client.get("/version").send().await).await;
    assert!(version["version"].is_string());
    let metrics = test.client.get("/metrics").send().await.0.into_body().into_string().await.unwrap();
    assert!(metrics.contains("jct_events_appended_total 8"), "{metrics}");
    assert!(metrics.contains("jct_tasks{status=\"queued\"} 1"), "{metrics}");
    assert!(metrics.contains("jct_projection_lag_events{projection=\"tasks\"} 0"), "{metrics}");
    assert!(metrics.contains("jct_http_requests_total"), "{metrics}");
    // The one enqueue: the appender's first batch reads under the lock (it remembers nothing yet).
    assert!(metrics.contains("\njct_append_pipelined_batches_total 1\n"), "{metrics}");
    assert!(metrics.contains("\njct_append_speculative_batches_total 0\n"), "{metrics}");
    assert!(metrics.contains("\njct_append_speculative_misses_total 0\n"), "{metrics}");
    let (status, body) = status_and_json(test.client.get("/no/such/route").send().await).await;
    assert_eq!((status, body), (404, json!({"detail": "Not Found"})));
}

#[tokio::test]
async fn the_tasks_read_model_rebuilt_from_the_log_equals_the_live_one() {
    let test = TestApp::spawn().await;
    for objective in ["First task to do", "Second task to do", "Third task to do"] {
        test.enqueue(&with(valid_task(), "/objective", json!(objective))).await;
    }
    let before = tasks_checksum(&test.pool).await;
    let rebuilt =
        projections::rebuild::rebuild(&test.pool, &projections::tasks::TasksProjection, &app::upcasters(), &|_| {})
            .await
            .unwrap();
    assert_eq!(rebuilt.applied, 22, "three tasks of eight events, one Repo");
    assert_eq!(tasks_checksum(&test.pool).await, before);
    let (status, list) = status_and_json(test.client.get("/tasks").send().await).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn list_queries_are_planned_for_each_call_never_kept_prepared() {
    use projections::cwom::{self, Page};
    let test = TestApp::spawn().await;
    let (status, _) = status_and_json(test.enqueue(&valid_task()).await).await;
    assert_eq!(status, 201);
    let mut conn = test.pool.acquire().await.unwrap();
    let kept = "select count(*) from pg_prepared_statements \
                where statement ilike '%limit $%offset $%' and statement not ilike '%pg_prepared_statements%'";
    // The check sees a list-shaped statement that is kept prepared, as sqlx keeps every statement by default.
    sqlx::query("select 1 limit $1 offset $2").bind(1_i64).bind(0_i64).execute(&mut *conn).await.unwrap();
    assert_eq!(sqlx::query_scalar::<_, i64>(kept).fetch_one(&mut *conn).await.unwrap(), 1);

    // More calls than the five after which PostgreSQL may settle on a generic plan.
    let page = Page { limit: 10, offset: 0 };
    for _ in 0..7 {
        let tasks = projections::tasks::list_tasks(&mut *conn, &Default::default(), 10, 0).await.unwrap();
        assert_eq!(tasks.len(), 1);
        cwom::list_repos(&mut *conn, &Default::default(), page).await.unwrap();
        cwom::list_issues(&mut *conn, &Default::default(), page).await.unwrap();
        cwom::list_context_packets(&mut *conn, "01ARZ3NDEKTSV4RRFFQ69G5FAV", page).await.unwrap();
        cwom::list_constraint_snapshots(&mut *conn, &Default::default(), page).await.unwrap();
        cwom::list_doctrine_refs(&mut *conn, &Default::default(), page).await.unwrap();
        cwom::list_runs(&mut *conn, &Default::default(), page).await.unwrap();
        cwom::list_artifacts(&mut *conn, &Default::default(), page).await.unwrap();
    }
    assert_eq!(sqlx::query_scalar::<_, i64>(kept).fetch_one(&mut *conn).await.unwrap(), 1, "only the check's own");
}

#[tokio::test]
async fn without_a_free_database_connection_a_request_is_503_with_retry_after_and_then_served_again() {
    use poem::EndpointExt as _;
    let (_, url) = crate::harness::fresh_database().await;
    // Two connections, both taken by this test: the service's next query waits 300 ms for one, then gives up.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_millis(300))
        .connect(&url)
        .await
        .unwrap();
    let app = app::App::start(pool.clone(), test_config()).await.unwrap();
    let client = poem::test::TestClient::new(api::endpoint(app, api::HttpConfig::default()).boxed());
    let held = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());

    let response = client.get("/tasks").send().await;
    assert_eq!(response.0.headers().get("retry-after").and_then(|value| value.to_str().ok()), Some("1"));
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, body), (503, json!({"detail": "The database is unavailable; retry shortly"})));

    drop(held);
    let (status, body) = status_and_json(client.get("/tasks").send().await).await;
    assert_eq!((status, body), (200, json!([])));
}
