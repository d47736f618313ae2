//! Handlers: `stub` (a deterministic imitation of work) and `exec` (an operator-configured program). Both work in
//! a scratch directory of their own (`input.json`, `output.json`, `artifacts/`), never in the trace folder, and
//! stop promptly when `kill` is cancelled.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::task::lifecycle::format_ts;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWriteExt as _, BufReader};
use tokio_util::sync::CancellationToken;

use crate::{HandlerKind, WorkerConfig};

/// What a handler is given.
pub(crate) struct HandlerContext<'a> {
    pub config: &'a WorkerConfig,
    pub scratch: &'a Path,
    pub input_path: &'a Path,
    pub input: &'a Value,
    pub input_bytes: &'a [u8],
    pub task_id: &'a str,
    pub run_id: &'a str,
    pub attempt: u32,
    pub trace_id: Option<&'a str>,
    pub now: &'a (dyn Fn() -> DateTime<Utc> + Sync),
}

impl HandlerContext<'_> {
    pub fn artifacts_dir(&self) -> PathBuf {
        self.scratch.join("artifacts")
    }

    pub fn output_path(&self) -> PathBuf {
        self.scratch.join("output.json")
    }
}

/// How the handler ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HandlerExit {
    Succeeded {
        outputs: Value,
    },
    Failed {
        error: String,
    },
    /// Stopped through `kill`.
    Killed,
}

pub(crate) struct HandlerResult {
    pub exit: HandlerExit,
    /// The log: one line per line of output, each with its time.
    pub log: Vec<u8>,
    /// Artifacts made in memory (`path` relative to `artifacts/`, content). A program's artifacts are files in
    /// its scratch `artifacts/` directory instead.
    pub artifacts: Vec<(String, Vec<u8>)>,
}

/// Runs the configured handler to its end, or until `kill` is cancelled.
pub(crate) async fn execute(context: &HandlerContext<'_>, kill: &CancellationToken) -> HandlerResult {
    match context.config.handler {
        HandlerKind::Stub => stub(context, kill).await,
        HandlerKind::Exec => exec(context, kill).await,
    }
}

/// A log being written, shared by the readers of a program's output streams.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn line(&self, at: DateTime<Utc>, stream: &str, text: &str) {
        let mut log = self.0.lock().expect("the log lock is never poisoned");
        log.extend_from_slice(format!("[{}] {stream}| {text}\n", format_ts(at)).as_bytes());
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().expect("the log lock is never poisoned"))
    }
}

async fn stub(context: &HandlerContext<'_>, kill: &CancellationToken) -> HandlerResult {
    let log = Log::default();
    let now = context.now;
    let task = &context.input["task"];
    let knobs = &task["inputs"]["stub"];
    let sleep = context.config.stub_duration + Duration::from_millis(knobs["sleep_ms"].as_u64().unwrap_or(0));
    log.line(
        now(),
        "stub",
        &format!(
            "task {} attempt {}: {} on {}",
            context.task_id,
            context.attempt,
            task["operation"].as_str().unwrap_or("?"),
            task["target"]["repo"].as_str().unwrap_or("?")
        ),
    );
    if !sleep.is_zero() {
        log.line(now(), "stub", &format!("simulating work for {:.3} s", sleep.as_secs_f64()));
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = kill.cancelled() => {
                log.line(now(), "stub", "stopped");
                return HandlerResult { exit: HandlerExit::Killed, log: log.take(), artifacts: Vec::new() };
            }
        }
    }
    let fail_attempts = knobs["fail_attempts"].as_u64().unwrap_or(0);
    if u64::from(context.attempt) <= fail_attempts {
        let error = knobs["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("stub: simulated failure of attempt {}", context.attempt));
        log.line(now(), "stub", &error);
        return HandlerResult { exit: HandlerExit::Failed { error }, log: log.take(), artifacts: Vec::new() };
    }
    // The stub works in memory: no scratch directory; its one artifact is handed over as bytes.
    let report = stub_report(context);
    log.line(now(), "stub", "wrote artifacts/output.md");
    let outputs = json!({
        "message": "Stub execution completed successfully",
        "artifact_path": "artifacts/output.md",
        "summary": {
            "task_id": context.task_id,
            "attempt": context.attempt,
            "operation": task["operation"],
            "objective": task["objective"],
            "target": task["target"],
            "has_context_packet": !context.input["context_packet"].is_null(),
        },
    });
    HandlerResult {
        exit: HandlerExit::Succeeded { outputs },
        log: log.take(),
        artifacts: vec![("output.md".to_owned(), report.into_bytes())],
    }
}

/// The stub's Markdown report (the original's `artifacts/output.md`), from the input only.
fn stub_report(context: &HandlerContext<'_>) -> String {
    let task = &context.input["task"];
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let path = text(&task["target"]["path"]);
    let allowed = |flag: &Value| if flag.as_bool().unwrap_or(false) { "allowed" } else { "denied" };
    format!(
        "# Stub Execution Result\n\n\
         - Task ID: {}\n- Run ID: {}\n- Attempt: {}\n- Operation: {}\n\n\
         ## Objective\n\n{}\n\n\
         ## Target\n\n- Repository: {}\n- Ref: {}\n- Path: {}\n\n\
         ## Result\n\nThis is a stub execution: no work was done on the repository.\n\n\
         ## Constraints Applied\n\n- Time budget: {} s\n- Network: {}\n- Secrets: {}\n\n\
         Generated by the JCT stub handler {}\n",
        context.task_id,
        context.run_id,
        context.attempt,
        text(&task["operation"]),
        text(&task["objective"]),
        text(&task["target"]["repo"]),
        text(&task["target"]["ref"]),
        if path.is_empty() { "(root)".to_owned() } else { path },
        task["constraints"]["time_budget_seconds"],
        allowed(&task["constraints"]["allow_network"]),
        allowed(&task["constraints"]["allow_secrets"]),
        crate::WORKER_VERSION,
    )
}

async fn exec(context: &HandlerContext<'_>, kill: &CancellationToken) -> HandlerResult {
    let log = Log::default();
    let now = context.now;
    let command = &context.config.exec_command;
    let mut process = tokio::process::Command::new(&command[0]);
    process
        .args(&command[1..])
        .arg(context.input_path)
        .current_dir(context.scratch)
        .env("JCT_INPUT", context.input_path)
        .env("JCT_OUTPUT", context.output_path())
        .env("JCT_ARTIFACTS_DIR", context.artifacts_dir())
        .env("JCT_TASK_ID", context.task_id)
        .env("JCT_RUN_ID", context.run_id)
        .env("JCT_ATTEMPT", context.attempt.to_string())
        .env("JCT_TRACE_ID", context.trace_id.unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a kill reaches whatever it started.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match process.spawn() {
        Ok(child) => child,
        Err(error) => {
            let error = format!("could not start {:?}: {error}", command[0]);
            log.line(now(), "worker", &error);
            return HandlerResult { exit: HandlerExit::Failed { error }, log: log.take(), artifacts: Vec::new() };
        }
    };
    let group = child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32));
    let kill_group = || {
        if let Some(group) = group {
            // ESRCH (already gone) is fine.
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    };
    let mut readers = Vec::new();
    let last_stderr = Arc::new(Mutex::new(String::new()));
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(read_lines(stdout, log.clone(), "stdout", None, clock(now))));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(read_lines(stderr, log.clone(), "stderr", Some(last_stderr.clone()), clock(now))));
    }
    if let Some(mut stdin) = child.stdin.take() {
        let input = context.input_bytes.to_vec();
        // A program that does not read stdin closes it: not an error.
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        });
    }
    let status = tokio::select! {
        status = child.wait() => Some(status),
        () = kill.cancelled() => None,
    };
    // Whatever it left running goes too; its output pipes then close.
    kill_group();
    let status = match status {
        Some(status) => status,
        None => {
            let _ = child.wait().await;
            for reader in readers {
                let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
            }
            log.line(now(), "worker", "handler stopped (process group killed)");
            return HandlerResult { exit: HandlerExit::Killed, log: log.take(), artifacts: Vec::new() };
        }
    };
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    }
    let exit = match status {
        Ok(status) if status.success() => match tokio::fs::read(context.output_path()).await {
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(outputs) => HandlerExit::Succeeded { outputs },
                Err(error) => HandlerExit::Failed { error: format!("output.json is not valid JSON: {error}") },
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => HandlerExit::Succeeded { outputs: json!({}) },
            Err(error) => HandlerExit::Failed { error: format!("could not read output.json: {error}") },
        },
        Ok(status) => {
            let what = match status.code() {
                Some(code) => format!("exit status {code}"),
                None => "killed by a signal".to_owned(),
            };
            let last = last_stderr.lock().expect("never poisoned").clone();
            HandlerExit::Failed { error: if last.is_empty() { what } else { format!("{what}: {last}") } }
        }
        Err(error) => HandlerExit::Failed { error: format!("could not wait for the handler: {error}") },
    };
    if let HandlerExit::Failed { error } = &exit {
        log.line(now(), "worker", error);
    }
    HandlerResult { exit, log: log.take(), artifacts: Vec::new() }
}

type SharedClock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// A clock the reader tasks can own: the worker's clock at spawn time, advanced by the local clock.
fn clock(now: &(dyn Fn() -> DateTime<Utc> + Sync)) -> SharedClock {
    let offset = now() - Utc::now();
    Arc::new(move || {
        let at = Utc::now() + offset;
        DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
    })
}

async fn read_lines(
    stream: impl AsyncRead + Unpin,
    log: Log,
    name: &'static str,
    last_line: Option<Arc<Mutex<String>>>,
    now: SharedClock,
) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                log.line(now(), name, text);
                if let Some(last) = &last_line {
                    if !text.trim().is_empty() {
                        *last.lock().expect("never poisoned") = text.chars().take(1000).collect();
                    }
                }
            }
        }
    }
}
