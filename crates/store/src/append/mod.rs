//! Appending commands to `audit_log`: one transaction per batch, one advisory lock for every appender.
//!
//! Concurrent callers in one process are grouped by a single batching task (group commit): it takes every
//! command waiting, checks and appends them in one transaction, and answers each caller separately. Each
//! command is still all-or-nothing: a command that fails its checks contributes no event, and the others in
//! its batch are unaffected. Across processes the advisory lock serialises batches, so `position` is gapless
//! and committed in order (docs/adr/0002-no-reader-skips-an-event.md).

mod insert;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
pub use domain::event::NewEvent;
use domain::event::StreamId;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, PgPool, Row as _};
use tokio::sync::{mpsc, oneshot};

use self::insert::InsertColumns;
use crate::blob::{NewBlob, MAX_INLINE_BLOB_BYTES, MAX_INLINE_BLOB_BYTES_PER_COMMAND};
use crate::canonical::{as_jsonb_reads_back, canonical_bytes, chain_hash, CanonicalEvent};
use crate::pipeline::{Answer, PipelinedConnection, Step};
use crate::record::RecordedEvent;
use crate::sql::{Planning, Statement, GENERIC_PLAN_ON};
use crate::unavailable::connection_lost;

/// The key of the transaction-scoped advisory lock every append takes. Arbitrary, fixed forever.
pub const APPEND_LOCK_KEY: i64 = 0x004a_4354_5f4c_4f47; // "JCT_LOG" in ASCII

/// The most commands one batch takes; bounds the transaction's size and the time a caller waits behind others.
const MAX_COMMANDS_PER_BATCH: usize = 256;

/// How many commands may wait for the batching task before `append` callers wait for room.
const QUEUE_CAPACITY: usize = 4096;

/// How many unique-key owners [`EventStore::claim_owner`] remembers.
const CLAIM_CACHE_CAPACITY: usize = 65_536;

/// The version a command expects a stream to be at before its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have this version.
    Exactly(i32),
}

/// Everything one command appends: committed together or not at all.
#[derive(Debug, Clone, Default)]
pub struct NewCommand {
    pub events: Vec<NewEvent>,
    /// Optimistic concurrency: the version each listed stream must be at. Unlisted streams are not checked.
    pub expected: Vec<(StreamId, ExpectedVersion)>,
    /// Versions of streams the events append to as the caller last read them, which are no condition (unlike
    /// `expected`): the appender may send the batch on them without reading the log first, and checks them in its
    /// transaction; one that is out of date costs the batch a read, never the command a refusal.
    pub versions_read: Vec<(StreamId, i32)>,
    /// A key that may belong to one command only; a repeat is [`AppendError::DuplicateIdempotencyKey`].
    pub idempotency_key: Option<String>,
    pub trace_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    /// Content the events name by digest, stored in the same transaction (a blob already stored is left as it
    /// is). At most [`crate::blob::MAX_INLINE_BLOB_BYTES`] each, [`crate::blob::MAX_INLINE_BLOB_BYTES_PER_COMMAND`]
    /// in all.
    pub blobs: Vec<NewBlob>,
}

/// What a successful append stored.
#[derive(Debug, Clone)]
pub struct Appended {
    pub events: Vec<RecordedEvent>,
    /// Every read model of the store's [`InlineProjector`] applied these events in the append transaction, so
    /// a caller reads its own writes without waiting.
    pub read_models_applied: bool,
}

impl Appended {
    /// The position of the command's last event: wait for projections to pass it for read-your-writes.
    pub fn last_position(&self) -> i64 {
        self.events.last().map_or(0, |event| event.position)
    }
}

/// Why a command was not appended. Callers branch on every variant.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("stream {stream} is at version {actual}, the command expected {expected:?}")]
    Conflict { stream: StreamId, expected: ExpectedVersion, actual: i32 },
    #[error("idempotency key {key:?} already belongs to {existing}")]
    DuplicateIdempotencyKey { key: String, existing: StreamId },
    #[error("unique key {key:?} already belongs to {existing}")]
    UniqueKeyTaken { key: String, existing: StreamId },
    #[error("invalid command: {0}")]
    Invalid(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Read models maintained inside the append transaction (SPEC §2.2: "a projection may also be applied inline
/// in the append transaction"), so the read models commit with the events; the projections crate implements it.
#[async_trait::async_trait]
pub trait InlineProjector: Send + Sync + 'static {
    /// The statements that apply `events` (consecutive positions, the whole batch as stored) to every read model,
    /// computed from the events alone. The first of them moves every read model's checkpoint past the events and
    /// fails the transaction unless each was exactly at the position before them (so the others never apply to a
    /// read model that is behind or busy). The store sends them in the append's pipeline, behind the insert, with
    /// the [`Planning::Generic`] ones last (each statement's order among those of its kind kept), so one statement
    /// must not depend on what another of a different kind writes: read models write tables of their own.
    /// `None` when the batch cannot be applied so: the store then appends it step by step with
    /// [`InlineProjector::apply_appended`].
    fn pipelined_statements<'e>(&self, events: &'e [RecordedEvent]) -> anyhow::Result<Option<Vec<Statement<'e>>>>;

    /// Applies `events` where each read model is at the position before them or a little behind it (catching up
    /// first), moving its checkpoint with them; a read model further behind or busy is left to its projector.
    /// Called after the insert, in the append transaction. Returns whether every read model was applied. If it
    /// fails, the transaction fails, and the store appends the batch again without read models.
    async fn apply_appended(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<bool>;
}

/// How the batching task has appended its batches since the store started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppendStats {
    /// Batches appended through the pipeline, read models included: in two round trips, or in one sent without
    /// waiting (`speculative_batches`).
    pub pipelined_batches: u64,
    /// Of those, the batches checked against what the appender remembered of the log instead of a read under the
    /// lock, and sent while the batch before them was still being answered (docs/adr/0009-speculative-appends.md).
    pub speculative_batches: u64,
    /// Speculative batches that did not commit (another appender wrote, a batch before them failed, or what the
    /// appender remembered was wrong), each appended again after a read: not counted above.
    pub speculative_misses: u64,
    /// Speculative batches sent on a guess of the version of a stream the appender did not remember (a command
    /// expected it at an exact version, or read it there), counted when sent; one whose guess was wrong is also a
    /// miss.
    pub guessed_batches: u64,
    /// Batches appended a statement at a time (a read model was behind or busy, the pipeline failed, or the
    /// previous batch went this way and read models may still be behind).
    pub stepwise_batches: u64,
}

#[derive(Debug, Default)]
struct AppendCounters {
    pipelined_batches: AtomicU64,
    speculative_batches: AtomicU64,
    speculative_misses: AtomicU64,
    guessed_batches: AtomicU64,
    stepwise_batches: AtomicU64,
}

/// The append side of the event store. Cheap to clone; all clones share one batching task.
#[derive(Clone)]
pub struct EventStore {
    /// The pool reads go through (claim owners, callers' own queries); appends use the batching task's own
    /// connections, opened with its settings.
    pool: PgPool,
    /// Groups of commands: a group is appended in one batch, never split.
    queue: mpsc::Sender<Vec<Pending>>,
    /// Owners of unique keys already read. A claim never changes owner: `unique_claims` only grows, and it is
    /// derived from the append-only log, so a remembered owner can never be stale.
    claim_owners: Arc<quick_cache::sync::Cache<String, (StreamId, i64)>>,
    counters: Arc<AppendCounters>,
}

struct Pending {
    command: NewCommand,
    reply: oneshot::Sender<Result<Appended, AppendError>>,
}

impl EventStore {
    /// Starts the batching task, on a thread of its own with connections of its own (see [`EventStore::start`]).
    /// It ends when the last clone is dropped.
    pub fn new(pool: PgPool) -> EventStore {
        EventStore::start(pool, None)
    }

    /// Like [`EventStore::new`], applying `inline` in every append transaction.
    pub fn with_inline_projector(pool: PgPool, inline: Arc<dyn InlineProjector>) -> EventStore {
        EventStore::start(pool, Some(inline))
    }

    /// A batch is a serial chain of round trips under the append lock, so every moment between a reply arriving
    /// and the next statement leaving holds up every appender. On the process's shared runtime that moment
    /// includes waiting behind whatever else its worker threads are running (HTTP requests, handlers), and the
    /// reactor may not even look at the socket until they yield. The batching task therefore runs on a
    /// single-threaded runtime in a thread of its own, on connections of its own (opened with `pool`'s settings,
    /// lazily), whose sockets its own reactor watches: it runs the moment its reply is in. It appends through a
    /// pipelined connection ([`Appender::append_pipelined`]: two round trips a batch), and a statement at a time on
    /// an sqlx connection when that cannot be done.
    fn start(pool: PgPool, inline: Option<Arc<dyn InlineProjector>>) -> EventStore {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let options = (*pool.connect_options()).clone();
        let counters = Arc::new(AppendCounters::default());
        let appender_counters = counters.clone();
        std::thread::Builder::new()
            .name("jct-append".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the append runtime starts");
                runtime.block_on(async move {
                    let stepwise = crate::pool_options().max_connections(1).connect_lazy_with(options.clone());
                    let appender = Appender {
                        stepwise: stepwise.clone(),
                        options,
                        pipelined: None,
                        pipelining: true,
                        known: None,
                        pause_speculation: 0,
                        inline,
                        counters: appender_counters,
                    };
                    appender.run(receiver).await;
                    stepwise.close().await;
                });
            })
            .expect("the append thread starts");
        let claim_owners = Arc::new(quick_cache::sync::Cache::new(CLAIM_CACHE_CAPACITY));
        EventStore { pool, queue, claim_owners, counters }
    }

    /// The stream that claimed unique key `key` and the position of that claim, or `None` if nobody has. An
    /// owner once read is remembered (claims never change owner), so a hot key costs no round trip.
    pub async fn claim_owner(&self, key: &str) -> anyhow::Result<Option<(StreamId, i64)>> {
        if let Some(owner) = self.claim_owners.get(key) {
            return Ok(Some(owner));
        }
        let owner = crate::read::claim_owner(&self.pool, key).await?;
        if let Some(owner) = &owner {
            self.claim_owners.insert(key.to_owned(), owner.clone());
        }
        Ok(owner)
    }

    /// The pool the store was made with, for reads; appends do not use it.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How the batching task has appended its batches so far.
    pub fn stats(&self) -> AppendStats {
        AppendStats {
            pipelined_batches: self.counters.pipelined_batches.load(Ordering::Relaxed),
            speculative_batches: self.counters.speculative_batches.load(Ordering::Relaxed),
            speculative_misses: self.counters.speculative_misses.load(Ordering::Relaxed),
            guessed_batches: self.counters.guessed_batches.load(Ordering::Relaxed),
            stepwise_batches: self.counters.stepwise_batches.load(Ordering::Relaxed),
        }
    }

    /// Appends one command's events atomically and returns them as stored.
    pub async fn append(&self, command: NewCommand) -> Result<Appended, AppendError> {
        self.append_all(vec![command]).await.pop().expect("one result per command")
    }

    /// Appends several commands in one batch (one transaction), each still all-or-nothing on its own: a command
    /// refused, or invalid, does not affect the others. The results are in the commands' order. Where
    /// [`EventStore::append`] callers that happen to wait together share a batch, these always do (commands of
    /// other callers may join them): a worker records the end of one attempt and the claim that refills its slot
    /// with one commit.
    pub async fn append_all(&self, commands: Vec<NewCommand>) -> Vec<Result<Appended, AppendError>> {
        let mut results: Vec<Option<Result<Appended, AppendError>>> = Vec::with_capacity(commands.len());
        let mut group = Vec::with_capacity(commands.len());
        let mut answers = Vec::with_capacity(commands.len());
        for command in commands {
            match validate(&command) {
                Err(error) => results.push(Some(Err(error))),
                Ok(()) => {
                    let (reply, answer) = oneshot::channel();
                    group.push(Pending { command, reply });
                    answers.push((results.len(), answer));
                    results.push(None);
                }
            }
        }
        if !group.is_empty() && self.queue.send(group).await.is_err() {
            for (index, _) in answers.drain(..) {
                results[index] = Some(Err(anyhow::anyhow!("the append task has stopped").into()));
            }
        }
        for (index, answer) in answers {
            let answered = answer.await.map_err(|_| anyhow::anyhow!("the append task dropped the command"));
            results[index] = Some(answered.map_err(AppendError::from).and_then(|result| result));
        }
        results.into_iter().map(|result| result.expect("every command answered")).collect()
    }
}

/// The batching task: takes every command waiting, appends them as one batch, answers each caller.
struct Appender {
    /// For batches appended a statement at a time.
    stepwise: PgPool,
    /// The settings of the pipelined connection (the pool's).
    options: PgConnectOptions,
    /// Connected at the first batch, and again after it was lost.
    pipelined: Option<PipelinedConnection>,
    /// Whether the next batch goes through the pipeline. Off after a batch that could not (a read model was
    /// behind, say), until a batch appended step by step has applied every read model again: until then read
    /// models may be behind, and only the stepwise path catches them up.
    pipelining: bool,
    /// The log as the last batch sent through the pipeline leaves it (that batch may still be on its way): its head,
    /// and the versions and claims of the streams and keys batches touched since the last read. True for as long
    /// as no other appender writes and that batch commits; `None` until a read after anything else.
    known: Option<LogState>,
    /// How many more batches go through a read before the next speculative one, after one that missed.
    pause_speculation: u32,
    inline: Option<Arc<dyn InlineProjector>>,
    counters: Arc<AppendCounters>,
}

/// The most batches sent through the pipeline and not yet answered: one being answered, one queued behind it.
const BATCHES_IN_FLIGHT: usize = 2;

/// How many streams (and as many claims) the appender remembers; past that it forgets them all and reads again.
const REMEMBERED_STREAMS: usize = 65_536;

/// How many batches go through a read after a speculative batch missed (another appender wrote, most likely).
const BATCHES_READ_AFTER_A_MISS: u32 = 16;

type Reply = oneshot::Sender<Result<Appended, AppendError>>;

/// A speculative batch sent through the pipeline; its callers are answered when it, and every batch before it,
/// has been.
struct InFlight {
    replies: Vec<Reply>,
    /// Whether it sent any event (a batch whose every command was refused sends nothing).
    sent_events: bool,
    /// Whether it guessed the version of a stream the appender did not remember: nothing is sent behind it until
    /// it is answered, since what the appender remembers after it holds the guess, true only if it commits.
    guessed: bool,
    /// The batch's slots back, and whether its transaction committed.
    outcome: tokio::task::JoinHandle<(Vec<Slot>, anyhow::Result<()>)>,
}

impl Appender {
    /// Appends what callers queue until every sender is gone: while a speculative batch is on its way, the next
    /// one is checked and sent behind it, so the server goes from one batch's commit to the next batch's insert
    /// without waiting for a round trip or for the appender.
    async fn run(mut self, mut receiver: mpsc::Receiver<Vec<Pending>>) {
        let mut waiting: Vec<Pending> = Vec::with_capacity(MAX_COMMANDS_PER_BATCH);
        let mut in_flight: std::collections::VecDeque<InFlight> = std::collections::VecDeque::new();
        let mut open = true;
        loop {
            let idle = in_flight.is_empty() && waiting.is_empty();
            if idle {
                match receiver.recv().await {
                    Some(group) if open => waiting.extend(group),
                    _ => return,
                }
            }
            // A group is never split, so a batch may exceed the limit by the last group it took.
            while open && waiting.len() < MAX_COMMANDS_PER_BATCH {
                match receiver.try_recv() {
                    Ok(group) => waiting.extend(group),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            let behind_a_guess = in_flight.iter().any(|flight| flight.guessed);
            if !waiting.is_empty() && in_flight.len() < BATCHES_IN_FLIGHT && !behind_a_guess {
                if let Some(flight) = self.send_speculatively(&mut waiting).await {
                    in_flight.push_back(flight);
                    continue;
                }
                if in_flight.is_empty() {
                    let (commands, replies) = waiting.drain(..).map(|pending| (pending.command, pending.reply)).unzip();
                    let results = self.append(commands).await;
                    answer(replies, results);
                    continue;
                }
            }
            // Wait for the oldest batch on its way to be answered, or (with room for another behind it and nothing
            // waiting) for a command to send behind it.
            let can_send_more = open
                && waiting.is_empty()
                && in_flight.len() < BATCHES_IN_FLIGHT
                && !behind_a_guess
                && self.known.is_some();
            let oldest = in_flight.front_mut().expect("a batch in flight");
            tokio::select! {
                biased;
                outcome = &mut oldest.outcome => {
                    let flight = in_flight.pop_front().expect("the oldest batch");
                    self.settle(flight.replies, outcome, &mut in_flight).await;
                }
                received = receiver.recv(), if can_send_more => match received {
                    Some(group) => waiting.extend(group),
                    None => open = false,
                },
            }
        }
    }

    /// Checks `waiting` against what the appender remembers of the log and sends it through the pipeline, behind
    /// any batch still on its way, without waiting for its answer; `None` (and `waiting` untouched) when the batch
    /// must be checked against a read instead: nothing is remembered. What it assumes without reading the
    /// transaction checks: its first statement fails unless the head is where the appender's last batch left it; a
    /// stream it does not know is taken to be new and a key it does not know free (a wrong guess collides with a
    /// unique constraint); and a stream it does not know that a command expects (or read) at version n is taken
    /// to be at n (a stream another process wrote, say a task a worker claims), which its second statement checks
    /// ([`insert::expect_stream_versions`]). A batch that guessed a version is sent even if every command was
    /// refused (the refusals may rest on the guess) and nothing is sent behind it until it is answered.
    async fn send_speculatively(&mut self, waiting: &mut Vec<Pending>) -> Option<InFlight> {
        if !self.pipelining {
            return None;
        }
        if self.pause_speculation > 0 {
            self.pause_speculation -= 1;
            return None;
        }
        let connection = self.pipelined.as_ref().filter(|connection| !connection.is_closed())?.clone();
        let mut known = self.known.take()?;
        // The first exact expectation, or else version read, of each stream it does not know, taken as the
        // stream's version.
        let mut guesses: Vec<(StreamId, i32)> = Vec::new();
        let expected =
            waiting.iter().flat_map(|pending| &pending.command.expected).filter_map(
                |(stream, expected)| match expected {
                    ExpectedVersion::Exactly(version) => Some((stream, *version)),
                    _ => None,
                },
            );
        let read = waiting.iter().flat_map(|pending| &pending.command.versions_read).map(|(stream, v)| (stream, *v));
        for (stream, version) in expected.chain(read) {
            let key = (stream.kind.as_str().to_owned(), stream.id.clone());
            if version != 0 && !known.versions.contains_key(&key) {
                known.versions.insert(key, version);
                guesses.push((stream.clone(), version));
            }
        }
        let head = (known.head_position, known.head_hash.clone());
        let (commands, replies): (Vec<_>, Vec<_>) =
            waiting.drain(..).map(|pending| (pending.command, pending.reply)).unzip();
        let (mut slots, blobs, after) = record_batch(commands, known);
        let (events, counts) = take_events(&mut slots);
        let sent_events = !events.is_empty();
        let guessed = !guesses.is_empty();
        if guessed {
            self.counters.guessed_batches.fetch_add(1, Ordering::Relaxed);
        }
        let head_position = after.head_position;
        let inline = self.inline.clone();
        let (sent, fully_sent) = oneshot::channel();
        let outcome = tokio::spawn(async move {
            let written = if events.is_empty() && guesses.is_empty() {
                let _ = sent.send(true);
                Ok(())
            } else {
                let at_head = Some((head.0, head.1.as_slice()));
                let flight = Flight { at_head, guesses: &guesses, events: &events, blobs: &blobs, head_position };
                write_pipelined(&connection, inline.as_deref(), flight, |all| {
                    let _ = sent.send(all);
                })
                .await
            };
            give_back_events(&mut slots, events, &counts, inline.is_some());
            (slots, written)
        });
        // Until the batch has gone out whole, nothing else may be sent: a transaction left open would take it in.
        self.known = fully_sent.await.unwrap_or(false).then(|| forget_if_too_many(after));
        Some(InFlight { replies, sent_events, guessed, outcome })
    }

    /// Answers the callers of a speculative batch once it has been answered. If it failed, nothing of it committed,
    /// and none of the batches sent behind it can have (each first checks the head this one would have left): they
    /// are all appended again, in order, each after a read.
    async fn settle(
        &mut self,
        replies: Vec<Reply>,
        outcome: Result<(Vec<Slot>, anyhow::Result<()>), tokio::task::JoinError>,
        in_flight: &mut std::collections::VecDeque<InFlight>,
    ) {
        let mut again_after_a_read = Vec::new();
        let (slots, written) = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                // Its callers are told the append task dropped their commands; what it did is unknown to them.
                tracing::error!("a speculative append batch panicked: {error}");
                (Vec::new(), Err(anyhow::anyhow!("the batch's task panicked")))
            }
        };
        let error = match written {
            Ok(()) => return self.answer_committed(replies, slots),
            Err(error) => error,
        };
        self.known = None;
        // The connection died under the batch: it may have committed with its answer lost on the way.
        let lost = self.pipelined.as_ref().is_some_and(PipelinedConnection::is_closed) || connection_lost(&error);
        if lost && committed_after_all(&self.stepwise, &slots).await {
            self.answer_committed(replies, slots);
        } else {
            tracing::debug!("a speculative batch missed, appending it again after a read: {error:#}");
            self.pause_speculation = BATCHES_READ_AFTER_A_MISS;
            self.counters.speculative_misses.fetch_add(1, Ordering::Relaxed);
            again_after_a_read.push((slots, replies));
        }
        while let Some(later) = in_flight.pop_front() {
            match later.outcome.await {
                // Committed after all: what it was checked against was true.
                Ok((slots, Ok(()))) if later.sent_events => self.answer_committed(later.replies, slots),
                Ok((slots, _)) if lost && committed_after_all(&self.stepwise, &slots).await => {
                    self.answer_committed(later.replies, slots)
                }
                Ok((slots, _)) => {
                    self.counters.speculative_misses.fetch_add(1, Ordering::Relaxed);
                    again_after_a_read.push((slots, later.replies));
                }
                Err(error) => tracing::error!("a speculative append batch panicked: {error}"),
            }
        }
        // Every flight has been answered; a transaction one of them left open (not sent whole) ends here.
        if let Some(connection) = &self.pipelined {
            connection.rollback().await;
        }
        for (slots, replies) in again_after_a_read.into_iter().filter(|(slots, _)| !slots.is_empty()) {
            let results = self.append(slots.into_iter().map(Slot::into_command).collect()).await;
            answer(replies, results);
        }
    }

    /// Answers the callers of a speculative batch that committed.
    fn answer_committed(&self, replies: Vec<Reply>, slots: Vec<Slot>) {
        self.counters.pipelined_batches.fetch_add(1, Ordering::Relaxed);
        self.counters.speculative_batches.fetch_add(1, Ordering::Relaxed);
        answer(replies, slots.into_iter().map(Slot::into_result).collect());
    }

    /// Appends one batch: through the pipeline if it can, else (or if that fails: nothing of it committed) a
    /// statement at a time; a batch that fails that way too is appended again without read models, then command by
    /// command. No copy of the commands is kept for a retry: a failed attempt gives them back.
    async fn append(&mut self, commands: Vec<NewCommand>) -> Vec<Result<Appended, AppendError>> {
        let commands = if self.pipelining {
            match self.append_pipelined(commands).await {
                Ok(results) => {
                    self.counters.pipelined_batches.fetch_add(1, Ordering::Relaxed);
                    return results;
                }
                Err(Failed { error, commands }) => {
                    tracing::debug!("appending the batch step by step: the pipelined append failed: {error:#}");
                    self.pipelining = false;
                    commands
                }
            }
        } else {
            commands
        };
        self.known = None;
        self.counters.stepwise_batches.fetch_add(1, Ordering::Relaxed);
        let inline = self.inline.as_deref();
        match append_in_own_transaction(&self.stepwise, inline, commands).await {
            Ok(results) => {
                self.pipelining = inline.is_none()
                    || results.iter().any(|result| result.as_ref().is_ok_and(|appended| appended.read_models_applied));
                results
            }
            Err(Failed { error, commands }) => {
                tracing::warn!("failed to append a batch of {}, retrying: {error:#}", commands.len());
                append_after_a_failure(&self.stepwise, commands).await
            }
        }
    }

    /// A batch in two round trips on the pipelined connection: `begin` and the locked read; then the insert, the
    /// read models' statements ([`InlineProjector::pipelined_statements`]) and `commit`, sent together. If anything
    /// fails, nothing of the batch is committed and its commands are given back. What it read, with what the
    /// appender remembered if the head is where it left it, is remembered for the speculative batches after it.
    async fn append_pipelined(
        &mut self,
        commands: Vec<NewCommand>,
    ) -> Result<Vec<Result<Appended, AppendError>>, Failed> {
        let remembered = self.known.take();
        if self.pipelined.as_ref().is_none_or(PipelinedConnection::is_closed) {
            match PipelinedConnection::connect(&self.options).await {
                Ok(connection) => self.pipelined = Some(connection),
                Err(error) => return Err(Failed { error, commands }),
            }
        }
        let connection = self.pipelined.as_ref().expect("connected above");
        let mut state = {
            let read = insert::lock_and_read(&commands);
            let answers = connection.run(&[Step::Simple("begin"), Step::Query(&read)]).await;
            match answers.and_then(pipelined_log_state) {
                Ok(state) => state,
                Err(error) => {
                    connection.rollback().await;
                    return Err(Failed { error, commands });
                }
            }
        };
        if let Some(mut remembered) = remembered {
            // What was read wins over what was remembered; the batch's few rows go into the remembered maps (up to
            // REMEMBERED_STREAMS entries each), never the other way round, which cost every read batch time in
            // proportion to all the streams remembered.
            if remembered.head_position == state.head_position && remembered.head_hash == state.head_hash {
                remembered.versions.extend(state.versions);
                remembered.claims.extend(state.claims);
                state.versions = remembered.versions;
                state.claims = remembered.claims;
            }
        }
        let (mut slots, blobs, after) = record_batch(commands, state);
        let (events, counts) = take_events(&mut slots);
        let flight =
            Flight { at_head: None, guesses: &[], events: &events, blobs: &blobs, head_position: after.head_position };
        let written = write_pipelined(connection, self.inline.as_deref(), flight, |_| ()).await;
        give_back_events(&mut slots, events, &counts, self.inline.is_some());
        match written {
            Ok(()) => {
                self.known = Some(forget_if_too_many(after));
                Ok(slots.into_iter().map(Slot::into_result).collect())
            }
            Err(error)
                if (connection.is_closed() || connection_lost(&error))
                    && committed_after_all(&self.stepwise, &slots).await =>
            {
                tracing::debug!("the batch committed, its answer lost with the connection: {error:#}");
                Ok(slots.into_iter().map(Slot::into_result).collect())
            }
            Err(error) => {
                connection.rollback().await;
                Err(Failed { error, commands: slots.into_iter().map(Slot::into_command).collect() })
            }
        }
    }
}

/// Whether a batch whose connection died before its answer arrived committed after all: its first event is in the
/// log. Asked under the append lock, which the batch's transaction holds until it has ended one way or the other
/// (the server finishes a `commit` it has read even when the client is gone), so the answer is final. Without it,
/// a committed batch would be appended again: refused for its own idempotency keys and event ids, its callers
/// told it failed. False for a batch without events, and when the question cannot be asked (the batch is then
/// appended again, as before).
async fn committed_after_all(pool: &PgPool, slots: &[Slot]) -> bool {
    let Some(first) = slots.iter().find_map(|slot| match slot {
        Slot::Appended { appended, .. } => appended.events.first(),
        Slot::Refused { .. } => None,
    }) else {
        return false;
    };
    for delay_ms in CONNECTION_RETRY_DELAYS_MS {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        let asked = async {
            let mut tx = pool.begin().await?;
            sqlx::query("select pg_advisory_xact_lock($1)").bind(APPEND_LOCK_KEY).execute(&mut *tx).await?;
            let found: bool = sqlx::query_scalar("select exists (select 1 from audit_log where event_id = $1)")
                .bind(&first.event_id)
                .fetch_one(&mut *tx)
                .await?;
            tx.rollback().await?;
            anyhow::Ok(found)
        };
        match asked.await {
            Ok(found) => {
                if found {
                    tracing::warn!(
                        position = first.position,
                        "the connection was lost after the batch committed; its callers are told it did"
                    );
                }
                return found;
            }
            Err(error) => tracing::warn!("could not ask whether the batch committed: {error:#}"),
        }
    }
    false
}

/// Answers each caller; a caller that gave up waiting is not an error: its events are committed either way.
fn answer(replies: Vec<Reply>, results: Vec<Result<Appended, AppendError>>) {
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

/// `state` with its streams and claims forgotten if it remembers too many (the head is kept).
fn forget_if_too_many(mut state: LogState) -> LogState {
    if state.versions.len() > REMEMBERED_STREAMS || state.claims.len() > REMEMBERED_STREAMS {
        state.versions.clear();
        state.claims.clear();
    }
    state
}

/// The log's state from the locked read's rows, whichever driver read them (both row types have `try_get(name)`;
/// `$error` is the driver's error type).
macro_rules! log_state_of {
    ($rows:expr, $error:ty) => {
        insert::log_state(
            $rows
                .iter()
                .map(|row| {
                    Ok(insert::ReadRow {
                        what: row.try_get("what")?,
                        a: row.try_get("a")?,
                        b: row.try_get("b")?,
                        c: row.try_get("c")?,
                        n: row.try_get("n")?,
                        hash: row.try_get("hash")?,
                    })
                })
                .collect::<Result<Vec<_>, $error>>()
                .context("read the log head, stream versions and claims")?,
        )
    };
}

/// The log's state from the pipelined `begin` and locked read.
fn pipelined_log_state(answers: Vec<Result<Answer, tokio_postgres::Error>>) -> anyhow::Result<LogState> {
    let mut answers = answers.into_iter();
    answers.next().context("an answer to begin")?.context("begin the append transaction")?;
    let Answer::Rows(rows) = answers.next().context("an answer to the read")?.context("take the append lock")? else {
        anyhow::bail!("the locked read answered no rows");
    };
    log_state_of!(rows, tokio_postgres::Error)
}

/// What one flight of [`write_pipelined`] writes.
struct Flight<'f> {
    /// The head a speculative batch was checked against (its flight opens the transaction and takes the lock
    /// there); `None` for the second flight of a batch after a read.
    at_head: Option<(i64, &'f [u8])>,
    /// The versions a speculative batch guessed for streams the appender did not remember.
    guesses: &'f [(StreamId, i32)],
    events: &'f [RecordedEvent],
    blobs: &'f [(NewBlob, i64)],
    /// The head position before the batch.
    head_position: i64,
}

/// The insert (if any command passed its checks), the read models' statements and `commit`, as one flight: the
/// second of a batch after a read, or (with `at_head`, the head it was checked against) the whole of a speculative
/// batch, opened by `begin` and the lock taken at that head. `sent` is told whether the whole flight went out. Any
/// failure means nothing committed: a failed statement aborts the transaction, and the `commit` behind it then
/// rolls back.
async fn write_pipelined(
    connection: &PipelinedConnection,
    inline: Option<&dyn InlineProjector>,
    flight: Flight<'_>,
    sent: impl FnOnce(bool),
) -> anyhow::Result<()> {
    let Flight { at_head, guesses, events, blobs, head_position } = flight;
    let mut rows = InsertColumns::default();
    for event in events {
        rows.push(event);
    }
    for (blob, position) in blobs {
        rows.push_blob(blob, *position);
    }
    let lock = at_head.map(|(position, hash)| insert::lock_at_head(position, hash));
    let expect = (!guesses.is_empty()).then(|| insert::expect_stream_versions(guesses));
    let insert = (!rows.is_empty()).then(|| rows.into_statement(head_position));
    let read_models = match inline {
        Some(inline) if !events.is_empty() => inline
            .pipelined_statements(events)
            .and_then(|statements| statements.context("the batch's read models cannot be applied in the pipeline")),
        _ => Ok(Vec::new()),
    };
    let read_models = match read_models {
        Ok(statements) => statements,
        Err(error) => {
            sent(false);
            return Err(error);
        }
    };
    let mut steps: Vec<Step<'_, '_>> = Vec::with_capacity(read_models.len() + 4);
    if lock.is_some() {
        steps.push(Step::Simple("begin"));
    }
    steps.extend(lock.iter().chain(&expect).chain(&insert).map(Step::Execute));
    steps.extend(read_model_steps(&read_models));
    steps.push(Step::Simple("commit"));
    let answers = connection.run_telling_when_sent(&steps, sent).await?;
    for (step, answer) in steps.iter().zip(answers) {
        answer.with_context(|| format!("append pipelined: {}", step.what()))?;
    }
    Ok(())
}

/// The read models' statements as a flight sends them: those planned their own way first, in their order, then
/// [`GENERIC_PLAN_ON`] once and every [`Planning::Generic`] statement, in their order. Only `commit` follows, and it
/// ends the `set local` settings, so the session's own need not be set again: one simple statement a batch instead
/// of two around each `Generic` one. Read models write disjoint tables, so their statements commute; each one's own
/// statements keep their order.
fn read_model_steps<'s, 'a>(read_models: &'s [Statement<'a>]) -> Vec<Step<'s, 'a>> {
    let (generic, planned): (Vec<&Statement<'a>>, Vec<&Statement<'a>>) =
        read_models.iter().partition(|statement| statement.planning == Planning::Generic);
    let mut steps: Vec<Step<'s, 'a>> = planned.into_iter().map(Step::Execute).collect();
    if !generic.is_empty() {
        steps.push(Step::Simple(GENERIC_PLAN_ON));
        steps.extend(generic.into_iter().map(Step::Execute));
    }
    steps
}

/// A batch whose transaction failed, nothing of it committed, with its commands as they were given (rebuilt from
/// what the attempt made of them), to append again.
struct Failed {
    error: anyhow::Error,
    commands: Vec<NewCommand>,
}

/// A batch whose transaction failed (the inline read models, or one command: a database check, say); nothing of
/// it committed. Retried without the inline read models (their projectors catch up), then command by command, so
/// that the others still land and only a culprit fails.
async fn append_after_a_failure(pool: &PgPool, commands: Vec<NewCommand>) -> Vec<Result<Appended, AppendError>> {
    let mut attempt = append_in_own_transaction(pool, None, commands).await;
    // A connection that died in the pool (the server restarted, or ended it) fails the transaction that picks it
    // up, whatever the commands; each retry takes another connection, until the pool has fresh ones.
    for delay_ms in CONNECTION_RETRY_DELAYS_MS {
        attempt = match attempt {
            Err(Failed { error, commands }) if connection_lost(&error) => {
                tracing::warn!("the append's connection was lost, retrying: {error:#}");
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                append_in_own_transaction(pool, None, commands).await
            }
            settled => {
                attempt = settled;
                break;
            }
        };
    }
    let Failed { error, commands } = match attempt {
        Ok(results) => return results,
        Err(failed) => failed,
    };
    if commands.len() == 1 {
        return vec![Err(AppendError::Internal(error))];
    }
    tracing::warn!("failed again, appending the {} commands one by one: {error:#}", commands.len());
    let mut results = Vec::with_capacity(commands.len());
    for command in commands {
        results.push(match append_in_own_transaction(pool, None, vec![command]).await {
            Ok(mut one) => one.pop().expect("one result per command"),
            Err(failed) => Err(AppendError::Internal(failed.error)),
        });
    }
    results
}

/// How long a batch whose connection was lost waits before each further attempt.
const CONNECTION_RETRY_DELAYS_MS: [u64; 4] = [0, 20, 100, 500];

/// A transaction on a connection of the pool.
type Begun = sqlx::Transaction<'static, sqlx::Postgres>;

/// One batch in a transaction of its own, a statement at a time.
async fn append_in_own_transaction(
    pool: &PgPool,
    inline: Option<&dyn InlineProjector>,
    commands: Vec<NewCommand>,
) -> Result<Vec<Result<Appended, AppendError>>, Failed> {
    let tx = match pool.begin().await.context("begin append transaction") {
        Ok(tx) => tx,
        Err(error) => return Err(Failed { error, commands }),
    };
    let (tx, slots) = append_uncommitted(tx, inline, commands).await?;
    commit(pool, tx, slots).await
}

/// Appends a batch in `tx` and applies the inline read models, without committing. They are applied without a
/// savepoint (two round trips fewer while the append lock is held): if they fail, the whole transaction fails and
/// the caller retries the batch without them.
async fn append_uncommitted(
    mut tx: Begun,
    inline: Option<&dyn InlineProjector>,
    commands: Vec<NewCommand>,
) -> Result<(Begun, Vec<Slot>), Failed> {
    let mut slots = append_slots(&mut tx, commands).await?;
    if let Some(inline) = inline {
        let (events, counts) = take_events(&mut slots);
        if !events.is_empty() {
            let applied = inline.apply_appended(&mut tx, &events).await;
            give_back_events(&mut slots, events, &counts, applied.as_ref().is_ok_and(|all| *all));
            if let Err(error) = applied {
                return Err(Failed { error, commands: slots.into_iter().map(Slot::into_command).collect() });
            }
        }
    }
    Ok((tx, slots))
}

/// Commits what [`append_uncommitted`] did and answers each command.
async fn commit(pool: &PgPool, tx: Begun, slots: Vec<Slot>) -> Result<Vec<Result<Appended, AppendError>>, Failed> {
    if let Err(error) = tx.commit().await.context("commit append transaction") {
        if !(connection_lost(&error) && committed_after_all(pool, &slots).await) {
            return Err(Failed { error, commands: slots.into_iter().map(Slot::into_command).collect() });
        }
    }
    Ok(slots.into_iter().map(Slot::into_result).collect())
}

/// One command of a batch being appended: its stored events, or why it was refused; either way what it takes to
/// append it again should the batch's transaction fail.
enum Slot {
    Appended {
        appended: Appended,
        /// What the stored events do not hold of the command.
        expected: Vec<(StreamId, ExpectedVersion)>,
        blobs: Vec<NewBlob>,
    },
    Refused {
        error: AppendError,
        /// A refusal may rest on an earlier command of the batch (a unique key it claimed), so a batch appended
        /// again checks it again.
        command: NewCommand,
    },
}

impl Slot {
    fn into_result(self) -> Result<Appended, AppendError> {
        match self {
            Slot::Appended { appended, .. } => Ok(appended),
            Slot::Refused { error, .. } => Err(error),
        }
    }

    /// The command as it was given: its events from the records (positions, versions and hashes are assigned
    /// afresh; the idempotency key's claim, added to the first event, is taken off again).
    fn into_command(self) -> NewCommand {
        let (appended, expected, blobs) = match self {
            Slot::Refused { command, .. } => return command,
            Slot::Appended { appended, expected, blobs } => (appended, expected, blobs),
        };
        let first = appended.events.first();
        let (trace_id, correlation_id, causation_id, idempotency_key) = match first {
            Some(first) => (
                first.trace_id.clone(),
                first.correlation_id.clone(),
                first.causation_id.clone(),
                first.idempotency_key.clone(),
            ),
            None => (None, None, None, None),
        };
        let events = appended
            .events
            .into_iter()
            .enumerate()
            .map(|(index, record)| {
                let mut unique_keys = record.unique_keys;
                if index == 0 && idempotency_key.is_some() && !unique_keys.is_empty() {
                    unique_keys.remove(0);
                }
                NewEvent {
                    data: domain::event::EventData {
                        stream: record.stream,
                        event_type: record.event_type,
                        schema_version: record.schema_version,
                        payload: record.payload,
                        action: record.action,
                        before: record.before,
                        after: record.after,
                        note: record.note,
                    },
                    actor: domain::event::Actor { kind: record.actor_kind, id: record.actor_id },
                    unique_keys,
                }
            })
            .collect();
        // Appended again after a read, which tells it every version: what was read before is not kept.
        let versions_read = Vec::new();
        NewCommand { events, expected, versions_read, idempotency_key, trace_id, correlation_id, causation_id, blobs }
    }
}

/// The stored events of every successful command as one slice for the inline projector, moved out of the
/// slots (not copied), with how many each command had.
fn take_events(slots: &mut [Slot]) -> (Vec<RecordedEvent>, Vec<usize>) {
    let mut counts = Vec::new();
    let mut events: Vec<RecordedEvent> = Vec::new();
    for slot in slots.iter_mut() {
        if let Slot::Appended { appended, .. } = slot {
            counts.push(appended.events.len());
            events.append(&mut appended.events);
        }
    }
    (events, counts)
}

/// Puts back what [`take_events`] took, marking whether the inline read models applied them.
fn give_back_events(slots: &mut [Slot], events: Vec<RecordedEvent>, counts: &[usize], read_models_applied: bool) {
    let mut events = events.into_iter();
    let appended = slots.iter_mut().filter_map(|slot| match slot {
        Slot::Appended { appended, .. } => Some(appended),
        Slot::Refused { .. } => None,
    });
    for (appended, count) in appended.zip(counts) {
        appended.events = events.by_ref().take(*count).collect();
        appended.read_models_applied = read_models_applied;
    }
}

fn validate(command: &NewCommand) -> Result<(), AppendError> {
    if command.events.is_empty() {
        return Err(AppendError::Invalid("a command must append at least one event".into()));
    }
    // PostgreSQL can store U+0000 neither in text nor in jsonb; refuse it here so it cannot fail a batch.
    let texts = [&command.idempotency_key, &command.trace_id, &command.correlation_id, &command.causation_id];
    let mut has_nul = texts.iter().any(|text| text.as_deref().is_some_and(|text| text.contains('\0')));
    for event in &command.events {
        has_nul |= event.actor.id.contains('\0')
            || event.data.stream.id.contains('\0')
            || event.data.event_type.contains('\0')
            || event.data.note.as_deref().is_some_and(|note| note.contains('\0'))
            || event.unique_keys.iter().any(|key| key.contains('\0'))
            || contains_nul(&event.data.payload)
            || event.data.before.as_ref().is_some_and(contains_nul)
            || event.data.after.as_ref().is_some_and(contains_nul);
    }
    if has_nul {
        return Err(AppendError::Invalid("text must not contain the NUL character (U+0000)".into()));
    }
    let mut blob_bytes = 0;
    for blob in &command.blobs {
        if blob.size_bytes() > MAX_INLINE_BLOB_BYTES {
            return Err(AppendError::Invalid(format!(
                "blob {} has {} bytes; at most {MAX_INLINE_BLOB_BYTES} are stored with the events",
                blob.digest,
                blob.size_bytes()
            )));
        }
        if blob.digest != crate::blob::sha256_digest(&blob.content) {
            return Err(AppendError::Invalid(format!("blob {} is not the SHA-256 of its content", blob.digest)));
        }
        blob_bytes += blob.size_bytes();
    }
    if blob_bytes > MAX_INLINE_BLOB_BYTES_PER_COMMAND {
        return Err(AppendError::Invalid(format!(
            "a command carries {blob_bytes} bytes of blobs in all; at most {MAX_INLINE_BLOB_BYTES_PER_COMMAND}"
        )));
    }
    Ok(())
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(key, value)| key.contains('\0') || contains_nul(value)),
        _ => false,
    }
}

/// The idempotency key's entry in `unique_claims`.
fn idempotency_claim(key: &str) -> String {
    format!("idempotency:{key}")
}

/// Appends `commands` inside the caller's transaction, without committing: takes the append lock, checks each
/// command against the log as it stands (and against the commands before it in the batch), inserts the events
/// of the commands that pass, and queues the `NOTIFY` for commit. Public so tests can hold a transaction open.
pub async fn append_batch(
    conn: &mut PgConnection,
    commands: Vec<NewCommand>,
) -> anyhow::Result<Vec<Result<Appended, AppendError>>> {
    for command in &commands {
        if let Err(error) = validate(command) {
            anyhow::bail!("{error}");
        }
    }
    match append_slots(conn, commands).await {
        Ok(slots) => Ok(slots.into_iter().map(Slot::into_result).collect()),
        Err(failed) => Err(failed.error),
    }
}

/// [`append_batch`] for commands [`validate`] has passed (the batching task's, checked in
/// [`EventStore::append`] before they were queued: walking every payload again would cost as much). A failure
/// gives the commands back.
async fn append_slots(conn: &mut PgConnection, commands: Vec<NewCommand>) -> Result<Vec<Slot>, Failed> {
    let state = match read_under_lock(conn, &commands).await {
        Ok(state) => state,
        Err(error) => return Err(Failed { error, commands }),
    };
    let (slots, blobs, after) = record_batch(commands, state);
    let head_position = after.head_position;
    let mut rows_to_insert = InsertColumns::default();
    for slot in &slots {
        if let Slot::Appended { appended, .. } = slot {
            for record in &appended.events {
                rows_to_insert.push(record);
            }
        }
    }
    for (blob, position) in &blobs {
        rows_to_insert.push_blob(blob, *position);
    }
    if !rows_to_insert.is_empty() {
        if let Err(error) = rows_to_insert.into_statement(head_position).execute(conn).await {
            return Err(Failed { error, commands: slots.into_iter().map(Slot::into_command).collect() });
        }
    }
    Ok(slots)
}

/// What a batch is checked against, read under the append lock.
struct LogState {
    head_position: i64,
    head_hash: Vec<u8>,
    versions: HashMap<(String, String), i32>,
    claims: HashMap<String, StreamId>,
}

/// Takes the append lock and reads what the batch's checks need ([`insert::lock_and_read`]).
async fn read_under_lock(conn: &mut PgConnection, commands: &[NewCommand]) -> anyhow::Result<LogState> {
    let rows = insert::lock_and_read(commands).fetch_all(conn).await?;
    log_state_of!(rows, sqlx::Error)
}

/// Checks each command against the log and the batch's earlier commands and makes the records of those that
/// pass (positions, stream versions, hashes); returns the slots, the blobs to store (each once, with the position
/// of the first event of the command that carried it) and the log as the batch leaves it.
fn record_batch(commands: Vec<NewCommand>, state: LogState) -> (Vec<Slot>, Vec<(NewBlob, i64)>, LogState) {
    let LogState { mut head_position, mut head_hash, mut versions, mut claims } = state;
    let ts = now_micros();
    let mut results = Vec::with_capacity(commands.len());
    // Each blob once per batch, with the position of the first event of the command that carried it.
    let mut blobs: Vec<(NewBlob, i64)> = Vec::new();
    let mut blob_digests = std::collections::HashSet::new();
    for command in commands {
        match check(&command, &versions, &claims) {
            Err(error) => results.push(Slot::Refused { error, command }),
            Ok(()) => {
                for blob in &command.blobs {
                    if blob_digests.insert(blob.digest.clone()) {
                        blobs.push((blob.clone(), head_position + 1));
                    }
                }
                let mut recorded = Vec::with_capacity(command.events.len());
                for event in command.events {
                    let stream_key = (event.data.stream.kind.as_str().to_owned(), event.data.stream.id.clone());
                    let version = versions.entry(stream_key).or_insert(0);
                    *version += 1;
                    head_position += 1;
                    let event_id = ulid::Ulid::new().to_string();
                    let mut unique_keys = event.unique_keys;
                    if recorded.is_empty() {
                        if let Some(key) = &command.idempotency_key {
                            unique_keys.insert(0, idempotency_claim(key));
                        }
                    }
                    for key in &unique_keys {
                        claims.insert(key.clone(), event.data.stream.clone());
                    }
                    let mut record = RecordedEvent {
                        position: head_position,
                        event_id,
                        ts,
                        stream: event.data.stream,
                        stream_version: *version,
                        event_type: event.data.event_type,
                        schema_version: event.data.schema_version,
                        payload: event.data.payload,
                        action: event.data.action,
                        actor_kind: event.actor.kind,
                        actor_id: event.actor.id,
                        before: event.data.before,
                        after: event.data.after,
                        note: event.data.note,
                        trace_id: command.trace_id.clone(),
                        correlation_id: command.correlation_id.clone(),
                        causation_id: command.causation_id.clone(),
                        idempotency_key: command.idempotency_key.clone(),
                        unique_keys,
                        prev_hash: head_hash,
                        hash: Vec::new(),
                    };
                    // The values as jsonb will give them back (no `-0.0`, no exponents on integers): what is
                    // hashed is what the verifier and every reader read.
                    as_jsonb_reads_back(&mut record.payload);
                    record.before.iter_mut().chain(record.after.iter_mut()).for_each(as_jsonb_reads_back);
                    record.hash = chain_hash(&record.prev_hash, &canonical_bytes(&canonical_of(&record))).to_vec();
                    head_hash = record.hash.clone();
                    recorded.push(record);
                }
                results.push(Slot::Appended {
                    appended: Appended { events: recorded, read_models_applied: false },
                    expected: command.expected,
                    blobs: command.blobs,
                });
            }
        }
    }
    (results, blobs, LogState { head_position, head_hash, versions, claims })
}

/// Checks one command against the versions and claims as they stand, including earlier commands of the batch.
fn check(
    command: &NewCommand,
    versions: &HashMap<(String, String), i32>,
    claims: &HashMap<String, StreamId>,
) -> Result<(), AppendError> {
    if let Some(key) = &command.idempotency_key {
        if let Some(existing) = claims.get(&idempotency_claim(key)) {
            return Err(AppendError::DuplicateIdempotencyKey { key: key.clone(), existing: existing.clone() });
        }
    }
    for (stream, expected) in &command.expected {
        let actual = versions.get(&(stream.kind.as_str().to_owned(), stream.id.clone())).copied().unwrap_or(0);
        let ok = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exactly(version) => actual == *version,
        };
        if !ok {
            return Err(AppendError::Conflict { stream: stream.clone(), expected: *expected, actual });
        }
    }
    let mut claimed_here: HashMap<&str, &StreamId> = HashMap::new();
    for event in &command.events {
        for key in &event.unique_keys {
            let owner = claims.get(key).or_else(|| claimed_here.get(key.as_str()).copied());
            if let Some(existing) = owner {
                if *existing != event.data.stream {
                    return Err(AppendError::UniqueKeyTaken { key: key.clone(), existing: existing.clone() });
                }
            }
            claimed_here.insert(key, &event.data.stream);
        }
    }
    Ok(())
}

pub(crate) fn canonical_of(record: &RecordedEvent) -> CanonicalEvent<'_> {
    CanonicalEvent {
        position: record.position,
        event_id: &record.event_id,
        ts: record.ts,
        entity_kind: record.stream.kind.as_str(),
        entity_id: &record.stream.id,
        stream_version: record.stream_version,
        event_type: &record.event_type,
        schema_version: record.schema_version,
        payload: &record.payload,
        action: record.action.as_str(),
        actor_kind: record.actor_kind.as_str(),
        actor_id: &record.actor_id,
        before: record.before.as_ref(),
        after: record.after.as_ref(),
        note: record.note.as_deref(),
        trace_id: record.trace_id.as_deref(),
        correlation_id: record.correlation_id.as_deref(),
        causation_id: record.causation_id.as_deref(),
        idempotency_key: record.idempotency_key.as_deref(),
        unique_keys: &record.unique_keys,
    }
}

/// The current time at the microsecond precision PostgreSQL stores, so hashes recompute from stored rows.
fn now_micros() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now is representable")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Param;

    fn statement(what: &'static str, planning: Planning) -> Statement<'static> {
        Statement { sql: what, params: vec![Param::Int8(1)], planning, what }
    }

    #[test]
    fn generic_statements_go_last_behind_one_set_local() {
        let read_models = [
            statement("move checkpoints", Planning::Cached),
            statement("insert tasks", Planning::Cached),
            statement("update tasks", Planning::Generic),
            statement("apply cwom", Planning::EachTime),
            statement("write queue rows", Planning::Generic),
        ];
        let steps: Vec<&str> = read_model_steps(&read_models).iter().map(Step::what).collect();
        assert_eq!(
            steps,
            ["move checkpoints", "insert tasks", "apply cwom", GENERIC_PLAN_ON, "update tasks", "write queue rows"]
        );
    }

    #[test]
    fn without_generic_statements_nothing_is_set() {
        let read_models = [statement("move checkpoints", Planning::Cached), statement("apply cwom", Planning::Cached)];
        let steps: Vec<&str> = read_model_steps(&read_models).iter().map(Step::what).collect();
        assert_eq!(steps, ["move checkpoints", "apply cwom"]);
    }
}
