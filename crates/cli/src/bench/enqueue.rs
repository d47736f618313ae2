//! `jct bench enqueue`: the HTTP API under load, server and load generator in this process, on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::{raw, run_clients, Measured};

/// A valid enqueue body (repositories under `bench/`), unique by `seq` and `worker`.
pub(super) fn task_body(seq: u64, worker: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "idempotency_key": format!("bench-{worker}-{seq}-{}", ulid::Ulid::new()),
        "requested_by": {"kind": "agent", "id": format!("bench-{worker}")},
        "objective": "Benchmark the enqueue path of the control tower",
        "operation": "code_change",
        "target": {"repo": format!("bench/repo-{}", seq % 50), "ref": "main", "path": ""},
        "constraints": {"time_budget_seconds": 300},
        "inputs": {"seq": seq},
        "metadata": {"bench": true}
    }))
    .expect("serialisable")
}

pub async fn run(pool: &PgPool, duration: Duration, concurrency: usize) -> anyhow::Result<()> {
    let config = app::Config { policy: domain::task::PolicyConfig::from_prefixes("bench/"), ..app::Config::default() };
    let app = app::App::start(pool.clone(), config).await?;
    let acceptor = api::bind("127.0.0.1:0").await?;
    let address = poem::listener::Acceptor::local_addr(&acceptor)
        .first()
        .and_then(|address| address.as_socket_addr().copied())
        .ok_or_else(|| anyhow::anyhow!("no local address"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server =
        tokio::spawn(api::serve(acceptor, api::endpoint(app.clone(), api::HttpConfig::default()), async move {
            let _ = stopped.await;
        }));
    let base = format!("http://{address}");
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;

    println!("# jct bench enqueue ({} s per row, concurrency {concurrency}, server + load generator + PostgreSQL on this machine)", duration.as_secs());
    let checkpointed = worker::bench::checkpoint_before_phase(pool).await;
    if !checkpointed {
        println!("# (no CHECKPOINT before the phases: a checkpoint's sync may fall into one)");
    }
    let raw = raw::measure(pool, concurrency, Duration::from_secs(5)).await?;
    raw.print(None);

    let task_ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    worker::bench::checkpoint_before_phase(pool).await;
    let started = Instant::now();
    let (operations, failures, latencies) = {
        let client = client.clone();
        let url = format!("{base}/tasks/enqueue");
        let task_ids = task_ids.clone();
        run_clients(concurrency, duration, move |worker, seq| {
            let client = client.clone();
            let url = url.clone();
            let task_ids = task_ids.clone();
            async move {
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(task_body(seq, worker))
                    .send()
                    .await?;
                let status = response.status();
                let body = response.bytes().await?;
                if status.as_u16() != 201 {
                    return Ok(false);
                }
                let created: serde_json::Value = serde_json::from_slice(&body)?;
                task_ids.lock().expect("not poisoned").push(created["task_id"].as_str().unwrap_or_default().to_owned());
                Ok(true)
            }
        })
        .await?
    };
    let enqueue = Measured {
        label: format!("POST /tasks/enqueue, c={concurrency}"),
        operations,
        elapsed: started.elapsed(),
        latencies,
    };
    enqueue.print(Some(raw.per_second()));
    println!("  non-201 answers: {failures}");
    let stats = app.store().stats();
    println!(
        "  append batches: {} through the pipeline ({} of them speculative, {} missed and read), {} step by step",
        stats.pipelined_batches, stats.speculative_batches, stats.speculative_misses, stats.stepwise_batches
    );

    let task_ids = Arc::new(task_ids.lock().expect("not poisoned").clone());
    anyhow::ensure!(!task_ids.is_empty(), "no task was enqueued");
    worker::bench::checkpoint_before_phase(pool).await;
    let started = Instant::now();
    let (operations, failures, latencies) = run_clients(concurrency, duration, move |worker, seq| {
        let client = client.clone();
        let base = base.clone();
        let task_ids = task_ids.clone();
        async move {
            let task_id = &task_ids[(seq as usize * 7919 + worker * 104_729) % task_ids.len()];
            let response = client.get(format!("{base}/tasks/{task_id}")).send().await?;
            let status = response.status();
            let _ = response.bytes().await?;
            Ok(status.as_u16() == 200)
        }
    })
    .await?;
    let get = Measured {
        label: format!("GET /tasks/{{id}}, c={concurrency}"),
        operations,
        elapsed: started.elapsed(),
        latencies,
    };
    get.print(Some(raw.per_second()));
    println!("  non-200 answers: {failures}");
    let _ = stop.send(());
    server.await??;
    Ok(())
}
