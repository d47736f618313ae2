//! Rebuilding a read model beside the live one, then swapping it in atomically.
//!
//! The new version's tables are created in a shadow schema `rebuild_<name>` and folded from the whole log in
//! batches while the live tables keep serving. The swap transaction locks the live checkpoint row (pausing the
//! live projector), folds the last events into the shadow, moves the shadow tables into `public` in place of
//! the old ones, and records the new version and position. Readers block for the length of that transaction
//! only. A rebuild that dies part-way leaves the live model untouched; the next one starts over.
//!
//! The log is folded in stretches of positions. A projection that declares the kinds of event it folds
//! ([`Projection::entity_kinds`]) is handed only those, read with a filter, but every stretch covers every
//! position up to the head read at the start (all committed, since appends commit in position order), so its
//! checkpoint still moves to the end of the log; one that folds neither `before` nor `after`
//! ([`Projection::folds_images`]) gets events without them. The next stretches are read, two at a time on
//! connections of their own, while the current one is folded.
//!
//! The shadow tables are folded without their secondary indexes (neither unique nor a primary key), which are
//! built once over the folded rows before the swap; a fold never needs them. A projection with an
//! [`InMemoryFold`] ([`Projection::in_memory_fold`]) folds the stretches in memory and writes its tables once, at
//! the end, instead of applying a batch per stretch, on logs of up to [`IN_MEMORY_MAX_POSITIONS`] events (its memory
//! grows with the folded objects). [`rebuild_all`] rebuilds several projections at once.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use domain::event::EntityKind;
use sqlx::{PgConnection, PgPool};
use store::read::{read_after, read_range, Images};
use store::{RecordedEvent, Upcasters};
use tokio::sync::mpsc;

use crate::Projection;

/// How many events a `jct replay` transaction folds.
const REBUILD_BATCH_SIZE: i64 = 5000;
/// About how many events a rebuild transaction folds: a stretch of positions is sized (from the share of
/// events the previous stretch held) to hold about this many of the projection's events.
const REBUILD_EVENTS_PER_STRETCH: i64 = 5000;
/// How many stretches a rebuild reads at once (each on a connection of its own; returned in order).
const READERS: usize = 2;
/// The longest stretch of positions one rebuild transaction covers.
const REBUILD_MAX_STRETCH: i64 = 200_000;
/// The longest log a projection's [`InMemoryFold`] is used for; longer ones are folded batch by batch.
const IN_MEMORY_MAX_POSITIONS: i64 = 2_000_000;

/// A fold of the whole log into a projection's empty tables, kept in memory until it is written
/// ([`Projection::in_memory_fold`]).
#[async_trait]
pub trait InMemoryFold: Send {
    /// Folds the next events of the log, in order: those of the projection's kinds, if it declares them.
    fn fold(&mut self, events: Vec<RecordedEvent>);
    /// Writes what was folded into the projection's tables, empty until now, in one or more transactions of
    /// `tables` (several at once, if it likes). If it fails, the whole rebuild fails and its shadow tables are
    /// dropped the next time, so what it committed before failing does not matter.
    async fn write(self: Box<Self>, tables: &ShadowTables) -> anyhow::Result<()>;
}

/// The empty tables an [`InMemoryFold`] writes: transactions whose search path leads to them.
#[derive(Debug, Clone)]
pub struct ShadowTables {
    pool: PgPool,
    schema: String,
}

impl ShadowTables {
    /// The tables of `schema` (created, with the projection's tables in it), reached through `pool`.
    pub fn new(pool: PgPool, schema: impl Into<String>) -> ShadowTables {
        ShadowTables { pool, schema: schema.into() }
    }

    /// A transaction on a connection of its own whose search path leads to the tables first (then `public`).
    /// Its commit does not wait for the disk: a rebuild that dies starts over.
    pub async fn begin(&self) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("set local synchronous_commit = off").execute(&mut *tx).await?;
        use_schema(&mut tx, &self.schema).await?;
        Ok(tx)
    }
}

/// Progress of a rebuild, reported after each batch.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Every event up to here has been folded (or skipped, if the projection ignores its kind).
    pub position: i64,
    pub head: i64,
    /// Events of the log folded so far, those the projection skips by kind included.
    pub applied: u64,
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy)]
pub struct Rebuilt {
    pub version: i32,
    pub position: i64,
    /// Events of the log folded, those the projection skips by kind included.
    pub applied: u64,
    /// Events read and handed to the projection: those of its kinds (every event, if it declares none).
    pub read: u64,
}

fn shadow_schema(projection: &dyn Projection) -> String {
    format!("rebuild_{}", projection.name())
}

async fn use_schema(conn: &mut PgConnection, schema: &str) -> anyhow::Result<()> {
    // `set local` ends with the transaction, so pooled connections go back with their default path. `public`
    // stays on the path for `audit_log`; the shadow comes first, so the projection's own tables resolve there.
    sqlx::query(&format!("set local search_path to {schema}, public")).execute(conn).await?;
    Ok(())
}

/// What a rebuild reads of each event in the log: the kinds of stream it folds (`None`: all) and whether with
/// the `before` and `after` images.
type Filter = (Option<&'static [EntityKind]>, Images);

fn filter_of(projection: &dyn Projection) -> Filter {
    let images = if projection.folds_images() { Images::Included } else { Images::LeftOut };
    (projection.entity_kinds(), images)
}

/// The events of a stretch `(after, up_to]`: all, or those of the filter's kinds, upcast.
async fn read_stretch<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    upcasters: &Upcasters,
    (kinds, images): Filter,
    after: i64,
    up_to: i64,
) -> anyhow::Result<Vec<RecordedEvent>> {
    let events = read_range(executor, after, up_to, kinds, images).await?;
    Ok(events.into_iter().map(|event| upcasters.upcast(event)).collect())
}

/// The next stretch's length: sized to hold about [`REBUILD_EVENTS_PER_STRETCH`] events, judging by the last.
fn next_stretch(length: i64, n_events: usize) -> i64 {
    let n_events = (n_events as i64).max(1);
    (length.saturating_mul(REBUILD_EVENTS_PER_STRETCH) / n_events)
        .clamp(REBUILD_EVENTS_PER_STRETCH, REBUILD_MAX_STRETCH)
}

/// A stretch read ahead: the end of its positions and its events.
type Stretch = anyhow::Result<(i64, Vec<RecordedEvent>)>;

/// Reads the stretches of `(after, head]` on a task of its own, [`READERS`] at a time, and hands them over in order,
/// one ahead of the consumer; aborted when dropped.
struct ReadAhead {
    stretches: mpsc::Receiver<Stretch>,
    reader: tokio::task::JoinHandle<()>,
}

impl ReadAhead {
    fn spawn(pool: PgPool, upcasters: Upcasters, filter: Filter, after: i64, head: i64) -> ReadAhead {
        use futures::StreamExt as _;
        let (send, stretches) = mpsc::channel(1);
        let reader = tokio::spawn(async move {
            // Each stretch's length comes from the share of events in the last one read.
            let length = std::sync::atomic::AtomicI64::new(REBUILD_EVENTS_PER_STRETCH);
            let bounds = futures::stream::unfold(after, |after| {
                let up_to = after.saturating_add(length.load(std::sync::atomic::Ordering::Relaxed)).min(head);
                std::future::ready((after < head).then_some(((after, up_to), up_to)))
            });
            let mut reads = bounds
                .map(|(after, up_to)| {
                    let (pool, upcasters, length) = (&pool, &upcasters, &length);
                    async move {
                        let events = read_stretch(pool, upcasters, filter, after, up_to).await?;
                        let next = next_stretch(up_to - after, events.len());
                        length.store(next, std::sync::atomic::Ordering::Relaxed);
                        Ok((up_to, events))
                    }
                })
                .buffered(READERS);
            while let Some(stretch) = reads.next().await {
                let failed = stretch.is_err();
                if send.send(stretch).await.is_err() || failed {
                    return;
                }
            }
        });
        ReadAhead { stretches, reader }
    }

    async fn next(&mut self) -> anyhow::Result<Option<(i64, Vec<RecordedEvent>)>> {
        self.stretches.recv().await.transpose()
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn apply(conn: &mut PgConnection, projection: &dyn Projection, events: &[RecordedEvent]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    projection.apply_batch(conn, events).await.with_context(|| format!("rebuild {}", projection.name()))
}

/// Builds `projection` at its code version from the whole log beside the live tables, then swaps it in.
pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    upcasters: &Upcasters,
    on_progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<Rebuilt> {
    let started = std::time::Instant::now();
    let shadow = shadow_schema(projection);
    sqlx::raw_sql(&format!("drop schema if exists {shadow} cascade; create schema {shadow}"))
        .execute(pool)
        .await
        .context("create the shadow schema")?;
    {
        let mut tx = pool.begin().await?;
        use_schema(&mut tx, &shadow).await?;
        sqlx::raw_sql(projection.schema()).execute(&mut *tx).await.context("create the shadow tables")?;
        tx.commit().await?;
    }

    let secondary_indexes = drop_secondary_indexes(pool, &shadow).await?;

    let filter = filter_of(projection);
    let (mut position, mut applied, mut read) = (0_i64, 0_u64, 0_u64);
    let head = store::read::head_position(pool).await?;
    let mut stretches = ReadAhead::spawn(pool.clone(), upcasters.clone(), filter, position, head);
    // Memory grows with the folded objects (about 1.8 GB at the peak for a million enqueue-shaped events), so a
    // longer log takes the batch path, whose memory does not grow with the log.
    let mut in_memory = if head <= IN_MEMORY_MAX_POSITIONS { projection.in_memory_fold() } else { None };
    while let Some((up_to, events)) = stretches.next().await? {
        let n_events = events.len();
        if let Some(mut fold) = in_memory.take() {
            // Off the async threads, so the reader (and other rebuilds) go on meanwhile.
            let folded = tokio::task::spawn_blocking(move || {
                fold.fold(events);
                fold
            });
            in_memory = Some(folded.await.context("fold in memory")?);
        } else {
            let mut tx = pool.begin().await?;
            // A rebuild that dies starts over, so its batches need not wait for their commit to reach the disk.
            sqlx::query("set local synchronous_commit = off").execute(&mut *tx).await?;
            use_schema(&mut tx, &shadow).await?;
            apply(&mut tx, projection, &events).await?;
            tx.commit().await?;
            // Freeing thousands of JSON trees takes a while; not on the way to the next stretch.
            tokio::task::spawn_blocking(move || drop(events));
        }
        applied += (up_to - position) as u64;
        read += n_events as u64;
        position = up_to;
        on_progress(Progress { position, head, applied });
    }
    drop(stretches);
    anyhow::ensure!(position == head, "the rebuild's reader stopped at position {position} of {head}");
    tracing::debug!(projection = projection.name(), "rebuild: {read} events folded, {:?} in", started.elapsed());
    if let Some(fold) = in_memory {
        let tables = ShadowTables::new(pool.clone(), &shadow);
        fold.write(&tables).await.with_context(|| format!("write the rebuilt {}", projection.name()))?;
        tracing::debug!(projection = projection.name(), "rebuild: tables written, {:?} in", started.elapsed());
    }
    create_indexes(pool, &secondary_indexes).await?;
    tracing::debug!(projection = projection.name(), "rebuild: indexes built, {:?} in", started.elapsed());

    // The swap: pause the live projector, fold what arrived meanwhile, move the tables, record the version.
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into projection_checkpoints (name, version, position) values ($1, $2, 0) \
         on conflict (name) do nothing",
    )
    .bind(projection.name())
    .bind(projection.version())
    .execute(&mut *tx)
    .await?;
    sqlx::query("select position from projection_checkpoints where name = $1 for update")
        .bind(projection.name())
        .execute(&mut *tx)
        .await?;
    use_schema(&mut tx, &shadow).await?;
    // Every position up to the head is committed; later ones are the live projector's, from the checkpoint.
    let head = store::read::head_position(&mut *tx).await?.max(position);
    let mut length = REBUILD_EVENTS_PER_STRETCH;
    while position < head {
        let up_to = position.saturating_add(length).min(head);
        let events = read_stretch(&mut *tx, upcasters, filter, position, up_to).await?;
        apply(&mut tx, projection, &events).await?;
        length = next_stretch(up_to - position, events.len());
        applied += (up_to - position) as u64;
        read += events.len() as u64;
        position = up_to;
    }
    use_schema(&mut tx, "public").await?;
    let tables: Vec<String> =
        sqlx::query_scalar("select tablename::text from pg_tables where schemaname = $1 order by tablename")
            .bind(&shadow)
            .fetch_all(&mut *tx)
            .await?;
    for table in &tables {
        sqlx::raw_sql(&format!(
            "drop table if exists public.{table} cascade; alter table {shadow}.{table} set schema public"
        ))
        .execute(&mut *tx)
        .await
        .with_context(|| format!("swap table {table}"))?;
    }
    sqlx::raw_sql(&format!("drop schema {shadow} cascade")).execute(&mut *tx).await?;
    sqlx::query("update projection_checkpoints set version = $2, position = $3, updated_at = now() where name = $1")
        .bind(projection.name())
        .bind(projection.version())
        .bind(position)
        .execute(&mut *tx)
        .await?;
    tx.commit().await.context("commit the swap")?;
    tracing::debug!(projection = projection.name(), "rebuild: swapped in, {:?} in", started.elapsed());
    on_progress(Progress { position, head: position, applied });
    Ok(Rebuilt { version: projection.version(), position, applied, read })
}

/// Rebuilds each of `projections` at once, each on connections of its own (see [`rebuild`]); progress is
/// reported with the projection's name.
pub async fn rebuild_all(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
    upcasters: &Upcasters,
    on_progress: &(dyn Fn(&str, Progress) + Sync),
) -> anyhow::Result<Vec<Rebuilt>> {
    let rebuilds = projections.iter().map(|projection| {
        let name = projection.name();
        async move { rebuild(pool, projection.as_ref(), upcasters, &|progress| on_progress(name, progress)).await }
    });
    futures::future::try_join_all(rebuilds).await
}

/// Drops the secondary indexes (neither unique nor a primary key) of the tables in `schema` and returns the
/// statements that create them again. Building an index once over the folded rows is cheaper than maintaining it
/// row by row, and no fold looks rows up by one (the unique ones, which `on conflict` needs, stay).
async fn drop_secondary_indexes(pool: &PgPool, schema: &str) -> anyhow::Result<Vec<String>> {
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "select format('drop index %I.%I', n.nspname, c.relname), pg_get_indexdef(i.indexrelid) \
           from pg_index i \
           join pg_class c on c.oid = i.indexrelid \
           join pg_namespace n on n.oid = c.relnamespace \
          where n.nspname = $1 and not i.indisunique and not i.indisprimary \
          order by c.relname",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .context("list the shadow tables' secondary indexes")?;
    let mut creates = Vec::with_capacity(indexes.len());
    for (drop, create) in indexes {
        sqlx::raw_sql(&drop).execute(pool).await.with_context(|| format!("{drop} until the rows are in"))?;
        creates.push(create);
    }
    Ok(creates)
}

/// Runs the `create index` statements, two at a time (each on a connection of its own).
async fn create_indexes(pool: &PgPool, creates: &[String]) -> anyhow::Result<()> {
    use futures::{StreamExt as _, TryStreamExt as _};
    futures::stream::iter(creates)
        .map(|create| async move {
            sqlx::raw_sql(create).execute(pool).await.with_context(|| format!("create an index: {create}"))
        })
        .buffer_unordered(2)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Folds every projection that lives in the database from the start of the log up to and including `until`
/// into the schema `schema` (created afresh), for forensic inspection: the read models as they were then.
/// The live tables are not touched. Returns the number of events folded.
pub async fn replay_into(
    pool: &PgPool,
    projections: &[std::sync::Arc<dyn Projection>],
    upcasters: &Upcasters,
    schema: &str,
    until: i64,
    on_progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<u64> {
    anyhow::ensure!(
        !schema.is_empty()
            && schema.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_'),
        "a replay schema name is lowercase letters, digits and underscores"
    );
    let projections: Vec<_> =
        projections.iter().filter(|projection| !projection.writes_outside_the_database()).collect();
    sqlx::raw_sql(&format!("drop schema if exists {schema} cascade; create schema {schema}"))
        .execute(pool)
        .await
        .context("create the replay schema")?;
    let mut tx = pool.begin().await?;
    use_schema(&mut tx, schema).await?;
    for projection in &projections {
        sqlx::raw_sql(projection.schema()).execute(&mut *tx).await.context("create the replay tables")?;
    }
    tx.commit().await?;
    let mut position = 0_i64;
    let mut applied = 0_u64;
    loop {
        let mut tx = pool.begin().await?;
        use_schema(&mut tx, schema).await?;
        let events = read_after(&mut *tx, position, REBUILD_BATCH_SIZE).await?;
        let n_read = events.len();
        let in_range: Vec<_> =
            events.into_iter().filter(|event| event.position <= until).map(|event| upcasters.upcast(event)).collect();
        for projection in &projections {
            projection
                .apply_batch(&mut tx, &in_range)
                .await
                .with_context(|| format!("replay {}", projection.name()))?;
        }
        position = in_range.last().map_or(position, |event| event.position);
        tx.commit().await?;
        applied += in_range.len() as u64;
        on_progress(Progress { position, head: until, applied });
        if in_range.len() < n_read || n_read < REBUILD_BATCH_SIZE as usize {
            return Ok(applied);
        }
    }
}
