//! The `task_queue` read model: queued and leased tasks only, the hot table workers claim from.
//!
//! Each row reflects its task's stream up to `version`, and [`QueueProjection::apply`] ignores an event the row
//! already reflects. A row depends on its own stream only, so a claimer may apply a claim's events to it as soon
//! as they commit (the next claimer sees the lease at once) and the runner applies them again later without
//! effect; a rebuild from the log gives the same rows. Claimers pick from it with [`claim_candidates`].

use std::collections::HashMap;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::event::EntityKind;
use domain::task::lifecycle::events;
use domain::task::run::{TaskClaimed, TaskLeaseRenewed, TaskReleased, TaskRetryScheduled};
use serde::Deserialize as _;
use sqlx::{PgConnection, Row as _};
use store::sql::{Param, Statement};
use store::RecordedEvent;

use crate::Projection;

/// Folds task events into `task_queue`.
pub struct QueueProjection;

impl QueueProjection {
    pub const NAME: &'static str = "task_queue";
    pub const VERSION: i32 = 1;
}

#[async_trait]
impl Projection for QueueProjection {
    fn name(&self) -> &'static str {
        QueueProjection::NAME
    }

    fn version(&self) -> i32 {
        QueueProjection::VERSION
    }

    fn schema(&self) -> &'static str {
        include_str!("../../../projections/task_queue/schema.sql")
    }

    /// Task events only: every other kind of event leaves it unchanged.
    fn entity_kinds(&self) -> Option<&'static [EntityKind]> {
        Some(&[EntityKind::Task])
    }

    /// Its fold reads payloads only.
    fn folds_images(&self) -> bool {
        false
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> anyhow::Result<()> {
        let task_id = &event.stream.id;
        match effect(event)? {
            Effect::Enqueued(row) => {
                sqlx::query(include_str!("../../../projections/task_queue/insert_queued.sql"))
                    .bind(task_id)
                    .bind(row.due_at)
                    .bind(event.stream_version)
                    .execute(conn)
                    .await
                    .context("insert a queued task")?;
            }
            Effect::Set(row) => {
                sqlx::query(include_str!("../../../projections/task_queue/update_row.sql"))
                    .bind(task_id)
                    .bind(row.state)
                    .bind(row.due_at)
                    .bind(row.attempt)
                    .bind(row.worker_id)
                    .bind(event.stream_version)
                    .execute(conn)
                    .await
                    .context("update a queue row")?;
            }
            Effect::Leave => {
                sqlx::query(include_str!("../../../projections/task_queue/delete_row.sql"))
                    .bind(task_id)
                    .execute(conn)
                    .await
                    .context("remove a finished task from the queue")?;
            }
            Effect::None => {}
        }
        Ok(())
    }

    /// Set-based: each task's rows after the batch, written with at most three statements.
    fn batch_statements<'e>(&self, events: &'e [RecordedEvent]) -> anyhow::Result<Option<Vec<Statement<'e>>>> {
        #[derive(Default)]
        struct Pending {
            enqueued: bool,
            leaves: bool,
            row: Option<(Row, i32)>,
        }
        let mut order: Vec<&str> = Vec::new();
        let mut pending: HashMap<&str, Pending> = HashMap::new();
        for event in events {
            let effect = effect(event)?;
            if matches!(effect, Effect::None) {
                continue;
            }
            let task_id = event.stream.id.as_str();
            let entry = pending.entry(task_id).or_insert_with(|| {
                order.push(task_id);
                Pending::default()
            });
            match effect {
                Effect::Enqueued(row) => {
                    *entry = Pending { enqueued: true, leaves: false, row: Some((row, event.stream_version)) };
                }
                Effect::Set(row) => entry.row = Some((row, event.stream_version)),
                Effect::Leave => *entry = Pending { enqueued: false, leaves: true, row: None },
                Effect::None => {}
            }
        }
        let mut leaving = Vec::new();
        let (mut upserts, mut updates) = (Rows::default(), Rows::default());
        for task_id in order {
            let entry = &pending[task_id];
            match (&entry.row, entry.enqueued) {
                _ if entry.leaves => leaving.push(task_id.to_owned()),
                (Some((row, version)), true) => upserts.push(task_id, row, *version),
                (Some((row, version)), false) => updates.push(task_id, row, *version),
                (None, _) => {}
            }
        }
        if leaving.is_empty() && upserts.task_id.is_empty() && updates.task_id.is_empty() {
            return Ok(Some(Vec::new()));
        }
        // One statement for the three kinds of change.
        let mut params = vec![Param::OwnedTexts(leaving)];
        params.extend(upserts.into_params());
        params.extend(updates.into_params());
        Ok(Some(vec![Statement::generic(
            "write queue rows",
            include_str!("../../../projections/task_queue/write_rows.sql"),
            params,
        )]))
    }

    async fn apply_batch(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        crate::execute_all(conn, self.batch_statements(events)?).await
    }
}

/// A queue row's content.
struct Row {
    state: &'static str,
    due_at: DateTime<Utc>,
    attempt: i32,
    worker_id: Option<String>,
}

impl Row {
    fn leased(until: DateTime<Utc>, attempt: u32, worker_id: String) -> Row {
        Row { state: "leased", due_at: until, attempt: attempt as i32, worker_id: Some(worker_id) }
    }

    fn queued(due_at: DateTime<Utc>, attempt: u32) -> Row {
        Row { state: "queued", due_at, attempt: attempt as i32, worker_id: None }
    }
}

/// What one event does to its task's row.
enum Effect {
    /// The task enters the queue (`TaskEnqueued`).
    Enqueued(Row),
    /// The row becomes this (claims, renewals, retries, releases).
    Set(Row),
    /// The task leaves the queue (completed, failed, cancelled).
    Leave,
    None,
}

fn effect(event: &RecordedEvent) -> anyhow::Result<Effect> {
    if event.stream.kind != EntityKind::Task {
        return Ok(Effect::None);
    }
    let payload = &event.payload;
    Ok(match event.event_type.as_str() {
        events::TASK_ENQUEUED => {
            let queued_at: DateTime<Utc> = payload["queued_at"]
                .as_str()
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                .map_or(event.ts, |ts| ts.with_timezone(&Utc));
            Effect::Enqueued(Row::queued(queued_at, 0))
        }
        events::TASK_CLAIMED => {
            let claimed = TaskClaimed::deserialize(payload)?;
            Effect::Set(Row::leased(claimed.lease_expires_at, claimed.attempt, claimed.worker_id))
        }
        events::TASK_LEASE_RENEWED => {
            let renewed = TaskLeaseRenewed::deserialize(payload)?;
            Effect::Set(Row::leased(renewed.lease_expires_at, renewed.attempt, renewed.worker_id))
        }
        events::TASK_RETRY_SCHEDULED => {
            let retry = TaskRetryScheduled::deserialize(payload)?;
            Effect::Set(Row::queued(retry.retry_at, retry.attempt))
        }
        events::TASK_RELEASED => {
            let released = TaskReleased::deserialize(payload)?;
            Effect::Set(Row::queued(released.released_at, released.attempt))
        }
        events::TASK_COMPLETED | events::TASK_FAILED | events::TASK_CANCELLED => Effect::Leave,
        _ => Effect::None,
    })
}

/// Column arrays of rows to write with one statement (`write_rows.sql`).
#[derive(Default)]
struct Rows {
    task_id: Vec<String>,
    state: Vec<&'static str>,
    due_at: Vec<DateTime<Utc>>,
    attempt: Vec<i32>,
    worker_id: Vec<Option<String>>,
    version: Vec<i32>,
}

impl Rows {
    /// The six arrays of `write_rows.sql`: task ids, states, due times, attempts, worker ids, versions.
    fn into_params(self) -> [Param<'static>; 6] {
        [
            Param::OwnedTexts(self.task_id),
            Param::Texts(self.state),
            Param::Timestamps(self.due_at),
            Param::Int4s(self.attempt),
            Param::OptionalOwnedTexts(self.worker_id),
            Param::Int4s(self.version),
        ]
    }

    fn push(&mut self, task_id: &str, row: &Row, version: i32) {
        self.task_id.push(task_id.to_owned());
        self.state.push(row.state);
        self.due_at.push(row.due_at);
        self.attempt.push(row.attempt);
        self.worker_id.push(row.worker_id.clone());
        self.version.push(version);
    }
}

/// Catches the queue up with the log without queueing behind another applier for long: the checkpoint lock is
/// awaited at most `patience` (an applier applying a few events is done by then; a projector applying a large
/// batch is not, and the caller goes on: that projector is doing the work). Same transaction discipline as `runner::apply_batch` (the checkpoint moves with
/// the rows), but it fetches only the task events the queue folds: it scans a stretch of positions (all of them
/// visible, since appends commit in position order), applies the events of interest in it, and moves the
/// checkpoint to the end of the stretch. Returns how many events were applied.
pub async fn catch_up_briefly(
    pool: &sqlx::PgPool,
    upcasters: &store::Upcasters,
    patience: std::time::Duration,
) -> anyhow::Result<usize> {
    // Without locking first: an idle catch-up holding the checkpoint row would make appends skip the queue.
    if !crate::runner::is_behind(pool, QueueProjection::NAME).await? {
        return Ok(0);
    }
    let mut applied = 0;
    loop {
        let mut tx = pool.begin().await?;
        sqlx::query(&format!("set local lock_timeout = '{}ms'", patience.as_millis().max(1))).execute(&mut *tx).await?;
        let row: Option<(i32, i64)> =
            match sqlx::query_as("select version, position from projection_checkpoints where name = $1 for update")
                .bind(QueueProjection::NAME)
                .fetch_optional(&mut *tx)
                .await
            {
                Ok(row) => row,
                // 55P03 lock_not_available: another applier is at work.
                Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => return Ok(applied),
                Err(error) => return Err(error).context("lock the task_queue checkpoint"),
            };
        let Some((version, position)) = row else { return Ok(applied) };
        if version != QueueProjection::VERSION {
            return Ok(applied);
        }
        sqlx::query("set local lock_timeout = 0").execute(&mut *tx).await?;
        // Only the events the queue folds are fetched (not the large payloads of runs and CWOM objects); the
        // checkpoint moves to the end of the stretch scanned, every position of which was visible.
        let end = store::read::stretch_end(&mut *tx, position, CLAIM_CATCH_UP_BATCH).await?;
        let Some(end) = end else { return Ok(applied) };
        let rows: Vec<ScannedRow> = sqlx::query_as(include_str!("../../../projections/task_queue/scan_events.sql"))
            .bind(position)
            .bind(end)
            .bind(&FOLDED_EVENT_TYPES[..])
            .fetch_all(&mut *tx)
            .await
            .context("read the task events the queue folds")?;
        let events: Vec<RecordedEvent> = rows.into_iter().map(|row| upcasters.upcast(row.into_event())).collect();
        QueueProjection.apply_batch(&mut tx, &events).await?;
        sqlx::query("update projection_checkpoints set position = $2, updated_at = now() where name = $1")
            .bind(QueueProjection::NAME)
            .bind(end)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        applied += events.len();
        if end - position < CLAIM_CATCH_UP_BATCH {
            return Ok(applied);
        }
    }
}

/// The event types [`effect`] acts on.
const FOLDED_EVENT_TYPES: [&str; 8] = [
    events::TASK_ENQUEUED,
    events::TASK_CLAIMED,
    events::TASK_LEASE_RENEWED,
    events::TASK_RETRY_SCHEDULED,
    events::TASK_RELEASED,
    events::TASK_COMPLETED,
    events::TASK_FAILED,
    events::TASK_CANCELLED,
];

/// The columns of a task event the queue needs.
#[derive(sqlx::FromRow)]
struct ScannedRow {
    position: i64,
    event_id: String,
    ts: DateTime<Utc>,
    entity_id: String,
    stream_version: i32,
    event_type: String,
    schema_version: i32,
    payload: serde_json::Value,
}

impl ScannedRow {
    /// The event with the columns the queue does not read left empty.
    fn into_event(self) -> RecordedEvent {
        RecordedEvent {
            position: self.position,
            event_id: self.event_id,
            ts: self.ts,
            stream: domain::event::StreamId::new(EntityKind::Task, self.entity_id),
            stream_version: self.stream_version,
            event_type: self.event_type,
            schema_version: self.schema_version,
            payload: self.payload,
            action: domain::event::Action::Updated,
            actor_kind: domain::event::ActorKind::System,
            actor_id: String::new(),
            before: None,
            after: None,
            note: None,
            trace_id: None,
            correlation_id: None,
            causation_id: None,
            idempotency_key: None,
            unique_keys: Vec::new(),
            prev_hash: Vec::new(),
            hash: Vec::new(),
        }
    }
}

/// How many events one claimer's catch-up transaction applies at most.
const CLAIM_CATCH_UP_BATCH: i64 = 2000;

/// What a claimer reads in one round trip ([`claim_candidates`]).
#[derive(Debug, Clone)]
pub struct Candidates {
    /// The database's clock that decided what is due (microseconds, as the log stores them).
    pub now: DateTime<Utc>,
    /// The picked tasks' events, their CWOM Issues' and the ContextPackets and ConstraintSnapshots those link,
    /// without before/after images, in log order.
    pub events: Vec<RecordedEvent>,
    /// The picked tasks, oldest first.
    pub task_ids: Vec<String>,
}

/// The tasks the queue holds, by state, as of the position its checkpoint stands at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// The queue's checkpoint: the counts reflect the log up to this position, no more and no less.
    pub checkpoint: i64,
    /// Tasks waiting to be claimed (due now or later): status `queued`.
    pub queued: i64,
    /// Tasks under a lease, expired or not: status `running`.
    pub leased: i64,
}

/// [`QueueCounts`], read in one snapshot with the checkpoint; `None` when the queue is not installed. O(queue),
/// never O(tasks).
pub async fn count_at_checkpoint(pool: &sqlx::PgPool) -> anyhow::Result<Option<QueueCounts>> {
    let mut snapshot = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only").execute(&mut *snapshot).await?;
    let checkpoint: Option<i64> = sqlx::query_scalar("select position from projection_checkpoints where name = $1")
        .bind(QueueProjection::NAME)
        .fetch_optional(&mut *snapshot)
        .await
        .context("read the task_queue checkpoint")?;
    let by_state: Vec<(String, i64)> =
        sqlx::query_as(include_str!("../../../projections/task_queue/count_by_state.sql"))
            .fetch_all(&mut *snapshot)
            .await
            .context("count the task_queue by state")?;
    snapshot.commit().await?;
    let count = |state: &str| by_state.iter().find(|(found, _)| found == state).map_or(0, |(_, count)| *count);
    Ok(checkpoint.map(|checkpoint| QueueCounts { checkpoint, queued: count("queued"), leased: count("leased") }))
}

/// The claim's one read ([`claim_candidates`]): `$1` the tasks wanted, `$2` the window they are drawn from, `$3` the
/// tasks to leave out.
pub const CLAIM_CANDIDATES_SQL: &str = include_str!("../../../projections/task_queue/claim_candidates.sql");

/// Up to `limit` tasks claimable now (queued and due, or under an expired lease), drawn at random from the
/// `window` due longest, with everything deciding their claims needs, in one statement and no transaction
/// (`projections/task_queue/claim_candidates.sql`): newly enqueued tasks the projector has not applied yet are
/// admitted to the queue first, so a task is claimable as soon as its enqueue commits. Nothing is reserved:
/// the claim's append expects each stream at the version read here, so a task another claimer took meanwhile
/// is a conflict, never a second claim.
pub async fn claim_candidates(
    pool: &sqlx::PgPool,
    limit: usize,
    window: usize,
    exclude: &[String],
) -> anyhow::Result<Candidates> {
    let rows = sqlx::query(CLAIM_CANDIDATES_SQL)
        .bind(i64::try_from(limit).context("claim limit out of range")?)
        .bind(i64::try_from(window.max(limit)).context("claim window out of range")?)
        .bind(exclude)
        .fetch_all(pool)
        .await
        .context("pick claimable tasks and read their streams")?;
    let now: DateTime<Utc> = rows.first().context("the claim read returns the clock")?.try_get("now")?;
    let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<Option<i64>, _>("position")?.is_some() {
            events.push(RecordedEvent::from_row(row).context("decode a claim candidate's event")?);
        }
    }
    let task_ids = events
        .iter()
        .filter(|event| event.stream.kind == EntityKind::Task && event.stream_version == 1)
        .map(|event| event.stream.id.clone())
        .collect();
    Ok(Candidates { now, events, task_ids })
}

/// Applies events of one task stream to its row (inline, in the caller's transaction). Events the row already
/// reflects change nothing.
pub async fn apply_inline(conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
    QueueProjection.apply_batch(conn, events).await
}
