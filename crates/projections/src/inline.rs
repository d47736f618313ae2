//! Read models applied inside the append transaction, so a command's effect commits with its events.
//!
//! Usually the store sends [`store::InlineProjector::pipelined_statements`] behind its insert (ADR 0008): every read
//! model's [`Projection::batch_statements`], behind `move_inline_checkpoints`, which fails the transaction unless
//! every read model sits exactly at the position before the batch. When that fails, the store appends the batch
//! step by step and calls [`store::InlineProjector::apply_appended`] after inserting it (SPEC §2.2). For each read
//! model whose checkpoint sits at the position before the batch, or a little behind it (at most
//! [`MAX_INLINE_GAP`] positions: the positions it missed are read and folded first), the batch is folded with the
//! same `apply_batch` the projector uses and the checkpoint moves with it, so the read model and the log commit
//! together and a command's caller reads its own writes at once. A read model that is further behind, being
//! applied by its projector (checkpoint row locked: `skip locked`, never wait under the append lock), or live at
//! another version is left alone: its projector catches up from the checkpoint, as without inline
//! application. Rebuilds are unaffected: the fold is the same code and the checkpoint the same row.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use sqlx::{PgConnection, Row};
use store::sql::{Param, Statement};
use store::{RecordedEvent, Upcasters};

use crate::Projection;

/// How far behind the batch a read model may be and still be applied inline: the positions it missed are read
/// and applied first, under the append lock, so this bounds that read.
const MAX_INLINE_GAP: i64 = 512;

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
    /// `move_inline_checkpoints` (migrations/0007), then each read model's [`Projection::batch_statements`].
    /// `None` when an upcaster would change one of the events (new events are written at their current schema
    /// versions, so only an event appended at an older one) or a read model has no such statements.
    fn pipelined_statements<'e>(&self, events: &'e [RecordedEvent]) -> anyhow::Result<Option<Vec<Statement<'e>>>> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else { return Ok(Some(Vec::new())) };
        if events.iter().any(|event| self.upcasters.lifts(event)) {
            return Ok(None);
        }
        let mut statements = vec![Statement::prepared(
            "move the inline read models' checkpoints",
            "select move_inline_checkpoints($1, $2, $3, $4)",
            vec![
                Param::Texts(self.projections.iter().map(|projection| projection.name()).collect()),
                Param::Int4s(self.projections.iter().map(|projection| projection.version()).collect()),
                Param::Int8(first.position - 1),
                Param::Int8(last.position),
            ],
        )];
        for projection in &self.projections {
            match projection.batch_statements(events)? {
                Some(own) => statements.extend(own),
                None => return Ok(None),
            }
        }
        Ok(Some(statements))
    }

    async fn apply_appended(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<bool> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else { return Ok(true) };
        let names: Vec<&str> = self.projections.iter().map(|projection| projection.name()).collect();
        let versions: Vec<i32> = self.projections.iter().map(|projection| projection.version()).collect();
        // One round trip: lock the checkpoints of the read models at the code's version that sit at most
        // `MAX_INLINE_GAP` positions before the batch (rows another transaction holds are skipped, not awaited)
        // and move them past it. They commit or roll back with the folds below, in the same transaction.
        let rows = sqlx::query(
            "update projection_checkpoints c set position = $5, updated_at = now() \
               from (select name, position from projection_checkpoints \
                      where (name, version) in (select * from unnest($1::text[], $2::int[])) \
                        and position between $3 and $4 \
                      for update skip locked) as current \
              where c.name = current.name \
             returning c.name, current.position",
        )
        .bind(&names)
        .bind(&versions)
        .bind(first.position - 1 - MAX_INLINE_GAP)
        .bind(first.position - 1)
        .bind(last.position)
        .fetch_all(&mut *conn)
        .await
        .context("take the checkpoints of the inline read models")?;
        let mut current = Vec::new();
        for row in &rows {
            let name: String = row.try_get("name")?;
            let position: i64 = row.try_get("position")?;
            if let Some(projection) = self.projections.iter().find(|projection| projection.name() == name) {
                current.push((projection, position));
            }
        }
        if current.is_empty() {
            return Ok(false);
        }
        let all_applied = current.len() == self.projections.len();
        // A model a little behind (a batch it skipped while its projector held it, say) is caught up here, so it
        // never stays behind for want of a projector: the positions it missed are committed (appends commit in
        // position order, and this transaction holds the append lock), read once for every such model.
        let behind = current.iter().map(|(_, position)| *position).min().unwrap_or(first.position - 1);
        let missed = if behind < first.position - 1 {
            store::read::read_range(&mut *conn, behind, first.position - 1, None, store::read::Images::Included)
                .await
                .context("read the positions an inline read model missed")?
        } else {
            Vec::new()
        };
        let upcast: Vec<RecordedEvent>;
        let events: &[RecordedEvent] = if self.upcasters.is_empty() && missed.is_empty() {
            events
        } else {
            upcast =
                missed.into_iter().chain(events.iter().cloned()).map(|event| self.upcasters.upcast(event)).collect();
            &upcast
        };
        for (projection, position) in current {
            let from = events.partition_point(|event| event.position <= position);
            projection.apply_batch(&mut *conn, &events[from..]).await.with_context(|| {
                format!("apply positions {}..={} to {} inline", position + 1, last.position, projection.name())
            })?;
        }
        Ok(all_applied)
    }
}
