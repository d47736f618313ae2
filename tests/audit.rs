//! Forensics through HTTP: audit queries with cursors, trace timelines, entity histories, as-of reads, and
//! tamper drills against `GET /audit/verify`.

use serde_json::{json, Value};

use crate::harness::{status_and_json, valid_task, TestApp};

async fn enqueue_traced(test: &TestApp, trace_id: &str, objective: &str) -> Value {
    let mut body = valid_task();
    body["objective"] = json!(objective);
    let response = test.client.post("/tasks/enqueue").header("X-Trace-Id", trace_id).body_json(&body).send().await;
    let (status, created) = status_and_json(response).await;
    assert_eq!(status, 201, "{created}");
    created
}

async fn get(test: &TestApp, path: &str) -> (u16, Value) {
    status_and_json(test.client.get(path).send().await).await
}

#[tokio::test]
async fn audit_events_filter_and_page_in_position_order() {
    let test = TestApp::spawn().await;
    enqueue_traced(&test, "trace-one", "First traced task").await;
    let second = enqueue_traced(&test, "trace-two", "Second traced task").await;

    let (status, page) = get(&test, "/audit/events?trace_id=trace-two").await;
    assert_eq!(status, 200);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 7, "task created, queued, CS, issue, link, CP, link; the repo exists already");
    assert!(events.iter().all(|event| event["trace_id"] == "trace-two"));
    let positions: Vec<i64> = events.iter().map(|event| event["position"].as_i64().unwrap()).collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(page["next_cursor"].is_null());

    // Pages of 5 over all 15 events.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/audit/events?limit=5&cursor={cursor}"),
            None => "/audit/events?limit=5".to_owned(),
        };
        let (_, page) = get(&test, &path).await;
        seen.extend(page["events"].as_array().unwrap().iter().map(|event| event["position"].as_i64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, (1..=15).collect::<Vec<_>>());

    let task_id = second["task_id"].as_str().unwrap();
    let (_, by_entity) = get(&test, &format!("/audit/events?entity_kind=Task&entity_id={task_id}")).await;
    let types: Vec<&str> =
        by_entity["events"].as_array().unwrap().iter().map(|event| event["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["TaskCreated", "TaskEnqueued"]);
    let (_, by_actor) = get(&test, "/audit/events?actor_kind=system&actor_id=task-enqueue").await;
    assert_eq!(by_actor["events"].as_array().unwrap().len(), 2);
    let (_, by_action) = get(&test, "/audit/events?action=linked").await;
    assert_eq!(by_action["events"].as_array().unwrap().len(), 4);
    let (_, by_type) = get(&test, "/audit/events?event_type=RepoCreated").await;
    assert_eq!(by_type["events"].as_array().unwrap().len(), 1);
    let (_, by_range) = get(&test, "/audit/events?from_position=3&to_position=4").await;
    assert_eq!(by_range["events"].as_array().unwrap().len(), 2);
    let (_, future) = get(&test, "/audit/events?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["events"], json!([]));
    let (_, past) = get(&test, "/audit/events?until=2000-01-01T00:00:00Z").await;
    assert_eq!(past["events"], json!([]));

    for bad in [
        "?cursor=abc",
        "?entity_kind=Spaceship",
        "?actor_kind=robot",
        "?action=exploded",
        "?since=yesterday",
        "?limit=0",
    ] {
        let (status, body) = get(&test, &format!("/audit/events{bad}")).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
}

#[tokio::test]
async fn a_trace_timeline_names_every_event_and_object_of_the_request() {
    let test = TestApp::spawn().await;
    let created = enqueue_traced(&test, "trace-timeline", "Follow this task through").await;
    let (status, timeline) = get(&test, "/traces/trace-timeline").await;
    assert_eq!(status, 200);
    assert_eq!(timeline["events"].as_array().unwrap().len(), 8);
    let kinds: Vec<&str> =
        timeline["objects"].as_array().unwrap().iter().map(|object| object["entity_kind"].as_str().unwrap()).collect();
    for kind in ["Task", "Repo", "Issue", "ContextPacket", "ConstraintSnapshot"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let ids: Vec<&str> =
        timeline["objects"].as_array().unwrap().iter().map(|object| object["entity_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&created["task_id"].as_str().unwrap()));
    assert!(ids.contains(&created["cwom"]["issue_id"].as_str().unwrap()));
    let (status, _) = get(&test, "/traces/no-such-trace").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn histories_list_an_entitys_events_in_order() {
    let test = TestApp::spawn().await;
    let created = enqueue_traced(&test, "trace-history", "Keep a history of this").await;
    let task_id = created["task_id"].as_str().unwrap();
    let (status, history) = get(&test, &format!("/tasks/{task_id}/history")).await;
    assert_eq!(status, 200);
    assert_eq!(history["entity_kind"], "Task");
    let versions: Vec<i64> =
        history["events"].as_array().unwrap().iter().map(|event| event["stream_version"].as_i64().unwrap()).collect();
    assert_eq!(versions, [1, 2]);
    let issue_id = created["cwom"]["issue_id"].as_str().unwrap();
    let (status, history) = get(&test, &format!("/cwom/issues/{issue_id}/history")).await;
    assert_eq!(status, 200);
    let types: Vec<&str> =
        history["events"].as_array().unwrap().iter().map(|event| event["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["IssueCreated", "IssueLinked", "IssueLinked"]);
    for path in [
        "/tasks/01J00000000000000000000000/history".to_owned(),
        "/tasks/not-an-id/history".to_owned(),
        format!("/cwom/repos/{issue_id}/history"),
    ] {
        let (status, _) = get(&test, &path).await;
        assert_eq!(status, 404, "{path}");
    }
}

#[tokio::test]
async fn as_of_reads_show_a_task_as_it_was_at_each_position() {
    let test = TestApp::spawn().await;
    let created = enqueue_traced(&test, "trace-asof", "Read me as of the past").await;
    let task_id = created["task_id"].as_str().unwrap();
    let (_, history) = get(&test, &format!("/tasks/{task_id}/history")).await;
    let created_at = history["events"][0]["position"].as_i64().unwrap();
    let queued_at = history["events"][1]["position"].as_i64().unwrap();

    let (status, before) = get(&test, &format!("/tasks/{task_id}?as_of={}", created_at - 1)).await;
    assert_eq!(status, 404, "the task did not exist yet: {before}");
    let (status, pending) = get(&test, &format!("/tasks/{task_id}?as_of={created_at}")).await;
    assert_eq!(status, 200);
    assert_eq!(pending["status"], "pending");
    assert!(pending["queued_at"].is_null());
    let (_, queued) = get(&test, &format!("/tasks/{task_id}?as_of={queued_at}")).await;
    assert_eq!(queued["status"], "queued");
    let (_, live) = get(&test, &format!("/tasks/{task_id}")).await;
    assert_eq!(queued, live, "as of the head equals the live read model");
    let (_, by_time) = get(&test, &format!("/tasks/{task_id}?as_of=2999-01-01T00:00:00Z")).await;
    assert_eq!(by_time, live);
    let (status, _) = get(&test, &format!("/tasks/{task_id}?as_of=2000-01-01T00:00:00Z")).await;
    assert_eq!(status, 404);
    let (status, _) = get(&test, &format!("/tasks/{task_id}?as_of=yesterday")).await;
    assert_eq!(status, 422);
}

async fn tamper(test: &TestApp, statements: &[&str]) {
    let mut conn = test.pool.acquire().await.unwrap();
    sqlx::query("set session_replication_role = replica").execute(&mut *conn).await.unwrap();
    for statement in statements {
        sqlx::query(statement).execute(&mut *conn).await.unwrap();
    }
    sqlx::query("set session_replication_role = origin").execute(&mut *conn).await.unwrap();
}

#[tokio::test]
async fn tamper_drills_are_caught_by_audit_verify() {
    let drills: [(&[&str], i64); 3] = [
        (&["update audit_log set payload = jsonb_set(payload, '{task,objective}', '\"rewritten\"') where position = 9"], 9),
        (&["delete from audit_log where position = 4"], 4),
        (
            &[
                "update audit_log set position = 1000 where position = 6",
                "update audit_log set position = 6 where position = 7",
                "update audit_log set position = 7 where position = 1000",
            ],
            6,
        ),
    ];
    for (statements, first_bad) in drills {
        let test = TestApp::spawn().await;
        enqueue_traced(&test, "trace-a", "Something to tamper with").await;
        enqueue_traced(&test, "trace-b", "Something else to tamper with").await;
        let (status, report) = get(&test, "/audit/verify").await;
        assert_eq!(status, 200);
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["events_checked"], 15);
        tamper(&test, statements).await;
        let (_, report) = get(&test, "/audit/verify").await;
        assert_eq!(report["ok"], false, "{statements:?}");
        assert_eq!(report["first_bad_position"], first_bad, "{statements:?}: {report}");
        assert!(report["reason"].is_string());
    }
}

#[tokio::test]
async fn replay_folds_the_read_models_as_they_were_into_a_separate_schema() {
    let test = TestApp::spawn().await;
    let first = enqueue_traced(&test, "trace-replay-1", "The first task of the replay").await;
    enqueue_traced(&test, "trace-replay-2", "The second task of the replay").await;
    let applied = projections::rebuild::replay_into(
        &test.pool,
        &app::all_projections(),
        &app::upcasters(),
        "replay_one",
        1,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(applied, 1);
    let tasks: Vec<(String, String)> =
        sqlx::query_as("select task_id, status from replay_one.tasks").fetch_all(&test.pool).await.unwrap();
    assert_eq!(tasks, [(first["task_id"].as_str().unwrap().to_owned(), "pending".to_owned())]);

    projections::rebuild::replay_into(
        &test.pool,
        &app::all_projections(),
        &app::upcasters(),
        "replay_all",
        1_000,
        &|_| {},
    )
    .await
    .unwrap();
    let replayed: String =
        sqlx::query_scalar("select md5(string_agg(t::text, '|' order by task_id)) from replay_all.tasks t")
            .fetch_one(&test.pool)
            .await
            .unwrap();
    let live: String = sqlx::query_scalar("select md5(string_agg(t::text, '|' order by task_id)) from public.tasks t")
        .fetch_one(&test.pool)
        .await
        .unwrap();
    assert_eq!(replayed, live, "a replay to the head equals the live read model");
    let live_count: i64 = sqlx::query_scalar("select count(*) from public.tasks").fetch_one(&test.pool).await.unwrap();
    assert_eq!(live_count, 2, "the live tables are untouched");
}

#[tokio::test]
async fn as_of_reads_show_a_cwom_object_after_each_change() {
    let test = TestApp::spawn().await;
    let created = enqueue_traced(&test, "trace-cwom-asof", "An issue that changes twice").await;
    let issue_id = created["cwom"]["issue_id"].as_str().unwrap();
    for status in ["ready", "running"] {
        let response =
            test.client.patch(format!("/cwom/issues/{issue_id}/status")).query("status", &status).send().await;
        assert_eq!(response.0.status(), 200);
    }
    let (_, history) = get(&test, &format!("/cwom/issues/{issue_id}/history")).await;
    let positions: Vec<i64> =
        history["events"].as_array().unwrap().iter().map(|event| event["position"].as_i64().unwrap()).collect();
    assert_eq!(positions.len(), 5, "created, two links, two status changes");
    let at = |position: i64| {
        let path = format!("/cwom/issues/{issue_id}?as_of={position}");
        let test = &test;
        async move { get(test, &path).await }
    };
    assert_eq!(at(positions[0] - 1).await.0, 404);
    let (status, created_state) = at(positions[0]).await;
    assert_eq!(status, 200);
    assert_eq!(created_state["status"], "planned");
    assert_eq!(created_state["context_packets"], json!([]), "not linked yet");
    let (_, linked) = at(positions[2]).await;
    assert_eq!(linked["context_packets"].as_array().unwrap().len(), 1);
    assert_eq!(at(positions[3]).await.1["status"], "ready");
    let (_, last) = at(positions[4]).await;
    assert_eq!(last["status"], "running");
    let (_, live) = get(&test, &format!("/cwom/issues/{issue_id}")).await;
    assert_eq!(last, live, "as of the head equals the live read model");
    assert_eq!(get(&test, &format!("/cwom/issues/{issue_id}?as_of=soon")).await.0, 422);
}
