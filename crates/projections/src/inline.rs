//! Read models applied inside the append transaction, so a command's effect commits with its events.
//!
//! The store calls [`InlineProjections`] after inserting a batch and before committing (SPEC §2.2). For each read
//! model whose checkpoint sits exactly at the position before the batch, the batch is folded with the same
//! `apply_batch` the projector uses and the checkpoint moves with it, so the read model and the log commit
//! together and a command's caller reads its own writes at once. A read model that is behind, being applied
//! by its projector (checkpoint row locked: `skip locked`, never wait under the append lock), or live at
//! another version is left alone: its projector catches up from the checkpoint, as without inline
//! application. Rebuilds are unaffected: the fold is the same code and the checkpoint the same row.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use sqlx::{PgConnection, Row};
use store::{RecordedEvent, Upcasters};

use crate::Projection;

/// The read models the store applies in its append transactions.
pub struct InlineProjections {
    projections: Vec<Arc<dyn Projection>>,
    upcasters: Upcasters,
}

impl InlineProjections {
    /// Applies `projections` inline; those that write outside the database (trace folders) are left out, since a
    /// file cannot roll back with the transaction.
    pub fn new(projections: &[Arc<dyn Projection>], upcasters: Upcasters) -> InlineProjections {
        let projections =
            projections.iter().filter(|projection| !projection.writes_outside_the_database()).cloned().collect();
        InlineProjections { projections, upcasters }
    }
}

#[async_trait]
impl store::InlineProjector for InlineProjections {
    async fn apply_appended(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<bool> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else { return Ok(true) };
        let names: Vec<&str> = self.projections.iter().map(|projection| projection.name()).collect();
        let versions: Vec<i32> = self.projections.iter().map(|projection| projection.version()).collect();
        // One round trip: lock the checkpoints of the read models that sit exactly before the batch at the code's
        // version (rows another transaction holds are skipped, not awaited) and move them past it. They commit
        // or roll back with the folds below, in the same transaction.
        let rows = sqlx::query(
            "update projection_checkpoints c set position = $4, updated_at = now() \
               from (select name from projection_checkpoints \
                      where (name, version) in (select * from unnest($1::text[], $2::int[])) and position = $3 \
                      for update skip locked) as current \
              where c.name = current.name \
             returning c.name",
        )
        .bind(&names)
        .bind(&versions)
        .bind(first.position - 1)
        .bind(last.position)
        .fetch_all(&mut *conn)
        .await
        .context("take the checkpoints of the inline read models")?;
        let mut current = Vec::new();
        for row in &rows {
            let name: String = row.try_get("name")?;
            if let Some(projection) = self.projections.iter().find(|projection| projection.name() == name) {
                current.push(projection);
            }
        }
        if current.is_empty() {
            return Ok(false);
        }
        let all_applied = current.len() == self.projections.len();
        let upcast: Vec<RecordedEvent>;
        let events = if self.upcasters.is_empty() {
            events
        } else {
            upcast = events.iter().cloned().map(|event| self.upcasters.upcast(event)).collect();
            &upcast
        };
        for projection in current {
            projection.apply_batch(&mut *conn, events).await.with_context(|| {
                format!("apply positions {}..={} to {} inline", first.position, last.position, projection.name())
            })?;
        }
        Ok(all_applied)
    }
}
