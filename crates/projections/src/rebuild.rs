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
//! checkpoint still moves to the end of the log. The next stretch is read on another connection while the
//! current one is folded.

use anyhow::Context as _;
use domain::event::EntityKind;
use sqlx::{PgConnection, PgPool};
use store::read::{read_after, read_range};
use store::{RecordedEvent, Upcasters};
use tokio::sync::mpsc;

use crate::Projection;

/// How many events a `jct replay` transaction folds.
const REBUILD_BATCH_SIZE: i64 = 5000;
/// About how many events a rebuild transaction folds: a stretch of positions is sized (from the share of
/// events the previous stretch held) to hold about this many of the projection's events.
const REBUILD_EVENTS_PER_STRETCH: i64 = 5000;
/// The longest stretch of positions one rebuild transaction covers.
const REBUILD_MAX_STRETCH: i64 = 200_000;

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

/// The events of a stretch `(after, up_to]`: all, or those of `kinds`, upcast.
async fn read_stretch<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    upcasters: &Upcasters,
    kinds: Option<&[EntityKind]>,
    after: i64,
    up_to: i64,
) -> anyhow::Result<Vec<RecordedEvent>> {
    let events = read_range(executor, after, up_to, kinds).await?;
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

/// Reads the stretches of `(after, head]` in order on a task of its own, one ahead of the consumer; aborted when
/// dropped.
struct ReadAhead {
    stretches: mpsc::Receiver<Stretch>,
    reader: tokio::task::JoinHandle<()>,
}

impl ReadAhead {
    fn spawn(
        pool: PgPool,
        upcasters: Upcasters,
        kinds: Option<&'static [EntityKind]>,
        after: i64,
        head: i64,
    ) -> ReadAhead {
        let (send, stretches) = mpsc::channel(1);
        let reader = tokio::spawn(async move {
            let (mut after, mut length) = (after, REBUILD_EVENTS_PER_STRETCH);
            while after < head {
                let up_to = after.saturating_add(length).min(head);
                let stretch = read_stretch(&pool, &upcasters, kinds, after, up_to).await;
                if let Ok(events) = &stretch {
                    length = next_stretch(up_to - after, events.len());
                }
                let failed = stretch.is_err();
                if send.send(stretch.map(|events| (up_to, events))).await.is_err() || failed {
                    return;
                }
                after = up_to;
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

    let kinds = projection.entity_kinds();
    let (mut position, mut applied, mut read) = (0_i64, 0_u64, 0_u64);
    let head = store::read::head_position(pool).await?;
    let mut stretches = ReadAhead::spawn(pool.clone(), upcasters.clone(), kinds, position, head);
    while let Some((up_to, events)) = stretches.next().await? {
        let mut tx = pool.begin().await?;
        // A rebuild that dies starts over, so its batches need not wait for their commit to reach the disk.
        sqlx::query("set local synchronous_commit = off").execute(&mut *tx).await?;
        use_schema(&mut tx, &shadow).await?;
        apply(&mut tx, projection, &events).await?;
        tx.commit().await?;
        applied += (up_to - position) as u64;
        read += events.len() as u64;
        position = up_to;
        on_progress(Progress { position, head, applied });
        // Freeing thousands of JSON trees takes a while; not on the way to the next stretch.
        tokio::task::spawn_blocking(move || drop(events));
    }
    drop(stretches);
    anyhow::ensure!(position == head, "the rebuild's reader stopped at position {position} of {head}");

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
        let events = read_stretch(&mut *tx, upcasters, kinds, position, up_to).await?;
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
    on_progress(Progress { position, head: position, applied });
    Ok(Rebuilt { version: projection.version(), position, applied, read })
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
