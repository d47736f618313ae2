//! The task worker: wakes on the log's NOTIFY (polling as a fallback), claims due tasks exactly once per
//! attempt, runs their handler under a lease, a heartbeat and the task's time budget, and appends what happened
//! (`RunStarted`, `ArtifactProduced`, the attempt's end), each append fenced by the task stream's version.
//!
//! - [`run`]: the long-running loop (`jct worker`, `jct up`), with graceful shutdown.
//! - [`process_one`]: claim at most one task and run it to its end, for deterministic tests.
//! - [`bench::bench_worker`]: wake latency, throughput and overhead figures (`jct bench worker`).
//!
//! The worker never writes a trace folder: it stores handler logs and artifacts content-addressed in the blob
//! store and names them in events; the `trace_folders` projection ([`projections::trace`]) writes the folders.
//! [`run`] keeps that projection current when [`WorkerConfig::project_traces`] is on (the default), so a
//! worker host has the folders of the tasks it ran.
//!
//! Architecture invariant: every state change goes through `app::worker` (decide in the domain, append fenced);
//! no transaction is open while a handler runs.

mod attempt;
pub mod bench;
mod handler;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use app::App;
use chrono::{DateTime, Utc};
use domain::task::run::ExecutorInfo;
use futures::StreamExt as _;
use projections::trace::{BlobStore, TraceProjection};
use store::Wakeup;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use attempt::Outcome;

/// How many claims [`run`] has in flight at once.
const CLAIMS_IN_FLIGHT: usize = 2;

/// How long a claim read ahead (every slot busy) waits for a slot to free before it gives its pick up: short, so a
/// claim is never decided on an old read, and long enough for handlers that take a few tens of milliseconds.
const READ_AHEAD_PATIENCE: Duration = Duration::from_millis(100);

/// The version the worker records as its executor version.
pub const WORKER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Which handler runs tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HandlerKind {
    /// Deterministic, fast imitation of work: writes an output summarising the task and an `output.md`
    /// artifact. Takes [`WorkerConfig::stub_duration`] per task. For tests and demos, a task's
    /// `inputs.stub` may ask for more: `{"sleep_ms": n}` (also work), `{"fail_attempts": n}` (the first n
    /// attempts fail), `{"error": "..."}` (their error message).
    #[default]
    Stub,
    /// Runs [`WorkerConfig::exec_command`] (SPEC §2.4), in a scratch directory of its own: it gets `input.json`
    /// as its last argument, in `JCT_INPUT` and on stdin; its stdout and stderr become the log; exit code 0 means
    /// success; an `output.json` it writes (path in `JCT_OUTPUT`) is the outputs; files it leaves in
    /// `artifacts/` (`JCT_ARTIFACTS_DIR`) become `ArtifactProduced` events with SHA-256 digests. It is killed
    /// (its whole process group) at the time budget, on cancel and at the end of a shutdown's grace period.
    Exec,
}

impl HandlerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerKind::Stub => "stub",
            HandlerKind::Exec => "exec",
        }
    }
}

impl std::str::FromStr for HandlerKind {
    type Err = String;

    fn from_str(text: &str) -> Result<HandlerKind, String> {
        match text {
            "stub" => Ok(HandlerKind::Stub),
            "exec" => Ok(HandlerKind::Exec),
            other => Err(format!("unknown handler {other:?}; expected stub or exec")),
        }
    }
}

impl std::fmt::Display for HandlerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Worker settings. Every field has a default ([`WorkerConfig::default`]).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's id in events (`assigned_to`, `worker_id`). Default: `worker-` and 8 random hex digits.
    /// Must be unique among running workers.
    pub worker_id: String,
    /// Handlers run at once. Default 4. An attempt whose handler has returned frees its slot while it records its
    /// end, so the next claim can share that end's batch.
    pub concurrency: usize,
    /// How long a claim holds a task without a heartbeat; a dead worker's task is claimable again after it.
    /// Default 30 s.
    pub lease: Duration,
    /// How often a running attempt renews its lease. Default 10 s; must be shorter than the lease.
    pub heartbeat_interval: Duration,
    /// Failed attempts allowed per task (handler failure, time-out, expired lease); the last one fails the
    /// task with its error. Default 3.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per failure, with jitter (half the delay is random). Default 1 s.
    pub backoff_base: Duration,
    /// Cap of the retry delay. Default 5 min.
    pub backoff_max: Duration,
    /// The fallback poll: how long a lost notification can delay work, and how often a running attempt checks
    /// for a cancel. Default 1 s.
    pub poll_interval: Duration,
    /// LISTEN for the log's notifications (default true). Off: poll only (e.g. behind a pooler that drops
    /// LISTEN/NOTIFY).
    pub listen: bool,
    /// `stub` (default) or `exec`.
    pub handler: HandlerKind,
    /// The program and its arguments for `exec` (required then).
    pub exec_command: Vec<String>,
    /// Simulated work per task for `stub`. Default 0.
    pub stub_duration: Duration,
    /// `JCT_TRACE_ROOT`: trace folders live in `<trace root>/<task_id>/`. Default `./var/traces`; made absolute.
    pub trace_root: PathBuf,
    /// Content-addressed blobs (handler logs, artifacts). Default `<trace root>/.blobs`.
    pub blob_root: Option<PathBuf>,
    /// Where handlers get their scratch directories. Default `<temp dir>/jct-worker-<worker id>`, removed at a
    /// graceful shutdown if it is empty.
    pub scratch_root: Option<PathBuf>,
    /// On shutdown, how long running handlers may still finish before they are stopped and their tasks released
    /// to other workers. Default 30 s.
    pub shutdown_grace: Duration,
    /// Caps every task's time budget (the budget stays the task's when smaller). Default none.
    pub max_time_budget: Option<Duration>,
    /// Keep the trace folders current in this process (default true). Workers sharing a trace root may all do
    /// it (one applies at a time); turn it off where the trace root is not reachable.
    pub project_traces: bool,
}

impl Default for WorkerConfig {
    fn default() -> WorkerConfig {
        WorkerConfig {
            worker_id: format!("worker-{:08x}", rand::random::<u32>()),
            concurrency: 4,
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            max_attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            listen: true,
            handler: HandlerKind::Stub,
            exec_command: Vec::new(),
            stub_duration: Duration::ZERO,
            trace_root: PathBuf::from("./var/traces"),
            blob_root: None,
            scratch_root: None,
            shutdown_grace: Duration::from_secs(30),
            max_time_budget: None,
            project_traces: true,
        }
    }
}

impl WorkerConfig {
    /// Checks the settings; the message names the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.worker_id.trim().is_empty(), "worker id: must not be empty");
        anyhow::ensure!(self.worker_id.len() <= 128, "worker id: at most 128 characters");
        anyhow::ensure!(self.concurrency >= 1, "concurrency: at least 1");
        anyhow::ensure!(self.lease >= Duration::from_millis(100), "lease: at least 100 ms");
        anyhow::ensure!(
            !self.heartbeat_interval.is_zero() && self.heartbeat_interval < self.lease,
            "heartbeat interval: must be above zero and shorter than the lease"
        );
        anyhow::ensure!(self.max_attempts >= 1, "max attempts: at least 1");
        anyhow::ensure!(self.backoff_base <= self.backoff_max, "backoff base: must not exceed the backoff max");
        anyhow::ensure!(!self.poll_interval.is_zero(), "poll interval: must be above zero");
        if self.handler == HandlerKind::Exec {
            anyhow::ensure!(!self.exec_command.is_empty(), "exec command: required with the exec handler");
        }
        if let Some(cap) = self.max_time_budget {
            anyhow::ensure!(!cap.is_zero(), "max time budget: must be above zero");
        }
        Ok(())
    }

    /// The blob root, defaulted.
    pub fn blob_root(&self) -> PathBuf {
        default_blob_root(&self.trace_root, self.blob_root.as_deref())
    }

    /// The trace folders projection for these settings.
    pub fn trace_projection(&self) -> TraceProjection {
        trace_projection(&self.trace_root, self.blob_root.as_deref())
    }
}

/// The trace folders projection for folders under `trace_root` and blobs under `blob_root` (default
/// `<trace_root>/.blobs`), both made absolute so the URIs in events name them.
pub fn trace_projection(trace_root: &Path, blob_root: Option<&Path>) -> TraceProjection {
    TraceProjection::new(absolute(trace_root), absolute(&default_blob_root(trace_root, blob_root)))
        .with_upcasters(app::upcasters())
}

fn default_blob_root(trace_root: &Path, blob_root: Option<&Path>) -> PathBuf {
    blob_root.map_or_else(|| trace_root.join(".blobs"), Path::to_path_buf)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The worker's clock: local time corrected to the database's clock (learnt at each claim), so leases and
/// timestamps mean the same on every host. Microsecond precision, as the log stores.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset_us: AtomicI64,
}

impl Clock {
    pub(crate) fn now(&self) -> DateTime<Utc> {
        let micros = Utc::now().timestamp_micros() + self.offset_us.load(Ordering::Relaxed);
        DateTime::from_timestamp_micros(micros).expect("now is representable")
    }

    fn learn(&self, offset: chrono::TimeDelta) {
        self.offset_us.store(offset.num_microseconds().unwrap_or(0), Ordering::Relaxed);
    }
}

/// Everything an attempt needs, shared.
pub(crate) struct Worker {
    pub(crate) app: App,
    pub(crate) config: WorkerConfig,
    pub(crate) trace_root: PathBuf,
    pub(crate) blobs: BlobStore,
    pub(crate) scratch_root: PathBuf,
    pub(crate) executor: ExecutorInfo,
    pub(crate) clock: Clock,
    /// Attempts whose handler has returned and which are only recording their end: their slots are as good as
    /// free, so [`run`] claims for them at once and the claims share a batch with those ends.
    pub(crate) finishing: AtomicUsize,
    /// Wakes [`run`] when an attempt starts finishing.
    pub(crate) slot_freeing: tokio::sync::Notify,
    /// Tasks picked by claims whose appends are still in flight ([`app::worker::ClaimRequest::claiming`]).
    claiming: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Ends of attempts, appended with the claim being read for their slots when there is one.
    pub(crate) ends: app::worker::EndsAwaitingClaim,
}

impl Worker {
    /// Called by an attempt when its handler has returned, before it records the end: its slot counts as free
    /// until the returned guard is dropped, at the attempt's end.
    pub(crate) fn handler_done(&self) -> Finishing<'_> {
        self.finishing.fetch_add(1, Ordering::Relaxed);
        self.slot_freeing.notify_one();
        Finishing(self)
    }
}

/// An attempt recording its end ([`Worker::handler_done`]).
pub(crate) struct Finishing<'w>(&'w Worker);

impl Drop for Finishing<'_> {
    fn drop(&mut self) {
        self.0.finishing.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Worker {
    fn new(app: App, config: WorkerConfig) -> anyhow::Result<Worker> {
        config.validate()?;
        let trace_root = prepare_dir(&config.trace_root).context("JCT_TRACE_ROOT")?;
        let blob_root = prepare_dir(&config.blob_root()).context("blob root")?;
        let scratch_root = config
            .scratch_root
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("jct-worker-{}", config.worker_id)));
        let scratch_root = prepare_dir(&scratch_root).context("scratch root")?;
        let executor = ExecutorInfo { kind: config.handler.as_str().to_owned(), version: WORKER_VERSION.to_owned() };
        Ok(Worker {
            app,
            config,
            trace_root,
            blobs: BlobStore::new(blob_root),
            scratch_root,
            executor,
            clock: Clock::default(),
            finishing: AtomicUsize::new(0),
            slot_freeing: tokio::sync::Notify::new(),
            claiming: std::sync::Mutex::default(),
            ends: app::worker::EndsAwaitingClaim::default(),
        })
    }

    /// Claims up to `limit` tasks, carrying `ends` ([`app::worker::claim`]); with `read_ahead`, for slots still
    /// busy (see [`app::worker::ClaimRequest::read_ahead`]).
    async fn claim(
        &self,
        limit: usize,
        read_ahead: Option<Duration>,
        ends: Option<app::worker::CarriedEnds>,
    ) -> anyhow::Result<app::worker::ClaimBatch> {
        let batch = app::worker::claim(
            &self.app,
            &app::worker::ClaimRequest {
                worker_id: &self.config.worker_id,
                limit,
                lease: self.config.lease,
                max_attempts: self.config.max_attempts,
                trace_root: Some(&self.trace_root),
                executor: &self.executor,
                max_time_budget: self.config.max_time_budget,
                claiming: Some(&self.claiming),
                read_ahead,
            },
            ends,
        )
        .await?;
        if let Some(offset) = batch.clock_offset {
            self.clock.learn(offset);
        }
        Ok(batch)
    }
}

fn prepare_dir(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
    path.canonicalize().with_context(|| format!("resolve {}", path.display()))
}

/// Claims at most one due task and runs it to the end of its attempt (handler, heartbeats, cancel checks, time
/// budget, fenced appends), in the caller's task. [`Outcome::Idle`] when nothing was due. Does not write trace
/// folders (see [`project_traces`]).
pub async fn process_one(app: &App, config: &WorkerConfig) -> anyhow::Result<Outcome> {
    let worker = Worker::new(app.clone(), config.clone())?;
    let batch = worker.claim(1, None, None).await?;
    match batch.claimed.into_iter().next() {
        Some(claimed) => Ok(attempt::run_attempt(&worker, claimed, CancellationToken::new()).await),
        None if batch.exhausted > 0 => Ok(Outcome::LeaseExpiredFailed),
        None => Ok(Outcome::Idle),
    }
}

/// Brings the trace folders of `config`'s trace root up to date with the log, once.
pub async fn project_traces(app: &App, config: &WorkerConfig) -> anyhow::Result<usize> {
    let projection = config.trace_projection();
    std::fs::create_dir_all(projection.root()).with_context(|| format!("create {}", projection.root().display()))?;
    projections::trace::install(app.pool(), &projection).await?;
    let projection: Arc<dyn projections::Projection> = Arc::new(projection);
    projections::runner::catch_up(app.pool(), projection.as_ref(), app.upcasters()).await
}

/// Runs the worker until `shutdown` resolves, then shuts down gracefully: stops claiming, lets running handlers
/// finish within [`WorkerConfig::shutdown_grace`], stops the rest and releases their tasks to other workers.
///
/// Wakes on the log's NOTIFY (any append may have made a task due), polls every
/// [`WorkerConfig::poll_interval`] in case a notification was lost, and catches up after a listener reconnect
/// (the store's [`Wakeup`]). Errors are logged and retried; they never end the loop.
pub async fn run(app: App, config: WorkerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let worker = Arc::new(Worker::new(app.clone(), config)?);
    let config = &worker.config;
    tracing::info!(
        worker_id = %config.worker_id,
        handler = %config.handler,
        concurrency = config.concurrency,
        trace_root = %worker.trace_root.display(),
        "worker started"
    );

    let trace_stop = CancellationToken::new();
    let trace_runner = if config.project_traces {
        let projection = config.trace_projection();
        projections::trace::install(app.pool(), &projection).await?;
        let stop = trace_stop.clone();
        Some(tokio::spawn(projections::runner::run(
            app.pool().clone(),
            vec![Arc::new(projection)],
            app.upcasters().clone(),
            config.poll_interval,
            async move { stop.cancelled().await },
        )))
    } else {
        None
    };

    let mut wakeup =
        if config.listen { Some(Wakeup::new(app.pool().clone(), config.poll_interval).await) } else { None };
    let release = CancellationToken::new();
    let mut running: JoinSet<Outcome> = JoinSet::new();
    tokio::pin!(shutdown);
    let mut last_catch_up: Option<std::time::Instant> = None;
    // Claims in flight: each holds the slots it asked for until it answers. A second claim may start while the
    // first is still being appended (it skips the tasks the first picked), so a task enqueued meanwhile does not
    // wait for that append.
    let mut claims = futures::stream::FuturesUnordered::new();
    let mut reserved = 0;
    // Whether a task may be claimable: set by every notification and poll; cleared when a claim found fewer than
    // it asked for and no notification came since it started (`wakeups` counts them).
    let mut maybe_due = true;
    let mut wakeups: u64 = 0;
    // Whether to read ahead when every slot is busy: off after a read-ahead no slot freed for, until one does.
    let mut read_ahead = true;
    // Read-ahead claims in flight: they have a budget of their own, so one waiting for a slot to free never keeps
    // a claim for free slots from starting.
    let mut ahead = 0;
    loop {
        // Claims admit new tasks themselves; the queue's checkpoint still has to move on where no projector runs.
        if last_catch_up.is_none_or(|at| at.elapsed() >= config.poll_interval) {
            last_catch_up = Some(std::time::Instant::now());
            if let Err(error) = app::worker::catch_up_queue(&app).await {
                tracing::warn!("failed to catch the task queue up: {error:#}");
            }
        }
        // Fill the free slots (an attempt only recording its end frees its slot).
        let busy = running.len().saturating_sub(worker.finishing.load(Ordering::Relaxed));
        while maybe_due && claims.len() - ahead < CLAIMS_IN_FLIGHT && busy + reserved < config.concurrency {
            let wanted = config.concurrency - busy - reserved;
            reserved += wanted;
            let ends = worker.ends.carry(worker.app.store());
            // The claim's read sees everything the notifications so far announced.
            if let Some(wakeup) = wakeup.as_mut() {
                wakeup.drain().await;
            }
            claims.push(claim_slots(worker.clone(), wanted, wakeups, None, ends));
        }
        // Every slot busy or being claimed, and no claim reading: read ahead for the next slot to free. The claim
        // then shares the batch (and the commit) of the end that frees the slot, and its read is off the path
        // between two tasks: it runs while the claim before it is appended and the handler works.
        if maybe_due
            && read_ahead
            && ahead < CLAIMS_IN_FLIGHT
            && busy + reserved >= config.concurrency
            && worker.ends.readers() == 0
        {
            reserved += 1;
            ahead += 1;
            let ends = worker.ends.carry(worker.app.store());
            if let Some(wakeup) = wakeup.as_mut() {
                wakeup.drain().await;
            }
            claims.push(claim_slots(worker.clone(), 1, wakeups, Some(READ_AHEAD_PATIENCE), ends));
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = worker.slot_freeing.notified() => read_ahead = true,
            // A claim has read and is appending: the next may read ahead.
            () = worker.ends.taken() => {}
            Some((wanted, started_at, read_ahead_claim, claimed)) = claims.next(), if !claims.is_empty() => {
                reserved -= wanted;
                ahead -= usize::from(read_ahead_claim);
                let found = match claimed {
                    Ok(batch) if batch.gave_up => {
                        // Tasks are due, the slots were busy for longer than the read-ahead's patience.
                        read_ahead = false;
                        wanted
                    }
                    Ok(batch) => {
                        let found = batch.claimed.len();
                        start_attempts(&mut running, &worker, &release, batch.claimed);
                        found
                    }
                    Err(error) => {
                        tracing::warn!("failed to claim: {error:#}");
                        0
                    }
                };
                // A full claim means more may be due; a short one, that nothing more was when it read, unless a
                // notification came since.
                if found < wanted && started_at == wakeups {
                    maybe_due = false;
                }
            }
            Some(joined) = running.join_next(), if !running.is_empty() => {
                read_ahead = true;
                log_outcome(joined);
                // Every slot freed meanwhile, so the next claim takes them together.
                while let Some(joined) = running.try_join_next() {
                    log_outcome(joined);
                }
            }
            () = wait(&mut wakeup, config.poll_interval) => {
                wakeups += 1;
                maybe_due = true;
            }
        }
    }
    // Claims in flight finish (their tasks are then running, and are let finish or released below); one reading
    // ahead claims nothing more.
    worker.ends.close();
    while let Some((_, _, _, claimed)) = claims.next().await {
        if let Ok(batch) = claimed {
            start_attempts(&mut running, &worker, &release, batch.claimed);
        }
    }

    tracing::info!(running = running.len(), grace = ?config.shutdown_grace, "worker stopping: no new claims");
    let grace = tokio::time::sleep(config.shutdown_grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            joined = running.join_next() => match joined {
                Some(joined) => log_outcome(joined),
                None => break,
            },
            () = &mut grace => {
                tracing::info!(running = running.len(), "grace period over: stopping handlers and releasing their tasks");
                release.cancel();
                while let Some(joined) = running.join_next().await {
                    log_outcome(joined);
                }
                break;
            }
        }
    }

    if let Some(runner) = trace_runner {
        trace_stop.cancel();
        let _ = runner.await;
        // The events of the last attempts, folded before leaving.
        if let Err(error) = project_traces(&app, config).await {
            tracing::warn!("failed the last trace catch-up: {error:#}");
        }
    }
    // The default scratch root is this worker's own (`<temp dir>/jct-worker-<worker id>`): left empty, it goes, so a
    // machine's temp dir does not collect one directory per worker ever started. One an operator named stays.
    if config.scratch_root.is_none() {
        let _ = std::fs::remove_dir(&worker.scratch_root);
    }
    tracing::info!(worker_id = %config.worker_id, "worker stopped");
    Ok(())
}

/// A claim for `wanted` slots carrying `ends`, started after `wakeups` wake-ups, on a task of its own (so it and
/// the ends waiting for it progress while the loop awaits anything else); answers with both and whether it read
/// ahead.
fn claim_slots(
    worker: Arc<Worker>,
    wanted: usize,
    wakeups: u64,
    read_ahead: Option<Duration>,
    ends: app::worker::CarriedEnds,
) -> impl Future<Output = (usize, u64, bool, anyhow::Result<app::worker::ClaimBatch>)> {
    let claim = tokio::spawn(async move { worker.claim(wanted, read_ahead, Some(ends)).await });
    async move {
        let claimed = claim.await.unwrap_or_else(|error| Err(anyhow::anyhow!("the claim panicked: {error}")));
        (wanted, wakeups, read_ahead.is_some(), claimed)
    }
}

/// Runs each claimed task's attempt in `running`.
fn start_attempts(
    running: &mut JoinSet<Outcome>,
    worker: &Arc<Worker>,
    release: &CancellationToken,
    claimed: Vec<app::worker::ClaimedTask>,
) {
    for task in claimed {
        let (worker, release) = (worker.clone(), release.clone());
        running.spawn(async move { attempt::run_attempt(&worker, task, release).await });
    }
}

async fn wait(wakeup: &mut Option<Wakeup>, poll_interval: Duration) {
    match wakeup {
        Some(wakeup) => wakeup.wait().await,
        None => tokio::time::sleep(poll_interval).await,
    }
}

fn log_outcome(joined: Result<Outcome, tokio::task::JoinError>) {
    match joined {
        Ok(outcome) => tracing::debug!(?outcome, "attempt ended"),
        Err(error) => tracing::error!("an attempt panicked: {error}"),
    }
}

#[allow(dead_code, reason = "compile-time checks that the public futures can be spawned")]
fn send_checks(app: App, config: WorkerConfig) {
    fn is_send<T: Send>(_: T) {}
    is_send(project_traces(&app, &config));
    is_send(process_one(&app, &config));
    is_send(run(app.clone(), config.clone(), async {}));
}
