//! Task execution as events: claims with leases, the run of each attempt, artifacts, retries with backoff, time
//! budgets, release on shutdown, and cancellation.
//!
//! [`TaskState`] folds a task stream; each `decide_*` function checks a command against it and returns the events
//! to append, or a [`Refusal`]. Everything an outcome depends on (the time, fresh ids, the jitter of a retry
//! delay) is passed in, so the same state and command always give the same events.
//!
//! The state machine of a task's status (each arrow is one command, committed atomically):
//!
//! ```text
//!             ┌───────────── cancel ─────────────────────────────────────────► cancelled
//!             │                                                                    ▲
//!  queued ──claim (due)──► running ──complete──────────────────────────────► completed
//!    ▲ ▲                   │ │ │ │
//!    │ │                   │ │ │ └─cancel──────────────────────────────────────────┘
//!    │ └─fail / time out, failures < max (retry_at = now + backoff)─┘ │ │
//!    │                     │ └─fail / time out, failures = max ────────────► failed
//!    └─release (shutdown; not a failure, due at once)────────────┘   │        ▲
//!                          └─lease expired: next attempt claimed (stays running),
//!                            or, failures = max ─────────────────────────────┘
//! ```
//!
//! A timed-out attempt is a failed attempt: the run ends `timed_out` ([`TaskTimedOut`]) and the task is retried
//! like any failure, or ends `failed` with an error saying it timed out when no attempt is left. An attempt whose
//! lease expired (its worker died) is a failed attempt too. A released attempt (graceful shutdown) is not.
//!
//! **Fencing**: every event of an attempt names it (`attempt`, 1, 2, 3 ... per task), and a decision about
//! attempt `n` is refused unless `n` is the task's current, running attempt held by the same worker. The caller
//! appends with the stream version the state was folded at (`ExpectedVersion::Exactly`), so a decision taken on
//! a stale state loses the race instead of overwriting a newer attempt.
//!
//! **CWOM**: when the task has a CWOM Issue, the same commands append the CWOM facts, following the generic
//! contract of the `cwom` projection (`created` events carry `payload.object`, the object's GET shape;
//! `status_changed` events carry `payload.changes`): [`RUN_CREATED`](cwom_events::RUN_CREATED) on a new Run
//! stream per attempt (status `running`), [`RUN_STATUS_CHANGED`](cwom_events::RUN_STATUS_CHANGED) when the
//! attempt ends (`done`, `failed` or `canceled`), [`ARTIFACT_CREATED`](cwom_events::ARTIFACT_CREATED) per
//! artifact, and [`ISSUE_STATUS_CHANGED`](cwom_events::ISSUE_STATUS_CHANGED) (planned → running → done, failed
//! or canceled; the Issue stays `running` between a failed attempt and its retry). The task stream holds the
//! worker's own facts (`RunStarted`, `ArtifactProduced`, ...) whether or not there is an Issue, so the task's
//! history, fence and trace folder never depend on CWOM.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cwom::events as cwom_events;
use crate::event::{Action, Actor, EntityKind, EventData, NewEvent, StreamId};
use crate::task::lifecycle::{events, format_ts, TaskStatus};
use crate::task::spec::DEFAULT_TIME_BUDGET_SECONDS;

/// Timestamps in payloads: RFC 3339 with microseconds and `Z`, as [`format_ts`] writes them.
mod ts {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_ts(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text).map(|ts| ts.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Payloads (schema version 1 each). Stored forever: add a schema version and an upcaster to change one.

/// What runs an attempt: the handler kind (`stub`, `exec`) and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorInfo {
    pub kind: String,
    pub version: String,
}

/// `TaskClaimed`: a worker holds a new attempt under a lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskClaimed {
    pub task_id: String,
    /// 1, 2, 3 ... per task: the fence of every later event of this attempt.
    pub attempt: u32,
    pub worker_id: String,
    /// The attempt's run id (a ULID), also the CWOM Run's id when there is one.
    pub run_id: String,
    /// The Issue the attempt's CWOM Run is for; `None`: no CWOM Run.
    pub cwom_issue_id: Option<String>,
    #[serde(with = "ts")]
    pub claimed_at: DateTime<Utc>,
    #[serde(with = "ts")]
    pub lease_expires_at: DateTime<Utc>,
    /// `file://` URI of the task's trace folder (no trailing slash).
    pub trace_path: Option<String>,
}

/// `RunStarted`: the attempt's handler starts with exactly `input` (the trace folder's `input.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStarted {
    pub task_id: String,
    pub attempt: u32,
    pub run_id: String,
    pub worker_id: String,
    #[serde(with = "ts")]
    pub started_at: DateTime<Utc>,
    pub executor: ExecutorInfo,
    /// The time budget this attempt runs under, in seconds (the task's, or less when the worker caps it).
    pub time_budget_seconds: f64,
    pub input: Value,
}

/// `TaskLeaseRenewed`: a heartbeat of the worker holding the attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLeaseRenewed {
    pub task_id: String,
    pub attempt: u32,
    pub worker_id: String,
    #[serde(with = "ts")]
    pub renewed_at: DateTime<Utc>,
    #[serde(with = "ts")]
    pub lease_expires_at: DateTime<Utc>,
}

/// `ArtifactProduced`: a file the attempt's handler left, stored content-addressed before this event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactProduced {
    pub task_id: String,
    pub attempt: u32,
    pub run_id: String,
    /// A ULID; the CWOM Artifact's id when the task has an Issue.
    pub artifact_id: String,
    /// Relative to the handler's `artifacts/` directory, `/`-separated.
    pub path: String,
    /// Where the trace folder shows it: `file://<trace folder>/artifacts/<path>`.
    pub uri: String,
    /// `sha256:<64 hex>`: the content's address in the blob store.
    pub digest: String,
    pub size_bytes: u64,
    pub media_type: String,
    /// CWOM ArtifactType: `doc`, `log`, `code_patch`, `dataset`, `binary` ...
    #[serde(rename = "type")]
    pub artifact_type: String,
    pub title: String,
    #[serde(with = "ts")]
    pub produced_at: DateTime<Utc>,
}

/// `TaskCompleted`: the attempt succeeded; the task is `completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCompleted {
    pub task_id: String,
    pub attempt: u32,
    pub worker_id: String,
    #[serde(with = "ts")]
    pub completed_at: DateTime<Utc>,
    /// From the run's start.
    pub duration_s: f64,
    /// The handler's outputs (the task's `result`).
    pub outputs: Value,
    /// `sha256:<hex>` of the handler's log in the blob store.
    pub log_digest: Option<String>,
}

/// `TaskTimedOut`: the attempt ran out of its time budget and its handler was stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskTimedOut {
    pub task_id: String,
    pub attempt: u32,
    pub worker_id: String,
    #[serde(with = "ts")]
    pub timed_out_at: DateTime<Utc>,
    pub time_budget_seconds: f64,
    pub duration_s: f64,
    pub log_digest: Option<String>,
}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The handler reported failure (non-zero exit, an error).
    Failed,
    /// The handler ran out of its time budget.
    TimedOut,
    /// The worker stopped renewing its lease (it died or lost the database).
    LeaseExpired,
}

/// `TaskRetryScheduled`: the attempt failed and the next one is due at `retry_at`; the task is `queued`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRetryScheduled {
    pub task_id: String,
    pub attempt: u32,
    pub worker_id: String,
    pub reason: FailureReason,
    pub error: String,
    #[serde(with = "ts")]
    pub failed_at: DateTime<Utc>,
    /// Failed attempts so far, this one included.
    pub failures: u32,
    #[serde(with = "ts")]
    pub retry_at: DateTime<Utc>,
    pub next_attempt: u32,
    pub duration_s: Option<f64>,
    pub log_digest: Option<String>,
}

/// `TaskFailed`: the last attempt failed and no attempt is left; the task is `failed` with `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailed {
    pub task_id: String,
    pub attempt: u32,
    pub worker_id: String,
    pub reason: FailureReason,
    pub error: String,
    #[serde(with = "ts")]
    pub failed_at: DateTime<Utc>,
    pub failures: u32,
    pub duration_s: Option<f64>,
    pub log_digest: Option<String>,
}

/// `TaskLeaseExpired`: found by a claimer; the attempt's worker is presumed dead and the attempt failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLeaseExpired {
    pub task_id: String,
    pub attempt: u32,
    /// The worker that held the lease.
    pub worker_id: String,
    #[serde(with = "ts")]
    pub lease_expires_at: DateTime<Utc>,
    #[serde(with = "ts")]
    pub detected_at: DateTime<Utc>,
    /// The worker that found it.
    pub detected_by: String,
    /// Failed attempts so far, this one included.
    pub failures: u32,
}

/// `TaskReleased`: the worker gave the attempt back unfinished; the task is `queued` and due at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReleased {
    pub task_id: String,
    pub attempt: u32,
    pub worker_id: String,
    #[serde(with = "ts")]
    pub released_at: DateTime<Utc>,
    pub reason: String,
    pub duration_s: f64,
    pub log_digest: Option<String>,
}

/// `TaskCancelled`: the task is `cancelled`; `attempt` is the running attempt it stopped, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCancelled {
    pub task_id: String,
    pub attempt: Option<u32>,
    #[serde(with = "ts")]
    pub cancelled_at: DateTime<Utc>,
    pub reason: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------------
// The fold

/// A file an attempt produced, as the state remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRef {
    pub artifact_id: String,
    pub path: String,
    pub digest: String,
}

/// The running attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptState {
    pub number: u32,
    pub worker_id: String,
    pub run_id: String,
    /// The Issue of the attempt's CWOM Run, when it has one.
    pub cwom_issue_id: Option<String>,
    pub claimed_at: DateTime<Utc>,
    pub lease_expires_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub artifacts: Vec<ArtifactRef>,
}

/// A task as its stream tells it, for decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskState {
    pub task_id: String,
    /// The stream version folded so far (0: no event): what an append built on this state must expect.
    pub version: i32,
    /// Whether `TaskCreated` was seen.
    pub exists: bool,
    pub status: TaskStatus,
    /// The task document as created.
    pub task: Value,
    pub trace_id: Option<String>,
    pub cwom_issue_id: Option<String>,
    pub time_budget_seconds: u32,
    /// The last attempt's number (0: never claimed).
    pub attempt: u32,
    /// Failed attempts (handler failures, time-outs, expired leases); released attempts do not count.
    pub failures: u32,
    /// While `queued`: when it may be claimed (enqueue time, retry time, release time).
    pub available_at: Option<DateTime<Utc>>,
    /// While `running`: the attempt.
    pub current: Option<AttemptState>,
    pub last_error: Option<String>,
    /// The Issue status the lifecycle last set (`None`: not touched yet, so as the Issue was created).
    pub issue_status: Option<String>,
}

impl TaskState {
    /// The state before any event.
    pub fn new(task_id: &str) -> TaskState {
        TaskState {
            task_id: task_id.to_owned(),
            version: 0,
            exists: false,
            status: TaskStatus::Pending,
            task: Value::Null,
            trace_id: None,
            cwom_issue_id: None,
            time_budget_seconds: DEFAULT_TIME_BUDGET_SECONDS,
            attempt: 0,
            failures: 0,
            available_at: None,
            current: None,
            last_error: None,
            issue_status: None,
        }
    }

    /// Folds `(stream_version, event_type, payload)` triples of one task stream, in order.
    pub fn fold<'a>(
        task_id: &str,
        events: impl IntoIterator<Item = (i32, &'a str, &'a Value)>,
    ) -> Result<TaskState, serde_json::Error> {
        let mut state = TaskState::new(task_id);
        for (version, event_type, payload) in events {
            state.apply(version, event_type, payload)?;
        }
        Ok(state)
    }

    /// Applies one event of the task's stream. Unknown event types only move the version.
    pub fn apply(&mut self, version: i32, event_type: &str, payload: &Value) -> Result<(), serde_json::Error> {
        self.version = version;
        match event_type {
            events::TASK_CREATED => {
                let task = payload.get("task").cloned().unwrap_or(Value::Null);
                self.exists = true;
                self.status = TaskStatus::Pending;
                self.trace_id = task["trace_id"].as_str().map(str::to_owned);
                self.cwom_issue_id = task["cwom_issue_id"].as_str().map(str::to_owned);
                self.time_budget_seconds = task["constraints"]["time_budget_seconds"]
                    .as_u64()
                    .and_then(|seconds| u32::try_from(seconds).ok())
                    .unwrap_or(DEFAULT_TIME_BUDGET_SECONDS);
                self.task = task;
            }
            events::TASK_ENQUEUED => {
                self.status = TaskStatus::Queued;
                self.available_at = payload["queued_at"]
                    .as_str()
                    .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                    .map(|ts| ts.with_timezone(&Utc));
            }
            events::TASK_CLAIMED => {
                let claimed = TaskClaimed::deserialize(payload)?;
                self.status = TaskStatus::Running;
                self.attempt = claimed.attempt;
                self.available_at = None;
                if claimed.cwom_issue_id.is_some() {
                    self.issue_status = Some("running".into());
                }
                self.current = Some(AttemptState {
                    number: claimed.attempt,
                    worker_id: claimed.worker_id,
                    run_id: claimed.run_id,
                    cwom_issue_id: claimed.cwom_issue_id,
                    claimed_at: claimed.claimed_at,
                    lease_expires_at: claimed.lease_expires_at,
                    started_at: None,
                    artifacts: Vec::new(),
                });
            }
            events::RUN_STARTED => {
                let started = RunStarted::deserialize(payload)?;
                if let Some(current) = self.current_mut(started.attempt) {
                    current.started_at = Some(started.started_at);
                }
            }
            events::TASK_LEASE_RENEWED => {
                let renewed = TaskLeaseRenewed::deserialize(payload)?;
                if let Some(current) = self.current_mut(renewed.attempt) {
                    current.lease_expires_at = renewed.lease_expires_at;
                }
            }
            events::ARTIFACT_PRODUCED => {
                let artifact = ArtifactProduced::deserialize(payload)?;
                if let Some(current) = self.current_mut(artifact.attempt) {
                    current.artifacts.push(ArtifactRef {
                        artifact_id: artifact.artifact_id,
                        path: artifact.path,
                        digest: artifact.digest,
                    });
                }
            }
            events::TASK_COMPLETED => {
                self.status = TaskStatus::Completed;
                self.last_error = None;
                self.end_attempt(Some("done"));
            }
            events::TASK_TIMED_OUT => {}
            events::TASK_RETRY_SCHEDULED => {
                let retry = TaskRetryScheduled::deserialize(payload)?;
                self.status = TaskStatus::Queued;
                self.failures = retry.failures;
                self.available_at = Some(retry.retry_at);
                self.last_error = Some(retry.error);
                self.current = None;
            }
            events::TASK_FAILED => {
                let failed = TaskFailed::deserialize(payload)?;
                self.status = TaskStatus::Failed;
                self.failures = failed.failures;
                self.last_error = Some(failed.error);
                self.end_attempt(Some("failed"));
            }
            events::TASK_LEASE_EXPIRED => {
                let expired = TaskLeaseExpired::deserialize(payload)?;
                // A claim or a failure follows in the same command.
                self.status = TaskStatus::Queued;
                self.failures = expired.failures;
                self.available_at = Some(expired.detected_at);
                self.current = None;
            }
            events::TASK_RELEASED => {
                let released = TaskReleased::deserialize(payload)?;
                self.status = TaskStatus::Queued;
                self.available_at = Some(released.released_at);
                self.current = None;
            }
            events::TASK_CANCELLED => {
                self.status = TaskStatus::Cancelled;
                self.end_attempt(Some("canceled"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Applies events a decision returned (not yet stored), as if appended now: each event of this task's stream
    /// takes the next version; events of other streams are skipped. For deciding several steps in one command.
    pub fn apply_new(&mut self, new_events: &[NewEvent]) -> Result<(), serde_json::Error> {
        let stream = self.stream();
        for event in new_events.iter().filter(|event| event.data.stream == stream) {
            self.apply(self.version + 1, &event.data.event_type, &event.data.payload)?;
        }
        Ok(())
    }

    fn current_mut(&mut self, attempt: u32) -> Option<&mut AttemptState> {
        self.current.as_mut().filter(|current| current.number == attempt)
    }

    fn end_attempt(&mut self, issue_status: Option<&str>) {
        self.current = None;
        self.available_at = None;
        if self.cwom_issue_id.is_some() {
            self.issue_status = issue_status.map(str::to_owned);
        }
    }

    /// The running attempt `attempt` held by `worker_id`, or why a decision about it is refused (the fence).
    pub fn fence(&self, attempt: u32, worker_id: &str) -> Result<&AttemptState, Refusal> {
        if !self.exists {
            return Err(Refusal::NotFound);
        }
        match &self.current {
            Some(current)
                if self.status == TaskStatus::Running
                    && current.number == attempt
                    && current.worker_id == worker_id =>
            {
                Ok(current)
            }
            _ => Err(Refusal::StaleAttempt {
                attempt,
                current: self.current.as_ref().map(|current| current.number),
                status: self.status,
            }),
        }
    }

    fn stream(&self) -> StreamId {
        StreamId::new(EntityKind::Task, &self.task_id)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Decisions

/// Why a command was refused. Nothing is appended.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("no such task")]
    NotFound,
    #[error("the task is already {}", .0.as_str())]
    Terminal(TaskStatus),
    #[error("the task is {} and cannot be claimed", .0.as_str())]
    NotClaimable(TaskStatus),
    #[error("the task is not due before {}", format_ts(*.0))]
    NotDue(DateTime<Utc>),
    #[error("the task is leased to {worker_id} until {}", format_ts(*.until))]
    Leased { worker_id: String, until: DateTime<Utc> },
    #[error("attempt {attempt} is not the running attempt (current: {current:?}, status {})", .status.as_str())]
    StaleAttempt { attempt: u32, current: Option<u32>, status: TaskStatus },
}

/// How failed attempts are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failed attempts allowed in all; the one that reaches it ends the task `failed`.
    pub max_attempts: u32,
    /// Delay before the first retry (before jitter); doubles with each further failure.
    pub backoff_base: TimeDelta,
    /// Cap of the delay (before jitter).
    pub backoff_max: TimeDelta,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy { max_attempts: 3, backoff_base: TimeDelta::seconds(1), backoff_max: TimeDelta::minutes(5) }
    }
}

impl RetryPolicy {
    /// The delay after the `failures`-th failure: `d = min(max, base × 2^(failures-1))`, then "equal jitter":
    /// `d/2 + d/2 × jitter`, with `jitter` in `[0, 1]` chosen by the caller (clamped).
    pub fn delay(&self, failures: u32, jitter: f64) -> TimeDelta {
        let exponent = failures.saturating_sub(1).min(40);
        let base_us = self.backoff_base.num_microseconds().unwrap_or(i64::MAX).max(0) as f64;
        let max_us = self.backoff_max.num_microseconds().unwrap_or(i64::MAX).max(0) as f64;
        let full = (base_us * 2f64.powi(exponent as i32)).min(max_us);
        let jitter = if jitter.is_nan() { 0.0 } else { jitter.clamp(0.0, 1.0) };
        TimeDelta::microseconds((full / 2.0 + full / 2.0 * jitter).round() as i64)
    }
}

/// What the handler of a task with a CWOM Issue is given beyond the task, and what its Run needs; loaded from
/// the log by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct CwomContext {
    pub issue_id: String,
    /// The Issue's repo Ref (`{"kind":"Repo","id":...,"role":null}`).
    pub repo: Value,
    /// The Issue's current status.
    pub issue_status: String,
    /// The Issue's latest ContextPacket (GET shape), if any.
    pub context_packet: Option<Value>,
    /// The ConstraintSnapshot linked to the Issue (GET shape), if any.
    pub constraint_snapshot: Option<Value>,
}

/// A worker's claim of a task.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub worker_id: &'a str,
    pub now: DateTime<Utc>,
    pub lease: TimeDelta,
    /// For an expired lease: the failure that reaches it ends the task instead.
    pub max_attempts: u32,
    /// A fresh ULID for the new attempt's run.
    pub run_id: &'a str,
    /// `file://` URI of the task's trace folder (no trailing slash).
    pub trace_path: Option<&'a str>,
    pub executor: &'a ExecutorInfo,
    /// The attempt's time budget in seconds (the task's, or a cap).
    pub time_budget_seconds: f64,
    pub cwom: Option<&'a CwomContext>,
}

/// The outcome of a claim that was not refused.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimDecision {
    /// A new attempt starts: `TaskClaimed`, `RunStarted` (and the CWOM Run), preceded by `TaskLeaseExpired`
    /// when the previous attempt's worker died.
    Claimed(Vec<NewEvent>),
    /// The previous attempt's lease expired and it was the last one allowed: the task failed instead.
    Exhausted(Vec<NewEvent>),
}

/// Claims a task: when it is `queued` and due, or `running` under an expired lease (its worker died).
pub fn decide_claim(state: &TaskState, claim: &Claim<'_>) -> Result<ClaimDecision, Refusal> {
    if !state.exists {
        return Err(Refusal::NotFound);
    }
    match state.status {
        status if status.is_terminal() => Err(Refusal::Terminal(status)),
        TaskStatus::Queued => match state.available_at {
            Some(due) if due > claim.now => Err(Refusal::NotDue(due)),
            _ => Ok(ClaimDecision::Claimed(start_attempt(state, claim))),
        },
        TaskStatus::Running => {
            let Some(current) = &state.current else {
                return Err(Refusal::NotClaimable(state.status));
            };
            if current.lease_expires_at > claim.now {
                return Err(Refusal::Leased { worker_id: current.worker_id.clone(), until: current.lease_expires_at });
            }
            let failures = state.failures + 1;
            let actor = Actor::system(claim.worker_id);
            let expired = TaskLeaseExpired {
                task_id: state.task_id.clone(),
                attempt: current.number,
                worker_id: current.worker_id.clone(),
                lease_expires_at: current.lease_expires_at,
                detected_at: claim.now,
                detected_by: claim.worker_id.to_owned(),
                failures,
            };
            let note = format!(
                "Attempt {} lost: the lease of {} expired at {}",
                current.number,
                current.worker_id,
                format_ts(current.lease_expires_at)
            );
            let error = format!(
                "attempt {}: the lease of worker {} expired at {} (the worker stopped renewing it)",
                current.number,
                current.worker_id,
                format_ts(current.lease_expires_at)
            );
            let mut new_events = vec![task_event(state, &actor, events::TASK_LEASE_EXPIRED, &expired, None, note)];
            new_events.extend(run_ended(
                state,
                current,
                "failed",
                claim.now,
                Some(json!({"category": "runtime", "message": error})),
                None,
                &actor,
            ));
            if failures >= claim.max_attempts {
                let failed = TaskFailed {
                    task_id: state.task_id.clone(),
                    attempt: current.number,
                    worker_id: current.worker_id.clone(),
                    reason: FailureReason::LeaseExpired,
                    error: error.clone(),
                    failed_at: claim.now,
                    failures,
                    duration_s: None,
                    log_digest: None,
                };
                new_events.push(task_event(
                    state,
                    &actor,
                    events::TASK_FAILED,
                    &failed,
                    Some((TaskStatus::Running, TaskStatus::Failed)),
                    status_note(TaskStatus::Running, TaskStatus::Failed),
                ));
                new_events.extend(issue_changed(state, "failed", claim.now, &actor));
                Ok(ClaimDecision::Exhausted(new_events))
            } else {
                new_events.extend(start_attempt(state, claim));
                Ok(ClaimDecision::Claimed(new_events))
            }
        }
        TaskStatus::Pending => Err(Refusal::NotClaimable(TaskStatus::Pending)),
        // Terminal statuses are handled first.
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled => Err(Refusal::Terminal(state.status)),
    }
}

/// The handler's input (`input.json`): the task as submitted (normalised), its ids, the attempt, and the CWOM
/// context packet and constraint snapshot when there are some.
pub fn handler_input(state: &TaskState, attempt: u32, run_id: &str, cwom: Option<&CwomContext>) -> Value {
    let mut task = state.task.clone();
    if let Some(fields) = task.as_object_mut() {
        for lifecycle_field in
            ["status", "queued_at", "started_at", "completed_at", "assigned_to", "result", "error", "trace_path"]
        {
            fields.remove(lifecycle_field);
        }
    }
    // Built member by member: `json!` would serialise each document again into a copy of the copy taken here.
    let document = |document: Option<&Value>| document.cloned().unwrap_or(Value::Null);
    let mut input = serde_json::Map::new();
    input.insert("task_id".into(), state.task_id.clone().into());
    input.insert("trace_id".into(), state.trace_id.clone().map_or(Value::Null, Value::String));
    input.insert("attempt".into(), attempt.into());
    input.insert("run_id".into(), run_id.into());
    input.insert("task".into(), task);
    input.insert("context_packet".into(), document(cwom.and_then(|cwom| cwom.context_packet.as_ref())));
    input.insert("constraint_snapshot".into(), document(cwom.and_then(|cwom| cwom.constraint_snapshot.as_ref())));
    Value::Object(input)
}

fn start_attempt(state: &TaskState, claim: &Claim<'_>) -> Vec<NewEvent> {
    let attempt = state.attempt + 1;
    let actor = Actor::system(claim.worker_id);
    // Only a task whose Issue exists in the log gets a CWOM Run.
    let cwom = claim.cwom.filter(|cwom| state.cwom_issue_id.as_deref() == Some(cwom.issue_id.as_str()));
    let claimed = TaskClaimed {
        task_id: state.task_id.clone(),
        attempt,
        worker_id: claim.worker_id.to_owned(),
        run_id: claim.run_id.to_owned(),
        cwom_issue_id: cwom.map(|cwom| cwom.issue_id.clone()),
        claimed_at: claim.now,
        lease_expires_at: claim.now + claim.lease,
        trace_path: claim.trace_path.map(str::to_owned),
    };
    let started = RunStarted {
        task_id: state.task_id.clone(),
        attempt,
        run_id: claim.run_id.to_owned(),
        worker_id: claim.worker_id.to_owned(),
        started_at: claim.now,
        executor: claim.executor.clone(),
        time_budget_seconds: claim.time_budget_seconds,
        // Put into the payload below, after the rest is serialised: serialising it would copy it once more.
        input: Value::Null,
    };
    let mut run_started = task_event(
        state,
        &actor,
        events::RUN_STARTED,
        &started,
        None,
        format!("Run {} started (attempt {attempt}, executor {})", claim.run_id, claim.executor.kind),
    );
    run_started.data.payload["input"] = handler_input(state, attempt, claim.run_id, cwom);
    // A lease-expired attempt was folded as `queued` by the preceding event of the same command.
    let from = if state.status == TaskStatus::Running { TaskStatus::Queued } else { state.status };
    let mut new_events = vec![
        task_event(
            state,
            &actor,
            events::TASK_CLAIMED,
            &claimed,
            Some((from, TaskStatus::Running)),
            format!("Status changed: {} -> running (attempt {attempt}, claimed by {})", from.as_str(), claim.worker_id),
        ),
        run_started,
    ];
    if let Some(cwom) = cwom {
        let run = run_object(state, &claimed, claim, cwom);
        new_events.push(NewEvent::new(
            EventData {
                stream: StreamId::new(EntityKind::Run, claim.run_id),
                event_type: cwom_events::RUN_CREATED.into(),
                schema_version: 1,
                payload: json!({"object": run, "task_id": state.task_id, "attempt": attempt}),
                action: Action::Created,
                before: None,
                after: Some(run),
                note: Some(format!("Run for task {} attempt {attempt}", state.task_id)),
            },
            actor.clone(),
        ));
        let issue_status = state.issue_status.clone().unwrap_or_else(|| cwom.issue_status.clone());
        if issue_status != "running" {
            new_events.push(issue_status_event(
                &cwom.issue_id,
                &state.task_id,
                &issue_status,
                "running",
                claim.now,
                &actor,
            ));
        }
    }
    new_events
}

fn run_object(state: &TaskState, claimed: &TaskClaimed, claim: &Claim<'_>, cwom: &CwomContext) -> Value {
    let now = format_ts(claim.now);
    let reference = |kind: &str, object: &Option<Value>| {
        object.as_ref().and_then(|object| object["id"].as_str()).map(|id| json!({"kind": kind, "id": id}))
    };
    json!({
        "kind": "Run",
        "id": claimed.run_id,
        "trace_id": state.trace_id,
        "for_issue": {"kind": "Issue", "id": cwom.issue_id, "role": null},
        "repo": cwom.repo,
        "status": "running",
        "mode": "system",
        "executor": {
            "actor": {"actor_kind": "system", "actor_id": claim.worker_id, "display": null},
            "runtime": "local",
            "toolchain": [format!("{}/{}", claim.executor.kind, claim.executor.version)],
        },
        "inputs": {
            "context_packets": reference("ContextPacket", &cwom.context_packet).into_iter().collect::<Vec<_>>(),
            "doctrine_refs": [],
            "constraint_snapshot": reference("ConstraintSnapshot", &cwom.constraint_snapshot),
        },
        "plan": {"steps": [], "risk_notes": []},
        "telemetry": {"started_at": now, "ended_at": null, "duration_s": null},
        "cost": {},
        "outputs": {},
        "failure": null,
        "artifact_root_uri": claimed.trace_path.as_ref().map(|path| format!("{path}/")),
        "tags": [],
        "meta": {"task_id": state.task_id, "attempt": claimed.attempt, "worker_id": claim.worker_id},
        "created_at": now,
        "updated_at": now,
    })
}

/// A heartbeat: renews the lease of the running attempt.
#[derive(Debug, Clone)]
pub struct Renew<'a> {
    pub attempt: u32,
    pub worker_id: &'a str,
    pub now: DateTime<Utc>,
    pub lease: TimeDelta,
}

pub fn decide_renew(state: &TaskState, renew: &Renew<'_>) -> Result<Vec<NewEvent>, Refusal> {
    let current = state.fence(renew.attempt, renew.worker_id)?;
    let renewed = TaskLeaseRenewed {
        task_id: state.task_id.clone(),
        attempt: current.number,
        worker_id: renew.worker_id.to_owned(),
        renewed_at: renew.now,
        lease_expires_at: renew.now + renew.lease,
    };
    Ok(vec![task_event(
        state,
        &Actor::system(renew.worker_id),
        events::TASK_LEASE_RENEWED,
        &renewed,
        None,
        format!("Lease of attempt {} renewed", current.number),
    )])
}

/// A file the handler produced, already stored in the blob store.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactFacts {
    pub artifact_id: String,
    pub path: String,
    pub uri: String,
    pub digest: String,
    pub size_bytes: u64,
    pub media_type: String,
    pub artifact_type: String,
    pub title: String,
}

/// Records artifacts of the running attempt (`ArtifactProduced`, and CWOM Artifacts when there is a Run).
pub fn decide_artifacts(
    state: &TaskState,
    attempt: u32,
    worker_id: &str,
    now: DateTime<Utc>,
    artifacts: &[ArtifactFacts],
) -> Result<Vec<NewEvent>, Refusal> {
    let current = state.fence(attempt, worker_id)?;
    let actor = Actor::system(worker_id);
    let mut new_events = Vec::new();
    for artifact in artifacts {
        let produced = ArtifactProduced {
            task_id: state.task_id.clone(),
            attempt,
            run_id: current.run_id.clone(),
            artifact_id: artifact.artifact_id.clone(),
            path: artifact.path.clone(),
            uri: artifact.uri.clone(),
            digest: artifact.digest.clone(),
            size_bytes: artifact.size_bytes,
            media_type: artifact.media_type.clone(),
            artifact_type: artifact.artifact_type.clone(),
            title: artifact.title.clone(),
            produced_at: now,
        };
        new_events.push(task_event(
            state,
            &actor,
            events::ARTIFACT_PRODUCED,
            &produced,
            None,
            format!("Attempt {attempt} produced {} ({})", artifact.path, artifact.digest),
        ));
        if let Some(issue_id) = &current.cwom_issue_id {
            let ts = format_ts(now);
            let object = json!({
                "kind": "Artifact",
                "id": artifact.artifact_id,
                "trace_id": state.trace_id,
                "produced_by": {"kind": "Run", "id": current.run_id, "role": null},
                "for_issue": {"kind": "Issue", "id": issue_id, "role": null},
                "type": artifact.artifact_type,
                "title": artifact.title,
                "uri": artifact.uri,
                "digest": artifact.digest,
                "media_type": artifact.media_type,
                "size_bytes": artifact.size_bytes,
                "preview": null,
                "verification": {"status": "unverified", "checks": []},
                "tags": [],
                "meta": {"task_id": state.task_id, "attempt": attempt, "path": artifact.path},
                "created_at": ts,
                "updated_at": ts,
            });
            new_events.push(NewEvent::new(
                EventData {
                    stream: StreamId::new(EntityKind::Artifact, &artifact.artifact_id),
                    event_type: cwom_events::ARTIFACT_CREATED.into(),
                    schema_version: 1,
                    payload: json!({"object": object, "task_id": state.task_id, "attempt": attempt}),
                    action: Action::Created,
                    before: None,
                    after: Some(object),
                    note: None,
                },
                actor.clone(),
            ));
        }
    }
    Ok(new_events)
}

/// How the handler of an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Succeeded {
        outputs: Value,
    },
    Failed {
        error: String,
    },
    /// Stopped at its time budget.
    TimedOut {
        time_budget_seconds: f64,
    },
}

/// The end of the running attempt.
#[derive(Debug, Clone)]
pub struct Finish<'a> {
    pub attempt: u32,
    pub worker_id: &'a str,
    pub now: DateTime<Utc>,
    pub outcome: RunOutcome,
    /// The handler's log in the blob store (`sha256:<hex>`).
    pub log_digest: Option<&'a str>,
    pub retry: RetryPolicy,
    /// In `[0, 1]`: where in the backoff window a retry lands (see [`RetryPolicy::delay`]).
    pub jitter: f64,
}

/// Ends the running attempt: completed; or failed / timed out, then retried or, with no attempt left, failed.
pub fn decide_finish(state: &TaskState, finish: &Finish<'_>) -> Result<Vec<NewEvent>, Refusal> {
    let current = state.fence(finish.attempt, finish.worker_id)?;
    let actor = Actor::system(finish.worker_id);
    let duration_s = seconds(finish.now - current.started_at.unwrap_or(current.claimed_at));
    let log_digest = finish.log_digest.map(str::to_owned);
    match &finish.outcome {
        RunOutcome::Succeeded { outputs } => {
            let completed = TaskCompleted {
                task_id: state.task_id.clone(),
                attempt: current.number,
                worker_id: finish.worker_id.to_owned(),
                completed_at: finish.now,
                duration_s,
                outputs: outputs.clone(),
                log_digest,
            };
            let mut new_events = vec![task_event(
                state,
                &actor,
                events::TASK_COMPLETED,
                &completed,
                Some((TaskStatus::Running, TaskStatus::Completed)),
                format!("{} (attempt {})", status_note(TaskStatus::Running, TaskStatus::Completed), current.number),
            )];
            let run_outputs = json!({
                "artifacts": current.artifacts.iter()
                    .map(|artifact| json!({"kind": "Artifact", "id": artifact.artifact_id}))
                    .collect::<Vec<_>>(),
                "result_summary": result_summary(outputs),
                "decision_log": [],
            });
            new_events.extend(run_ended(state, current, "done", finish.now, None, Some(run_outputs), &actor));
            new_events.extend(issue_changed(state, "done", finish.now, &actor));
            Ok(new_events)
        }
        RunOutcome::Failed { error } => {
            Ok(attempt_failed(state, current, finish, FailureReason::Failed, error.clone(), duration_s, Vec::new()))
        }
        RunOutcome::TimedOut { time_budget_seconds } => {
            let timed_out = TaskTimedOut {
                task_id: state.task_id.clone(),
                attempt: current.number,
                worker_id: finish.worker_id.to_owned(),
                timed_out_at: finish.now,
                time_budget_seconds: *time_budget_seconds,
                duration_s,
                log_digest: log_digest.clone(),
            };
            let first = task_event(
                state,
                &actor,
                events::TASK_TIMED_OUT,
                &timed_out,
                None,
                format!("Attempt {} timed out after {time_budget_seconds} s", current.number),
            );
            let error = format!(
                "attempt {} timed out: the time budget of {time_budget_seconds} s ran out and the handler was stopped",
                current.number
            );
            Ok(attempt_failed(state, current, finish, FailureReason::TimedOut, error, duration_s, vec![first]))
        }
    }
}

fn attempt_failed(
    state: &TaskState,
    current: &AttemptState,
    finish: &Finish<'_>,
    reason: FailureReason,
    error: String,
    duration_s: f64,
    mut new_events: Vec<NewEvent>,
) -> Vec<NewEvent> {
    let actor = Actor::system(finish.worker_id);
    let failures = state.failures + 1;
    let log_digest = finish.log_digest.map(str::to_owned);
    let failure = json!({"category": "runtime", "message": truncate(&error, 4000)});
    if failures < finish.retry.max_attempts {
        let retry_at = finish.now + finish.retry.delay(failures, finish.jitter);
        let retry = TaskRetryScheduled {
            task_id: state.task_id.clone(),
            attempt: current.number,
            worker_id: finish.worker_id.to_owned(),
            reason,
            error,
            failed_at: finish.now,
            failures,
            retry_at,
            next_attempt: current.number + 1,
            duration_s: Some(duration_s),
            log_digest,
        };
        new_events.push(task_event(
            state,
            &actor,
            events::TASK_RETRY_SCHEDULED,
            &retry,
            Some((TaskStatus::Running, TaskStatus::Queued)),
            format!(
                "Status changed: running -> queued (attempt {} failed, {failures} of {} allowed; retry at {})",
                current.number,
                finish.retry.max_attempts,
                format_ts(retry_at)
            ),
        ));
        new_events.extend(run_ended(state, current, "failed", finish.now, Some(failure), None, &actor));
    } else {
        let failed = TaskFailed {
            task_id: state.task_id.clone(),
            attempt: current.number,
            worker_id: finish.worker_id.to_owned(),
            reason,
            error,
            failed_at: finish.now,
            failures,
            duration_s: Some(duration_s),
            log_digest,
        };
        new_events.push(task_event(
            state,
            &actor,
            events::TASK_FAILED,
            &failed,
            Some((TaskStatus::Running, TaskStatus::Failed)),
            format!(
                "{} (attempt {}, {failures} failed attempts)",
                status_note(TaskStatus::Running, TaskStatus::Failed),
                current.number
            ),
        ));
        new_events.extend(run_ended(state, current, "failed", finish.now, Some(failure), None, &actor));
        new_events.extend(issue_changed(state, "failed", finish.now, &actor));
    }
    new_events
}

/// Gives the running attempt back unfinished (graceful shutdown): the task is `queued`, due at once. Not a
/// failure: it does not count towards the maximum attempts.
#[derive(Debug, Clone)]
pub struct Release<'a> {
    pub attempt: u32,
    pub worker_id: &'a str,
    pub now: DateTime<Utc>,
    pub reason: &'a str,
    pub log_digest: Option<&'a str>,
}

pub fn decide_release(state: &TaskState, release: &Release<'_>) -> Result<Vec<NewEvent>, Refusal> {
    let current = state.fence(release.attempt, release.worker_id)?;
    let actor = Actor::system(release.worker_id);
    let released = TaskReleased {
        task_id: state.task_id.clone(),
        attempt: current.number,
        worker_id: release.worker_id.to_owned(),
        released_at: release.now,
        reason: release.reason.to_owned(),
        duration_s: seconds(release.now - current.started_at.unwrap_or(current.claimed_at)),
        log_digest: release.log_digest.map(str::to_owned),
    };
    let mut new_events = vec![task_event(
        state,
        &actor,
        events::TASK_RELEASED,
        &released,
        Some((TaskStatus::Running, TaskStatus::Queued)),
        format!("Status changed: running -> queued (attempt {} released: {})", current.number, release.reason),
    )];
    new_events.extend(run_ended(
        state,
        current,
        "canceled",
        release.now,
        Some(json!({"category": "runtime", "message": format!("released unfinished: {}", release.reason)})),
        None,
        &actor,
    ));
    Ok(new_events)
}

/// Cancels a task: a queued one at once; a running one too, and its worker stops the handler when it sees it.
#[derive(Debug, Clone)]
pub struct Cancel<'a> {
    pub now: DateTime<Utc>,
    pub actor: &'a Actor,
    pub reason: Option<&'a str>,
}

pub fn decide_cancel(state: &TaskState, cancel: &Cancel<'_>) -> Result<Vec<NewEvent>, Refusal> {
    if !state.exists {
        return Err(Refusal::NotFound);
    }
    if state.status.is_terminal() {
        return Err(Refusal::Terminal(state.status));
    }
    let current = state.current.as_ref().filter(|_| state.status == TaskStatus::Running);
    let cancelled = TaskCancelled {
        task_id: state.task_id.clone(),
        attempt: current.map(|current| current.number),
        cancelled_at: cancel.now,
        reason: cancel.reason.map(str::to_owned),
    };
    let mut new_events = vec![task_event(
        state,
        cancel.actor,
        events::TASK_CANCELLED,
        &cancelled,
        Some((state.status, TaskStatus::Cancelled)),
        status_note(state.status, TaskStatus::Cancelled),
    )];
    if let Some(current) = current {
        new_events.extend(run_ended(
            state,
            current,
            "canceled",
            cancel.now,
            Some(json!({"category": "runtime", "message": "the task was cancelled"})),
            None,
            cancel.actor,
        ));
    }
    new_events.extend(issue_changed(state, "canceled", cancel.now, cancel.actor));
    Ok(new_events)
}

// ---------------------------------------------------------------------------------------------------------------
// Event builders

fn status_note(from: TaskStatus, to: TaskStatus) -> String {
    format!("Status changed: {} -> {}", from.as_str(), to.as_str())
}

fn task_event<P: Serialize>(
    state: &TaskState,
    actor: &Actor,
    event_type: &str,
    payload: &P,
    transition: Option<(TaskStatus, TaskStatus)>,
    note: String,
) -> NewEvent {
    let (action, before, after) = match transition {
        Some((from, to)) => {
            (Action::StatusChanged, Some(json!({"status": from.as_str()})), Some(json!({"status": to.as_str()})))
        }
        None => (Action::Updated, None, None),
    };
    NewEvent::new(
        EventData {
            stream: state.stream(),
            event_type: event_type.into(),
            schema_version: 1,
            payload: serde_json::to_value(payload).expect("payloads serialise"),
            action,
            before,
            after,
            note: Some(note),
        },
        actor.clone(),
    )
}

/// The CWOM Run of `current` ends with `status`; nothing when the attempt has no Run.
fn run_ended(
    state: &TaskState,
    current: &AttemptState,
    status: &str,
    now: DateTime<Utc>,
    failure: Option<Value>,
    outputs: Option<Value>,
    actor: &Actor,
) -> Option<NewEvent> {
    current.cwom_issue_id.as_ref()?;
    let started_at = current.started_at.unwrap_or(current.claimed_at);
    let mut changes = json!({
        "status": status,
        "telemetry": {
            "started_at": format_ts(started_at),
            "ended_at": format_ts(now),
            "duration_s": seconds(now - started_at),
        },
        "failure": failure,
        "updated_at": format_ts(now),
    });
    if let Some(outputs) = outputs {
        changes["outputs"] = outputs;
    }
    Some(NewEvent::new(
        EventData {
            stream: StreamId::new(EntityKind::Run, &current.run_id),
            event_type: cwom_events::RUN_STATUS_CHANGED.into(),
            schema_version: 1,
            payload: json!({"changes": changes, "task_id": state.task_id, "attempt": current.number}),
            action: Action::StatusChanged,
            before: Some(json!({"status": "running"})),
            after: Some(json!({"status": status})),
            note: Some(format!("Run status changed: running -> {status}")),
        },
        actor.clone(),
    ))
}

/// The task's Issue moves to `status`; nothing without an Issue or when it is already there.
fn issue_changed(state: &TaskState, status: &str, now: DateTime<Utc>, actor: &Actor) -> Option<NewEvent> {
    let issue_id = state.cwom_issue_id.as_ref()?;
    let from = state.issue_status.as_deref().unwrap_or("planned");
    (from != status).then(|| issue_status_event(issue_id, &state.task_id, from, status, now, actor))
}

fn issue_status_event(
    issue_id: &str,
    task_id: &str,
    from: &str,
    to: &str,
    now: DateTime<Utc>,
    actor: &Actor,
) -> NewEvent {
    NewEvent::new(
        EventData {
            stream: StreamId::new(EntityKind::Issue, issue_id),
            event_type: cwom_events::ISSUE_STATUS_CHANGED.into(),
            schema_version: 1,
            payload: json!({"changes": {"status": to, "updated_at": format_ts(now)}, "task_id": task_id}),
            action: Action::StatusChanged,
            before: Some(json!({"status": from})),
            after: Some(json!({"status": to})),
            note: Some(format!("Status changed: {from} -> {to} (task {task_id})")),
        },
        actor.clone(),
    )
}

/// A CWOM `result_summary` from a handler's outputs: its `summary` or `message` text, at most 4000 characters.
fn result_summary(outputs: &Value) -> Option<String> {
    ["summary", "message"].iter().find_map(|key| outputs[key].as_str()).map(|text| truncate(text, 4000))
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// A duration in seconds, to the microsecond.
pub fn seconds(delta: TimeDelta) -> f64 {
    delta.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}
