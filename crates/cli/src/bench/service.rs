//! `jct bench service`: the service as it is deployed, measured from outside. This binary starts `jct up` (or `jct
//! serve` beside `jct worker`) as child processes on a fresh scratch database, posts `POST /tasks/enqueue` over HTTP
//! at a steady rate, and reads from the log how many tasks started and how soon.
//!
//! `bench worker` runs the worker in its own process, behind the use case. This one goes through everything a
//! deployment has: the HTTP layer, the processes' own connections making their plans on a young log, and the trace
//! folders. Each process appends through its own appender, too. This is how a worker that fell behind on a fresh
//! deployment was found (ADR 0012).
//!
//! Wake latency here runs from `TaskEnqueued`'s `ts` to `RunStarted`'s `ts`, both from the log. The appender
//! stamps the first just before it inserts and commits the enqueue, so the figure includes that commit.
//! `bench worker` starts its clock at the acknowledged commit instead, which only an in-process client can see.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use super::new_histogram;

/// How the service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// One `jct up` process: API, projectors and worker.
    Up,
    /// `jct serve` (API and projectors) and `jct worker` as two processes.
    Split,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub topology: Topology,
    /// Tasks per second the client posts.
    pub rate: f64,
    /// How long it posts at that rate.
    pub duration: Duration,
    /// Tasks posted (and started) before the measurement.
    pub warmup: usize,
    /// The worker's concurrency (`JCT_WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// The most requests the client has in flight; when they are all waiting, the rate reached is lower.
    pub clients: usize,
    /// How long after the last enqueue the tasks still not started are waited for.
    pub drain: Duration,
}

/// A child process of the service and the file its output goes to.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `jct <name>` on `database_url`, with every file it writes under `dir`. None of this process's `JCT_`
    /// settings reach it (an API key or another handler would change what is measured): only the bench's own.
    fn start(
        name: &'static str,
        database_url: &str,
        bind: &str,
        dir: &Path,
        concurrency: usize,
    ) -> anyhow::Result<Process> {
        let log = dir.join(format!("{name}.log"));
        let output = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut command = Command::new(std::env::current_exe().context("this binary's path")?);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("JCT_") {
                command.env_remove(key);
            }
        }
        let child = command
            .arg(name)
            .env("DATABASE_URL", database_url)
            .env("JCT_BIND", bind)
            .env("JCT_ALLOWED_REPO_PREFIXES", "bench/")
            .env("JCT_TRACE_ROOT", dir.join("traces"))
            .env("JCT_BLOB_ROOT", dir.join("blobs"))
            .env("JCT_WORKER_SCRATCH_DIR", dir.join("scratch"))
            .env("JCT_WORKER_CONCURRENCY", concurrency.to_string())
            .env("JCT_DATA_DIR", dir.join("data"))
            .env("RUST_LOG", "warn")
            .env("LOG_FORMAT", "pretty")
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start jct {name}"))?;
        Ok(Process { name, child, log })
    }

    /// An error if the process has exited, with the end of its output.
    fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => anyhow::bail!("jct {} exited ({status}); its output:\n{}", self.name, log_tail(&self.log)),
        }
    }

    /// SIGTERM, then up to 30 s for a graceful exit, then SIGKILL.
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                anyhow::ensure!(status.success(), "jct {} stopped with {status}:\n{}", self.name, log_tail(&self.log));
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                anyhow::bail!("jct {} did not stop within 30 s of SIGTERM", self.name)
            }
        }
    }
}

/// The last lines of a child's output.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A loopback address no one listens on right now.
fn free_address() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.to_string())
}

/// What one load phase did.
struct Posted {
    task_ids: Vec<String>,
    failures: u64,
    /// What the first failed request got.
    first_failure: Option<String>,
    http: Histogram<u64>,
    elapsed: Duration,
}

/// Posts `rate` tasks a second for `duration` (or as fast as `clients` requests in flight allow), numbering them
/// from `first_seq`.
async fn post_at_rate(
    client: &reqwest::Client,
    url: &str,
    rate: f64,
    duration: Duration,
    clients: usize,
    first_seq: usize,
) -> anyhow::Result<Posted> {
    let count = ((rate * duration.as_secs_f64()).round() as usize).max(1);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(clients.max(1)));
    let mut requests = tokio::task::JoinSet::new();
    let began = Instant::now();
    for seq in first_seq..first_seq + count {
        ticker.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        let request = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(super::enqueue::task_body(seq as u64, 0));
        requests.spawn(async move {
            let sent = Instant::now();
            // The new task's id, or what went wrong.
            let answer = async {
                let response = request.send().await.map_err(|error| error.to_string())?;
                let status = response.status();
                let body = response.text().await.map_err(|error| error.to_string())?;
                let created: Option<serde_json::Value> =
                    (status == reqwest::StatusCode::CREATED).then(|| serde_json::from_str(&body).ok()).flatten();
                match created.as_ref().and_then(|task| task["task_id"].as_str()) {
                    Some(task_id) => Ok(task_id.to_owned()),
                    None => Err(format!("{status}: {}", body.chars().take(300).collect::<String>())),
                }
            }
            .await;
            drop(permit);
            (sent.elapsed(), answer)
        });
    }
    let mut posted = Posted {
        task_ids: Vec::with_capacity(count),
        failures: 0,
        first_failure: None,
        http: new_histogram(),
        elapsed: Duration::ZERO,
    };
    while let Some(joined) = requests.join_next().await {
        let (latency, answer) = joined.context("a request task panicked")?;
        posted.http.record(latency.as_micros().max(1) as u64)?;
        match answer {
            Ok(task_id) => posted.task_ids.push(task_id),
            Err(failure) => {
                posted.failures += 1;
                posted.first_failure.get_or_insert(failure);
            }
        }
    }
    posted.elapsed = began.elapsed();
    Ok(posted)
}

/// How many of `task_ids` have a `RunStarted`.
async fn started(pool: &PgPool, task_ids: &[String]) -> anyhow::Result<usize> {
    let count: i64 = sqlx::query_scalar(
        "select count(distinct entity_id) from audit_log \
          where entity_kind = 'Task' and entity_id = any($1) and event_type = 'RunStarted'",
    )
    .bind(task_ids)
    .fetch_one(pool)
    .await
    .context("count started tasks")?;
    Ok(count as usize)
}

/// Waits until every one of `task_ids` has started, or `timeout` has passed; returns how many have, and when the
/// last one was seen.
async fn wait_started(
    pool: &PgPool,
    processes: &mut [Process],
    task_ids: &[String],
    timeout: Duration,
) -> anyhow::Result<(usize, Duration)> {
    let began = Instant::now();
    loop {
        let count = started(pool, task_ids).await?;
        if count == task_ids.len() || began.elapsed() >= timeout {
            return Ok((count, began.elapsed()));
        }
        for process in processes.iter_mut() {
            process.check_running()?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// From each started task's `TaskEnqueued` to its first `RunStarted`, by the log's timestamps, in microseconds.
async fn wake_latencies(pool: &PgPool, task_ids: &[String]) -> anyhow::Result<Histogram<u64>> {
    let micros: Vec<i64> = sqlx::query_scalar(
        "select (extract(epoch from (min(r.ts) - min(e.ts))) * 1000000)::bigint \
           from audit_log e \
           join audit_log r on r.entity_kind = 'Task' and r.entity_id = e.entity_id and r.event_type = 'RunStarted' \
          where e.entity_kind = 'Task' and e.entity_id = any($1) and e.event_type = 'TaskEnqueued' \
          group by e.entity_id",
    )
    .bind(task_ids)
    .fetch_all(pool)
    .await
    .context("read wake latencies")?;
    // Up to 600 s, not `new_histogram`'s 60 s: a worker that fell behind starts tasks as late as the load and the
    // drain allow, and those latencies are the point of the report.
    let mut histogram = Histogram::new_with_bounds(1, 600_000_000, 3)?;
    for value in micros {
        histogram.record(value.max(1) as u64)?;
    }
    Ok(histogram)
}

/// CPU time used so far, in clock ticks: by each of the service's processes, by every PostgreSQL process, and by
/// the whole machine (busy and in all).
struct CpuSample {
    processes: Vec<u64>,
    postgres: u64,
    machine_busy: u64,
    machine_all: u64,
}

impl CpuSample {
    fn take(processes: &[Process]) -> anyhow::Result<CpuSample> {
        use procfs::CurrentSI as _;
        let ticks = |stat: &procfs::process::Stat| stat.utime + stat.stime;
        let mut own = Vec::with_capacity(processes.len());
        for process in processes {
            let pid = process.child.id().context("a service process has exited")?;
            own.push(ticks(&procfs::process::Process::new(i32::try_from(pid)?)?.stat()?));
        }
        let mut postgres = 0;
        for process in procfs::process::all_processes()? {
            // A process may end between the listing and the read; it no longer uses any CPU either way.
            if let Ok(stat) = process.and_then(|process| process.stat()) {
                if stat.comm == "postgres" {
                    postgres += ticks(&stat);
                }
            }
        }
        let total = procfs::KernelStats::current()?.total;
        let busy = total.user + total.nice + total.system + [total.irq, total.softirq].iter().flatten().sum::<u64>();
        let all = busy + total.idle + [total.iowait, total.steal].iter().flatten().sum::<u64>();
        Ok(CpuSample { processes: own, postgres, machine_busy: busy, machine_all: all })
    }

    /// What was used since `before`, per task, as a line of the report. The PostgreSQL figure counts every
    /// `postgres` process on the machine, so it is the service's only when nothing else uses the server.
    fn report_since(&self, before: &CpuSample, processes: &[Process], tasks: usize) -> String {
        let ms_per_tick = 1000.0 / procfs::ticks_per_second() as f64;
        let per_task = |ticks: u64| ticks as f64 * ms_per_tick / tasks.max(1) as f64;
        let mut parts: Vec<String> = processes
            .iter()
            .zip(self.processes.iter().zip(&before.processes))
            .map(|(process, (after, before))| format!("jct {} {:.2} ms", process.name, per_task(after - before)))
            .collect();
        parts.push(format!("PostgreSQL {:.2} ms", per_task(self.postgres.saturating_sub(before.postgres))));
        let busy = (self.machine_busy - before.machine_busy) as f64;
        let all = (self.machine_all - before.machine_all).max(1) as f64;
        format!(
            "  CPU a task during the load: {}; the machine {:.0}% busy ({} cores)",
            parts.join(", "),
            100.0 * busy / all,
            std::thread::available_parallelism().map_or(0, usize::from)
        )
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Runs the service on the scratch database `database_url` (whose pool is `pool`) and prints the figures.
pub async fn run(pool: &PgPool, database_url: &str, options: &ServiceOptions) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("jct-bench-service-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let result = measure(pool, database_url, options, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(pool: &PgPool, database_url: &str, options: &ServiceOptions, dir: &Path) -> anyhow::Result<()> {
    let bind = free_address()?;
    let mut processes = match options.topology {
        Topology::Up => vec![Process::start("up", database_url, &bind, dir, options.concurrency)?],
        Topology::Split => vec![
            Process::start("serve", database_url, &bind, dir, options.concurrency)?,
            Process::start("worker", database_url, &bind, dir, options.concurrency)?,
        ],
    };
    let outcome = drive(pool, options, &bind, dir, &mut processes).await;
    let mut stopped = Ok(());
    for process in processes {
        if let Err(error) = process.stop().await {
            stopped = Err(error);
        }
    }
    outcome.and(stopped)
}

async fn drive(
    pool: &PgPool,
    options: &ServiceOptions,
    bind: &str,
    dir: &Path,
    processes: &mut [Process],
) -> anyhow::Result<()> {
    let base = format!("http://{bind}");
    let client = reqwest::Client::builder().pool_max_idle_per_host(options.clients).build()?;
    let began = Instant::now();
    loop {
        for process in processes.iter_mut() {
            process.check_running()?;
        }
        let healthy = match client.get(format!("{base}/healthz")).send().await {
            Ok(response) => response.json::<serde_json::Value>().await.is_ok_and(|body| body["ok"] == true),
            Err(_) => false,
        };
        if healthy {
            break;
        }
        anyhow::ensure!(began.elapsed() < Duration::from_secs(60), "the service did not answer /healthz within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let topology = match options.topology {
        Topology::Up => "one `jct up` process",
        Topology::Split => "`jct serve` and `jct worker` processes",
    };
    println!(
        "# jct bench service ({topology}, worker concurrency {}; client, service and PostgreSQL on this machine)",
        options.concurrency
    );
    println!("  (targets: wake p50 <= 5 ms and p99 <= 20 ms)");
    println!(
        "  (trace folders under {}; a filesystem that deleted many files lately makes them dearer: \
         docs/runbooks/benchmarks.md)",
        dir.display()
    );
    let url = format!("{base}/tasks/enqueue");

    let mut next_seq = 0;
    if options.warmup > 0 {
        let warmup_rate = 100.0_f64.min(options.rate.max(1.0));
        let warmup = Duration::from_secs_f64(options.warmup as f64 / warmup_rate);
        let warm = post_at_rate(&client, &url, warmup_rate, warmup, options.clients, 0).await?;
        if let Some(failure) = &warm.first_failure {
            anyhow::bail!("{} warm-up requests failed; the first got {failure}", warm.failures);
        }
        let (warm_started, _) = wait_started(pool, processes, &warm.task_ids, Duration::from_secs(60)).await?;
        println!("  warm-up: {} tasks posted, {warm_started} started", warm.task_ids.len());
        next_seq = warm.task_ids.len();
    }

    let checkpointed = worker::bench::checkpoint_before_phase(pool).await;
    if !checkpointed {
        println!("  (no CHECKPOINT before the phase: a checkpoint's sync may fall into it)");
    }
    let cpu_before = CpuSample::take(processes)?;
    let posted = post_at_rate(&client, &url, options.rate, options.duration, options.clients, next_seq).await?;
    println!(
        "  POST /tasks/enqueue at {:.0} tasks/s for {} s: {} created, rate reached {:.1}/s, HTTP p50 {:.2} ms, p99 {:.2} ms; non-201 answers: {}",
        options.rate,
        options.duration.as_secs_f64(),
        posted.task_ids.len(),
        posted.task_ids.len() as f64 / posted.elapsed.as_secs_f64(),
        ms(posted.http.value_at_quantile(0.50)),
        ms(posted.http.value_at_quantile(0.99)),
        posted.failures,
    );
    if let Some(failure) = &posted.first_failure {
        println!("  (the first failed request got {failure})");
    }
    let (count, waited) = wait_started(pool, processes, &posted.task_ids, options.drain).await?;
    // Until every task has started (or the wait gave up): the work the load caused, a little of its tail aside.
    let cpu = CpuSample::take(processes)?.report_since(&cpu_before, processes, posted.task_ids.len());
    if count == posted.task_ids.len() {
        println!("  started: all {count}, the last {:.2} s after the last answer", waited.as_secs_f64());
    } else {
        println!(
            "  started: {count} of {} ({} not started {:.0} s after the last answer: the worker fell behind)",
            posted.task_ids.len(),
            posted.task_ids.len() - count,
            waited.as_secs_f64()
        );
    }
    let latencies = wake_latencies(pool, &posted.task_ids).await?;
    println!(
        "  wake latency TaskEnqueued -> RunStarted (the log's timestamps), the started tasks: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        ms(latencies.value_at_quantile(0.50)),
        ms(latencies.value_at_quantile(0.99)),
        ms(latencies.max()),
        latencies.len()
    );
    println!("{cpu}");
    Ok(())
}
