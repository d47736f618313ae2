//! Rebuilding a read model beside the live one, then swapping it in atomically.
//!
//! The new version's tables are created in a shadow schema `rebuild_<name>` and folded from the whole log in
//! batches while the live tables keep serving. The swap transaction locks the live checkpoint row (pausing the
//! live projector), folds the last events into the shadow, moves the shadow tables into `public` in place of
//! the old ones, and records the new version and position. Readers block for the length of that transaction
//! only. A rebuild that dies part-way leaves the live model untouched; the next one starts over.

use anyhow::Context as _;
use sqlx::{PgConnection, PgPool};
use store::{read::read_after, Upcasters};

use crate::Projection;

/// How many events a rebuild transaction folds.
const REBUILD_BATCH_SIZE: i64 = 5000;

/// Progress of a rebuild, reported after each batch.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub position: i64,
    pub head: i64,
    pub applied: u64,
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy)]
pub struct Rebuilt {
    pub version: i32,
    pub position: i64,
    pub applied: u64,
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

async fn fold_into_shadow(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    upcasters: &Upcasters,
    after: i64,
) -> anyhow::Result<(i64, u64)> {
    let events = read_after(&mut *conn, after, REBUILD_BATCH_SIZE).await?;
    let position = events.last().map_or(after, |event| event.position);
    let n_events = events.len() as u64;
    let events: Vec<_> = events.into_iter().map(|event| upcasters.upcast(event)).collect();
    projection.apply_batch(conn, &events).await.with_context(|| format!("rebuild {}", projection.name()))?;
    Ok((position, n_events))
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

    let mut position = 0_i64;
    let mut applied = 0_u64;
    loop {
        let head = store::read::head_position(pool).await?;
        let mut tx = pool.begin().await?;
        use_schema(&mut tx, &shadow).await?;
        let (new_position, n_applied) = fold_into_shadow(&mut tx, projection, upcasters, position).await?;
        tx.commit().await?;
        position = new_position;
        applied += n_applied;
        on_progress(Progress { position, head: head.max(position), applied });
        if n_applied < REBUILD_BATCH_SIZE as u64 {
            break;
        }
    }

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
    loop {
        let (new_position, n_applied) = fold_into_shadow(&mut tx, projection, upcasters, position).await?;
        position = new_position;
        applied += n_applied;
        if n_applied < REBUILD_BATCH_SIZE as u64 {
            break;
        }
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
    Ok(Rebuilt { version: projection.version(), position, applied })
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
