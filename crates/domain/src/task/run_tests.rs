//! Given/when/then tests of the execution lifecycle (`task::run`): claims, leases, fencing, retries with backoff,
//! time-outs, release, cancellation, and the CWOM facts they carry.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::{json, Value};

use super::lifecycle::{events, TaskStatus};
use super::run::*;
use crate::event::{Action, Actor, EntityKind, NewEvent};

const TASK: &str = "01JTASK0000000000000000000";
const ISSUE: &str = "01JISSUE000000000000000000";
const W1: &str = "worker-1";
const W2: &str = "worker-2";

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + TimeDelta::seconds(seconds)
}

fn stub() -> ExecutorInfo {
    ExecutorInfo { kind: "stub".into(), version: "0.1.0".into() }
}

/// A task history: the enqueue events, then whatever the test appends. Folds only the task's own stream, like
/// the application does.
struct History {
    events: Vec<NewEvent>,
}

impl History {
    fn queued(with_issue: bool) -> History {
        let task = json!({
            "task_id": TASK,
            "objective": "Add a /healthz endpoint",
            "operation": "code_change",
            "constraints": {"time_budget_seconds": 300, "allow_network": false, "allow_secrets": false},
            "status": "pending",
            "queued_at": null,
            "trace_id": "trace-1",
            "cwom_issue_id": if with_issue { json!(ISSUE) } else { Value::Null },
        });
        let raw = |event_type: &str, payload: Value| {
            NewEvent::new(
                crate::event::EventData {
                    stream: crate::event::StreamId::new(EntityKind::Task, TASK),
                    event_type: event_type.into(),
                    schema_version: 1,
                    payload,
                    action: Action::Created,
                    before: None,
                    after: None,
                    note: None,
                },
                Actor::system("test"),
            )
        };
        History {
            events: vec![
                raw(events::TASK_CREATED, json!({ "task": task })),
                raw(events::TASK_ENQUEUED, json!({"task_id": TASK, "queued_at": "2026-01-01T12:00:00.000000Z"})),
            ],
        }
    }

    fn state(&self) -> TaskState {
        let mut state = TaskState::new(TASK);
        let mut version = 0;
        for event in &self.events {
            if event.data.stream.kind == EntityKind::Task {
                version += 1;
                state.apply(version, &event.data.event_type, &event.data.payload).expect("payloads fold");
            }
        }
        state
    }

    fn then(&mut self, new_events: Vec<NewEvent>) -> Vec<NewEvent> {
        self.events.extend(new_events.clone());
        new_events
    }
}

fn cwom() -> CwomContext {
    CwomContext {
        issue_id: ISSUE.into(),
        repo: json!({"kind": "Repo", "id": "01JREPO0000000000000000000", "role": null}),
        issue_status: "planned".into(),
        context_packet: Some(json!({"kind": "ContextPacket", "id": "01JCP00000000000000000000", "summary": "s"})),
        constraint_snapshot: Some(json!({"kind": "ConstraintSnapshot", "id": "01JCS00000000000000000000"})),
    }
}

fn claim<'a>(worker: &'a str, now: DateTime<Utc>, run_id: &'a str, executor: &'a ExecutorInfo) -> Claim<'a> {
    Claim {
        worker_id: worker,
        now,
        lease: TimeDelta::seconds(30),
        max_attempts: 3,
        run_id,
        trace_path: Some("file:///traces/01JTASK0000000000000000000"),
        executor,
        time_budget_seconds: 300.0,
        cwom: None,
    }
}

fn claimed(decision: Result<ClaimDecision, Refusal>) -> Vec<NewEvent> {
    match decision {
        Ok(ClaimDecision::Claimed(new_events)) => new_events,
        other => panic!("expected a claim, got {other:?}"),
    }
}

fn types(new_events: &[NewEvent]) -> Vec<(EntityKind, &str)> {
    new_events.iter().map(|event| (event.data.stream.kind, event.data.event_type.as_str())).collect()
}

fn finish(attempt: u32, worker: &str, now: DateTime<Utc>, outcome: RunOutcome) -> Finish<'_> {
    Finish {
        attempt,
        worker_id: worker,
        now,
        outcome,
        log_digest: Some("sha256:00"),
        retry: RetryPolicy {
            max_attempts: 3,
            backoff_base: TimeDelta::seconds(2),
            backoff_max: TimeDelta::seconds(60),
        },
        jitter: 0.5,
    }
}

fn failed(error: &str) -> RunOutcome {
    RunOutcome::Failed { error: error.into() }
}

#[test]
fn a_queued_task_is_claimed_as_attempt_1_with_a_lease_and_its_run_starts() {
    let history = History::queued(false);
    let executor = stub();
    let new_events = claimed(decide_claim(&history.state(), &claim(W1, t(5), "RUN1", &executor)));

    assert_eq!(types(&new_events), [(EntityKind::Task, events::TASK_CLAIMED), (EntityKind::Task, events::RUN_STARTED)]);
    let payload = &new_events[0].data.payload;
    assert_eq!(payload["attempt"], 1);
    assert_eq!(payload["worker_id"], W1);
    assert_eq!(payload["run_id"], "RUN1");
    assert_eq!(payload["claimed_at"], "2026-01-01T12:00:05.000000Z");
    assert_eq!(payload["lease_expires_at"], "2026-01-01T12:00:35.000000Z");
    assert_eq!(payload["cwom_issue_id"], Value::Null);
    assert_eq!(new_events[0].data.action, Action::StatusChanged);
    assert_eq!(new_events[0].data.before, Some(json!({"status": "queued"})));
    assert_eq!(new_events[0].data.after, Some(json!({"status": "running"})));
    assert_eq!(new_events[0].actor, Actor::system(W1));

    let input = &new_events[1].data.payload["input"];
    assert_eq!(input["task_id"], TASK);
    assert_eq!(input["trace_id"], "trace-1");
    assert_eq!(input["attempt"], 1);
    assert_eq!(input["task"]["objective"], "Add a /healthz endpoint");
    assert!(input["task"].get("status").is_none(), "lifecycle fields are not input");
    assert_eq!(input["context_packet"], Value::Null);
    assert_eq!(input["constraint_snapshot"], Value::Null);
    assert_eq!(input["run_id"], "RUN1");
    let members: Vec<&str> = input.as_object().expect("an object").keys().map(String::as_str).collect();
    assert_eq!(members, ["attempt", "constraint_snapshot", "context_packet", "run_id", "task", "task_id", "trace_id"]);
    assert_eq!(new_events[1].data.payload["executor"], json!({"kind": "stub", "version": "0.1.0"}));
}

#[test]
fn a_claim_with_an_issue_creates_the_run_and_moves_the_issue_to_running() {
    let history = History::queued(true);
    let executor = stub();
    let context = cwom();
    let command = Claim { cwom: Some(&context), ..claim(W1, t(5), "RUN1", &executor) };
    let new_events = claimed(decide_claim(&history.state(), &command));
    assert_eq!(
        types(&new_events),
        [
            (EntityKind::Task, events::TASK_CLAIMED),
            (EntityKind::Task, events::RUN_STARTED),
            (EntityKind::Run, "RunCreated"),
            (EntityKind::Issue, "IssueStatusChanged"),
        ]
    );
    let run = &new_events[2];
    assert_eq!(run.data.stream.id, "RUN1");
    assert_eq!(run.data.action, Action::Created);
    let object = &run.data.payload["object"];
    assert_eq!(object["kind"], "Run");
    assert_eq!(object["status"], "running");
    assert_eq!(object["mode"], "system");
    assert_eq!(object["trace_id"], "trace-1");
    assert_eq!(object["for_issue"], json!({"kind": "Issue", "id": ISSUE, "role": null}));
    assert_eq!(object["artifact_root_uri"], "file:///traces/01JTASK0000000000000000000/");
    assert_eq!(
        object["inputs"]["context_packets"],
        json!([{"kind": "ContextPacket", "id": "01JCP00000000000000000000"}])
    );
    assert_eq!(run.data.after.as_ref(), Some(object));
    let issue = &new_events[3];
    assert_eq!(issue.data.action, Action::StatusChanged);
    assert_eq!(issue.data.payload["changes"]["status"], "running");
    assert_eq!(issue.data.before, Some(json!({"status": "planned"})));
    let input = &new_events[1].data.payload["input"];
    assert_eq!(input["context_packet"]["summary"], "s");
    assert_eq!(input["constraint_snapshot"]["id"], "01JCS00000000000000000000");
}

#[test]
fn a_running_task_under_a_live_lease_is_not_claimed_again() {
    let mut history = History::queued(false);
    let executor = stub();
    history.then(claimed(decide_claim(&history.state(), &claim(W1, t(0), "RUN1", &executor))));
    let refusal = decide_claim(&history.state(), &claim(W2, t(29), "RUN2", &executor)).unwrap_err();
    assert_eq!(refusal, Refusal::Leased { worker_id: W1.into(), until: t(30) });
}

#[test]
fn heartbeats_renew_the_lease_only_for_the_holder_of_the_current_attempt() {
    let mut history = History::queued(false);
    let executor = stub();
    history.then(claimed(decide_claim(&history.state(), &claim(W1, t(0), "RUN1", &executor))));
    let renew = |attempt, worker, now| Renew { attempt, worker_id: worker, now, lease: TimeDelta::seconds(30) };
    history.then(decide_renew(&history.state(), &renew(1, W1, t(20))).unwrap());
    assert_eq!(history.state().current.unwrap().lease_expires_at, t(50));
    // The renewed lease holds past the first one's expiry.
    assert!(matches!(
        decide_claim(&history.state(), &claim(W2, t(40), "RUN2", &executor)),
        Err(Refusal::Leased { .. })
    ));
    assert!(matches!(
        decide_renew(&history.state(), &renew(2, W1, t(21))),
        Err(Refusal::StaleAttempt { attempt: 2, .. })
    ));
    assert!(matches!(decide_renew(&history.state(), &renew(1, W2, t(21))), Err(Refusal::StaleAttempt { .. })));
}

#[test]
fn an_expired_lease_is_claimed_in_a_new_attempt_and_the_dead_attempt_can_never_complete() {
    let mut history = History::queued(true);
    let executor = stub();
    let context = cwom();
    history.then(claimed(decide_claim(
        &history.state(),
        &Claim { cwom: Some(&context), ..claim(W1, t(0), "RUN1", &executor) },
    )));
    let new_events = history.then(claimed(decide_claim(
        &history.state(),
        &Claim { cwom: Some(&context), ..claim(W2, t(31), "RUN2", &executor) },
    )));
    assert_eq!(
        types(&new_events),
        [
            (EntityKind::Task, events::TASK_LEASE_EXPIRED),
            (EntityKind::Run, "RunStatusChanged"),
            (EntityKind::Task, events::TASK_CLAIMED),
            (EntityKind::Task, events::RUN_STARTED),
            (EntityKind::Run, "RunCreated"),
        ],
        "the Issue is already running"
    );
    assert_eq!(new_events[0].data.payload["attempt"], 1);
    assert_eq!(new_events[0].data.payload["worker_id"], W1);
    assert_eq!(new_events[0].data.payload["detected_by"], W2);
    assert_eq!(new_events[1].data.stream.id, "RUN1");
    assert_eq!(new_events[1].data.payload["changes"]["status"], "failed");
    assert_eq!(new_events[2].data.payload["attempt"], 2);
    assert_eq!(new_events[2].data.before, Some(json!({"status": "queued"})));

    let state = history.state();
    assert_eq!(state.status, TaskStatus::Running);
    assert_eq!(state.attempt, 2);
    assert_eq!(state.failures, 1);

    // The first worker comes back: nothing it decides about attempt 1 is accepted.
    for outcome in [RunOutcome::Succeeded { outputs: json!({}) }, failed("late")] {
        assert!(matches!(
            decide_finish(&state, &finish(1, W1, t(40), outcome)),
            Err(Refusal::StaleAttempt { attempt: 1, current: Some(2), status: TaskStatus::Running })
        ));
    }
    assert!(decide_artifacts(&state, 1, W1, t(40), &[]).is_err());
    assert!(decide_release(
        &state,
        &Release { attempt: 1, worker_id: W1, now: t(40), reason: "shutdown", log_digest: None }
    )
    .is_err());
    // The new attempt completes.
    let done = decide_finish(&state, &finish(2, W2, t(41), RunOutcome::Succeeded { outputs: json!({}) })).unwrap();
    assert_eq!(done[0].data.event_type, events::TASK_COMPLETED);
}

#[test]
fn an_expired_lease_on_the_last_allowed_attempt_fails_the_task() {
    let mut history = History::queued(false);
    let executor = stub();
    let short = |worker, now, run| Claim { max_attempts: 2, ..claim(worker, now, run, &executor) };
    history.then(claimed(decide_claim(&history.state(), &short(W1, t(0), "RUN1"))));
    history.then(claimed(decide_claim(&history.state(), &short(W2, t(31), "RUN2"))));
    let Ok(ClaimDecision::Exhausted(new_events)) = decide_claim(&history.state(), &short(W1, t(62), "RUN3")) else {
        panic!("expected the task to fail");
    };
    history.then(new_events.clone());
    assert_eq!(
        types(&new_events),
        [(EntityKind::Task, events::TASK_LEASE_EXPIRED), (EntityKind::Task, events::TASK_FAILED)]
    );
    assert_eq!(new_events[1].data.payload["reason"], "lease_expired");
    assert_eq!(new_events[1].data.payload["failures"], 2);
    let state = history.state();
    assert_eq!(state.status, TaskStatus::Failed);
    assert!(state.last_error.unwrap().contains("lease of worker worker-2 expired"));
}

#[test]
fn success_completes_the_task_and_ends_the_run_done_with_its_artifacts() {
    let mut history = History::queued(true);
    let executor = stub();
    let context = cwom();
    history.then(claimed(decide_claim(
        &history.state(),
        &Claim { cwom: Some(&context), ..claim(W1, t(0), "RUN1", &executor) },
    )));
    let artifact = ArtifactFacts {
        artifact_id: "ART1".into(),
        path: "output.md".into(),
        uri: "file:///traces/T/artifacts/output.md".into(),
        digest: "sha256:ab".into(),
        size_bytes: 12,
        media_type: "text/markdown".into(),
        artifact_type: "doc".into(),
        title: "output.md".into(),
    };
    let produced = history.then(decide_artifacts(&history.state(), 1, W1, t(1), &[artifact]).unwrap());
    assert_eq!(
        types(&produced),
        [(EntityKind::Task, events::ARTIFACT_PRODUCED), (EntityKind::Artifact, "ArtifactCreated")]
    );
    let object = &produced[1].data.payload["object"];
    assert_eq!(object["produced_by"], json!({"kind": "Run", "id": "RUN1", "role": null}));
    assert_eq!(object["digest"], "sha256:ab");
    assert_eq!(object["size_bytes"], 12);
    assert_eq!(object["trace_id"], "trace-1");

    let outputs = json!({"message": "done", "n": 1});
    let new_events =
        history.then(decide_finish(&history.state(), &finish(1, W1, t(3), RunOutcome::Succeeded { outputs })).unwrap());
    assert_eq!(
        types(&new_events),
        [
            (EntityKind::Task, events::TASK_COMPLETED),
            (EntityKind::Run, "RunStatusChanged"),
            (EntityKind::Issue, "IssueStatusChanged"),
        ]
    );
    assert_eq!(new_events[0].data.payload["duration_s"], 3.0);
    assert_eq!(new_events[0].data.payload["outputs"]["n"], 1);
    assert_eq!(new_events[0].data.payload["log_digest"], "sha256:00");
    let changes = &new_events[1].data.payload["changes"];
    assert_eq!(changes["status"], "done");
    assert_eq!(changes["failure"], Value::Null);
    assert_eq!(changes["outputs"]["artifacts"], json!([{"kind": "Artifact", "id": "ART1"}]));
    assert_eq!(changes["outputs"]["result_summary"], "done");
    assert_eq!(changes["telemetry"]["duration_s"], 3.0);
    assert_eq!(new_events[2].data.payload["changes"]["status"], "done");
    assert_eq!(new_events[2].data.before, Some(json!({"status": "running"})));
    assert_eq!(history.state().status, TaskStatus::Completed);
    // Terminal: no claim, no cancel.
    assert_eq!(
        decide_claim(&history.state(), &claim(W2, t(100), "RUN2", &executor)),
        Err(Refusal::Terminal(TaskStatus::Completed))
    );
    let actor = Actor::system("api");
    assert_eq!(
        decide_cancel(&history.state(), &Cancel { now: t(100), actor: &actor, reason: None }),
        Err(Refusal::Terminal(TaskStatus::Completed))
    );
}

#[test]
fn a_failure_is_retried_after_an_exponential_backoff_then_succeeds() {
    let mut history = History::queued(false);
    let executor = stub();
    history.then(claimed(decide_claim(&history.state(), &claim(W1, t(0), "RUN1", &executor))));
    let new_events = history.then(decide_finish(&history.state(), &finish(1, W1, t(1), failed("boom"))).unwrap());
    assert_eq!(types(&new_events), [(EntityKind::Task, events::TASK_RETRY_SCHEDULED)]);
    let payload = &new_events[0].data.payload;
    assert_eq!(payload["reason"], "failed");
    assert_eq!(payload["error"], "boom");
    assert_eq!(payload["failures"], 1);
    assert_eq!(payload["next_attempt"], 2);
    // base 2 s, first retry, jitter 0.5: 1 s + 0.5 × 1 s.
    assert_eq!(payload["retry_at"], "2026-01-01T12:00:02.500000Z");
    let state = history.state();
    assert_eq!(state.status, TaskStatus::Queued);
    assert_eq!(state.last_error.as_deref(), Some("boom"));

    assert_eq!(
        decide_claim(&state, &claim(W2, t(2), "RUN2", &executor)),
        Err(Refusal::NotDue(t(2) + TimeDelta::milliseconds(500)))
    );
    let new_events = history.then(claimed(decide_claim(&state, &claim(W2, t(3), "RUN2", &executor))));
    assert_eq!(new_events[0].data.payload["attempt"], 2);
    assert_eq!(new_events[1].data.payload["input"]["attempt"], 2);
    history.then(
        decide_finish(&history.state(), &finish(2, W2, t(4), RunOutcome::Succeeded { outputs: json!({}) })).unwrap(),
    );
    let state = history.state();
    assert_eq!(state.status, TaskStatus::Completed);
    assert_eq!(state.last_error, None);
    assert_eq!(state.failures, 1);
}

#[test]
fn retries_exhausted_fail_the_task_with_the_last_error() {
    let mut history = History::queued(true);
    let executor = stub();
    let context = cwom();
    for attempt in 1..=3_u32 {
        let now = t(i64::from(attempt) * 100);
        let run_id = format!("RUN{attempt}");
        history.then(claimed(decide_claim(
            &history.state(),
            &Claim { cwom: Some(&context), ..claim(W1, now, &run_id, &executor) },
        )));
        let error = format!("error {attempt}");
        let new_events = history.then(
            decide_finish(&history.state(), &finish(attempt, W1, now + TimeDelta::seconds(1), failed(&error))).unwrap(),
        );
        if attempt < 3 {
            assert_eq!(
                types(&new_events),
                [(EntityKind::Task, events::TASK_RETRY_SCHEDULED), (EntityKind::Run, "RunStatusChanged")]
            );
        } else {
            assert_eq!(
                types(&new_events),
                [
                    (EntityKind::Task, events::TASK_FAILED),
                    (EntityKind::Run, "RunStatusChanged"),
                    (EntityKind::Issue, "IssueStatusChanged"),
                ]
            );
            assert_eq!(new_events[0].data.payload["error"], "error 3");
            assert_eq!(new_events[0].data.payload["failures"], 3);
            assert_eq!(new_events[1].data.payload["changes"]["failure"]["message"], "error 3");
            assert_eq!(new_events[2].data.payload["changes"]["status"], "failed");
        }
        assert_eq!(new_events[1].data.stream.id, run_id);
    }
    let state = history.state();
    assert_eq!(state.status, TaskStatus::Failed);
    assert_eq!(state.last_error.as_deref(), Some("error 3"));
}

#[test]
fn a_timed_out_attempt_is_a_failed_attempt_retried_or_failing_the_task_with_a_timeout_error() {
    let mut history = History::queued(false);
    let executor = stub();
    let timed_out = || RunOutcome::TimedOut { time_budget_seconds: 300.0 };
    history.then(claimed(decide_claim(&history.state(), &claim(W1, t(0), "RUN1", &executor))));
    let new_events = history.then(decide_finish(&history.state(), &finish(1, W1, t(300), timed_out())).unwrap());
    assert_eq!(
        types(&new_events),
        [(EntityKind::Task, events::TASK_TIMED_OUT), (EntityKind::Task, events::TASK_RETRY_SCHEDULED)]
    );
    assert_eq!(new_events[0].data.payload["time_budget_seconds"], 300.0);
    assert_eq!(new_events[0].data.payload["duration_s"], 300.0);
    assert_eq!(new_events[1].data.payload["reason"], "timed_out");

    let mut last = Vec::new();
    for attempt in 2..=3 {
        let now = t(1000 * i64::from(attempt));
        history.then(claimed(decide_claim(&history.state(), &claim(W1, now, "RUN", &executor))));
        last = history.then(
            decide_finish(&history.state(), &finish(attempt, W1, now + TimeDelta::seconds(300), timed_out())).unwrap(),
        );
    }
    assert_eq!(types(&last), [(EntityKind::Task, events::TASK_TIMED_OUT), (EntityKind::Task, events::TASK_FAILED)]);
    let state = history.state();
    assert_eq!(state.status, TaskStatus::Failed);
    assert!(state.last_error.unwrap().contains("timed out"));
}

#[test]
fn a_released_attempt_is_queued_again_at_once_and_is_not_a_failure() {
    let mut history = History::queued(true);
    let executor = stub();
    let context = cwom();
    history.then(claimed(decide_claim(
        &history.state(),
        &Claim { cwom: Some(&context), ..claim(W1, t(0), "RUN1", &executor) },
    )));
    let release = Release { attempt: 1, worker_id: W1, now: t(10), reason: "worker shutdown", log_digest: None };
    let new_events = history.then(decide_release(&history.state(), &release).unwrap());
    assert_eq!(types(&new_events), [(EntityKind::Task, events::TASK_RELEASED), (EntityKind::Run, "RunStatusChanged")]);
    assert_eq!(new_events[1].data.payload["changes"]["status"], "canceled");
    let state = history.state();
    assert_eq!(state.status, TaskStatus::Queued);
    assert_eq!(state.failures, 0);
    assert_eq!(state.available_at, Some(t(10)));
    let new_events = claimed(decide_claim(&state, &claim(W2, t(10), "RUN2", &executor)));
    assert_eq!(new_events[0].data.payload["attempt"], 2);
}

#[test]
fn cancelling_a_queued_task_cancels_it_at_once() {
    let mut history = History::queued(true);
    let actor = Actor::system("task-cancel");
    let command = Cancel { now: t(1), actor: &actor, reason: Some("not needed") };
    let new_events = history.then(decide_cancel(&history.state(), &command).unwrap());
    assert_eq!(
        types(&new_events),
        [(EntityKind::Task, events::TASK_CANCELLED), (EntityKind::Issue, "IssueStatusChanged")]
    );
    assert_eq!(new_events[0].data.payload["attempt"], Value::Null);
    assert_eq!(new_events[0].data.payload["reason"], "not needed");
    assert_eq!(new_events[0].data.before, Some(json!({"status": "queued"})));
    assert_eq!(new_events[1].data.payload["changes"]["status"], "canceled");
    assert_eq!(new_events[1].data.before, Some(json!({"status": "planned"})));
    let state = history.state();
    assert_eq!(state.status, TaskStatus::Cancelled);
    let executor = stub();
    assert_eq!(
        decide_claim(&state, &claim(W1, t(2), "RUN1", &executor)),
        Err(Refusal::Terminal(TaskStatus::Cancelled))
    );
    assert_eq!(decide_cancel(&state, &command), Err(Refusal::Terminal(TaskStatus::Cancelled)));
}

#[test]
fn cancelling_a_running_task_ends_its_run_and_fences_its_worker_out() {
    let mut history = History::queued(true);
    let executor = stub();
    let context = cwom();
    history.then(claimed(decide_claim(
        &history.state(),
        &Claim { cwom: Some(&context), ..claim(W1, t(0), "RUN1", &executor) },
    )));
    let actor = Actor::system("task-cancel");
    let new_events =
        history.then(decide_cancel(&history.state(), &Cancel { now: t(5), actor: &actor, reason: None }).unwrap());
    assert_eq!(
        types(&new_events),
        [
            (EntityKind::Task, events::TASK_CANCELLED),
            (EntityKind::Run, "RunStatusChanged"),
            (EntityKind::Issue, "IssueStatusChanged"),
        ]
    );
    assert_eq!(new_events[0].data.payload["attempt"], 1);
    assert_eq!(new_events[1].data.payload["changes"]["status"], "canceled");
    assert_eq!(new_events[2].data.before, Some(json!({"status": "running"})));
    let state = history.state();
    assert!(matches!(
        decide_finish(&state, &finish(1, W1, t(6), RunOutcome::Succeeded { outputs: json!({}) })),
        Err(Refusal::StaleAttempt { status: TaskStatus::Cancelled, .. })
    ));
    assert!(
        decide_renew(&state, &Renew { attempt: 1, worker_id: W1, now: t(6), lease: TimeDelta::seconds(30) }).is_err()
    );
}

#[test]
fn nothing_is_decided_for_a_task_that_does_not_exist() {
    let state = TaskState::new(TASK);
    let executor = stub();
    let actor = Actor::system("x");
    assert_eq!(decide_claim(&state, &claim(W1, t(0), "R", &executor)), Err(Refusal::NotFound));
    assert_eq!(decide_cancel(&state, &Cancel { now: t(0), actor: &actor, reason: None }), Err(Refusal::NotFound));
    assert!(decide_finish(&state, &finish(1, W1, t(0), failed("x"))).is_err());
}

#[test]
fn the_backoff_doubles_up_to_its_cap_and_jitter_spreads_the_upper_half() {
    let policy =
        RetryPolicy { max_attempts: 10, backoff_base: TimeDelta::seconds(1), backoff_max: TimeDelta::seconds(10) };
    let ms = |failures, jitter| policy.delay(failures, jitter).num_milliseconds();
    assert_eq!([ms(1, 1.0), ms(2, 1.0), ms(3, 1.0), ms(4, 1.0), ms(5, 1.0)], [1000, 2000, 4000, 8000, 10_000]);
    assert_eq!([ms(1, 0.0), ms(3, 0.0), ms(9, 0.0)], [500, 2000, 5000]);
    assert_eq!(ms(2, 0.25), 1250);
    assert_eq!(ms(2, 7.0), 2000, "jitter is clamped");
    assert_eq!(ms(2, f64::NAN), 1000);
    assert_eq!(ms(1000, 1.0), 10_000, "no overflow");
}

#[test]
fn payloads_read_back_as_written() {
    let mut history = History::queued(false);
    let executor = stub();
    let new_events = history.then(claimed(decide_claim(&history.state(), &claim(W1, t(0), "RUN1", &executor))));
    let payload: TaskClaimed = serde_json::from_value(new_events[0].data.payload.clone()).unwrap();
    assert_eq!(payload.lease_expires_at, t(30));
    assert_eq!(serde_json::to_value(&payload).unwrap(), new_events[0].data.payload);
    let state = history.state();
    assert_eq!(state.version, 4);
    assert_eq!(state.current.unwrap().started_at, Some(t(0)));
}
