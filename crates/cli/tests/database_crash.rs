//! PostgreSQL crashes while clients enqueue and a worker runs tasks, under `jct up` and under `jct serve` beside a
//! `jct worker`: no enqueue gets a 5xx but a 503 (retry), every one answered 201 is in the log and completes
//! exactly once, the hash chain still verifies, the read models and the trace folders catch up, and the processes
//! recover by themselves (no restart) and still shut down cleanly. And a request that finds no free connection
//! gets its 503 once the configured acquire timeout is over.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// A child process, killed if the test ends before it does (a failed assertion must not leave it running).
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        if self.0.try_wait().is_ok_and(|status| status.is_none()) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `jct <command>` on `url`, with its files under `dir` (trace folders in `dir/traces`) and `env` on top of the
/// test's settings; its log goes to `dir/<command>.log`.
fn spawn(command: &str, url: &str, bind: &str, dir: &Path, env: &[(&str, &str)]) -> Process {
    let log = std::fs::File::create(dir.join(format!("{command}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_jct"))
        .arg(command)
        .env("DATABASE_URL", url)
        .env("JCT_BIND", bind)
        .env("JCT_DATA_DIR", dir)
        .env("JCT_ALLOWED_REPO_PREFIXES", "testorg/")
        .env("JCT_WORKER_STUB_DURATION", "20ms")
        .env("JCT_WORKER_POLL_INTERVAL", "200ms")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("start jct {command}: {error}"));
    Process(child)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What one client saw: the task ids of the enqueues answered 201, and how many got another answer or none.
#[derive(Default)]
struct Answers {
    created: Vec<String>,
    other: HashMap<String, usize>,
}

/// Enqueues one task after another until `stop` is set.
async fn client(base: String, n: usize, stop: Arc<AtomicBool>) -> Answers {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let mut answers = Answers::default();
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let body = json!({
            "requested_by": {"kind": "agent", "id": format!("client-{n}")},
            "objective": format!("Task {seq} of client {n}, enqueued across a database crash"),
            "operation": "analysis",
            "target": {"repo": "testorg/crash"},
        });
        match http.post(format!("{base}/tasks/enqueue")).json(&body).send().await {
            Ok(response) if response.status() == reqwest::StatusCode::CREATED => {
                let task: Value = response.json().await.expect("a 201 carries the task");
                answers.created.push(task["task_id"].as_str().expect("task_id").to_owned());
            }
            Ok(response) => *answers.other.entry(response.status().to_string()).or_default() += 1,
            Err(error) => *answers.other.entry(format!("no answer: {error}")).or_default() += 1,
        }
    }
    answers
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Every process of `processes` still runs.
fn assert_running(processes: &mut [(&str, Process)], dir: &Path) {
    for (command, process) in processes {
        let log = dir.join(format!("{command}.log"));
        assert!(process.0.try_wait().unwrap().is_none(), "jct {command} exited; see {}", log.display());
    }
}

/// Waits until the API answers `/health`, while every process of `processes` runs.
async fn wait_for_health(base: &str, processes: &mut [(&str, Process)], dir: &Path) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http.get(format!("{base}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert_running(processes, dir);
        assert!(Instant::now() < deadline, "the API did not answer /health");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGINT to every process of `processes` and checks that each exits successfully within a minute.
async fn interrupt_and_wait(processes: &mut [(&str, Process)], dir: &Path) {
    for (_, process) in processes.iter() {
        let _ = Command::new("kill").args(["-INT", &process.0.id().to_string()]).status();
    }
    for (command, process) in processes {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = process.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "jct {command} did not stop after SIGINT");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let log = dir.join(format!("{command}.log"));
        assert!(status.success(), "jct {command} exited with {status}; see {}", log.display());
    }
}

/// Crashes PostgreSQL under `commands` (`up`, or `serve` and `worker`) while clients enqueue, then checks what
/// the module doc says.
async fn a_crash_under(commands: &[&str]) {
    const CLIENTS: usize = 6;
    let dir = devdb::scratch_dir(&format!("database-crash-{}", commands.join("-")));
    // A durable cluster of the test's own: the shared test server may be a throwaway one (`synchronous_commit =
    // off`, where a crash may lose acknowledged commits by design), and it serves other tests that must not see
    // this one's crash.
    let mut cluster = devdb::ManagedCluster::start(&dir.join("cluster")).await.expect("start a cluster");
    let url = cluster.url(devdb::DEFAULT_DATABASE);
    let bind = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{bind}");
    let mut processes: Vec<(&str, Process)> =
        commands.iter().map(|command| (*command, spawn(command, &url, &bind, &dir, &[]))).collect();
    wait_for_health(&base, &mut processes, &dir).await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS).map(|n| tokio::spawn(client(base.clone(), n, stop.clone()))).collect();
    // Crash while enqueues, claims and ends are being appended, then let the clients go on for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.crash_and_restart().await.expect("crash and restart the cluster");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeSet::new();
    let mut other: HashMap<String, usize> = HashMap::new();
    for client in clients {
        let answers = client.await.unwrap();
        acknowledged.extend(answers.created);
        for (answer, n) in answers.other {
            *other.entry(answer).or_default() += n;
        }
    }
    assert!(acknowledged.len() >= 50, "too few enqueues to mean anything: {} ({other:?})", acknowledged.len());
    // What was not a 201 says the database was unavailable (retry), never that the service failed.
    assert!(other.keys().all(|answer| !answer.starts_with('5') || answer.starts_with("503")), "{other:?}");

    // Every acknowledged task completes, exactly once, on the same process.
    let pool = PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut per_task: HashMap<String, HashMap<String, usize>> = HashMap::new();
    loop {
        assert_running(&mut processes, &dir);
        per_task.clear();
        let rows: Vec<(String, String)> =
            sqlx::query_as("select entity_id, event_type from audit_log where entity_kind = 'Task'")
                .fetch_all(&pool)
                .await
                .unwrap();
        for (task_id, event_type) in rows {
            *per_task.entry(task_id).or_default().entry(event_type).or_default() += 1;
        }
        let completed = acknowledged
            .iter()
            .filter(|task_id| per_task.get(*task_id).is_some_and(|counts| counts.contains_key("TaskCompleted")))
            .count();
        if completed == acknowledged.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{completed} of {} acknowledged tasks completed; see the logs in {}",
            acknowledged.len(),
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for task_id in &acknowledged {
        let counts = &per_task[task_id];
        let n = |event_type: &str| counts.get(event_type).copied().unwrap_or(0);
        assert_eq!(n("TaskCreated"), 1, "{task_id}: {counts:?}");
        assert_eq!(n("TaskCompleted"), 1, "{task_id}: {counts:?}");
        assert_eq!(n("TaskClaimed"), n("RunStarted"), "one RunStarted per attempt, {task_id}: {counts:?}");
        // An attempt running through the crash records its end once the database is back (well within its
        // lease): no task needs a second attempt.
        assert_eq!(n("TaskClaimed"), 1, "{task_id}: {counts:?}");
    }

    // The log is whole, and everything derived from it caught up: the read models inline, the trace folders
    // in the background.
    let report = store::verify::verify_chain(&pool).await.unwrap();
    assert!(report.ok, "the hash chain does not verify after the crash: {:?}", report.reason);
    let statuses: Vec<(String, String)> = sqlx::query_as("select task_id, status from tasks where task_id = any($1)")
        .bind(acknowledged.iter().cloned().collect::<Vec<_>>())
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(statuses.len(), acknowledged.len());
    assert!(statuses.iter().all(|(_, status)| status == "completed"), "{statuses:?}");
    let traces = dir.join("traces");
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.iter().any(|task_id| !traces.join(task_id).join("output.json").exists()) {
        assert!(Instant::now() < deadline, "trace folders missing after the crash");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let head = scalar(&pool, "select max(position) from audit_log").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while scalar(&pool, "select min(position) from projection_checkpoints").await < head {
        assert!(Instant::now() < deadline, "a projection did not catch up with the log after the crash");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // They still shut down as asked.
    interrupt_and_wait(&mut processes, &dir).await;
    pool.close().await;
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_crash_under_jct_up_loses_no_acknowledged_enqueue_and_it_recovers_by_itself() {
    a_crash_under(&["up"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_crash_under_serve_and_worker_processes_loses_nothing_and_both_recover_by_themselves() {
    a_crash_under(&["serve", "worker"]).await;
}

/// When every pooled connection stays busy, a request waits for one at most `JCT_DB_ACQUIRE_TIMEOUT_SECONDS` and gets a
/// 503 with `Retry-After`; the requests that held the connections finish once they can.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_that_finds_no_free_connection_gets_503_once_the_configured_acquire_timeout_is_over() {
    let dir = devdb::scratch_dir("acquire-timeout");
    let url = devdb::test_server().await.expect("test server").fresh_database().await.expect("fresh database");
    let bind = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{bind}");
    let settings = [("JCT_DB_POOL_SIZE", "2"), ("JCT_DB_ACQUIRE_TIMEOUT_SECONDS", "2")];
    let mut processes = [("serve", spawn("serve", &url, &bind, &dir, &settings))];
    wait_for_health(&base, &mut processes, &dir).await;
    let tasks = format!("{base}/tasks");
    // Well under the default acquire timeout (30 s): a request that waited that long fails the test.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    assert_eq!(http.get(&tasks).send().await.unwrap().status(), reqwest::StatusCode::OK);

    // Every `GET /tasks` now holds its connection until the lock is released: three of them need three
    // connections, and the pool has two.
    let pool = PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("lock table tasks in access exclusive mode").execute(&mut *lock).await.unwrap();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (http, tasks) = (http.clone(), tasks.clone());
        requests.spawn(async move { http.get(&tasks).send().await });
    }
    let first = requests.join_next().await.unwrap().unwrap().expect("an answer while the connections are held");
    assert_eq!(first.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.headers()["retry-after"], "1");
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert!(log.contains("pool timed out"), "{log}");

    lock.rollback().await.unwrap();
    while let Some(answer) = requests.join_next().await {
        let status = answer.unwrap().expect("an answer once the lock is released").status();
        assert!(status == reqwest::StatusCode::OK || status == reqwest::StatusCode::SERVICE_UNAVAILABLE, "{status}");
    }
    assert_eq!(http.get(&tasks).send().await.unwrap().status(), reqwest::StatusCode::OK);
    interrupt_and_wait(&mut processes, &dir).await;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
