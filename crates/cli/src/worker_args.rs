//! `jct worker` (and the worker of `jct up`): every field of [`worker::WorkerConfig`] as a flag and an environment
//! variable, with its default. Durations take a unit: `250ms`, `30s`, `5m`, `1h` (a bare number is seconds).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Args};
use worker::{HandlerKind, WorkerConfig};

/// The worker's settings.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// This worker's id in events; unique among running workers. Default: `worker-` and 8 random hex digits.
    #[arg(long = "worker-id", env = "JCT_WORKER_ID", value_name = "JCT_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Handlers run at once by this process (an attempt recording its end has freed its slot).
    #[arg(long = "concurrency", env = "JCT_WORKER_CONCURRENCY", value_name = "JCT_WORKER_CONCURRENCY",
          default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// How long a claim holds a task without a heartbeat; a dead worker's task is claimable again after it.
    #[arg(long = "lease", env = "JCT_WORKER_LEASE", value_name = "JCT_WORKER_LEASE", default_value = "30s",
          value_parser = parse_duration)]
    pub lease: Duration,

    /// How often a running attempt renews its lease; shorter than the lease.
    #[arg(long = "heartbeat-interval", env = "JCT_WORKER_HEARTBEAT_INTERVAL",
          value_name = "JCT_WORKER_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Failed attempts allowed per task (handler failure, time-out, expired lease); the last one fails the task.
    #[arg(long = "max-attempts", env = "JCT_WORKER_MAX_ATTEMPTS", value_name = "JCT_WORKER_MAX_ATTEMPTS",
          default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Delay before the first retry; doubles per failure, half of it random (jitter).
    #[arg(long = "backoff-base", env = "JCT_WORKER_BACKOFF_BASE", value_name = "JCT_WORKER_BACKOFF_BASE",
          default_value = "1s", value_parser = parse_duration)]
    pub backoff_base: Duration,

    /// Cap of the retry delay.
    #[arg(long = "backoff-max", env = "JCT_WORKER_BACKOFF_MAX", value_name = "JCT_WORKER_BACKOFF_MAX",
          default_value = "5m", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// Fallback poll: the longest a lost notification delays work, and how often a running task is checked
    /// for a cancel.
    #[arg(long = "poll-interval", env = "JCT_WORKER_POLL_INTERVAL", value_name = "JCT_WORKER_POLL_INTERVAL",
          default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// LISTEN for the log's notifications; `false` polls only (e.g. behind a pooler that drops NOTIFY).
    #[arg(long = "listen", env = "JCT_WORKER_LISTEN", value_name = "JCT_WORKER_LISTEN", default_value_t = true,
          action = ArgAction::Set)]
    pub listen: bool,

    /// `stub` (deterministic imitation of work) or `exec` (runs `JCT_WORKER_EXEC_COMMAND`).
    #[arg(long = "handler", env = "JCT_WORKER_HANDLER", value_name = "JCT_WORKER_HANDLER", default_value = "stub")]
    pub handler: HandlerKind,

    /// The program for `exec`, with its arguments separated by spaces (no quoting: point it at a script for
    /// anything more). It gets input.json as its last argument, in JCT_INPUT and on stdin.
    #[arg(long = "exec-command", env = "JCT_WORKER_EXEC_COMMAND", value_name = "JCT_WORKER_EXEC_COMMAND")]
    pub exec_command: Option<String>,

    /// Simulated work per task for `stub`.
    #[arg(long = "stub-duration", env = "JCT_WORKER_STUB_DURATION", value_name = "JCT_WORKER_STUB_DURATION",
          default_value = "0s", value_parser = parse_duration)]
    pub stub_duration: Duration,

    #[command(flatten)]
    pub traces: TraceArgs,

    /// Where handlers get scratch directories. Default: `<temp dir>/jct-worker-<worker id>`, removed at a graceful
    /// shutdown if it is empty.
    #[arg(long = "scratch-dir", env = "JCT_WORKER_SCRATCH_DIR", value_name = "JCT_WORKER_SCRATCH_DIR")]
    pub scratch_dir: Option<PathBuf>,

    /// On SIGINT/SIGTERM, how long running handlers may still finish before their tasks are released.
    #[arg(long = "shutdown-grace", env = "JCT_WORKER_SHUTDOWN_GRACE", value_name = "JCT_WORKER_SHUTDOWN_GRACE",
          default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Caps every task's time budget (which stays the task's when smaller).
    #[arg(long = "max-time-budget", env = "JCT_WORKER_MAX_TIME_BUDGET", value_name = "JCT_WORKER_MAX_TIME_BUDGET",
          value_parser = parse_duration)]
    pub max_time_budget: Option<Duration>,

    /// Keep the trace folders current in this process (`false` where the trace root is not reachable).
    #[arg(long = "project-traces", env = "JCT_WORKER_PROJECT_TRACES", value_name = "JCT_WORKER_PROJECT_TRACES",
          default_value_t = true, action = ArgAction::Set)]
    pub project_traces: bool,
}

impl WorkerArgs {
    /// The worker's settings; `default_trace_root` applies when `JCT_TRACE_ROOT` is unset. Fails with a message
    /// naming the variable.
    pub fn worker_config(&self, default_trace_root: &Path) -> anyhow::Result<WorkerConfig> {
        let defaults = WorkerConfig::default();
        let trace_root = self.traces.trace_root(default_trace_root);
        let exec_command: Vec<String> =
            self.exec_command.as_deref().unwrap_or_default().split_whitespace().map(str::to_owned).collect();
        if self.handler == HandlerKind::Exec && exec_command.is_empty() {
            anyhow::bail!("JCT_WORKER_EXEC_COMMAND: required with JCT_WORKER_HANDLER=exec");
        }
        if self.heartbeat_interval >= self.lease {
            anyhow::bail!("JCT_WORKER_HEARTBEAT_INTERVAL: must be shorter than JCT_WORKER_LEASE");
        }
        if self.backoff_base > self.backoff_max {
            anyhow::bail!("JCT_WORKER_BACKOFF_BASE: must not exceed JCT_WORKER_BACKOFF_MAX");
        }
        let config = WorkerConfig {
            worker_id: self.worker_id.clone().unwrap_or(defaults.worker_id),
            concurrency: self.concurrency as usize,
            lease: self.lease,
            heartbeat_interval: self.heartbeat_interval,
            max_attempts: self.max_attempts,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
            poll_interval: self.poll_interval,
            listen: self.listen,
            handler: self.handler,
            exec_command,
            stub_duration: self.stub_duration,
            trace_root,
            blob_root: self.traces.blob_root.clone(),
            scratch_root: self.scratch_dir.clone(),
            shutdown_grace: self.shutdown_grace,
            max_time_budget: self.max_time_budget,
            project_traces: self.project_traces,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Where the trace folders and blobs live: the worker writes them, `jct projections` rebuilds them.
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Trace folders live in `<root>/<task_id>/` (a path or a `file://` URI). Default: `<JCT_DATA_DIR>/traces`.
    #[arg(long = "trace-root", env = "JCT_TRACE_ROOT", value_name = "JCT_TRACE_ROOT")]
    pub trace_root: Option<String>,

    /// Content-addressed store of handler logs and artifacts. Default: `<trace root>/.blobs`.
    #[arg(long = "blob-root", env = "JCT_BLOB_ROOT", value_name = "JCT_BLOB_ROOT")]
    pub blob_root: Option<PathBuf>,
}

impl TraceArgs {
    /// The trace root, `default` when unset.
    pub fn trace_root(&self, default: &Path) -> PathBuf {
        match &self.trace_root {
            Some(root) => PathBuf::from(root.strip_prefix("file://").unwrap_or(root)),
            None => default.to_path_buf(),
        }
    }

    /// The trace folders projection these settings describe.
    pub fn trace_projection(&self, default_trace_root: &Path) -> projections::trace::TraceProjection {
        worker::trace_projection(&self.trace_root(default_trace_root), self.blob_root.as_deref())
    }
}

/// `250ms`, `30s`, `5m`, `1h`; a bare number is seconds (fractions allowed).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("not a duration: {text:?} (e.g. 500ms, 30s, 5m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?}; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("{text:?}: {error}"))
}
