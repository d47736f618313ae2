//! Worker use cases: claim due tasks exactly once per attempt, and append each later fact of an attempt (lease
//! renewals, artifacts, the end) fenced by the task stream's version.
//!
//! A claim reads due tasks of `task_queue` with their streams in one statement, folds each task's stream, decides
//! (`domain::task::run::decide_claim`) and appends `TaskClaimed` + `RunStarted` (+ the CWOM Run) with
//! `ExpectedVersion::Exactly` at the version it decided on. That expectation is the fence: it is checked under the
//! append lock in the transaction that appends `TaskClaimed`, so of any number of claimers working from the same
//! (or a stale) row exactly one claims the attempt and the others get a conflict. No transaction stays open while a
//! handler runs: everything after the claim is a separate, fenced append ([`append_decision`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};
use domain::event::{Action, EntityKind, NewEvent, StreamId};
use domain::task::run::{decide_claim, Claim, ClaimDecision, CwomContext, ExecutorInfo, Refusal, TaskState};
use projections::queue;
use serde_json::Value;
use sqlx::PgConnection;
use store::{AppendError, Appended, ExpectedVersion, NewBlob, NewCommand, RecordedEvent};

use crate::App;

mod ends;

pub use ends::{CarriedEnds, EndsAwaitingClaim};

/// How long [`catch_up_queue`] waits for another applier of the queue projection before giving up this time.
const CATCH_UP_PATIENCE: Duration = Duration::from_millis(50);

/// Moves the queue projection's checkpoint on (applying what it has not applied yet), unless another process is
/// at it. Claims do not need it (they admit new tasks themselves); workers call it now and then so the
/// checkpoint keeps up where no projector runs.
pub async fn catch_up_queue(app: &App) -> anyhow::Result<usize> {
    queue::catch_up_briefly(app.pool(), app.upcasters(), CATCH_UP_PATIENCE).await
}

/// What a worker asks for when it claims.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub worker_id: &'a str,
    /// At most this many tasks.
    pub limit: usize,
    pub lease: Duration,
    /// Failed attempts allowed per task (an expired lease is one).
    pub max_attempts: u32,
    /// The absolute trace root: `trace_path` is `file://<root>/<task_id>`.
    pub trace_root: Option<&'a Path>,
    pub executor: &'a ExecutorInfo,
    /// Caps every task's time budget.
    pub max_time_budget: Option<Duration>,
    /// Tasks this process is claiming right now, in other claims still appending: this claim's read skips them
    /// (picking one again could only lose the race), and adds its own picks while its appends are in flight. Lets a
    /// worker start a claim while an earlier one is still being appended.
    pub claiming: Option<&'a Mutex<HashSet<String>>>,
    /// Read ahead: the worker's slots are all busy, so after its read this claim waits up to this long for an end
    /// (a slot freeing), then claims at most as many tasks as ends arrived, in their batch. If none arrives it
    /// claims nothing ([`ClaimBatch::gave_up`]). Needs the ends carried ([`claim`]).
    pub read_ahead: Option<Duration>,
}

/// Tasks a claim picked, in [`ClaimRequest::claiming`] until dropped (its appends have answered).
struct Claiming<'a> {
    set: &'a Mutex<HashSet<String>>,
    task_ids: Vec<String>,
}

impl<'a> Claiming<'a> {
    fn register(set: &'a Mutex<HashSet<String>>, task_ids: Vec<String>) -> Claiming<'a> {
        set.lock().expect("not poisoned").extend(task_ids.iter().cloned());
        Claiming { set, task_ids }
    }
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        let mut set = self.set.lock().expect("not poisoned");
        for task_id in &self.task_ids {
            set.remove(task_id);
        }
    }
}

/// A task this worker now holds.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub task_id: String,
    pub trace_id: Option<String>,
    pub attempt: u32,
    pub run_id: String,
    /// What the handler gets (`input.json`), exactly as recorded in `RunStarted`.
    pub input: Value,
    pub time_budget: Duration,
    pub lease_expires_at: DateTime<Utc>,
    /// The task's state after the claim: the base of every later decision about this attempt.
    pub state: TaskState,
    /// Position of the claim's last event.
    pub position: i64,
}

/// What one claim transaction did.
#[derive(Debug, Clone, Default)]
pub struct ClaimBatch {
    /// The database's clock at the claim (workers keep their timestamps on it).
    pub now: Option<DateTime<Utc>>,
    /// The database's clock minus this host's, measured around the clock read (workers stamp their own facts
    /// on the database's clock).
    pub clock_offset: Option<TimeDelta>,
    pub claimed: Vec<ClaimedTask>,
    /// Tasks whose worker died on their last allowed attempt: failed instead of claimed.
    pub exhausted: usize,
    /// Tasks picked but refused (not due after all, leased, finished) or lost to another claimer.
    pub skipped: usize,
    /// A read-ahead claim found tasks but no slot freed within its patience: it claimed none.
    pub gave_up: bool,
}

/// How many tasks a claim draws its candidates from, per task it wants: the due longest of them, at random, so
/// that claimers in several processes seldom pick the same task (a task two claimers pick goes to one of them, the
/// other's append conflicts).
const CANDIDATE_WINDOW_FACTOR: usize = 4;

/// How many times [`claim`] picks again when every task it picked was taken by another claimer first.
const MAX_CLAIM_ROUNDS: usize = 5;

/// Claims up to `request.limit` due tasks: one read of the candidates and their streams
/// ([`queue::claim_candidates`]), a decision per task, and one append per claim through the store's batching task
/// (claims of one process, and the other appends waiting with them, share a transaction). No row is locked and no
/// transaction stays open: each claim's append expects the task's stream at the version it was decided on, so of
/// two claimers that picked the same task one claims it and the other gets a conflict, and skips it. An empty
/// batch means nothing was claimable, not that every candidate was lost to a race: those are picked again.
///
/// `ends`: the ends of the worker's attempts that arrive until this claim's read is done go in its batch (one commit
/// for ends and claims; [`EndsAwaitingClaim::carry`]).
pub async fn claim(app: &App, request: &ClaimRequest<'_>, ends: Option<CarriedEnds>) -> anyhow::Result<ClaimBatch> {
    // A read-ahead claims one task per end it carries: without ends it could never claim anything.
    anyhow::ensure!(request.read_ahead.is_none() || ends.is_some(), "a claim reading ahead must carry the ends");
    let mut batch = ClaimBatch::default();
    // Only the first round carries ends: the others follow a lost race at once.
    let mut reader = ends;
    // A read-ahead's slots: one per end its first round took, until claimed.
    let mut freed = None;
    for _ in 0..MAX_CLAIM_ROUNDS {
        let lost = claim_round(app, request, &mut batch, reader.take(), &mut freed).await?;
        if !batch.claimed.is_empty() || batch.exhausted > 0 || lost == 0 {
            break;
        }
    }
    Ok(batch)
}

/// One round of [`claim`]; returns how many claims it lost to other claimers. `reader`: the ends this round takes
/// after its read and appends with its claims. `freed`: for a read-ahead, the slots the ends it took freed and
/// its claims have not filled yet (set by the round that takes the ends).
async fn claim_round(
    app: &App,
    request: &ClaimRequest<'_>,
    batch: &mut ClaimBatch,
    reader: Option<CarriedEnds>,
    freed: &mut Option<usize>,
) -> anyhow::Result<usize> {
    let exclude: Vec<String> =
        request.claiming.map(|set| set.lock().expect("not poisoned").iter().cloned().collect()).unwrap_or_default();
    let local_before = Utc::now();
    let candidates =
        queue::claim_candidates(app.pool(), request.limit, request.limit * CANDIDATE_WINDOW_FACTOR, &exclude).await?;
    let local_after = Utc::now();
    let read_at = std::time::Instant::now();
    let clock_offset = candidates.now - (local_before + (local_after - local_before) / 2);
    batch.now = Some(candidates.now);
    batch.clock_offset = Some(clock_offset);
    let mut task_ids = candidates.task_ids;
    if let (Some(patience), Some(reader)) = (request.read_ahead, &reader) {
        // The picks are not reserved while waiting: a claim for a slot that is free takes them first if it picks
        // them too (this one's append then conflicts), so a due task never waits for a slot to free.
        if !task_ids.is_empty() && !reader.wait_for_end(patience).await {
            batch.gave_up = true;
            task_ids.clear();
        }
    }
    // The decisions' clock: the database's, moved on by the wait (a task due at the read is due still).
    let now = candidates.now + TimeDelta::from_std(read_at.elapsed()).unwrap_or_default();
    let lease = TimeDelta::from_std(request.lease).context("lease out of range")?;

    struct Candidate {
        state: TaskState,
        run_id: String,
        time_budget: Duration,
        exhausted: bool,
    }
    let mut decided = Vec::new();
    let mut stale_rows = Vec::new();
    for (task_id, loaded) in task_ids.iter().zip(load_candidates(app, &task_ids, candidates.events).await?) {
        let Loaded { events, state, cwom, issue_version } = loaded;
        let stream = StreamId::new(EntityKind::Task, task_id);
        let run_id = ulid::Ulid::new().to_string();
        let mut time_budget = Duration::from_secs(u64::from(state.time_budget_seconds));
        if let Some(cap) = request.max_time_budget {
            time_budget = time_budget.min(cap);
        }
        let trace_path = request.trace_root.map(|root| projections::trace::file_uri(&root.join(task_id)));
        let decision = decide_claim(
            &state,
            &Claim {
                worker_id: request.worker_id,
                now,
                lease,
                max_attempts: request.max_attempts,
                run_id: &run_id,
                trace_path: trace_path.as_deref(),
                executor: request.executor,
                time_budget_seconds: time_budget.as_secs_f64(),
                cwom: cwom.as_ref(),
            },
        );
        let (new_events, exhausted) = match decision {
            Ok(ClaimDecision::Claimed(new_events)) => (new_events, false),
            Ok(ClaimDecision::Exhausted(new_events)) => (new_events, true),
            Err(refusal) => {
                // The row was stale (the projector had not applied the stream's latest events yet): bring it up
                // to date from the stream, so it stops coming back.
                tracing::debug!(task_id, %refusal, "queue row not claimable");
                stale_rows.extend(events);
                batch.skipped += 1;
                continue;
            }
        };
        // The Issue's version as read tells the appender where the stream is if it does not remember it (the task
        // was enqueued by another process): the batch then goes without a read under the lock. It is no
        // condition: the Issue is not fenced, as before.
        let versions_read = issue_version
            .filter(|(issue, _)| new_events.iter().any(|event| event.data.stream == *issue))
            .into_iter()
            .collect();
        let command = NewCommand {
            events: new_events,
            expected: vec![(stream, ExpectedVersion::Exactly(state.version))],
            versions_read,
            idempotency_key: None,
            trace_id: state.trace_id.clone(),
            correlation_id: state.trace_id.clone(),
            causation_id: None,
            blobs: Vec::new(),
        };
        decided.push((Candidate { state, run_id, time_budget, exhausted }, command));
    }
    if !stale_rows.is_empty() {
        let mut conn = app.pool().acquire().await?;
        queue::apply_inline(&mut conn, &stale_rows).await?;
    }

    // The ends that arrived while this claim read go first in its batch (one commit for both); a read-ahead claims a
    // task per end, for the slot it freed.
    let (end_commands, taken_ends) = match reader {
        Some(reader) => {
            let (commands, taken) = reader.take();
            (commands, Some(taken))
        }
        None => (Vec::new(), None),
    };
    if request.read_ahead.is_some() {
        let slots = *freed.get_or_insert(end_commands.len());
        decided.truncate(slots);
    }
    let _claiming = request.claiming.map(|set| {
        Claiming::register(
            set,
            decided.iter().map(|(candidate, _): &(Candidate, NewCommand)| candidate.state.task_id.clone()).collect(),
        )
    });
    let (candidates, claim_commands): (Vec<Candidate>, Vec<NewCommand>) = decided.into_iter().unzip();
    let end_count = end_commands.len();
    let mut results = app.store().append_all(end_commands.into_iter().chain(claim_commands).collect()).await;
    let claim_results = results.split_off(end_count);
    if let Some(taken) = taken_ends {
        taken.answer(results);
    }
    let mut lost = 0;
    let mut unapplied = Vec::new();
    for (candidate, result) in candidates.into_iter().zip(claim_results) {
        let appended = match result {
            Ok(appended) => appended,
            Err(AppendError::Conflict { .. }) => {
                batch.skipped += 1;
                lost += 1;
                continue;
            }
            Err(error) => return Err(anyhow::Error::from(error).context("append a claim")),
        };
        let position = appended.last_position();
        let read_models_applied = appended.read_models_applied;
        // The appended events are this claim's own: moved out, not copied (a run's input is some KiB of JSON).
        let mut task_events: Vec<RecordedEvent> =
            appended.events.into_iter().filter(|event| event.stream.kind == EntityKind::Task).collect();
        if !read_models_applied {
            unapplied.extend(task_events.iter().cloned());
        }
        if candidate.exhausted {
            batch.exhausted += 1;
            continue;
        }
        let mut state = candidate.state;
        for event in &task_events {
            state.apply(event.stream_version, &event.event_type, &event.payload)?;
        }
        let started = task_events
            .iter_mut()
            .find(|event| event.event_type == domain::task::lifecycle::events::RUN_STARTED)
            .context("a claim starts a run")?;
        let input = started.payload.get_mut("input").map(Value::take).unwrap_or_default();
        let current = state.current.clone().context("a claimed task has a running attempt")?;
        batch.claimed.push(ClaimedTask {
            task_id: state.task_id.clone(),
            trace_id: state.trace_id.clone(),
            attempt: current.number,
            run_id: candidate.run_id,
            input,
            time_budget: candidate.time_budget,
            lease_expires_at: current.lease_expires_at,
            position,
            state,
        });
        if let Some(slots) = freed.as_mut() {
            *slots -= 1;
        }
    }
    // Unless the store applied the read models with the claims, the queue rows follow at once (the next claimer
    // sees the leases): committed events of their own streams, which the projector applies again to no effect.
    if !unapplied.is_empty() {
        let mut conn = app.pool().acquire().await?;
        if let Err(error) = queue::apply_inline(&mut conn, &unapplied).await {
            tracing::warn!("failed to update the claimed tasks' queue rows: {error:#}");
        }
    }
    Ok(lost)
}

/// A candidate's stream, state and CWOM context.
struct Loaded {
    events: Vec<RecordedEvent>,
    state: TaskState,
    cwom: Option<CwomContext>,
    /// The version of the task's Issue stream as read with it.
    issue_version: Option<(StreamId, i32)>,
}

/// Folds the candidates' streams and CWOM context from the events the claim read with them (events are
/// immutable; the claim's expected stream versions catch any change since), with one more read for any stream
/// that read did not cover (an upcaster may have moved the payload paths it follows).
async fn load_candidates(app: &App, task_ids: &[String], read: Vec<RecordedEvent>) -> anyhow::Result<Vec<Loaded>> {
    let mut streams: HashMap<String, Vec<RecordedEvent>> = HashMap::new();
    for event in read {
        streams.entry(event.stream.id.clone()).or_default().push(app.upcasters().upcast(event));
    }
    let mut states = Vec::with_capacity(task_ids.len());
    for task_id in task_ids {
        let events = streams.remove(task_id.as_str()).unwrap_or_default();
        let state = fold(task_id, &events)?;
        states.push((events, state));
    }

    let issue_ids: Vec<&String> = states.iter().filter_map(|(_, state)| state.cwom_issue_id.as_ref()).collect();
    let missing: Vec<StreamId> = issue_ids
        .iter()
        .filter(|id| !streams.contains_key(id.as_str()))
        .map(|id| StreamId::new(EntityKind::Issue, id.as_str()))
        .collect();
    if !missing.is_empty() {
        let mut conn = app.pool().acquire().await?;
        streams.extend(read_streams(&mut conn, app, &missing).await?);
    }
    let missing: Vec<StreamId> = issue_ids
        .iter()
        .filter_map(|id| streams.get(id.as_str()))
        .flat_map(|events| {
            [EntityKind::ContextPacket, EntityKind::ConstraintSnapshot]
                .into_iter()
                .filter_map(|kind| last_linked(events, kind).map(|id| StreamId::new(kind, id)))
        })
        .filter(|stream| !streams.contains_key(&stream.id))
        .collect();
    if !missing.is_empty() {
        let mut conn = app.pool().acquire().await?;
        streams.extend(read_streams(&mut conn, app, &missing).await?);
    }

    let mut loaded = Vec::with_capacity(states.len());
    for (events, state) in states {
        let issue = state
            .cwom_issue_id
            .as_deref()
            .map(|issue_id| (issue_id, streams.get(issue_id).map_or(&[][..], Vec::as_slice)));
        let cwom = issue.and_then(|(issue_id, events)| cwom_context(issue_id, events, &streams));
        let issue_version =
            issue.and_then(|(_, events)| events.last()).map(|last| (last.stream.clone(), last.stream_version));
        loaded.push(Loaded { events, state, cwom, issue_version });
    }
    Ok(loaded)
}

/// The events of `streams` (upcast), by stream id. Ids are unique across the kinds read together here.
async fn read_streams(
    conn: &mut PgConnection,
    app: &App,
    streams: &[StreamId],
) -> anyhow::Result<HashMap<String, Vec<RecordedEvent>>> {
    let mut by_stream: HashMap<String, Vec<RecordedEvent>> = HashMap::new();
    for event in store::read::read_streams(&mut *conn, streams).await? {
        by_stream.entry(event.stream.id.clone()).or_default().push(app.upcasters().upcast(event));
    }
    Ok(by_stream)
}

/// The id of the last object of `kind` an Issue's events link.
fn last_linked(issue_events: &[RecordedEvent], kind: EntityKind) -> Option<String> {
    issue_events
        .iter()
        .rev()
        .filter(|event| event.action == Action::Linked && event.payload["linked_kind"] == kind.as_str())
        .find_map(|event| event.payload["linked_id"].as_str().map(str::to_owned))
}

async fn read_stream(conn: &mut PgConnection, app: &App, stream: &StreamId) -> anyhow::Result<Vec<RecordedEvent>> {
    Ok(store::read::read_stream(&mut *conn, stream, None)
        .await?
        .into_iter()
        .map(|event| app.upcasters().upcast(event))
        .collect())
}

fn fold(task_id: &str, events: &[RecordedEvent]) -> anyhow::Result<TaskState> {
    TaskState::fold(
        task_id,
        events.iter().map(|event| (event.stream_version, event.event_type.as_str(), &event.payload)),
    )
    .with_context(|| format!("fold task {task_id}"))
}

/// The Issue's repo and status, and its latest ContextPacket and ConstraintSnapshot, folded from their events.
fn cwom_context(
    issue_id: &str,
    issue_events: &[RecordedEvent],
    linked: &HashMap<String, Vec<RecordedEvent>>,
) -> Option<CwomContext> {
    let object = |kind: EntityKind, events: &[RecordedEvent]| {
        domain::cwom::fold(kind, events.iter().map(|event| (event.action, &event.payload)))
    };
    let issue = object(EntityKind::Issue, issue_events)?;
    let linked_object = |kind: EntityKind| {
        let id = last_linked(issue_events, kind)?;
        let events: Vec<RecordedEvent> =
            linked.get(&id)?.iter().filter(|event| event.stream.kind == kind).cloned().collect();
        object(kind, &events)
    };
    Some(CwomContext {
        issue_id: issue_id.to_owned(),
        repo: issue["repo"].clone(),
        issue_status: issue["status"].as_str().unwrap_or("planned").to_owned(),
        context_packet: linked_object(EntityKind::ContextPacket),
        constraint_snapshot: linked_object(EntityKind::ConstraintSnapshot),
    })
}

/// A task's state, folded from its stream.
pub async fn load_state(app: &App, task_id: &str) -> anyhow::Result<TaskState> {
    let mut conn = app.pool().acquire().await?;
    let events = read_stream(&mut conn, app, &StreamId::new(EntityKind::Task, task_id)).await?;
    fold(task_id, &events)
}

/// How many times [`append_decision`] decides again after losing a race for the stream.
const MAX_DECISION_ATTEMPTS: usize = 5;

/// Decides on `state` and appends the events fenced by `state.version`; on a lost race, reloads the state and
/// decides again (the decision refuses when the attempt is no longer the running one). On success `state` has
/// folded the new events. The command carries `trace_id`, or else the task's trace id, and is correlated
/// with the task's trace id.
pub async fn append_decision(
    app: &App,
    state: &mut TaskState,
    trace_id: Option<&str>,
    decide: impl Fn(&TaskState) -> Result<Vec<NewEvent>, Refusal>,
) -> anyhow::Result<Result<Appended, Refusal>> {
    append_fenced(app, state, trace_id, None, &[], decide).await
}

/// [`append_decision`], storing `blobs` (content its events name by digest: a handler log, artifacts) in the
/// same transaction, and appending through `ends` when given (the end of an attempt rides with the claim being
/// read for its slot, [`EndsAwaitingClaim`]).
pub async fn append_decision_with_blobs(
    app: &App,
    state: &mut TaskState,
    ends: Option<&EndsAwaitingClaim>,
    blobs: &[NewBlob],
    decide: impl Fn(&TaskState) -> Result<Vec<NewEvent>, Refusal>,
) -> anyhow::Result<Result<Appended, Refusal>> {
    append_fenced(app, state, None, ends, blobs, decide).await
}

async fn append_fenced(
    app: &App,
    state: &mut TaskState,
    trace_id: Option<&str>,
    ends: Option<&EndsAwaitingClaim>,
    blobs: &[NewBlob],
    decide: impl Fn(&TaskState) -> Result<Vec<NewEvent>, Refusal>,
) -> anyhow::Result<Result<Appended, Refusal>> {
    for _ in 0..MAX_DECISION_ATTEMPTS {
        let new_events = match decide(state) {
            Ok(new_events) => new_events,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let command = NewCommand {
            events: new_events,
            expected: vec![(StreamId::new(EntityKind::Task, &state.task_id), ExpectedVersion::Exactly(state.version))],
            versions_read: Vec::new(),
            idempotency_key: None,
            trace_id: trace_id.map(str::to_owned).or_else(|| state.trace_id.clone()),
            correlation_id: state.trace_id.clone(),
            causation_id: None,
            blobs: blobs.to_vec(),
        };
        let appended = match ends {
            Some(ends) => ends.append(app.store(), command).await,
            None => app.store().append(command).await,
        };
        match appended {
            Ok(appended) => {
                let task_events: Vec<RecordedEvent> =
                    appended.events.iter().filter(|event| event.stream.kind == EntityKind::Task).cloned().collect();
                for event in &task_events {
                    state.apply(event.stream_version, &event.event_type, &event.payload)?;
                }
                // Unless the store applied the read models with the append, the queue row follows at once (a
                // retry is due at its time, a finished task leaves), as a claim's own events do: committed events
                // of this stream only, so applying them early changes nothing the projector will not do. A
                // failure here only delays that until the projector runs.
                if !appended.read_models_applied {
                    let mut conn = app.pool().acquire().await?;
                    if let Err(error) = queue::apply_inline(&mut conn, &task_events).await {
                        tracing::warn!(task_id = %state.task_id, "failed to update the task's queue row: {error:#}");
                    }
                }
                return Ok(Ok(appended));
            }
            Err(AppendError::Conflict { .. }) => {
                *state = load_state(app, &state.task_id).await?;
            }
            Err(error) => return Err(anyhow::Error::from(error).context("append a task decision")),
        }
    }
    anyhow::bail!("task {} kept changing under {MAX_DECISION_ATTEMPTS} decisions in a row", state.task_id)
}
