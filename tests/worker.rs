//! The worker in-process on a real PostgreSQL: claims exactly once under concurrent claimers, the stub and exec
//! handlers, time budgets, retries, cancel (queued and running), fencing of a stale attempt, graceful shutdown,
//! wake-up without notifications, the tasks / cwom / task_queue projections of worker events, and trace folders
//! rebuilt byte for byte.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use domain::task::lifecycle::{events, TaskStatus};
use domain::task::run::{decide_finish, Finish, Refusal, RetryPolicy, RunOutcome};
use projections::Projection as _;
use serde_json::{json, Value};
use worker::{HandlerKind, Outcome, WorkerConfig};

use crate::harness::{status_and_json, valid_task, TestApp};

/// A directory of its own under the system's temp dir (swept after six hours: `devdb::scratch_dir`).
fn temp_dir(name: &str) -> PathBuf {
    devdb::scratch_dir(&format!("worker-{name}"))
}

/// Worker settings for tests: fast polls and backoff, its own trace root and blob root (outside the trace root,
/// so a test can delete the whole trace root).
fn test_config(name: &str) -> WorkerConfig {
    let dir = temp_dir(name);
    WorkerConfig {
        worker_id: format!("test-{name}-{:04x}", rand_u16()),
        poll_interval: Duration::from_millis(200),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        trace_root: dir.join("traces"),
        blob_root: Some(dir.join("blobs")),
        scratch_root: Some(dir.join("scratch")),
        ..WorkerConfig::default()
    }
}

fn rand_u16() -> u16 {
    (ulid::Ulid::new().random() & 0xffff) as u16
}

fn task_with(inputs: Value) -> Value {
    let mut body = valid_task();
    body["inputs"] = inputs;
    body
}

/// Enqueues through HTTP; returns the task id and the whole 201 body.
async fn enqueue(test: &TestApp, body: &Value, create_cwom: bool) -> (String, Value) {
    let response = test
        .client
        .post("/tasks/enqueue")
        .query("create_cwom", &create_cwom)
        .header("X-Trace-Id", format!("trace-{}", ulid::Ulid::new()))
        .body_json(body)
        .send()
        .await;
    let (status, created) = status_and_json(response).await;
    assert_eq!(status, 201, "{created}");
    (created["task_id"].as_str().unwrap().to_owned(), created)
}

/// Lets every read model catch up with the log (the worker does not wait for them).
async fn settle(test: &TestApp) {
    let head = store::read::head_position(&test.pool).await.unwrap();
    test.app.wait_for(head).await.unwrap();
}

async fn get(test: &TestApp, path: &str) -> (u16, Value) {
    status_and_json(test.client.get(path).send().await).await
}

async fn task(test: &TestApp, task_id: &str) -> Value {
    settle(test).await;
    let (status, task) = get(test, &format!("/tasks/{task_id}")).await;
    assert_eq!(status, 200, "{task}");
    task
}

async fn cancel(test: &TestApp, task_id: &str) -> (u16, Value) {
    status_and_json(test.client.post(format!("/tasks/{task_id}/cancel")).send().await).await
}

/// The event types of one task's stream, in order.
async fn stream_types(test: &TestApp, task_id: &str) -> Vec<String> {
    test.events()
        .await
        .into_iter()
        .filter(|event| event.stream.kind == domain::event::EntityKind::Task && event.stream.id == task_id)
        .map(|event| event.event_type)
        .collect()
}

async fn wait_until<F: std::future::Future<Output = bool>>(timeout: Duration, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "condition not met within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count_events(test: &TestApp, task_id: &str, event_type: &str) -> usize {
    stream_types(test, task_id).await.iter().filter(|kind| *kind == event_type).count()
}

/// The executor the claims of these tests record.
fn stub_executor() -> domain::task::run::ExecutorInfo {
    domain::task::run::ExecutorInfo { kind: "stub".into(), version: "test".into() }
}

/// A claim of one task under a 30 s lease with three attempts and nothing else set; a test changes what it needs.
fn claim_request<'a>(
    worker_id: &'a str,
    executor: &'a domain::task::run::ExecutorInfo,
) -> app::worker::ClaimRequest<'a> {
    app::worker::ClaimRequest {
        worker_id,
        limit: 1,
        lease: Duration::from_secs(30),
        max_attempts: 3,
        trace_root: None,
        executor,
        max_time_budget: None,
        claiming: None,
        read_ahead: None,
    }
}

#[tokio::test]
async fn concurrent_claimers_claim_every_task_exactly_once() {
    let test = TestApp::spawn().await;
    let mut task_ids = HashSet::new();
    for n in 0..60 {
        task_ids.insert(enqueue(&test, &valid_task(), n % 3 == 0).await.0);
    }
    let executor = stub_executor();
    let claimers: Vec<_> = (0..8)
        .map(|n| {
            let app = test.app.clone();
            let executor = executor.clone();
            tokio::spawn(async move {
                let worker_id = format!("claimer-{n}");
                let mut claimed = Vec::new();
                let mut idle_rounds = 0;
                while idle_rounds < 3 {
                    let batch = app::worker::claim(
                        &app,
                        &app::worker::ClaimRequest {
                            limit: 3,
                            lease: Duration::from_secs(300),
                            ..claim_request(&worker_id, &executor)
                        },
                        None,
                    )
                    .await
                    .expect("claim");
                    if batch.claimed.is_empty() {
                        idle_rounds += 1;
                    } else {
                        idle_rounds = 0;
                    }
                    claimed.extend(batch.claimed.into_iter().map(|task| (task.task_id, task.attempt)));
                }
                claimed
            })
        })
        .collect();
    let mut claims: HashMap<String, usize> = HashMap::new();
    for claimer in claimers {
        for (task_id, attempt) in claimer.await.unwrap() {
            assert_eq!(attempt, 1);
            *claims.entry(task_id).or_default() += 1;
        }
    }
    assert_eq!(claims.len(), task_ids.len(), "every task claimed");
    assert!(claims.values().all(|&n| n == 1), "each exactly once: {claims:?}");
    // The log agrees: one TaskClaimed and one RunStarted per task.
    let events = test.events().await;
    for event_type in [events::TASK_CLAIMED, events::RUN_STARTED] {
        let mut per_task: HashMap<&str, usize> = HashMap::new();
        for event in events.iter().filter(|event| event.event_type == event_type) {
            *per_task.entry(event.stream.id.as_str()).or_default() += 1;
        }
        assert_eq!(per_task.len(), 60, "{event_type}");
        assert!(per_task.values().all(|&n| n == 1), "{event_type}");
    }
    // Every claimed task is leased in the queue (applied inline), and the queue rebuilt from the log is the same.
    settle(&test).await;
    let queue = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (String, String, i32, Option<String>, i32)>(
            "select task_id, state, attempt, worker_id, version from task_queue order by task_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let live = queue(test.pool.clone()).await;
    assert_eq!(live.len(), 60);
    assert!(live.iter().all(|row| row.1 == "leased" && row.2 == 1));
    projections::rebuild::rebuild(&test.pool, &projections::queue::QueueProjection, test.app.upcasters(), &|_| {})
        .await
        .unwrap();
    assert_eq!(queue(test.pool.clone()).await, live);
}

#[tokio::test]
async fn the_stub_completes_a_task_and_the_tasks_cwom_and_trace_projections_show_it() {
    let test = TestApp::spawn().await;
    let config = test_config("stub");
    let (task_id, created) = enqueue(&test, &valid_task(), true).await;
    let trace_id = created["trace_id"].as_str().unwrap().to_owned();
    let issue_id = created["cwom"]["issue_id"].as_str().unwrap().to_owned();

    let outcome = worker::process_one(&test.app, &config).await.unwrap();
    assert_eq!(outcome, Outcome::Completed { task_id: task_id.clone(), attempt: 1 });
    assert_eq!(worker::process_one(&test.app, &config).await.unwrap(), Outcome::Idle);

    assert_eq!(
        stream_types(&test, &task_id).await,
        [
            events::TASK_CREATED,
            events::TASK_ENQUEUED,
            events::TASK_CLAIMED,
            events::RUN_STARTED,
            events::ARTIFACT_PRODUCED,
            events::TASK_COMPLETED
        ]
    );
    let trace_root = config.trace_root.canonicalize().unwrap();
    let folder = trace_root.join(&task_id);
    let task = task(&test, &task_id).await;
    assert_eq!(task["status"], "completed");
    assert_eq!(task["assigned_to"], config.worker_id.as_str());
    assert!(task["started_at"].is_string() && task["completed_at"].is_string());
    assert_eq!(task["error"], Value::Null);
    assert_eq!(task["result"]["message"], "Stub execution completed successfully");
    assert_eq!(task["result"]["summary"]["task_id"], task_id.as_str());
    assert_eq!(task["trace_path"], format!("file://{}", folder.display()));

    // Every event the worker appended carries the task's trace id.
    let events = test.events().await;
    let worker_events: Vec<_> = events.iter().filter(|event| event.actor_id == config.worker_id).collect();
    assert!(worker_events.len() >= 8, "task, run, artifact and issue events");
    assert!(worker_events.iter().all(|event| event.trace_id.as_deref() == Some(trace_id.as_str())));

    // The CWOM Run, its Artifact and the Issue.
    let run_id = events.iter().find(|event| event.event_type == events::RUN_STARTED).unwrap().payload["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, run) = get(&test, &format!("/cwom/runs/{run_id}")).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "done");
    assert_eq!(run["mode"], "system");
    assert_eq!(run["trace_id"], trace_id.as_str());
    assert_eq!(run["for_issue"]["id"], issue_id.as_str());
    assert_eq!(run["artifact_root_uri"], format!("file://{}/", folder.display()));
    assert!(run["telemetry"]["duration_s"].is_number());
    assert_eq!(run["outputs"]["result_summary"], "Stub execution completed successfully");
    let artifact_id = run["outputs"]["artifacts"][0]["id"].as_str().unwrap();
    let (status, artifact) = get(&test, &format!("/cwom/artifacts/{artifact_id}")).await;
    assert_eq!(status, 200, "{artifact}");
    assert_eq!(artifact["produced_by"]["id"], run_id.as_str());
    assert_eq!(artifact["type"], "doc");
    assert_eq!(artifact["uri"], format!("file://{}/artifacts/output.md", folder.display()));
    assert_eq!(artifact["trace_id"], trace_id.as_str());
    let (_, issue) = get(&test, &format!("/cwom/issues/{issue_id}")).await;
    assert_eq!(issue["status"], "done");
    let issue_changes: Vec<_> = events
        .iter()
        .filter(|event| event.event_type == "IssueStatusChanged" && event.stream.id == issue_id)
        .map(|event| event.payload["changes"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(issue_changes, ["running", "done"]);

    // The trace folder, written by its projection from the events and blobs.
    worker::project_traces(&test.app, &config).await.unwrap();
    let input: Value = serde_json::from_slice(&std::fs::read(folder.join("input.json")).unwrap()).unwrap();
    assert_eq!(input["task_id"], task_id.as_str());
    assert_eq!(input["trace_id"], trace_id.as_str());
    assert_eq!(input["attempt"], 1);
    assert_eq!(input["task"]["objective"], "Add a /healthz endpoint with a test");
    assert_eq!(input["context_packet"]["for_issue"]["id"], issue_id.as_str());
    assert_eq!(input["constraint_snapshot"]["kind"], "ConstraintSnapshot");
    let output: Value = serde_json::from_slice(&std::fs::read(folder.join("output.json")).unwrap()).unwrap();
    assert_eq!(output["status"], "completed");
    assert_eq!(output["outputs"], task["result"]);
    let report = std::fs::read(folder.join("artifacts/output.md")).unwrap();
    assert_eq!(output["artifacts"][0]["digest"], projections::trace::sha256_digest(&report));
    assert_eq!(output["artifacts"][0]["size_bytes"], report.len());
    let log = std::fs::read_to_string(folder.join("log.txt")).unwrap();
    assert!(log.contains("attempt 1: claimed by"), "{log}");
    assert!(log.contains("stub| wrote artifacts/output.md"), "{log}");
    assert!(log.contains("attempt 1: completed in"), "{log}");
    let lines = std::fs::read_to_string(folder.join("events.jsonl")).unwrap();
    let types: Vec<String> = lines
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["event_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, stream_types(&test, &task_id).await);

    // Worker claims and outcomes on /metrics.
    let metrics = test.client.get("/metrics").send().await.0.into_body().into_string().await.unwrap();
    for line in [
        "jct_worker_events_total{event_type=\"TaskClaimed\"} 1",
        "jct_worker_events_total{event_type=\"TaskCompleted\"} 1",
        "jct_tasks{status=\"completed\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // Later scrapes count only the events since the one before: a second task is counted once, and a scrape with
    // nothing new counts nothing again.
    enqueue(&test, &valid_task(), true).await;
    assert!(matches!(worker::process_one(&test.app, &config).await.unwrap(), Outcome::Completed { .. }));
    for _ in 0..2 {
        let metrics = test.client.get("/metrics").send().await.0.into_body().into_string().await.unwrap();
        for line in [
            "jct_worker_events_total{event_type=\"TaskClaimed\"} 2",
            "jct_worker_events_total{event_type=\"TaskCompleted\"} 2",
        ] {
            assert!(metrics.contains(line), "{line} in {metrics}");
        }
    }
}

/// `jct_tasks` on `/metrics` by status, every status listed, after the scrape before it has been counted.
async fn tasks_on_metrics(test: &TestApp) -> BTreeMap<String, i64> {
    let metrics = test.client.get("/metrics").send().await.0.into_body().into_string().await.unwrap();
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("jct_tasks{status=\""))
        .map(|rest| {
            let (status, count) = rest.split_once("\"} ").unwrap();
            (status.to_owned(), count.parse().unwrap())
        })
        .collect()
}

/// `/metrics` agrees with the `tasks` table, status by status, and has the counts `expected` gives (others 0).
async fn assert_tasks_on_metrics(test: &TestApp, expected: &[(&str, i64)]) {
    settle(test).await;
    let on_metrics = tasks_on_metrics(test).await;
    let in_table: BTreeMap<String, i64> = sqlx::query_as("select status, count(*) from tasks group by status")
        .fetch_all(&test.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    for status in TaskStatus::ALL {
        let status = status.as_str();
        let want = expected.iter().find(|(name, _)| *name == status).map_or(0, |(_, count)| *count);
        assert_eq!(on_metrics.get(status), Some(&want), "{status} on /metrics: {on_metrics:?}");
        assert_eq!(in_table.get(status).copied().unwrap_or(0), want, "{status} in the tasks table: {in_table:?}");
    }
}

#[tokio::test]
async fn tasks_by_status_on_metrics_follow_every_way_a_task_moves_and_ends() {
    let test = TestApp::spawn().await;
    let config = WorkerConfig { max_attempts: 1, ..test_config("status-counts") };
    // Running: a handler that sleeps until it is cancelled.
    let (sleeper, _) = enqueue(&test, &task_with(json!({"stub": {"sleep_ms": 60_000}})), true).await;
    let running = {
        let (app, config) = (test.app.clone(), config.clone());
        tokio::spawn(async move { worker::process_one(&app, &config).await.unwrap() })
    };
    wait_until(Duration::from_secs(5), || async { count_events(&test, &sleeper, events::RUN_STARTED).await == 1 })
        .await;
    assert_tasks_on_metrics(&test, &[("running", 1)]).await;
    enqueue(&test, &valid_task(), false).await;
    assert_tasks_on_metrics(&test, &[("running", 1), ("queued", 1)]).await;
    // Cancelled while running; then the queued one completes.
    assert_eq!(cancel(&test, &sleeper).await.0, 200);
    running.await.unwrap();
    assert_tasks_on_metrics(&test, &[("cancelled", 1), ("queued", 1)]).await;
    assert!(matches!(worker::process_one(&test.app, &config).await.unwrap(), Outcome::Completed { .. }));
    assert_tasks_on_metrics(&test, &[("cancelled", 1), ("completed", 1)]).await;
    // Failed (its one attempt fails), cancelled while queued, and one left queued: each scrape counts only the
    // events past the one before.
    enqueue(&test, &task_with(json!({"stub": {"fail_attempts": 1}})), true).await;
    assert!(matches!(worker::process_one(&test.app, &config).await.unwrap(), Outcome::Failed { .. }));
    // Without CWOM the cancel is the log's last event, at the queue's checkpoint.
    let (queued, _) = enqueue(&test, &valid_task(), false).await;
    assert_eq!(cancel(&test, &queued).await.0, 200);
    assert_tasks_on_metrics(&test, &[("cancelled", 2), ("completed", 1), ("failed", 1)]).await;
    enqueue(&test, &valid_task(), true).await;
    let expected = [("cancelled", 2), ("completed", 1), ("failed", 1), ("queued", 1)];
    assert_tasks_on_metrics(&test, &expected).await;
    assert_tasks_on_metrics(&test, &expected).await;
}

#[tokio::test]
async fn a_handler_over_its_time_budget_is_stopped_and_the_run_ends_timed_out() {
    let test = TestApp::spawn().await;
    let config =
        WorkerConfig { max_time_budget: Some(Duration::from_millis(500)), max_attempts: 1, ..test_config("timeout") };
    let (task_id, _) = enqueue(&test, &task_with(json!({"stub": {"sleep_ms": 60_000}})), true).await;
    let started = Instant::now();
    let outcome = worker::process_one(&test.app, &config).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "stopped at the budget, not after the sleep");
    let Outcome::Failed { timed_out: true, error, .. } = outcome else { panic!("{outcome:?}") };
    assert!(error.contains("timed out"), "{error}");
    assert_eq!(
        stream_types(&test, &task_id).await[2..],
        [events::TASK_CLAIMED, events::RUN_STARTED, events::TASK_TIMED_OUT, events::TASK_FAILED]
    );
    let task = task(&test, &task_id).await;
    assert_eq!(task["status"], "failed");
    assert!(task["error"].as_str().unwrap().contains("timed out"));
    let run_id = test.events().await.iter().find(|event| event.event_type == events::RUN_STARTED).unwrap().payload
        ["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, run) = get(&test, &format!("/cwom/runs/{run_id}")).await;
    assert_eq!(run["status"], "failed");
    assert!(run["failure"]["message"].as_str().unwrap().contains("timed out"));
}

#[tokio::test]
async fn an_exec_handler_is_killed_with_its_children_at_the_time_budget() {
    let test = TestApp::spawn().await;
    let dir = temp_dir("exec-timeout");
    let marker = dir.join("survived");
    let script = format!("(sleep 2; touch {}) & echo started; sleep 60", marker.display());
    let config = WorkerConfig {
        handler: HandlerKind::Exec,
        exec_command: vec!["sh".into(), "-c".into(), script, "handler".into()],
        max_time_budget: Some(Duration::from_millis(500)),
        max_attempts: 2,
        ..test_config("exec-timeout")
    };
    let (task_id, _) = enqueue(&test, &valid_task(), false).await;
    let started = Instant::now();
    let outcome = worker::process_one(&test.app, &config).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    assert!(matches!(outcome, Outcome::RetryScheduled { timed_out: true, .. }), "{outcome:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!marker.exists(), "the handler's background child was killed too");
    let task = task(&test, &task_id).await;
    assert_eq!(task["status"], "queued", "retried");
    worker::project_traces(&test.app, &config).await.unwrap();
    let log = std::fs::read_to_string(config.trace_root.join(&task_id).join("log.txt")).unwrap();
    assert!(log.contains("stdout| started"), "{log}");
    assert!(log.contains("timed out after"), "{log}");
}

#[tokio::test]
async fn a_failed_attempt_is_retried_after_a_backoff_and_then_succeeds() {
    let test = TestApp::spawn().await;
    let config = test_config("retry");
    let (task_id, _) = enqueue(&test, &task_with(json!({"stub": {"fail_attempts": 1, "error": "flaky"}})), true).await;
    let outcome = worker::process_one(&test.app, &config).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::RetryScheduled { task_id: task_id.clone(), attempt: 1, timed_out: false, error: "flaky".into() }
    );
    let waiting = task(&test, &task_id).await;
    assert_eq!(waiting["status"], "queued");
    assert_eq!(waiting["error"], "flaky");
    let retry = test.events().await.into_iter().find(|event| event.event_type == events::TASK_RETRY_SCHEDULED).unwrap();
    assert_eq!(retry.payload["next_attempt"], 2);

    let deadline = Instant::now() + Duration::from_secs(5);
    let outcome = loop {
        match worker::process_one(&test.app, &config).await.unwrap() {
            Outcome::Idle => {
                assert!(Instant::now() < deadline, "the retry never became due");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcome => break outcome,
        }
    };
    assert_eq!(outcome, Outcome::Completed { task_id: task_id.clone(), attempt: 2 });
    let done = task(&test, &task_id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["error"], Value::Null);
    assert_eq!(count_events(&test, &task_id, events::RUN_STARTED).await, 2);
    // One CWOM Run per attempt: the first failed, the second done; the Issue ends done.
    let runs: Vec<Value> = test
        .events()
        .await
        .into_iter()
        .filter(|event| event.event_type == "RunStatusChanged")
        .map(|event| event.payload["changes"]["status"].clone())
        .collect();
    assert_eq!(runs, [json!("failed"), json!("done")]);
}

#[tokio::test]
async fn when_retries_are_exhausted_the_task_fails_with_the_last_error() {
    let test = TestApp::spawn().await;
    let config = WorkerConfig { max_attempts: 2, ..test_config("exhausted") };
    let (task_id, _) = enqueue(&test, &task_with(json!({"stub": {"fail_attempts": 9}})), true).await;
    let mut outcomes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while outcomes.len() < 2 {
        match worker::process_one(&test.app, &config).await.unwrap() {
            Outcome::Idle => {
                assert!(Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcome => outcomes.push(outcome),
        }
    }
    assert!(matches!(&outcomes[0], Outcome::RetryScheduled { attempt: 1, .. }), "{outcomes:?}");
    assert_eq!(
        outcomes[1],
        Outcome::Failed {
            task_id: task_id.clone(),
            attempt: 2,
            timed_out: false,
            error: "stub: simulated failure of attempt 2".into()
        }
    );
    assert_eq!(worker::process_one(&test.app, &config).await.unwrap(), Outcome::Idle);
    let task = task(&test, &task_id).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"], "stub: simulated failure of attempt 2");
    assert!(task["completed_at"].is_string());
    let (_, issue) = get(&test, &format!("/cwom/issues/{}", task["cwom_issue_id"].as_str().unwrap())).await;
    assert_eq!(issue["status"], "failed");
    // Gone from the queue.
    let queued: i64 = sqlx::query_scalar("select count(*) from task_queue").fetch_one(&test.pool).await.unwrap();
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn cancelling_a_queued_task_cancels_it_at_once_and_a_finished_one_is_409() {
    let test = TestApp::spawn().await;
    let config = test_config("cancel-queued");
    let (task_id, created) = enqueue(&test, &valid_task(), true).await;
    let (status, task) = cancel(&test, &task_id).await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["status"], "cancelled");
    assert!(task["completed_at"].is_string());
    assert_eq!(task["task_id"], task_id.as_str());
    // Read-your-writes, and no worker ever runs it.
    let (_, fetched) = get(&test, &format!("/tasks/{task_id}")).await;
    assert_eq!(fetched, task);
    assert_eq!(worker::process_one(&test.app, &config).await.unwrap(), Outcome::Idle);
    let (_, issue) = get(&test, &format!("/cwom/issues/{}", created["cwom"]["issue_id"].as_str().unwrap())).await;
    assert_eq!(issue["status"], "canceled");

    let (status, body) = cancel(&test, &task_id).await;
    assert_eq!((status, body), (409, json!({"detail": "Task is already cancelled and cannot be cancelled"})));
    let (other, _) = enqueue(&test, &valid_task(), false).await;
    assert!(matches!(worker::process_one(&test.app, &config).await.unwrap(), Outcome::Completed { .. }));
    let (status, body) = cancel(&test, &other).await;
    assert_eq!((status, body), (409, json!({"detail": "Task is already completed and cannot be cancelled"})));
    for unknown in ["01J00000000000000000000000", "not-a-ulid"] {
        let (status, body) = cancel(&test, unknown).await;
        assert_eq!((status, body), (404, json!({"detail": "Task not found"})));
    }
    let cancelled = test.events().await.into_iter().find(|event| event.event_type == events::TASK_CANCELLED).unwrap();
    assert_eq!(cancelled.payload["attempt"], Value::Null);
    assert_eq!(cancelled.action.as_str(), "status_changed");
}

#[tokio::test]
async fn cancelling_a_running_task_stops_its_handler_within_about_a_second() {
    let test = TestApp::spawn().await;
    // Long heartbeats: the cancel is seen by the poll, not by a renewal.
    let config = WorkerConfig {
        poll_interval: Duration::from_millis(500),
        heartbeat_interval: Duration::from_secs(20),
        ..test_config("cancel-running")
    };
    let (task_id, created) = enqueue(&test, &task_with(json!({"stub": {"sleep_ms": 60_000}})), true).await;
    let running = {
        let app = test.app.clone();
        let config = config.clone();
        tokio::spawn(async move { worker::process_one(&app, &config).await.unwrap() })
    };
    wait_until(Duration::from_secs(5), || async { count_events(&test, &task_id, events::RUN_STARTED).await == 1 })
        .await;
    let (status, task) = cancel(&test, &task_id).await;
    assert_eq!(status, 200);
    assert_eq!(task["status"], "cancelled");
    let cancelled_at = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), running).await.expect("the handler stopped").unwrap();
    assert!(cancelled_at.elapsed() < Duration::from_millis(1500), "{:?}", cancelled_at.elapsed());
    assert_eq!(outcome, Outcome::Cancelled { task_id: task_id.clone(), attempt: 1 });
    // The cancelled attempt appended nothing after the cancel; its Run and the Issue are canceled.
    assert_eq!(stream_types(&test, &task_id).await.last().unwrap(), events::TASK_CANCELLED);
    let events = test.events().await;
    let run_id = events.iter().find(|event| event.event_type == events::RUN_STARTED).unwrap().payload["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    settle(&test).await;
    let (_, run) = get(&test, &format!("/cwom/runs/{run_id}")).await;
    assert_eq!(run["status"], "canceled");
    let (_, issue) = get(&test, &format!("/cwom/issues/{}", created["cwom"]["issue_id"].as_str().unwrap())).await;
    assert_eq!(issue["status"], "canceled");
}

#[tokio::test]
async fn a_stale_worker_can_never_complete_an_attempt_taken_over_after_its_lease_expired() {
    let test = TestApp::spawn().await;
    let (task_id, _) = enqueue(&test, &valid_task(), true).await;
    let executor = stub_executor();
    // Worker A claims with a short lease and then goes silent.
    let batch = app::worker::claim(
        &test.app,
        &app::worker::ClaimRequest { lease: Duration::from_millis(300), ..claim_request("worker-a", &executor) },
        None,
    )
    .await
    .unwrap();
    let mut stale = batch.claimed.into_iter().next().expect("claimed").state;
    let config = test_config("takeover");
    assert_eq!(worker::process_one(&test.app, &config).await.unwrap(), Outcome::Idle, "the lease holds");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        worker::process_one(&test.app, &config).await.unwrap(),
        Outcome::Completed { task_id: task_id.clone(), attempt: 2 }
    );
    assert_eq!(
        stream_types(&test, &task_id).await[2..],
        [
            events::TASK_CLAIMED,
            events::RUN_STARTED,
            events::TASK_LEASE_EXPIRED,
            events::TASK_CLAIMED,
            events::RUN_STARTED,
            events::ARTIFACT_PRODUCED,
            events::TASK_COMPLETED
        ]
    );
    // A comes back and tries to complete attempt 1: refused, on its old state and on the fresh one.
    let decide = |state: &domain::task::run::TaskState| {
        decide_finish(
            state,
            &Finish {
                attempt: 1,
                worker_id: "worker-a",
                now: chrono_now(),
                outcome: RunOutcome::Succeeded { outputs: json!({"late": true}) },
                log_digest: None,
                retry: RetryPolicy::default(),
                jitter: 0.0,
            },
        )
    };
    let refused = app::worker::append_decision(&test.app, &mut stale, None, decide).await.unwrap();
    assert!(matches!(refused, Err(Refusal::StaleAttempt { attempt: 1, .. })), "{refused:?}");
    assert_eq!(count_events(&test, &task_id, events::TASK_COMPLETED).await, 1);
    let task = task(&test, &task_id).await;
    assert_eq!(task["result"]["summary"]["attempt"], 2);
    // Attempt 1's Run failed (lease expired), attempt 2's is done.
    let statuses: Vec<Value> = test
        .events()
        .await
        .into_iter()
        .filter(|event| event.event_type == "RunStatusChanged")
        .map(|event| event.payload["changes"]["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("failed"), json!("done")]);
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

#[tokio::test]
async fn graceful_shutdown_lets_short_handlers_finish_and_releases_the_rest() {
    let test = TestApp::spawn().await;
    let config = WorkerConfig { concurrency: 2, shutdown_grace: Duration::from_secs(1), ..test_config("shutdown") };
    let (short, _) = enqueue(&test, &task_with(json!({"stub": {"sleep_ms": 400}})), true).await;
    let (long, _) = enqueue(&test, &task_with(json!({"stub": {"sleep_ms": 60_000}})), true).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker::run(test.app.clone(), config.clone(), async move {
        let _ = stopped.await;
    }));
    wait_until(Duration::from_secs(5), || async {
        count_events(&test, &short, events::RUN_STARTED).await == 1
            && count_events(&test, &long, events::RUN_STARTED).await == 1
    })
    .await;
    let stopping = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker).await.expect("stopped").unwrap().unwrap();
    let took = stopping.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "{took:?}");
    assert_eq!(task(&test, &short).await["status"], "completed");
    assert_eq!(stream_types(&test, &long).await.last().unwrap(), events::TASK_RELEASED);
    let released = task(&test, &long).await;
    assert_eq!(released["status"], "queued");
    assert_eq!(released["error"], Value::Null);
    // Another worker can take it at once, as attempt 2 (a release is not a failure).
    let executor = stub_executor();
    let batch = app::worker::claim(
        &test.app,
        &app::worker::ClaimRequest { limit: 5, max_attempts: 1, ..claim_request("other", &executor) },
        None,
    )
    .await
    .unwrap();
    assert_eq!(batch.claimed.len(), 1);
    assert_eq!((batch.claimed[0].task_id.as_str(), batch.claimed[0].attempt), (long.as_str(), 2));
    // The worker left the trace folders of both tasks current.
    let output: Value =
        serde_json::from_slice(&std::fs::read(config.trace_root.join(&long).join("output.json")).unwrap()).unwrap();
    assert_eq!(output["attempts"][0]["outcome"], "released");
}

/// Time from enqueue to `RunStarted` of a worker in the background.
async fn time_to_start(test: &TestApp) -> Duration {
    let started = Instant::now();
    let (task_id, _) = enqueue(test, &valid_task(), false).await;
    wait_until(Duration::from_secs(10), || async { count_events(test, &task_id, events::RUN_STARTED).await == 1 })
        .await;
    started.elapsed()
}

#[tokio::test]
async fn a_worker_without_notifications_picks_up_work_within_the_poll_interval() {
    let test = TestApp::spawn().await;
    let poll = Duration::from_millis(500);
    let config = WorkerConfig { listen: false, poll_interval: poll, ..test_config("no-notify") };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker::run(test.app.clone(), config, async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let waited = time_to_start(&test).await;
        assert!(waited < poll + Duration::from_millis(400), "{waited:?}");
    }
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_worker_whose_listener_is_cut_off_catches_up_and_keeps_working() {
    let test = TestApp::spawn().await;
    let poll = Duration::from_millis(500);
    let config = WorkerConfig { poll_interval: poll, ..test_config("cut-off") };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker::run(test.app.clone(), config, async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Notified: fast.
    assert!(time_to_start(&test).await < poll);
    // Cut the listening connections off (the server ends them); work is still picked up within the poll.
    let database: String = sqlx::query_scalar("select current_database()").fetch_one(&test.pool).await.unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where datname = $1 and pid <> pg_backend_pid() and query ilike 'listen%'",
    )
    .bind(&database)
    .fetch_all(&test.pool)
    .await
    .unwrap();
    assert!(!cut.is_empty(), "a listener was connected");
    for _ in 0..3 {
        let waited = time_to_start(&test).await;
        assert!(waited < poll + Duration::from_millis(400), "{waited:?}");
    }
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_exec_handler_runs_a_program_in_its_own_scratch_dir_and_records_its_outputs_and_artifacts() {
    let test = TestApp::spawn().await;
    let script = r#"
        set -e
        objective=$(grep -o '"objective": "[^"]*"' "$1" | head -1)
        stdin_bytes=$(wc -c)
        echo "working on $JCT_TASK_ID attempt $JCT_ATTEMPT"
        echo "a warning" >&2
        mkdir -p artifacts/sub
        printf 'hello artifact' > artifacts/report.txt
        printf 'diff' > artifacts/sub/change.patch
        head -c 1100000 /dev/zero | tr '\0' 'x' > artifacts/big.log
        printf '{"cwd": "%s", "stdin_bytes": %s, "objective_seen": %s}' "$(pwd)" "$stdin_bytes" \
            "$( [ -n "$objective" ] && echo true || echo false )" > "$JCT_OUTPUT"
    "#;
    let config = WorkerConfig {
        handler: HandlerKind::Exec,
        exec_command: vec!["sh".into(), "-c".into(), script.into(), "handler".into()],
        ..test_config("exec")
    };
    let (task_id, _) = enqueue(&test, &valid_task(), true).await;
    let outcome = worker::process_one(&test.app, &config).await.unwrap();
    assert_eq!(outcome, Outcome::Completed { task_id: task_id.clone(), attempt: 1 });
    let task = task(&test, &task_id).await;
    let result = &task["result"];
    assert_eq!(result["objective_seen"], true, "{result}");
    assert!(result["stdin_bytes"].as_u64().unwrap() > 100, "input.json on stdin: {result}");
    let cwd = PathBuf::from(result["cwd"].as_str().unwrap());
    let trace_root = config.trace_root.canonicalize().unwrap();
    assert!(!cwd.starts_with(&trace_root), "the handler never works in the trace folder");
    assert!(!cwd.exists(), "its scratch directory is removed afterwards");

    let produced: Vec<store::RecordedEvent> =
        test.events().await.into_iter().filter(|event| event.event_type == events::ARTIFACT_PRODUCED).collect();
    let paths: Vec<&str> = produced.iter().map(|event| event.payload["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["big.log", "report.txt", "sub/change.patch"]);
    let big = vec![b'x'; 1_100_000];
    assert_eq!(produced[0].payload["digest"], projections::trace::sha256_digest(&big));
    assert_eq!(produced[1].payload["digest"], projections::trace::sha256_digest(b"hello artifact"));
    assert_eq!(produced[1].payload["size_bytes"], 14);
    assert_eq!(produced[2].payload["type"], "code_patch");
    // Content up to a MiB is stored with the events; the larger artifact went to the blob root, flushed first.
    let in_database: Vec<String> = sqlx::query_scalar("select digest from blobs").fetch_all(&test.pool).await.unwrap();
    let small_digest = produced[1].payload["digest"].as_str().unwrap().to_owned();
    let big_digest = produced[0].payload["digest"].as_str().unwrap();
    assert!(in_database.contains(&small_digest), "{in_database:?}");
    assert!(!in_database.iter().any(|digest| digest == big_digest));
    let blob_file = config.trace_projection().blobs().path(big_digest).unwrap();
    assert_eq!(std::fs::read(&blob_file).unwrap(), big);
    assert!(config.trace_projection().blobs().path(&small_digest).is_some_and(|path| !path.exists()));
    let artifact_id = produced[1].payload["artifact_id"].as_str().unwrap();
    let (status, artifact) = get(&test, &format!("/cwom/artifacts/{artifact_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(artifact["digest"], produced[1].payload["digest"]);

    worker::project_traces(&test.app, &config).await.unwrap();
    let folder = trace_root.join(&task_id);
    assert_eq!(std::fs::read(folder.join("artifacts/report.txt")).unwrap(), b"hello artifact");
    assert_eq!(std::fs::read(folder.join("artifacts/sub/change.patch")).unwrap(), b"diff");
    assert_eq!(std::fs::read(folder.join("artifacts/big.log")).unwrap(), big);
    let log = std::fs::read_to_string(folder.join("log.txt")).unwrap();
    assert!(log.contains(&format!("stdout| working on {task_id} attempt 1")), "{log}");
    assert!(log.contains("stderr| a warning"), "{log}");

    // A failing program: its exit status and last stderr line are the error.
    let failing = WorkerConfig {
        handler: HandlerKind::Exec,
        exec_command: vec!["sh".into(), "-c".into(), "echo 'it broke' >&2; exit 3".into(), "handler".into()],
        max_attempts: 1,
        ..test_config("exec-fail")
    };
    let (failed_id, _) = enqueue(&test, &valid_task(), false).await;
    let outcome = worker::process_one(&test.app, &failing).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Failed { task_id: failed_id, attempt: 1, timed_out: false, error: "exit status 3: it broke".into() }
    );
}

/// Every file under `root`, relative path → bytes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                files.insert(path.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

#[tokio::test]
async fn deleting_the_trace_root_and_rebuilding_reproduces_every_file_byte_for_byte() {
    let test = TestApp::spawn().await;
    let config = WorkerConfig { max_attempts: 2, ..test_config("rebuild") };
    let (completed, _) = enqueue(&test, &valid_task(), true).await;
    let (retried, _) = enqueue(&test, &task_with(json!({"stub": {"fail_attempts": 1}})), false).await;
    let (failed, _) = enqueue(&test, &task_with(json!({"stub": {"fail_attempts": 5}})), true).await;
    let (cancelled, _) = enqueue(&test, &valid_task(), true).await;
    assert_eq!(cancel(&test, &cancelled).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match worker::process_one(&test.app, &config).await.unwrap() {
            Outcome::Idle
                if test
                    .events()
                    .await
                    .iter()
                    .filter(|event| {
                        event.event_type == events::TASK_COMPLETED || event.event_type == events::TASK_FAILED
                    })
                    .count()
                    == 3 =>
            {
                break
            }
            Outcome::Idle => {
                assert!(Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {}
        }
    }
    worker::project_traces(&test.app, &config).await.unwrap();
    let root = config.trace_root.canonicalize().unwrap();
    let before = snapshot(&root);
    let folders: HashSet<String> = before
        .keys()
        .map(|path| path.components().next().unwrap().as_os_str().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        folders,
        HashSet::from([completed.clone(), retried.clone(), failed.clone()]),
        "a cancelled queued task never ran"
    );
    for task_id in [&completed, &retried, &failed] {
        for file in ["input.json", "log.txt", "output.json", "events.jsonl"] {
            assert!(before.contains_key(&Path::new(task_id).join(file)), "{task_id}/{file}");
        }
    }
    assert!(before.contains_key(&Path::new(&completed).join("artifacts/output.md")));
    let output: Value = serde_json::from_slice(&before[&Path::new(&retried).join("output.json")]).unwrap();
    assert_eq!(output["status"], "completed");
    assert_eq!(output["attempts"][0]["outcome"], "failed");
    assert_eq!(output["attempts"][1]["outcome"], "completed");

    // The stub's logs and artifacts are small: they are stored with the events, and the blob root holds
    // nothing. The rebuild renders every folder from the database alone.
    let stored: i64 = sqlx::query_scalar("select count(*) from blobs").fetch_one(&test.pool).await.unwrap();
    assert!(stored >= 3, "{stored} blobs in the database");
    let blob_root = config.blob_root();
    assert!(!blob_root.exists() || snapshot(&blob_root).is_empty(), "no blob file");
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    projections::rebuild::rebuild(&test.pool, &config.trace_projection(), test.app.upcasters(), &|_| {}).await.unwrap();
    let after = snapshot(&root);
    assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());
    for (path, bytes) in &before {
        assert!(after[path] == *bytes, "{} differs after the rebuild", path.display());
    }

    // The rebuild rendered every folder from the streams it saw in its batches; without that cache each stream is
    // read back from the log, and the bytes are the same.
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    let reading = config.trace_projection().with_cached_streams(0);
    projections::rebuild::rebuild(&test.pool, &reading, test.app.upcasters(), &|_| {}).await.unwrap();
    let read_back = snapshot(&root);
    assert_eq!(read_back.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());
    for (path, bytes) in &before {
        assert!(read_back[path] == *bytes, "{} differs when rendered from streams read back", path.display());
    }

    // A projection that starts after the tasks were enqueued (a backlog, a restart) holds each stream from its first
    // claim on and reads only what came before it from the log: the same bytes again.
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    let mut claimed = HashSet::new();
    let from_the_claims: Vec<store::RecordedEvent> = test
        .events()
        .await
        .into_iter()
        .map(|event| test.app.upcasters().upcast(event))
        .filter(|event| {
            event.stream.kind == domain::event::EntityKind::Task
                && (claimed.contains(&event.stream.id)
                    || (event.event_type == events::TASK_CLAIMED && claimed.insert(event.stream.id.clone())))
        })
        .collect();
    assert_eq!(claimed.len(), 3);
    let mut conn = test.pool.acquire().await.unwrap();
    config.trace_projection().apply_batch(&mut conn, &from_the_claims).await.unwrap();
    let from_claims = snapshot(&root);
    assert_eq!(from_claims.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());
    for (path, bytes) in &before {
        assert!(from_claims[path] == *bytes, "{} differs when rendered from the claims on", path.display());
    }
}

/// Runs the worker loop with `config` until `tasks` tasks have completed, then shuts it down gracefully.
async fn run_until_completed(test: &TestApp, config: WorkerConfig, tasks: usize, timeout: Duration) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker::run(test.app.clone(), config, async move {
        let _ = stopped.await;
    }));
    wait_until(timeout, || async {
        test.events().await.iter().filter(|event| event.event_type == events::TASK_COMPLETED).count() == tasks
    })
    .await;
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_worker_never_runs_more_handlers_at_once_than_its_concurrency() {
    let test = TestApp::spawn().await;
    let config = WorkerConfig { concurrency: 2, ..test_config("concurrency") };
    let mut task_ids = Vec::new();
    for _ in 0..6 {
        task_ids.push(enqueue(&test, &task_with(json!({"stub": {"sleep_ms": 150}})), false).await.0);
    }
    run_until_completed(&test, config, 6, Duration::from_secs(20)).await;
    // Each handler's log spans its run: from its first line to its last (written as the stub returns), on the
    // worker's clock. At no moment were more than two of those intervals open.
    let mut edges: Vec<(String, i32)> = Vec::new();
    for event in test.events().await.iter().filter(|event| event.event_type == events::TASK_COMPLETED) {
        let digest = event.payload["log_digest"].as_str().expect("a handler log").to_owned();
        let log: Vec<u8> = sqlx::query_scalar("select content from blobs where digest = $1")
            .bind(&digest)
            .fetch_one(&test.pool)
            .await
            .unwrap();
        let log = String::from_utf8(log).unwrap();
        let stamp = |line: &str| line.trim_start_matches('[').split(']').next().unwrap().to_owned();
        edges.push((stamp(log.lines().next().unwrap()), 1));
        edges.push((stamp(log.lines().last().unwrap()), -1));
    }
    assert_eq!(edges.len(), 12);
    // RFC 3339 in UTC with a fixed number of digits sorts as text; an end before a start at the same instant.
    edges.sort();
    let (mut open, mut most) = (0, 0);
    for (_, step) in edges {
        open += step;
        most = most.max(open);
    }
    assert_eq!(most, 2, "two handlers at a time, never more");
}

#[tokio::test]
async fn a_worker_with_one_slot_records_each_end_in_the_transaction_of_the_next_claim() {
    let test = TestApp::spawn().await;
    let config = WorkerConfig { concurrency: 1, project_traces: false, ..test_config("one-slot") };
    let mut task_ids = HashSet::new();
    for n in 0..20 {
        task_ids.insert(enqueue(&test, &valid_task(), n % 2 == 0).await.0);
    }
    run_until_completed(&test, config, 20, Duration::from_secs(30)).await;

    // Each task claimed, started and completed once.
    let events = test.events().await;
    for event_type in [events::TASK_CLAIMED, events::RUN_STARTED, events::TASK_COMPLETED] {
        let per_task: Vec<&str> = events
            .iter()
            .filter(|event| event.event_type == event_type)
            .map(|event| event.stream.id.as_str())
            .collect();
        assert_eq!(per_task.iter().copied().collect::<HashSet<_>>(), task_ids.iter().map(String::as_str).collect());
        assert_eq!(per_task.len(), 20, "{event_type}");
    }
    // The claim read ahead while a task ran is appended with that task's end: one commit for both. (A read-ahead
    // gives up when the end takes longer than its patience, as it may on a loaded machine: most, not all.)
    let shared: i64 = sqlx::query_scalar(
        "select count(*) from (select xmin::text from audit_log group by 1 \
          having bool_or(event_type = 'TaskCompleted') and bool_or(event_type = 'TaskClaimed')) as t",
    )
    .fetch_one(&test.pool)
    .await
    .unwrap();
    assert!(shared >= 10, "only {shared} of 19 ends shared a transaction with the next claim");
}

#[tokio::test]
async fn an_end_waits_only_for_a_claim_that_is_reading_and_is_never_left_behind() {
    let test = TestApp::spawn().await;
    let store = test.app.store();
    let ends = app::worker::EndsAwaitingClaim::default();
    let command = |n: u32| store::NewCommand {
        events: vec![domain::event::NewEvent::new(
            domain::event::EventData {
                stream: domain::event::StreamId::new(domain::event::EntityKind::Task, format!("end-{n}")),
                event_type: "TestEnded".into(),
                schema_version: 1,
                payload: json!({}),
                action: domain::event::Action::Updated,
                before: None,
                after: None,
                note: None,
            },
            domain::event::Actor::system("test"),
        )],
        ..Default::default()
    };
    let in_log = |n: u32| {
        let pool = test.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("select count(*) from audit_log where entity_id = $1")
                .bind(format!("end-{n}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    // No claim reading: appended at once.
    ends.append(store, command(1)).await.unwrap();
    assert_eq!(in_log(1).await, 1);

    // A claim reading: the end waits for it, and goes in its batch (here, a claim that finds nothing to claim).
    let carried = ends.carry(store);
    assert_eq!(ends.readers(), 1);
    let waiting = {
        let (ends, store) = (&ends, store.clone());
        async move { ends.append(&store, command(2)).await }
    };
    tokio::pin!(waiting);
    assert!(tokio::time::timeout(Duration::from_millis(300), waiting.as_mut()).await.is_err(), "the end waited");
    assert_eq!(in_log(2).await, 0);
    let executor = stub_executor();
    let request = claim_request("carrier", &executor);
    let (batch, appended) = tokio::join!(app::worker::claim(&test.app, &request, Some(carried)), waiting);
    assert!(batch.unwrap().claimed.is_empty());
    appended.unwrap();
    assert_eq!((in_log(2).await, ends.readers()), (1, 0));

    // A claim that never reads (dropped): what waited for it is appended on its own.
    let carried = ends.carry(store);
    let waiting = {
        let (ends, store) = (&ends, store.clone());
        async move { ends.append(&store, command(3)).await }
    };
    tokio::pin!(waiting);
    assert!(tokio::time::timeout(Duration::from_millis(100), waiting.as_mut()).await.is_err(), "the end waited");
    drop(carried);
    waiting.await.unwrap();
    assert_eq!((in_log(3).await, ends.readers()), (1, 0));
}

#[tokio::test]
async fn a_claim_reading_ahead_gives_up_at_once_when_the_worker_shuts_down() {
    let test = TestApp::spawn().await;
    let (task_id, _) = enqueue(&test, &valid_task(), false).await;
    let ends = app::worker::EndsAwaitingClaim::default();
    let executor = stub_executor();
    let request =
        app::worker::ClaimRequest { read_ahead: Some(Duration::from_secs(30)), ..claim_request("reader", &executor) };
    // Reading ahead claims a task per end carried: without ends it is refused, not silently idle.
    assert!(app::worker::claim(&test.app, &request, None).await.is_err());
    let claim = app::worker::claim(&test.app, &request, Some(ends.carry(test.app.store())));
    tokio::pin!(claim);
    // A task is due but no slot frees: the read-ahead waits.
    assert!(tokio::time::timeout(Duration::from_millis(300), claim.as_mut()).await.is_err());
    ends.close();
    let batch = tokio::time::timeout(Duration::from_secs(5), claim).await.expect("gave up at once").unwrap();
    assert!(batch.gave_up && batch.claimed.is_empty(), "{batch:?}");
    assert_eq!(count_events(&test, &task_id, events::TASK_CLAIMED).await, 0);
}

#[tokio::test]
async fn a_worker_in_a_process_of_its_own_claims_without_reading_the_log_under_the_lock() {
    let test = TestApp::spawn().await;
    for _ in 0..3 {
        enqueue(&test, &valid_task(), true).await;
    }
    // The worker's process: an App of its own on the same database, whose appender never saw those tasks or
    // their Issues.
    let worker_process = app::App::start(test.pool.clone(), crate::harness::test_config()).await.unwrap();
    let executor = stub_executor();
    let request = claim_request("own-process", &executor);
    for _ in 0..3 {
        let batch = app::worker::claim(&worker_process, &request, None).await.unwrap();
        assert_eq!(batch.claimed.len(), 1, "{batch:?}");
    }
    // The first batch reads under the lock (nothing remembered yet); the others go on what the claims read: the
    // task's version (its condition) and its Issue's (no condition), each checked in the batch's transaction.
    let stats = worker_process.store().stats();
    assert_eq!((stats.guessed_batches, stats.speculative_batches, stats.speculative_misses), (2, 2, 0), "{stats:?}");
}

#[tokio::test]
async fn the_default_scratch_root_is_removed_at_a_graceful_shutdown_and_a_named_one_stays() {
    let test = TestApp::spawn().await;
    let named = test_config("scratch-named");
    let default = WorkerConfig { scratch_root: None, ..test_config("scratch-default") };
    let default_root = std::env::temp_dir().join(format!("jct-worker-{}", default.worker_id));
    for config in [named.clone(), default] {
        let (id, _) = enqueue(&test, &valid_task(), true).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(worker::run(test.app.clone(), config, async move {
            let _ = stopped.await;
        }));
        wait_until(Duration::from_secs(10), || async { task(&test, &id).await["status"] == "completed" }).await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), worker).await.expect("stopped").unwrap().unwrap();
    }
    assert!(named.scratch_root.as_deref().unwrap().is_dir(), "a scratch root the operator named stays");
    assert!(!default_root.exists(), "{} was removed", default_root.display());
}
