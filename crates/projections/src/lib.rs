//! Read models folded from `audit_log`, and the machinery that keeps them current and rebuilds them.
//!
//! Duties:
//! - the [`Projection`] contract: a name, a version, its tables' DDL, and `apply(event)`;
//! - [`runner`]: install, catch up (checkpoint committed with the changes), wait for a position
//!   (read-your-writes), the background loop woken by `NOTIFY`;
//! - [`rebuild`]: build a new version beside the live one in a shadow schema and swap it in atomically;
//! - the read models themselves, one module each, with the queries the API reads them with.
//!
//! Architecture invariant: a projection's tables change only in `apply`, in the transaction that also moves
//! its checkpoint, and `apply` is deterministic (no clock, no randomness, no IO outside the transaction), so
//! a rebuild from the log equals the incrementally maintained model row for row.

pub mod asof;
pub mod cwom;
pub mod inline;
pub mod queue;
pub mod rebuild;
pub mod runner;
pub mod tasks;
pub mod trace;

use anyhow::Context as _;
use async_trait::async_trait;
use domain::event::EntityKind;
use sqlx::PgConnection;
use store::sql::Statement;
use store::RecordedEvent;

/// A read model folded from the log.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name; the key of its checkpoint row.
    fn name(&self) -> &'static str;
    /// The version of its schema and fold. Bump it whenever either changes; the next start rebuilds it.
    fn version(&self) -> i32;
    /// DDL creating its tables with unqualified names (run with `search_path` set to the target schema).
    fn schema(&self) -> &'static str;
    /// Applies one event (already upcast). Must ignore events it does not care about.
    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> anyhow::Result<()>;

    /// Applies a batch of consecutive events (already upcast), in order. The default applies them one by one;
    /// a projection may override it with set-based statements, provided the result is the same. When the
    /// projection declares [`Projection::entity_kinds`], a batch may hold only the events of those kinds
    /// (consecutive among them), and must give the same result as one with every event.
    async fn apply_batch(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        for event in events {
            self.apply(conn, event).await.with_context(|| {
                format!("apply event {} ({}) to projection {}", event.position, event.event_type, self.name())
            })?;
        }
        Ok(())
    }

    /// [`Projection::apply_batch`] for a caller that hands the events over (the runner's batches), so that a
    /// projection keeping some of them in memory may take them instead of copying them. The default lends them.
    async fn apply_owned_batch(&self, conn: &mut PgConnection, events: Vec<RecordedEvent>) -> anyhow::Result<()> {
        self.apply_batch(conn, &events).await
    }

    /// The statements that apply a batch as [`Projection::apply_batch`] does, when it applies batches that way:
    /// computed from the events alone (nothing read first), for the same batches `apply_batch` takes. Inline
    /// appends send them in the append's pipeline ([`store::InlineProjector::pipelined_statements`]); a projection
    /// whose `apply_batch` needs more (the default: `None`) is applied inline a statement at a time.
    fn batch_statements<'e>(&self, _events: &'e [RecordedEvent]) -> anyhow::Result<Option<Vec<Statement<'e>>>> {
        Ok(None)
    }

    /// The kinds of stream whose events change this read model; `None` (the default) for any. Readers that know
    /// may fetch only these events and move the checkpoint past the others, which must then be ignored by
    /// `apply` (other callers still pass every event).
    fn entity_kinds(&self) -> Option<&'static [EntityKind]> {
        None
    }

    /// Whether `apply` reads the events' `before` and `after` images. Rebuilds of a projection that does not
    /// read the log without them (they are most of its bytes after the payloads) and hand it events whose
    /// `before` and `after` are `None`.
    fn folds_images(&self) -> bool {
        true
    }

    /// A fold of the whole log kept in memory and written into the projection's empty tables at the end, which
    /// rebuilds use instead of [`Projection::apply_batch`]; `None` (the default) when it has none. Its tables must
    /// equal those `apply_batch` gives from the same events.
    fn in_memory_fold(&self) -> Option<Box<dyn rebuild::InMemoryFold>> {
        None
    }

    /// Whether `apply` writes outside the database (the trace folders do). Such a projection is left out of
    /// `jct replay`, which folds read models into a scratch schema for inspection.
    fn writes_outside_the_database(&self) -> bool {
        false
    }

    /// How long the background loop ([`runner::run`]) lets appends go on after a notification before it catches
    /// up on them; none by default. A projection whose apply redoes much for each stream it touches (a trace
    /// folder renders its task's whole stream and rewrites its files) then applies a burst of appends as one
    /// batch, touching each stream once instead of once per append, and lags the log by up to this much more.
    /// Read-your-writes ([`runner::wait_for`]) catches up itself and never waits for it.
    fn settle(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Runs a projection's [`Projection::batch_statements`] on `conn`, one after the other: its `apply_batch`.
pub(crate) async fn execute_all(conn: &mut PgConnection, statements: Option<Vec<Statement<'_>>>) -> anyhow::Result<()> {
    for statement in statements.into_iter().flatten() {
        statement.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A list endpoint's query (`GET /tasks`, `GET /cwom/...`), planned for its filters and page at every call instead
/// of prepared: its optional filters (`$1 is null or status = $1`) leave a generic plan no index to choose, so once
/// a connection settled on one (on a young table, where it looks as cheap as any) every list sorted the whole table
/// (49 ms at 50,000 tasks, against 0.1 ms for the plan made for the call). Planning it costs a fraction of that.
pub(crate) fn list_query<'q>(
    sql: &'q str,
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, serde_json::Value, sqlx::postgres::PgArguments> {
    sqlx::query_scalar(sql).persistent(false)
}
