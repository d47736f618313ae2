//! As-of reads: an object as it was at a position, folded from the log by the projection's own `apply`.
//!
//! The stream's events up to the position are applied to a scratch copy of the projection's tables, created
//! in a schema of its own inside a transaction that is always rolled back. Because it is the same `apply`
//! that maintains the live tables, an as-of read at the head equals the live document.

use anyhow::Context as _;
use domain::event::StreamId;
use sqlx::{Executor as _, PgConnection, PgPool, Postgres, Transaction};
use store::Upcasters;

use crate::Projection;

/// A transaction whose `search_path` resolves the projection's tables to a scratch copy holding only
/// `stream` folded up to `position`. Read with the projection's usual queries, then drop it (it rolls back).
pub async fn fold_stream(
    pool: &PgPool,
    projection: &dyn Projection,
    upcasters: &Upcasters,
    stream: &StreamId,
    position: i64,
) -> anyhow::Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    let schema = format!("asof_{}", ulid::Ulid::new().to_string().to_lowercase());
    let conn: &mut PgConnection = &mut tx;
    conn.execute(format!("create schema {schema}; set local search_path to {schema}, public").as_str())
        .await
        .context("create the as-of scratch schema")?;
    conn.execute(projection.schema()).await.context("create the as-of tables")?;
    // Read with the pool, not the transaction: the events are committed and immutable either way.
    let events: Vec<_> = store::read::read_stream(pool, stream, Some(position))
        .await?
        .into_iter()
        .map(|event| upcasters.upcast(event))
        .collect();
    projection.apply_batch(&mut tx, &events).await?;
    Ok(tx)
}
