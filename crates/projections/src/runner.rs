//! Keeping projections current: install, catch up in checkpointed batches, wait for a position, run forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::Future;
use sqlx::{PgPool, Row};
use store::read::{read_after, read_range, stretch_end, Images};
use store::{Upcasters, Wakeup};

use crate::Projection;

/// How many events one catch-up transaction applies at most.
pub const BATCH_SIZE: i64 = 2000;

/// After a check that found every projection of the background loop current, the soonest it checks again: appends
/// usually apply the database read models inline, so a check at every notification (one per append, in every
/// process) would find nothing to do. Read-your-writes never waits for the loop ([`wait_for`] catches up itself).
pub const RECHECK_WHEN_CURRENT: Duration = Duration::from_millis(20);

/// How long the background loop waits, once woken, before it checks the projections again: the rest of
/// [`RECHECK_WHEN_CURRENT`] since the last check when that check found them all current, else nothing.
fn recheck_delay(all_current: bool, since_last_check: Duration) -> Duration {
    if all_current {
        RECHECK_WHEN_CURRENT.saturating_sub(since_last_check)
    } else {
        Duration::ZERO
    }
}

/// Creates the projection's tables and checkpoint if it has none; rebuilds it if its live version is not the
/// version of the code. Safe to call from several processes at once.
pub async fn install(pool: &PgPool, projection: &dyn Projection, upcasters: &Upcasters) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock(hashtext('projection:' || $1))")
        .bind(projection.name())
        .execute(&mut *tx)
        .await?;
    let live: Option<i32> = sqlx::query_scalar("select version from projection_checkpoints where name = $1")
        .bind(projection.name())
        .fetch_optional(&mut *tx)
        .await?;
    match live {
        Some(version) if version == projection.version() => Ok(()),
        Some(version) => {
            tx.commit().await?;
            tracing::info!(
                projection = projection.name(),
                "live version {version} differs from code version {}; rebuilding",
                projection.version()
            );
            crate::rebuild::rebuild(pool, projection, upcasters, &|_| {}).await.map(|_| ())
        }
        None => {
            sqlx::raw_sql(projection.schema())
                .execute(&mut *tx)
                .await
                .with_context(|| format!("create the tables of projection {}", projection.name()))?;
            sqlx::query("insert into projection_checkpoints (name, version, position) values ($1, $2, 0)")
                .bind(projection.name())
                .bind(projection.version())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }
    }
}

/// The projection's checkpoint: the last position applied.
pub async fn checkpoint(pool: &PgPool, name: &str) -> anyhow::Result<i64> {
    sqlx::query_scalar("select position from projection_checkpoints where name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?
        .with_context(|| format!("projection {name} is not installed"))
}

/// Whether the projection `name`'s checkpoint is behind the log's head (or missing), read without locking the
/// checkpoint row.
pub async fn is_behind(pool: &PgPool, name: &str) -> anyhow::Result<bool> {
    let behind: Option<bool> = sqlx::query_scalar(
        "select c.position < coalesce((select max(position) from audit_log), 0) \
           from projection_checkpoints c where c.name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .context("is the projection behind")?;
    Ok(behind != Some(false))
}

/// Those of the projections `names` whose checkpoint is behind the log's head or missing, read in one query
/// without locking any checkpoint row.
pub async fn behind(pool: &PgPool, names: &[&str]) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar(
        "select n.name from unnest($1::text[]) as n(name) \
           left join projection_checkpoints c on c.name = n.name \
          where c.position is null or c.position < coalesce((select max(position) from audit_log), 0)",
    )
    .bind(names)
    .fetch_all(pool)
    .await
    .context("which projections are behind")
}

/// Applies one batch: locks the checkpoint row (so one applier at a time, across processes), applies the events
/// after it, moves it to the last event actually read, and commits. Reads only the events of the projection's
/// [`Projection::entity_kinds`], without images unless it [`Projection::folds_images`]; the checkpoint then moves
/// past the whole stretch of up to `limit` positions. Returns how many positions of the log it moved past.
pub async fn apply_batch(
    pool: &PgPool,
    projection: &dyn Projection,
    upcasters: &Upcasters,
    limit: i64,
) -> anyhow::Result<usize> {
    // Without taking the checkpoint row: when appends apply this model inline, it is usually current, and a
    // locked row would make the next append leave the model to this projector.
    if !is_behind(pool, projection.name()).await? {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let row = sqlx::query("select version, position from projection_checkpoints where name = $1 for update")
        .bind(projection.name())
        .fetch_optional(&mut *tx)
        .await?
        .with_context(|| format!("projection {} is not installed", projection.name()))?;
    let version: i32 = row.try_get("version")?;
    if version > projection.version() {
        // A newer deployment rebuilt this model and maintains it now; this process only reads it (its queries
        // select the documents, which every version keeps). Rolling deploys rely on this.
        tracing::debug!(
            projection = projection.name(),
            live = version,
            code = projection.version(),
            "newer version is live"
        );
        return Ok(0);
    }
    anyhow::ensure!(
        version == projection.version(),
        "projection {} is live at version {version} but the code is at {}; run `jct projections rebuild {}`",
        projection.name(),
        projection.version(),
        projection.name()
    );
    let position: i64 = row.try_get("position")?;
    let images = if projection.folds_images() { Images::Included } else { Images::LeftOut };
    let (events, last) = match (projection.entity_kinds(), images) {
        (None, Images::Included) => {
            let events = read_after(&mut *tx, position, limit).await?;
            let Some(last) = events.last().map(|event| event.position) else { return Ok(0) };
            (events, last)
        }
        // Only what the projection folds crosses the wire and is decoded; the checkpoint still moves past the
        // whole stretch, every position of which was visible.
        (kinds, images) => {
            let Some(end) = stretch_end(&mut *tx, position, limit).await? else { return Ok(0) };
            (read_range(&mut *tx, position, end, kinds, images).await?, end)
        }
    };
    let covered = usize::try_from(last - position).context("positions move forward")?;
    let events: Vec<_> = events.into_iter().map(|event| upcasters.upcast(event)).collect();
    projection.apply_owned_batch(&mut tx, events).await?;
    sqlx::query("update projection_checkpoints set position = $2, updated_at = now() where name = $1")
        .bind(projection.name())
        .bind(last)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(covered)
}

/// Applies batches until the projection has caught up with the log. Returns how many positions it moved past.
pub async fn catch_up(pool: &PgPool, projection: &dyn Projection, upcasters: &Upcasters) -> anyhow::Result<usize> {
    let mut applied = 0;
    loop {
        let n_applied = apply_batch(pool, projection, upcasters, BATCH_SIZE).await?;
        applied += n_applied;
        if n_applied < BATCH_SIZE as usize {
            return Ok(applied);
        }
    }
}

/// Read-your-writes: returns once each projection has applied `position`, catching up itself if needed.
/// Fails after `timeout`.
pub async fn wait_for(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
    upcasters: &Upcasters,
    position: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    // Usually the models were applied inline with the command: one round trip shows it.
    let names: Vec<&str> = projections.iter().map(|projection| projection.name()).collect();
    let lowest: Option<i64> =
        sqlx::query_scalar("select min(position) from projection_checkpoints where name = any($1)")
            .bind(&names)
            .fetch_one(pool)
            .await?;
    if lowest.is_some_and(|lowest| lowest >= position) {
        return Ok(());
    }
    for projection in projections {
        while checkpoint(pool, projection.name()).await? < position {
            anyhow::ensure!(
                Instant::now() < deadline,
                "projection {} did not reach position {position} within {timeout:?}",
                projection.name()
            );
            // Blocks while another applier holds the checkpoint row, then applies whatever is left. When a newer
            // version maintains the model, wait for its projector instead.
            if apply_batch(pool, projection.as_ref(), upcasters, BATCH_SIZE).await? == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    Ok(())
}

/// Keeps every projection current until `shutdown` resolves: wakes on `NOTIFY`, polls every `poll_interval`,
/// and catches up after any reconnect; once woken, it first waits the longest [`Projection::settle`] of
/// `projections`, so a burst of appends is applied as one batch, and, when its last check found every projection
/// current, until [`RECHECK_WHEN_CURRENT`] has passed since that check. Errors are logged and retried; they never
/// end the loop.
pub async fn run(
    pool: PgPool,
    projections: Vec<Arc<dyn Projection>>,
    upcasters: Upcasters,
    poll_interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut wakeup = Wakeup::new(pool.clone(), poll_interval).await;
    let settle = projections.iter().map(|projection| projection.settle()).max().unwrap_or_default();
    tokio::pin!(shutdown);
    let names: Vec<&str> = projections.iter().map(|projection| projection.name()).collect();
    loop {
        wakeup.drain().await;
        let checked_at = Instant::now();
        // One query for all of them: the models appends apply inline are usually current.
        let behind = match behind(&pool, &names).await {
            Ok(behind) => behind,
            Err(error) => {
                log_failure(None, "failed to read the checkpoints", &error);
                names.iter().map(|name| (*name).to_owned()).collect()
            }
        };
        for projection in projections.iter().filter(|projection| behind.iter().any(|name| name == projection.name())) {
            if let Err(error) = catch_up(&pool, projection.as_ref(), &upcasters).await {
                log_failure(Some(projection.name()), "failed to catch up", &error);
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = wakeup.wait() => {}
        }
        let pause = settle.max(recheck_delay(behind.is_empty(), checked_at.elapsed()));
        if !pause.is_zero() {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Logs a failure of [`run`]'s loop, which retries at its next wake-up: a warning while the database is
/// unavailable (restarting, say: `store::is_unavailable`), an error otherwise.
fn log_failure(projection: Option<&str>, what: &str, error: &anyhow::Error) {
    match (store::is_unavailable(error), projection) {
        (true, Some(projection)) => tracing::warn!(projection, "{what}: {error:#}"),
        (true, None) => tracing::warn!("{what}: {error:#}"),
        (false, Some(projection)) => tracing::error!(projection, "{what}: {error:#}"),
        (false, None) => tracing::error!("{what}: {error:#}"),
    }
}

/// One projection's state for `jct projections status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub code_version: i32,
    pub live_version: Option<i32>,
    pub checkpoint: Option<i64>,
    pub head: i64,
    pub lag: Option<i64>,
}

/// Version, checkpoint and lag of each projection.
pub async fn status(pool: &PgPool, projections: &[Arc<dyn Projection>]) -> anyhow::Result<Vec<ProjectionStatus>> {
    let head = store::read::head_position(pool).await?;
    let mut statuses = Vec::new();
    for projection in projections {
        let row = sqlx::query("select version, position from projection_checkpoints where name = $1")
            .bind(projection.name())
            .fetch_optional(pool)
            .await?;
        let (live_version, checkpoint) = match row {
            Some(row) => (Some(row.try_get("version")?), Some(row.try_get::<i64, _>("position")?)),
            None => (None, None),
        };
        statuses.push(ProjectionStatus {
            name: projection.name().to_owned(),
            code_version: projection.version(),
            live_version,
            checkpoint,
            head,
            lag: checkpoint.map(|checkpoint| head - checkpoint),
        });
    }
    Ok(statuses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_found_everything_current_waits_out_the_recheck_interval_and_one_behind_does_not_wait() {
        assert_eq!(recheck_delay(true, Duration::ZERO), RECHECK_WHEN_CURRENT);
        assert_eq!(recheck_delay(true, Duration::from_millis(15)), RECHECK_WHEN_CURRENT - Duration::from_millis(15));
        assert_eq!(recheck_delay(true, Duration::from_secs(1)), Duration::ZERO);
        assert_eq!(recheck_delay(false, Duration::ZERO), Duration::ZERO);
    }
}
