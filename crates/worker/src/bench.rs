//! `jct bench worker`: figures for the worker, printed, never asserted on.
//!
//! - **Wake latency**, from the commit of `TaskEnqueued` to `RunStarted`, p50/p99/max: idle (one task at a time)
//!   and under a steady enqueue rate (default 300 tasks/s). It starts when the enqueue's commit has been
//!   acknowledged (the moment `app::tasks::enqueue` returns to this client) and ends at `RunStarted`'s `ts`, the
//!   time the worker's claim stamps on it as it appends it (same clock: worker and clients run in this process).
//!   `TaskEnqueued`'s own `ts` is no start: the appender stamps it before it inserts the batch and folds the
//!   read models inline, a few milliseconds before the commit that makes the task visible to anyone.
//!   Measured first, on the fresh database, so that the worker's connections make their plans on a young log as
//!   a fresh deployment's do.
//! - **End-to-end throughput** with the stub at zero simulated work: a backlog of tasks enqueued first, then
//!   one worker process (this one) and the projectors run until every task is completed and every read model
//!   and the trace folders have applied the last completion.
//! - **Worker overhead per task**: the worker loop ([`crate::run`]) with one slot on a backlog, so tasks run one
//!   after another (the claim's read and append, the stub handler, blobs, the fenced end append), wall time per
//!   task from the worker's start to the last `TaskCompleted`, without projector or trace folders; and this
//!   process's CPU time per task in that run (the worker's own work, without PostgreSQL's).
//!
//! Tasks are enqueued through `app::tasks::enqueue` (the use case behind `POST /tasks/enqueue`, with its CWOM
//! objects by default), in-process. Run it on a scratch database: it leaves thousands of tasks behind.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use app::App;
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::WorkerConfig;

/// The most enqueue requests the loaded measurement has in flight at once.
const MAX_IN_FLIGHT_ENQUEUES: usize = 16;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Wake-latency samples with an idle worker.
    pub idle_samples: usize,
    /// The steady enqueue rate of the loaded measurement, tasks per second.
    pub load_rate: f64,
    /// How long the loaded measurement enqueues.
    pub load_duration: Duration,
    /// Size of the backlog of the throughput measurement.
    pub throughput_tasks: usize,
    /// Tasks of the overhead measurement.
    pub overhead_tasks: usize,
    /// The worker's concurrency.
    pub concurrency: usize,
    /// Create the four CWOM objects with each task (the API's default).
    pub create_cwom: bool,
}

impl Default for BenchOptions {
    fn default() -> BenchOptions {
        BenchOptions {
            idle_samples: 200,
            load_rate: 300.0,
            load_duration: Duration::from_secs(10),
            throughput_tasks: 5000,
            overhead_tasks: 500,
            concurrency: 16,
            create_cwom: true,
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Latency {
            samples: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            self.p50_ms, self.p99_ms, self.max_ms, self.samples
        )
    }
}

/// The figures.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    pub wake_idle: Latency,
    pub wake_loaded: Latency,
    /// The enqueue rate actually reached during the loaded measurement.
    pub loaded_rate: f64,
    pub throughput_tasks: usize,
    pub throughput_seconds: f64,
    pub tasks_per_second: f64,
    pub overhead_tasks: usize,
    pub overhead_ms_per_task: f64,
    /// This process's CPU time (user and system) per task during the overhead measurement: the worker's own work
    /// (its tasks, the store's appender thread), without PostgreSQL's.
    pub overhead_cpu_ms_per_task: f64,
    pub concurrency: usize,
    pub create_cwom: bool,
    /// The worker alone on a backlog of the same size (no projector, no trace folders).
    pub worker_alone_tasks_per_second: f64,
    /// Seconds each projection then took to catch up on that backlog's events.
    pub catch_up: Vec<(String, f64)>,
    /// Whether PostgreSQL checkpointed before each timed phase ([`checkpoint_before_phase`]).
    pub checkpointed: bool,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "worker (stub handler, zero simulated work, concurrency {}, create_cwom={})",
            self.concurrency, self.create_cwom
        )?;
        writeln!(
            f,
            "  (targets: wake p50 <= 5 ms and p99 <= 20 ms; >= 1,000 tasks/s end to end; overhead <= 2 ms/task)"
        )?;
        if !self.checkpointed {
            writeln!(f, "  (no CHECKPOINT before the phases: a checkpoint's sync may fall into one)")?;
        }
        writeln!(f, "  wake latency commit of TaskEnqueued -> RunStarted, idle:  {}", self.wake_idle)?;
        writeln!(
            f,
            "  wake latency commit of TaskEnqueued -> RunStarted, at {:>5.0} tasks/s: {}",
            self.loaded_rate, self.wake_loaded
        )?;
        writeln!(
            f,
            "  end to end (read models and trace folders included): {} tasks in {:.2} s = {:.0} tasks/s",
            self.throughput_tasks, self.throughput_seconds, self.tasks_per_second
        )?;
        writeln!(
            f,
            "  the worker alone (no trace folders; database read models inline) on the same backlog: {:.0} tasks/s",
            self.worker_alone_tasks_per_second
        )?;
        for (name, seconds) in &self.catch_up {
            writeln!(
                f,
                "    then {name} caught up in {seconds:.2} s ({:.0} tasks/s)",
                self.throughput_tasks as f64 / seconds.max(1e-9)
            )?;
        }
        writeln!(
            f,
            "  worker overhead per task (the worker with one slot: claim, handler, blobs, end; read models inline): {:.2} ms ({} tasks)",
            self.overhead_ms_per_task, self.overhead_tasks
        )?;
        write!(
            f,
            "    of which this process's CPU (the worker's own work, PostgreSQL's not included): {:.2} ms per task",
            self.overhead_cpu_ms_per_task
        )
    }
}

/// Runs every measurement on `pool` (a migrated scratch database) and returns the figures.
pub async fn bench_worker(pool: &PgPool, options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let config = app::Config { policy: domain::task::PolicyConfig::from_prefixes("bench/"), ..app::Config::default() };
    let app = App::start(pool.clone(), config).await?;
    let dir = std::env::temp_dir().join(format!("jct-bench-worker-{}", ulid::Ulid::new()));
    let worker_config = WorkerConfig {
        worker_id: "bench-worker".into(),
        concurrency: options.concurrency,
        trace_root: dir.join("traces"),
        scratch_root: Some(dir.join("scratch")),
        ..WorkerConfig::default()
    };
    let result = measure(&app, &worker_config, options).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(app: &App, config: &WorkerConfig, options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let mut report =
        BenchReport { concurrency: options.concurrency, create_cwom: options.create_cwom, ..BenchReport::default() };

    // Wake latency first, on the fresh database: the worker's connections make their plans on a young log, as a
    // fresh deployment's do (a claim planned on the empty log once read every task's events, ADR 0012; the later
    // phases would hide that).
    let background = Background::start(app, config);
    // Idle wake latency: one task at a time, the worker waiting.
    checkpoint_before_phase(app.pool()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut idle = Vec::new();
    for _ in 0..options.idle_samples {
        let start = store::read::head_position(app.pool()).await?;
        let task_id = enqueue_one(app, options.create_cwom).await?;
        wait_started(app, start, 1, Duration::from_secs(30)).await?;
        idle.push(task_id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.wake_idle = Latency::of(&wake_latencies(app.pool(), &idle).await?);

    // Loaded wake latency: a steady enqueue rate.
    checkpoint_before_phase(app.pool()).await;
    let start = store::read::head_position(app.pool()).await?;
    let interval = Duration::from_secs_f64(1.0 / options.load_rate.max(1.0));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let began = Instant::now();
    // Clients that cannot keep up queue at most this many requests (then the rate reached is lower).
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_ENQUEUES));
    let mut enqueues = tokio::task::JoinSet::new();
    while began.elapsed() < options.load_duration {
        ticker.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        let app = app.clone();
        let create_cwom = options.create_cwom;
        enqueues.spawn(async move {
            let task_id = enqueue_one(&app, create_cwom).await;
            drop(permit);
            task_id
        });
    }
    let mut loaded = Vec::new();
    while let Some(task_id) = enqueues.join_next().await {
        loaded.push(task_id.context("enqueue task panicked")??);
    }
    report.loaded_rate = loaded.len() as f64 / began.elapsed().as_secs_f64();
    wait_started(app, start, loaded.len(), Duration::from_secs(120)).await?;
    report.wake_loaded = Latency::of(&wake_latencies(app.pool(), &loaded).await?);

    background.stop().await;
    catch_up_all(app, config).await?;

    // Overhead: the worker loop with one slot, no projector, no trace folders: each task claimed, run and ended
    // after the one before.
    let backlog = enqueue_many(app, options.overhead_tasks, 16, options.create_cwom).await?;
    report.checkpointed = checkpoint_before_phase(app.pool()).await;
    let one_slot = WorkerConfig { concurrency: 1, project_traces: false, ..config.clone() };
    let cpu_before = process_cpu_seconds()?;
    let seconds = run_through_backlog(app, &one_slot, backlog.len()).await?;
    let cpu = process_cpu_seconds()? - cpu_before;
    report.overhead_tasks = backlog.len();
    report.overhead_ms_per_task = seconds * 1000.0 / backlog.len().max(1) as f64;
    report.overhead_cpu_ms_per_task = cpu * 1000.0 / backlog.len().max(1) as f64;
    catch_up_all(app, config).await?;

    // The worker alone (no projector, no trace folders), then each projection catching up on what it did.
    let backlog = enqueue_many(app, options.throughput_tasks, 16, options.create_cwom).await?;
    catch_up_all(app, config).await?;
    checkpoint_before_phase(app.pool()).await;
    let alone = WorkerConfig { project_traces: false, ..config.clone() };
    let seconds = run_through_backlog(app, &alone, backlog.len()).await?;
    report.worker_alone_tasks_per_second = backlog.len() as f64 / seconds;
    for projection in app.projections() {
        let began = Instant::now();
        projections::runner::catch_up(app.pool(), projection.as_ref(), app.upcasters()).await?;
        report.catch_up.push((projection.name().to_owned(), began.elapsed().as_secs_f64()));
    }
    let began = Instant::now();
    crate::project_traces(app, config).await?;
    report.catch_up.push((projections::trace::TraceProjection::NAME.to_owned(), began.elapsed().as_secs_f64()));

    // Throughput: a backlog, then the worker and the projectors, until everything has been applied.
    let backlog = enqueue_many(app, options.throughput_tasks, 16, options.create_cwom).await?;
    catch_up_all(app, config).await?;
    let start = store::read::head_position(app.pool()).await?;
    checkpoint_before_phase(app.pool()).await;
    let background = Background::start(app, config);
    let began = Instant::now();
    wait_completed(app, start, backlog.len(), Duration::from_secs(600)).await?;
    let last = store::read::head_position(app.pool()).await?;
    wait_checkpoints(app, last, Duration::from_secs(600)).await?;
    report.throughput_tasks = backlog.len();
    report.throughput_seconds = began.elapsed().as_secs_f64();
    report.tasks_per_second = backlog.len() as f64 / report.throughput_seconds;

    background.stop().await;
    Ok(report)
}

/// Runs a worker with `config` (and nothing else) until the `tasks` tasks enqueued last have completed; the
/// seconds from its start to the last completion, on the database's clock (`TaskCompleted`'s `ts`), so the
/// completion poll's interval does not count.
async fn run_through_backlog(app: &App, config: &WorkerConfig, tasks: usize) -> anyhow::Result<f64> {
    let start = store::read::head_position(app.pool()).await?;
    let stop = CancellationToken::new();
    let began: DateTime<Utc> = sqlx::query_scalar("select clock_timestamp()").fetch_one(app.pool()).await?;
    let worker = {
        let (app, config, stop) = (app.clone(), config.clone(), stop.clone());
        tokio::spawn(async move { crate::run(app, config, async move { stop.cancelled().await }).await })
    };
    let waited = wait_completed(app, start, tasks, Duration::from_secs(600)).await;
    stop.cancel();
    worker.await.context("the worker panicked")??;
    waited?;
    let ended: DateTime<Utc> = sqlx::query_scalar(
        "select max(ts) from audit_log where position > $1 and event_type = $2 and entity_kind = 'Task'",
    )
    .bind(start)
    .bind(domain::task::lifecycle::events::TASK_COMPLETED)
    .fetch_one(app.pool())
    .await?;
    Ok((ended - began).as_seconds_f64())
}

/// User and system CPU time this process has used, in seconds.
fn process_cpu_seconds() -> anyhow::Result<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let seconds = |time: nix::sys::time::TimeVal| time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6;
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}

/// The worker and the projectors, in the background.
struct Background {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    fn start(app: &App, config: &WorkerConfig) -> Background {
        let stop = CancellationToken::new();
        let worker = {
            let (app, config, stop) = (app.clone(), config.clone(), stop.clone());
            tokio::spawn(async move {
                if let Err(error) = crate::run(app, config, async move { stop.cancelled().await }).await {
                    tracing::error!("bench worker failed: {error:#}");
                }
            })
        };
        let projector = {
            let (app, stop) = (app.clone(), stop.clone());
            tokio::spawn(projections::runner::run(
                app.pool().clone(),
                app.projections().to_vec(),
                app.upcasters().clone(),
                Duration::from_secs(1),
                async move { stop.cancelled().await },
            ))
        };
        Background { stop, tasks: vec![worker, projector] }
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn task_body(create_cwom: bool) -> serde_json::Value {
    json!({
        "requested_by": {"kind": "agent", "id": "bench"},
        "objective": "Benchmark the worker with the stub handler",
        "operation": "analysis",
        "target": {"repo": "bench/worker"},
        "inputs": {"create_cwom": create_cwom},
    })
}

/// An enqueued task and when its commit was acknowledged to the client.
struct Enqueued {
    task_id: String,
    committed_at: DateTime<Utc>,
}

async fn enqueue_one(app: &App, create_cwom: bool) -> anyhow::Result<Enqueued> {
    let request = app::tasks::EnqueueRequest {
        body: task_body(create_cwom),
        create_cwom,
        trace_id: format!("bench-{}", ulid::Ulid::new()),
    };
    let outcome = app::tasks::enqueue(app, request).await.map_err(|error| anyhow::anyhow!("enqueue: {error}"))?;
    let committed_at = Utc::now();
    match outcome {
        app::tasks::EnqueueOutcome::Created { task, .. } => {
            Ok(Enqueued { task_id: task["task_id"].as_str().context("a task id")?.to_owned(), committed_at })
        }
        app::tasks::EnqueueOutcome::Duplicate { .. } => anyhow::bail!("a bench task without a key was a duplicate"),
    }
}

async fn enqueue_many(app: &App, n: usize, concurrency: usize, create_cwom: bool) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (app, next) = (app.clone(), next.clone());
        clients.spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                ids.push(enqueue_one(&app, create_cwom).await?.task_id);
            }
            anyhow::Ok(ids)
        });
    }
    let mut ids = Vec::with_capacity(n);
    while let Some(joined) = clients.join_next().await {
        ids.extend(joined.context("an enqueue client panicked")??);
    }
    Ok(ids)
}

/// Asks PostgreSQL for a checkpoint before a timed phase and says whether it could (it takes superuser or
/// `pg_checkpoint`). The phases before it write a great deal of WAL (thousands of tasks enqueued in seconds); the
/// checkpoint that falls due from it would otherwise run its sync phase during the next measurement, when every
/// commit waits behind the data files' flush (30-50 ms commits seen on 2026-12-04). A checkpoint is a cost of the
/// setup's WAL, not of the phase measured; a long-running service meets one every `checkpoint_timeout`, spread
/// out. pgbench's practice, for the same reason.
pub async fn checkpoint_before_phase(pool: &PgPool) -> bool {
    match sqlx::query("checkpoint").execute(pool).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!("no checkpoint before the phase (measured with whatever falls due): {error}");
            false
        }
    }
}

/// Applies every read model and the trace folders up to the head.
async fn catch_up_all(app: &App, config: &WorkerConfig) -> anyhow::Result<()> {
    for projection in app.projections() {
        projections::runner::catch_up(app.pool(), projection.as_ref(), app.upcasters()).await?;
    }
    crate::project_traces(app, config).await?;
    Ok(())
}

/// How many events of `event_type` were appended after `after`, and the last position looked at: the next count
/// starts there (positions commit in order, so nothing appears behind it later), so waiting for a backlog reads
/// each event once instead of counting the whole range again at every notification, which loaded the database
/// under measurement more the longer a run went. The stretch is bounded above as well ([`COUNT_STRETCH`] positions
/// a call; the next call goes on from where this one stopped): with `position > $2` alone PostgreSQL, before it has
/// analysed the log, guesses a third of the table and scans all of it in parallel (100 ms and 28,000 pages a call at
/// 150,000 events, reading the log back from the disk once it outgrew the buffer cache: most of the database's work
/// in a long end-to-end run). Never prepared, so the bounds are constants to the planner.
async fn count_since(pool: &PgPool, event_type: &str, after: i64) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "select count(*) filter (where event_type = $1), coalesce(max(position), $2) from audit_log \
          where position > $2 and position <= $2 + $3",
    )
    .persistent(false)
    .bind(event_type)
    .bind(after)
    .bind(COUNT_STRETCH)
    .fetch_one(pool)
    .await?)
}

/// The most positions [`count_since`] looks at in one call.
const COUNT_STRETCH: i64 = 100_000;

/// Waits until `expected` events of `event_type` were appended after `after`, checking on a notification but never
/// sooner than `pause` after the check before: each check is a query, and checking on every notification (one per
/// append batch) made the bench's own waiting a load on the database and the process it measures (at one slot, a
/// query and a wake-up per task). What the phases report comes from the events' timestamps, not from when the wait
/// noticed them, so a later check changes no figure.
async fn wait_for_count(
    app: &App,
    event_type: &str,
    after: i64,
    expected: usize,
    timeout: Duration,
    pause: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut wakeup = store::Wakeup::new(app.pool().clone(), pause).await;
    let (mut seen, mut looked_at) = (0, after);
    loop {
        let checked = tokio::time::Instant::now();
        let (more, last) = count_since(app.pool(), event_type, looked_at).await?;
        (seen, looked_at) = (seen + more, last);
        if seen >= expected as i64 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{expected} {event_type} not seen within {timeout:?}");
        wakeup.wait().await;
        tokio::time::sleep_until(checked + pause).await;
        wakeup.drain().await;
    }
}

async fn wait_started(app: &App, after: i64, expected: usize, timeout: Duration) -> anyhow::Result<()> {
    let event_type = domain::task::lifecycle::events::RUN_STARTED;
    wait_for_count(app, event_type, after, expected, timeout, Duration::from_millis(5)).await
}

async fn wait_completed(app: &App, after: i64, expected: usize, timeout: Duration) -> anyhow::Result<()> {
    let event_type = domain::task::lifecycle::events::TASK_COMPLETED;
    wait_for_count(app, event_type, after, expected, timeout, Duration::from_millis(20)).await
}

/// Waits until every read model and the trace folders have applied `position`.
async fn wait_checkpoints(app: &App, position: i64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut names: Vec<&str> = app.projections().iter().map(|projection| projection.name()).collect();
    names.push(projections::trace::TraceProjection::NAME);
    for name in names {
        while projections::runner::checkpoint(app.pool(), name).await? < position {
            anyhow::ensure!(Instant::now() < deadline, "{name} did not reach {position} within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// `RunStarted.ts` minus the acknowledged commit of each task's enqueue, in microseconds.
async fn wake_latencies(pool: &PgPool, enqueued: &[Enqueued]) -> anyhow::Result<Histogram<u64>> {
    let task_ids: Vec<&str> = enqueued.iter().map(|task| task.task_id.as_str()).collect();
    let committed_at: Vec<DateTime<Utc>> = enqueued.iter().map(|task| task.committed_at).collect();
    let micros: Vec<i64> = sqlx::query_scalar(
        "select (extract(epoch from (r.ts - e.committed_at)) * 1000000)::bigint \
           from unnest($1::text[], $2::timestamptz[]) as e(task_id, committed_at) \
           join audit_log r on r.entity_kind = 'Task' and r.entity_id = e.task_id and r.event_type = 'RunStarted'",
    )
    .bind(&task_ids)
    .bind(&committed_at)
    .fetch_all(pool)
    .await
    .context("read wake latencies")?;
    anyhow::ensure!(micros.len() == enqueued.len(), "{} of {} tasks started", micros.len(), enqueued.len());
    let mut histogram = Histogram::new_with_bounds(1, 600_000_000, 3)?;
    for value in micros {
        histogram.record(value.max(1) as u64)?;
    }
    Ok(histogram)
}
