//! `jct bench` runs: each benchmark, at sizes small enough for CI, completes and prints every figure it promises,
//! and the checks it makes along the way (hash chain, rebuilt read models, answers) come out right. Figures are
//! never asserted on beyond being there and positive: the benches measure, these tests only keep them working.

use std::process::Command;

/// Runs `jct bench <args>` against the test server (each bench makes a scratch database of its own there) and
/// returns its standard output; fails with its output if it did not succeed.
async fn bench(args: &[&str]) -> String {
    bench_with_env(args, &[]).await
}

/// [`bench`] with `env` set for `jct bench` as well.
async fn bench_with_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let server = devdb::test_server().await.expect("test server");
    let output = Command::new(env!("CARGO_BIN_EXE_jct"))
        .arg("bench")
        .args(args)
        .env("DATABASE_URL", server.admin_url())
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("run jct bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "jct bench {args:?}: {}\n{stdout}\n{stderr}", output.status);
    stdout
}

/// PostgreSQL's own insert rate, at one client and at 16, came before the bench's figures.
fn assert_baseline(output: &str) {
    let yardstick =
        output.find("# PostgreSQL's own rate in this run").unwrap_or_else(|| panic!("no baseline in:\n{output}"));
    for clients in [1, 16] {
        let label = format!("postgres raw insert 1 KB jsonb, c={clients} ");
        assert!(figure(output, &label, &format!("c={clients}")) > 0.0, "{output}");
        assert!(output.find(&label).expect("printed") > yardstick, "{output}");
    }
}

/// The line of `output` that contains `label`.
fn line<'o>(output: &'o str, label: &str) -> &'o str {
    output.lines().find(|line| line.contains(label)).unwrap_or_else(|| panic!("no line with {label:?} in:\n{output}"))
}

/// The number that follows `before` on the line that contains `label`.
fn figure(output: &str, label: &str, before: &str) -> f64 {
    let line = line(output, label);
    let rest = &line[line.find(before).unwrap_or_else(|| panic!("no {before:?} in {line:?}")) + before.len()..];
    let number: String =
        rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ',').collect();
    number.replace(',', "").parse().unwrap_or_else(|_| panic!("no number after {before:?} in {line:?}"))
}

/// How the worker's appends were batched: each transaction's claims and ends (the query of the benchmarks runbook,
/// "How the worker's appends are batched").
const BATCHES_SQL: &str = "select count(*) filter (where event_type = 'TaskClaimed') as claims, \
    count(*) filter (where event_type in ('TaskCompleted', 'TaskFailed', 'TaskRetryScheduled', 'TaskTimedOut')) \
    as ends from audit_log where event_type in ('TaskClaimed', 'TaskCompleted', 'TaskFailed', 'TaskRetryScheduled', \
    'TaskTimedOut') group by xmin::text::bigint";

#[tokio::test]
async fn bench_worker_prints_wake_latency_throughput_and_overhead_and_keeps_its_database_when_asked() {
    use sqlx::postgres::PgConnectOptions;
    use sqlx::{ConnectOptions as _, Connection as _};

    let output = bench(&[
        "worker",
        "--overhead-tasks",
        "5",
        "--tasks",
        "20",
        "--idle-samples",
        "3",
        "--seconds",
        "1",
        "--rate",
        "20",
        "--keep-database",
    ])
    .await;
    assert!(figure(&output, "RunStarted, idle", "p50") > 0.0, "{output}");
    assert!(figure(&output, "RunStarted, idle", "p99") > 0.0, "{output}");
    assert!(line(&output, "RunStarted, idle").ends_with("(3 samples)"), "{output}");
    assert!(figure(&output, "tasks/s: p50", "p50") > 0.0, "{output}");
    assert!(figure(&output, "end to end (read models", "=") > 0.0, "{output}");
    assert!(line(&output, "end to end (read models").contains("20 tasks in"), "{output}");
    assert!(figure(&output, "the worker alone", "backlog:") > 0.0, "{output}");
    for projection in ["tasks", "cwom", "task_queue", "trace_folders"] {
        line(&output, &format!("then {projection} caught up in"));
    }
    assert!(figure(&output, "worker overhead per task", "inline):") > 0.0, "{output}");
    assert!(line(&output, "worker overhead per task").ends_with("(5 tasks)"), "{output}");
    assert!(figure(&output, "this process's CPU", "included):") > 0.0, "{output}");
    assert_baseline(&output);
    assert!(figure(&output, "against PostgreSQL's own rate", "end to end") > 0.0, "{output}");
    assert!(figure(&output, "against PostgreSQL's own rate", "worker alone") > 0.0, "{output}");
    assert!(figure(&output, "against PostgreSQL's own rate", "the time of") > 0.0, "{output}");

    // The kept log reads back batch by batch, as the runbook does; then it goes.
    let kept =
        line(&output, "is kept").split_whitespace().find(|word| word.starts_with("jct_kept_")).expect("its name");
    let server = devdb::test_server().await.expect("test server");
    let admin: PgConnectOptions = server.admin_url().parse().unwrap();
    let mut conn = admin.clone().database(kept).connect().await.expect("the kept database is there");
    let batches: Vec<(i64, i64)> = sqlx::query_as(BATCHES_SQL).fetch_all(&mut conn).await.unwrap();
    let claimed: i64 = sqlx::query_scalar("select count(*) from audit_log where event_type = 'TaskClaimed'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    assert!(claimed >= 20 + 5 + 3, "every phase's tasks were claimed: {claimed}");
    assert_eq!(batches.iter().map(|(claims, _)| claims).sum::<i64>(), claimed);
    assert!(batches.iter().all(|(claims, ends)| claims + ends > 0));
    let mut admin = admin.connect().await.unwrap();
    sqlx::query(&format!("drop database \"{kept}\" with (force)")).execute(&mut admin).await.unwrap();
}

#[tokio::test]
async fn bench_append_prints_every_row_and_a_sound_hash_chain() {
    let output = bench(&["append", "--seconds", "1"]).await;
    for row in [
        "append 1-event commands, c=1 ",
        "append 1-event commands, c=16 ",
        "append 7-event commands, c=1 ",
        "append 7-event commands, c=16 ",
    ] {
        assert!(figure(&output, row, row) > 0.0, "{output}");
    }
    assert!(line(&output, "hash chain after the run").contains("ok=true"), "{output}");
}

#[tokio::test]
async fn bench_enqueue_prints_both_endpoints_and_every_answer_was_a_success() {
    let output = bench(&["enqueue", "--seconds", "1", "--concurrency", "4"]).await;
    assert!(figure(&output, "POST /tasks/enqueue, c=4", "c=4") > 0.0, "{output}");
    assert!(figure(&output, "GET /tasks/{id}, c=4", "c=4") > 0.0, "{output}");
    assert!(line(&output, "non-201 answers").ends_with("answers: 0"), "{output}");
    assert!(line(&output, "non-200 answers").ends_with("answers: 0"), "{output}");
}

#[tokio::test]
async fn bench_forensics_rebuilds_equal_read_models_and_verifies_the_chain() {
    let output = bench(&["forensics", "--events", "2000", "--queries", "10"]).await;
    assert!(figure(&output, "catch-up of every projection", "from 0") > 0.0, "{output}");
    assert!(figure(&output, "audit query by trace_id", "queries)") > 0.0, "{output}");
    assert!(figure(&output, "rebuild of every projection, in all", "in all") > 0.0, "{output}");
    assert!(line(&output, "rebuilt read models equal the caught-up ones").contains("  yes ("), "{output}");
    assert!(line(&output, "audit verify (hash chain)").contains("ok=true"), "{output}");
    assert_baseline(&output);
}

#[tokio::test]
async fn bench_service_drives_each_topology_over_http_and_every_task_starts() {
    // The operator's own settings (here an API key, which would refuse every request) never reach the service.
    let env = [("JCT_API_KEY", "the-operators-key")];
    for topology in ["up", "split"] {
        let args = ["service", "--topology", topology, "--seconds", "1", "--rate", "20", "--warmup", "3"];
        let output = bench_with_env(&args, &env).await;
        assert!(line(&output, "warm-up:").ends_with("3 tasks posted, 3 started"), "{output}");
        assert!(line(&output, "POST /tasks/enqueue at 20").contains(": 20 created,"), "{output}");
        assert!(line(&output, "POST /tasks/enqueue at 20").ends_with("non-201 answers: 0"), "{output}");
        assert!(line(&output, "started:").contains("all 20,"), "{output}");
        assert!(figure(&output, "wake latency TaskEnqueued", "p50") > 0.0, "{output}");
        assert!(line(&output, "wake latency TaskEnqueued").ends_with("(20 samples)"), "{output}");
        let processes: &[&str] = if topology == "up" { &["jct up"] } else { &["jct serve", "jct worker"] };
        for process in processes.iter().chain(&["PostgreSQL"]) {
            figure(&output, "CPU a task during the load", process);
        }
        assert!(figure(&output, "CPU a task during the load", "the machine") > 0.0, "{output}");
        assert_baseline(&output);
    }
}
