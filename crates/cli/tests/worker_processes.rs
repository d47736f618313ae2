//! Workers as separate `jct worker` processes against one PostgreSQL (SPEC §2.5, §7): three workers and 1,000 tasks,
//! each completed exactly once; a worker killed with SIGKILL mid-task, whose task then completes on another worker
//! in a new attempt while the dead attempt can never complete.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use app::App;
use domain::task::lifecycle::events;
use domain::task::run::{decide_finish, Finish, Refusal, RetryPolicy, RunOutcome};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

async fn fresh_app() -> (App, PgPool, String) {
    let url = devdb::test_server().await.expect("test server").fresh_database().await.expect("fresh database");
    let pool = PgPoolOptions::new().max_connections(20).connect(&url).await.expect("connect");
    store::MIGRATOR.run(&pool).await.expect("migrate");
    let config =
        app::Config { policy: domain::task::PolicyConfig::from_prefixes("testorg/"), ..app::Config::default() };
    let app = App::start(pool.clone(), config).await.expect("start app");
    (app, pool, url)
}

fn task_body(n: usize, inputs: Value) -> Value {
    json!({
        "requested_by": {"kind": "agent", "id": "process-test"},
        "objective": format!("Process test task number {n}"),
        "operation": "analysis",
        "target": {"repo": "testorg/processes"},
        "inputs": inputs,
    })
}

async fn enqueue(app: &App, body: Value, create_cwom: bool) -> String {
    let request = app::tasks::EnqueueRequest { body, create_cwom, trace_id: format!("proc-{}", ulid::Ulid::new()) };
    match app::tasks::enqueue(app, request).await.expect("enqueue") {
        app::tasks::EnqueueOutcome::Created { task, .. } => task["task_id"].as_str().unwrap().to_owned(),
        other => panic!("{other:?}"),
    }
}

/// A directory of its own under the system's temp dir (swept after six hours: `devdb::scratch_dir`).
fn temp_dir(name: &str) -> PathBuf {
    devdb::scratch_dir(&format!("processes-{name}"))
}

/// A `jct worker` process on `url`, with its own trace root under `dir`; its log goes to `dir/<id>.log`.
fn spawn_worker(url: &str, dir: &Path, worker_id: &str, args: &[&str]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{worker_id}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_jct"))
        .arg("worker")
        .args(["--worker-id", worker_id, "--poll-interval", "200ms"])
        .args(["--trace-root", dir.join("traces").to_str().unwrap()])
        .args(["--scratch-dir", dir.join(format!("scratch-{worker_id}")).to_str().unwrap()])
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn,jct_worker=info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start jct worker")
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn count(pool: &PgPool, event_type: &str) -> i64 {
    sqlx::query_scalar("select count(*) from audit_log where event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `(task id, event type, payload)` of every task event, in log order.
async fn task_events(pool: &PgPool) -> Vec<(String, String, Value)> {
    sqlx::query_as("select entity_id, event_type, payload from audit_log where entity_kind = 'Task' order by position")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_worker_processes_complete_a_thousand_tasks_each_exactly_once() {
    const TASKS: usize = 1000;
    let (app, pool, url) = fresh_app().await;
    let dir = temp_dir("three");
    let mut task_ids = HashSet::new();
    let mut pending = Vec::new();
    for n in 0..TASKS {
        let app = app.clone();
        pending.push(tokio::spawn(async move { enqueue(&app, task_body(n, json!({})), n % 2 == 0).await }));
        if pending.len() == 16 || n == TASKS - 1 {
            for handle in pending.drain(..) {
                task_ids.insert(handle.await.unwrap());
            }
        }
    }
    assert_eq!(task_ids.len(), TASKS);

    let mut workers: Vec<Child> =
        (0..3).map(|n| spawn_worker(&url, &dir, &format!("proc-{n}"), &["--concurrency", "8"])).collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    while count(&pool, events::TASK_COMPLETED).await < TASKS as i64 {
        for worker in &mut workers {
            assert!(worker.try_wait().unwrap().is_none(), "a worker exited early; see {}", dir.display());
        }
        assert!(Instant::now() < deadline, "not all tasks completed in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for worker in &mut workers {
        terminate(worker);
    }
    for worker in &mut workers {
        assert!(wait_exit(worker, Duration::from_secs(30)).success(), "a worker failed; see {}", dir.display());
    }

    let mut per_task: HashMap<String, HashMap<String, usize>> = HashMap::new();
    let mut claimed_by: HashMap<String, usize> = HashMap::new();
    for (task_id, event_type, payload) in task_events(&pool).await {
        *per_task.entry(task_id).or_default().entry(event_type.clone()).or_default() += 1;
        if event_type == events::TASK_CLAIMED {
            *claimed_by.entry(payload["worker_id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    for task_id in &task_ids {
        let counts = &per_task[task_id];
        let n = |event_type: &str| counts.get(event_type).copied().unwrap_or(0);
        assert_eq!(n(events::TASK_COMPLETED), 1, "{task_id}: {counts:?}");
        assert_eq!(n(events::TASK_CLAIMED), n(events::RUN_STARTED), "one RunStarted per attempt: {counts:?}");
        assert_eq!(n(events::TASK_CLAIMED), 1, "nothing failed, so one attempt each: {counts:?}");
        assert_eq!(n(events::TASK_FAILED) + n(events::TASK_RETRY_SCHEDULED), 0, "{counts:?}");
    }
    assert_eq!(claimed_by.values().sum::<usize>(), TASKS);
    assert!(claimed_by.len() >= 2, "the work was shared: {claimed_by:?}");
    // Every task's trace folder was written by the workers' trace projection.
    let traces = dir.join("traces");
    let written = task_ids.iter().filter(|task_id| traces.join(task_id).join("output.json").exists()).count();
    assert_eq!(written, TASKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_task_loses_nothing_and_the_dead_attempt_can_never_complete() {
    let (app, pool, url) = fresh_app().await;
    let dir = temp_dir("sigkill");
    let task_id = enqueue(&app, task_body(1, json!({})), true).await;
    let lease = ["--lease", "1s", "--heartbeat-interval", "250ms"];

    let mut doomed = spawn_worker(&url, &dir, "doomed", &[&lease[..], &["--stub-duration", "60s"]].concat());
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&pool, events::RUN_STARTED).await < 1 {
        assert!(Instant::now() < deadline, "the first worker never started the task");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Mid-task, with at least one heartbeat behind it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    doomed.kill().expect("SIGKILL");
    let _ = doomed.wait();

    let mut survivor = spawn_worker(&url, &dir, "survivor", &lease);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&pool, events::TASK_COMPLETED).await < 1 {
        assert!(Instant::now() < deadline, "the task never completed on the second worker");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    terminate(&mut survivor);
    assert!(wait_exit(&mut survivor, Duration::from_secs(30)).success());

    let stream: Vec<(String, Value)> = task_events(&pool)
        .await
        .into_iter()
        .filter(|(id, _, _)| *id == task_id)
        .map(|(_, event_type, payload)| (event_type, payload))
        .collect();
    let types: Vec<&str> = stream.iter().map(|(event_type, _)| event_type.as_str()).collect();
    let expired = types.iter().position(|event_type| *event_type == events::TASK_LEASE_EXPIRED).expect("lease expired");
    assert_eq!(
        types[..expired],
        [events::TASK_CREATED, events::TASK_ENQUEUED, events::TASK_CLAIMED, events::RUN_STARTED]
            .into_iter()
            .chain(std::iter::repeat_n(events::TASK_LEASE_RENEWED, expired - 4))
            .collect::<Vec<_>>()[..],
        "attempt 1 only claimed, started and renewed its lease: {types:?}"
    );
    assert_eq!(
        types[expired..],
        [
            events::TASK_LEASE_EXPIRED,
            events::TASK_CLAIMED,
            events::RUN_STARTED,
            events::ARTIFACT_PRODUCED,
            events::TASK_COMPLETED
        ]
    );
    let (_, lost) = &stream[expired];
    assert_eq!((lost["attempt"].as_u64(), lost["worker_id"].as_str()), (Some(1), Some("doomed")));
    let (_, completed) = stream.last().unwrap();
    assert_eq!((completed["attempt"].as_u64(), completed["worker_id"].as_str()), (Some(2), Some("survivor")));

    // The dead worker's attempt can never complete: on its own (stale) view or on the current one.
    let mut state = app::worker::load_state(&app, &task_id).await.unwrap();
    let refused = app::worker::append_decision(&app, &mut state, None, |state| {
        decide_finish(
            state,
            &Finish {
                attempt: 1,
                worker_id: "doomed",
                now: chrono::Utc::now(),
                outcome: RunOutcome::Succeeded { outputs: json!({}) },
                log_digest: None,
                retry: RetryPolicy::default(),
                jitter: 0.0,
            },
        )
    })
    .await
    .unwrap();
    assert!(matches!(refused, Err(Refusal::StaleAttempt { attempt: 1, .. })), "{refused:?}");
    assert_eq!(count(&pool, events::TASK_COMPLETED).await, 1);
}
