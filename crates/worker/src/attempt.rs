//! One attempt, from its claim to its end: the scratch directory, the handler, the heartbeat, the cancel check,
//! the time budget, and the fenced appends of what happened.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use app::worker::{append_decision, append_decision_with_blobs, ClaimedTask};
use chrono::TimeDelta;
use domain::task::lifecycle::TaskStatus;
use domain::task::run::{
    decide_artifacts, decide_finish, decide_release, decide_renew, ArtifactFacts, Finish, Refusal, Release, Renew,
    RetryPolicy, RunOutcome, TaskState,
};
use projections::trace::{file_uri, is_safe_relative_path, BlobBatch};
use store::blob::{MAX_INLINE_BLOB_BYTES, MAX_INLINE_BLOB_BYTES_PER_COMMAND};
use store::NewBlob;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::handler::{execute, HandlerContext, HandlerExit, HandlerResult};
use crate::Worker;

/// How an attempt ended, from this worker's point of view.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing was due.
    Idle,
    /// A dead worker's task on its last allowed attempt was failed instead of claimed.
    LeaseExpiredFailed,
    Completed {
        task_id: String,
        attempt: u32,
    },
    /// The attempt failed (or timed out) and another one is scheduled.
    RetryScheduled {
        task_id: String,
        attempt: u32,
        timed_out: bool,
        error: String,
    },
    /// The attempt failed (or timed out) and it was the last allowed one: the task failed.
    Failed {
        task_id: String,
        attempt: u32,
        timed_out: bool,
        error: String,
    },
    /// The task was cancelled while running; the handler was stopped and nothing more appended.
    Cancelled {
        task_id: String,
        attempt: u32,
    },
    /// Stopped at shutdown and given back (`TaskReleased`).
    Released {
        task_id: String,
        attempt: u32,
    },
    /// The attempt is no longer the task's running attempt (its lease expired and another worker took over, or
    /// the fence refused otherwise); nothing was appended.
    Fenced {
        task_id: String,
        attempt: u32,
        reason: String,
    },
    /// The database could not record the end within the lease; the task will be claimed again.
    Abandoned {
        task_id: String,
        attempt: u32,
        error: String,
    },
}

/// Why the handler stopped, when it did not end on its own.
enum Stop {
    TimedOut,
    Released,
    /// Cancelled or fenced out, seen by a heartbeat or a cancel check.
    Fenced(Refusal),
    /// No heartbeat got through before the lease ran out.
    LeaseLost(String),
}

pub(crate) async fn run_attempt(worker: &Worker, claimed: ClaimedTask, release: CancellationToken) -> Outcome {
    let span = tracing::info_span!(
        "attempt",
        task_id = %claimed.task_id,
        attempt = claimed.attempt,
        run_id = %claimed.run_id,
        trace_id = claimed.trace_id.as_deref().unwrap_or_default(),
        worker_id = %worker.config.worker_id,
    );
    let scratch = worker.scratch_root.join(format!("{}-{}", claimed.task_id, claimed.attempt));
    let outcome = attempt(worker, &claimed, &scratch, release).instrument(span.clone()).await;
    if worker.config.handler == crate::HandlerKind::Exec {
        let _ = tokio::fs::remove_dir_all(&scratch).await;
    }
    span.in_scope(|| tracing::info!(?outcome, "attempt ended"));
    outcome
}

async fn attempt(worker: &Worker, claimed: &ClaimedTask, scratch: &Path, release: CancellationToken) -> Outcome {
    let task_id = claimed.task_id.clone();
    let attempt = claimed.attempt;
    let mut state = claimed.state.clone();
    let input_bytes = {
        let mut bytes = serde_json::to_vec_pretty(&claimed.input).expect("JSON serialises");
        bytes.push(b'\n');
        bytes
    };
    let input_path = scratch.join("input.json");
    // A program gets a scratch directory of its own; the stub works in memory.
    let uses_scratch = worker.config.handler == crate::HandlerKind::Exec;
    let prepared = async {
        if uses_scratch {
            tokio::fs::create_dir_all(scratch.join("artifacts")).await?;
            tokio::fs::write(&input_path, &input_bytes).await?;
        }
        std::io::Result::Ok(())
    }
    .await;

    let kill = CancellationToken::new();
    let now = || worker.clock.now();
    let context = HandlerContext {
        config: &worker.config,
        scratch,
        input_path: &input_path,
        input: &claimed.input,
        input_bytes: &input_bytes,
        task_id: &task_id,
        run_id: &claimed.run_id,
        attempt,
        trace_id: claimed.trace_id.as_deref(),
        now: &now,
    };
    let (result, stop) = match prepared {
        Err(error) => (
            HandlerResult {
                exit: HandlerExit::Failed { error: format!("could not prepare the scratch directory: {error}") },
                log: Vec::new(),
                artifacts: Vec::new(),
            },
            None,
        ),
        Ok(()) => supervise(worker, claimed, &mut state, &context, &kill, &release).await,
    };
    // The handler is done: the worker may claim this slot's next task now, in the batch that records this end.
    let _finishing = worker.handler_done();

    if let Some(Stop::Fenced(refusal)) = &stop {
        return fenced(&task_id, attempt, &state, refusal);
    }
    if let Some(Stop::LeaseLost(error)) = stop {
        return Outcome::Abandoned { task_id, attempt, error };
    }
    // Blobs first (large ones on the disk, small ones with the events): an event never names content that is not
    // stored.
    let StoredOutputs { log_digest, artifacts, inline: blobs } =
        store_outputs(worker, &claimed.task_id, &scratch.join("artifacts"), result.log, result.artifacts).await;

    let worker_id = worker.config.worker_id.as_str();
    if let Some(Stop::Released) = stop {
        let now = worker.clock.now();
        let decided = record(worker, &mut state, &blobs, |state| {
            decide_release(
                state,
                &Release {
                    attempt,
                    worker_id,
                    now,
                    reason: "worker shutdown: the grace period ended",
                    log_digest: log_digest.as_deref(),
                },
            )
        })
        .await;
        return match decided {
            Ok(Ok(())) => Outcome::Released { task_id, attempt },
            Ok(Err(refusal)) => fenced(&task_id, attempt, &state, &refusal),
            Err(error) => Outcome::Abandoned { task_id, attempt, error: format!("{error:#}") },
        };
    }

    let timed_out = matches!(stop, Some(Stop::TimedOut));
    let outcome = match (stop, result.exit) {
        (Some(Stop::TimedOut), _) => RunOutcome::TimedOut { time_budget_seconds: claimed.time_budget.as_secs_f64() },
        (_, HandlerExit::Succeeded { outputs }) => RunOutcome::Succeeded { outputs },
        (_, HandlerExit::Failed { error }) => RunOutcome::Failed { error },
        (_, HandlerExit::Killed) => RunOutcome::Failed { error: "the handler was stopped".into() },
    };
    let retry = RetryPolicy {
        max_attempts: worker.config.max_attempts,
        backoff_base: TimeDelta::from_std(worker.config.backoff_base).unwrap_or(TimeDelta::MAX),
        backoff_max: TimeDelta::from_std(worker.config.backoff_max).unwrap_or(TimeDelta::MAX),
    };
    let jitter: f64 = rand::random();
    let now = worker.clock.now();
    let decided = record(worker, &mut state, &blobs, |state| {
        // Artifacts and the end in one command: both or neither.
        let mut new_events = decide_artifacts(state, attempt, worker_id, now, &artifacts)?;
        let mut next = state.clone();
        next.apply_new(&new_events).expect("decided payloads fold");
        new_events.extend(decide_finish(
            &next,
            &Finish {
                attempt,
                worker_id,
                now,
                outcome: outcome.clone(),
                log_digest: log_digest.as_deref(),
                retry,
                jitter,
            },
        )?);
        Ok(new_events)
    })
    .await;
    match decided {
        Ok(Ok(())) => match (&outcome, state.status) {
            (RunOutcome::Succeeded { .. }, _) => Outcome::Completed { task_id, attempt },
            (_, TaskStatus::Failed) => {
                Outcome::Failed { task_id, attempt, timed_out, error: state.last_error.clone().unwrap_or_default() }
            }
            _ => Outcome::RetryScheduled {
                task_id,
                attempt,
                timed_out,
                error: state.last_error.clone().unwrap_or_default(),
            },
        },
        Ok(Err(refusal)) => fenced(&task_id, attempt, &state, &refusal),
        Err(error) => Outcome::Abandoned { task_id, attempt, error: format!("{error:#}") },
    }
}

fn fenced(task_id: &str, attempt: u32, state: &TaskState, refusal: &Refusal) -> Outcome {
    if state.status == TaskStatus::Cancelled {
        Outcome::Cancelled { task_id: task_id.to_owned(), attempt }
    } else {
        Outcome::Fenced { task_id: task_id.to_owned(), attempt, reason: refusal.to_string() }
    }
}

/// Runs the handler while renewing the lease, checking for a cancel, and watching the time budget and the
/// shutdown's release signal. Returns the handler's result and why it was stopped, if it was.
async fn supervise(
    worker: &Worker,
    claimed: &ClaimedTask,
    state: &mut TaskState,
    context: &HandlerContext<'_>,
    kill: &CancellationToken,
    release: &CancellationToken,
) -> (HandlerResult, Option<Stop>) {
    let config = &worker.config;
    let handler = execute(context, kill);
    tokio::pin!(handler);
    let budget = tokio::time::sleep(claimed.time_budget);
    tokio::pin!(budget);
    let start = tokio::time::Instant::now();
    let mut heartbeat = tokio::time::interval_at(start + config.heartbeat_interval, config.heartbeat_interval);
    let mut check = tokio::time::interval_at(start + config.poll_interval, config.poll_interval);
    let mut lease_expires_at = claimed.lease_expires_at;
    let stop = loop {
        tokio::select! {
            result = &mut handler => return (result, None),
            () = &mut budget => break Stop::TimedOut,
            () = release.cancelled() => break Stop::Released,
            _ = heartbeat.tick() => {
                let now = worker.clock.now();
                let renewed = append_decision(&worker.app, state, None, |state| {
                    decide_renew(state, &Renew {
                        attempt: claimed.attempt,
                        worker_id: &config.worker_id,
                        now,
                        lease: TimeDelta::from_std(config.lease).unwrap_or(TimeDelta::MAX),
                    })
                })
                .await;
                match renewed {
                    Ok(Ok(_)) => {
                        if let Some(current) = &state.current {
                            lease_expires_at = current.lease_expires_at;
                        }
                    }
                    Ok(Err(refusal)) => break Stop::Fenced(refusal),
                    Err(error) => {
                        tracing::warn!("failed to renew the lease: {error:#}");
                        if worker.clock.now() >= lease_expires_at {
                            break Stop::LeaseLost(format!("the lease expired without renewal: {error:#}"));
                        }
                    }
                }
            }
            _ = check.tick() => {
                // A cancel (or a takeover) shows in the stream; notifications may be lost, this poll is not.
                match app::worker::load_state(&worker.app, &claimed.task_id).await {
                    Ok(latest) => {
                        *state = latest;
                        if let Err(refusal) = state.fence(claimed.attempt, &config.worker_id) {
                            break Stop::Fenced(refusal);
                        }
                    }
                    Err(error) => tracing::warn!("failed to check the task: {error:#}"),
                }
            }
        }
    };
    kill.cancel();
    let result = handler.await;
    (result, Some(stop))
}

/// Appends a decision, retrying database errors (PostgreSQL restarting, say) until the lease would run out.
async fn record(
    worker: &Worker,
    state: &mut TaskState,
    blobs: &[NewBlob],
    decide: impl Fn(&TaskState) -> Result<Vec<domain::event::NewEvent>, Refusal>,
) -> anyhow::Result<Result<(), Refusal>> {
    let give_up = tokio::time::Instant::now() + worker.config.lease;
    let mut delay = Duration::from_millis(100);
    loop {
        match append_decision_with_blobs(&worker.app, state, Some(&worker.ends), blobs, &decide).await {
            Ok(Ok(_)) => return Ok(Ok(())),
            Ok(Err(refusal)) => return Ok(Err(refusal)),
            Err(error) if tokio::time::Instant::now() + delay < give_up => {
                tracing::warn!("failed to record the attempt's end, retrying: {error:#}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error),
        }
    }
}

/// What an attempt's end stores: the handler log's digest, the artifacts, and the content of those small enough to
/// go to the database with the end's events.
struct StoredOutputs {
    log_digest: Option<String>,
    artifacts: Vec<ArtifactFacts>,
    inline: Vec<NewBlob>,
}

/// Stores the handler's log and artifacts: each up to [`store::blob::MAX_INLINE_BLOB_BYTES`] (and while the
/// attempt's total stays within [`store::blob::MAX_INLINE_BLOB_BYTES_PER_COMMAND`]) goes to the database with the
/// events of the attempt's end, in their transaction; larger content goes to the filesystem blob store, on the disk
/// (one flush of the blob directory for all of it) before this returns. A log or artifacts that could not be
/// stored are left out, with a warning: the attempt still ends, and no event names content that is not stored.
async fn store_outputs(
    worker: &Worker,
    task_id: &str,
    dir: &Path,
    log: Vec<u8>,
    in_memory: Vec<(String, Vec<u8>)>,
) -> StoredOutputs {
    let folder = worker.trace_root.join(task_id).join("artifacts");
    let scan = worker.config.handler == crate::HandlerKind::Exec;
    let sink = BlobSink { files: worker.blobs.batch(), inline: Vec::new(), inline_bytes: 0 };
    // Everything in memory already and small: nothing to read, no file to touch, no blocking thread.
    let total = log.len() + in_memory.iter().map(|(_, bytes)| bytes.len()).sum::<usize>();
    let all_small = std::iter::once(log.len())
        .chain(in_memory.iter().map(|(_, bytes)| bytes.len()))
        .all(|size| size <= MAX_INLINE_BLOB_BYTES);
    if !scan && all_small && total <= MAX_INLINE_BLOB_BYTES_PER_COMMAND {
        return sink.store(log, &folder, dir, false, in_memory);
    }
    let dir = dir.to_path_buf();
    let span = tracing::Span::current();
    let stored = tokio::task::spawn_blocking(move || {
        let _attempt = span.enter();
        sink.store(log, &folder, &dir, scan, in_memory)
    })
    .await;
    stored.unwrap_or_else(|error| {
        tracing::warn!("the blob writer panicked: {error:#}");
        StoredOutputs { log_digest: None, artifacts: Vec::new(), inline: Vec::new() }
    })
}

/// Where an attempt's blobs go: with its events while they fit, else to the filesystem blob store.
struct BlobSink {
    files: BlobBatch,
    inline: Vec<NewBlob>,
    inline_bytes: usize,
}

/// A blob as an event names it.
struct Stored {
    digest: String,
    size_bytes: u64,
}

impl BlobSink {
    fn fits(&self, size: u64) -> bool {
        size <= MAX_INLINE_BLOB_BYTES as u64
            && self.inline_bytes as u64 + size <= MAX_INLINE_BLOB_BYTES_PER_COMMAND as u64
    }

    fn put(&mut self, bytes: Vec<u8>) -> std::io::Result<Stored> {
        if !self.fits(bytes.len() as u64) {
            let blob = self.files.put(&bytes)?;
            return Ok(Stored { digest: blob.digest, size_bytes: blob.size_bytes });
        }
        let blob = NewBlob::new(bytes);
        let stored = Stored { digest: blob.digest.clone(), size_bytes: blob.size_bytes() as u64 };
        if !self.inline.iter().any(|known| known.digest == blob.digest) {
            self.inline_bytes += blob.size_bytes();
            self.inline.push(blob);
        }
        Ok(stored)
    }

    fn put_file(&mut self, path: &Path) -> std::io::Result<Stored> {
        if self.fits(std::fs::metadata(path)?.len()) {
            return self.put(std::fs::read(path)?);
        }
        let blob = self.files.put_file(path)?;
        Ok(Stored { digest: blob.digest, size_bytes: blob.size_bytes })
    }

    fn store(
        mut self,
        log: Vec<u8>,
        folder: &Path,
        dir: &Path,
        scan: bool,
        in_memory: Vec<(String, Vec<u8>)>,
    ) -> StoredOutputs {
        let log_digest = match (!log.is_empty()).then(|| self.put(log)).transpose() {
            Ok(blob) => blob.map(|blob| blob.digest),
            Err(error) => {
                tracing::warn!("could not store the handler log: {error:#}");
                None
            }
        };
        let artifacts = collect_artifacts(&mut self, folder, dir, scan, in_memory).unwrap_or_else(|error| {
            tracing::warn!("could not store the artifacts: {error:#}");
            Vec::new()
        });
        match self.files.finish() {
            Ok(()) => StoredOutputs { log_digest, artifacts, inline: self.inline },
            Err(error) => {
                tracing::warn!("could not flush the blob directory; the log and artifacts are left out: {error:#}");
                StoredOutputs { log_digest: None, artifacts: Vec::new(), inline: Vec::new() }
            }
        }
    }
}

/// Stores the artifacts in `sink` and describes them, sorted by path: the handler's in-memory ones and every
/// regular file under `dir` when `scan` (a file wins over an in-memory artifact of the same path).
fn collect_artifacts(
    sink: &mut BlobSink,
    folder: &Path,
    dir: &Path,
    scan: bool,
    in_memory: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<Vec<ArtifactFacts>> {
    let mut files = Vec::new();
    if scan {
        walk(dir, dir, &mut files)?;
    }
    let mut sources: std::collections::BTreeMap<String, Option<Vec<u8>>> =
        in_memory.into_iter().map(|(path, bytes)| (path, Some(bytes))).collect();
    for file in files {
        sources.insert(file, None);
    }
    let mut artifacts = Vec::new();
    for (relative, bytes) in sources {
        if !is_safe_relative_path(&relative) {
            continue;
        }
        let blob = match bytes {
            Some(bytes) => sink.put(bytes),
            None => sink.put_file(&dir.join(&relative)),
        }
        .with_context(|| format!("store artifact {relative}"))?;
        let (media_type, artifact_type) = kind_of(&relative);
        artifacts.push(ArtifactFacts {
            artifact_id: ulid::Ulid::new().to_string(),
            uri: file_uri(&folder.join(&relative)),
            digest: blob.digest,
            size_bytes: blob.size_bytes,
            media_type: media_type.to_owned(),
            artifact_type: artifact_type.to_owned(),
            title: relative.clone(),
            path: relative,
        });
    }
    Ok(artifacts)
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<String>) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    for entry in entries {
        let entry = entry?;
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            walk(root, &entry.path(), files)?;
        } else if file_type.is_file() {
            let relative = entry.path().strip_prefix(root)?.to_path_buf();
            let parts: Vec<String> =
                relative.components().map(|part| part.as_os_str().to_string_lossy().into_owned()).collect();
            files.push(parts.join("/"));
        }
        // Symbolic links and other special files are not artifacts.
    }
    Ok(())
}

/// Media type and CWOM ArtifactType by file extension.
fn kind_of(path: &str) -> (&'static str, &'static str) {
    let extension = path.rsplit_once('.').map(|(_, extension)| extension.to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "md" | "markdown" => ("text/markdown", "doc"),
        "txt" | "rst" => ("text/plain", "doc"),
        "html" | "htm" => ("text/html", "doc"),
        "pdf" => ("application/pdf", "doc"),
        "log" => ("text/plain", "log"),
        "patch" | "diff" => ("text/x-diff", "code_patch"),
        "json" => ("application/json", "report"),
        "csv" => ("text/csv", "dataset"),
        "png" => ("image/png", "binary"),
        "jpg" | "jpeg" => ("image/jpeg", "binary"),
        "svg" => ("image/svg+xml", "binary"),
        _ => ("application/octet-stream", "binary"),
    }
}
