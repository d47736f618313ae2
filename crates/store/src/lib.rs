//! The PostgreSQL event store: the append-only `audit_log`, its hash chain, reads, and catch-up subscriptions.
//!
//! Duties:
//! - append the events of one command atomically, with per-stream expected versions, idempotency keys and
//!   unique-key claims ([`EventStore::append`]);
//! - read everything after a position, or one stream, in position order ([`read`]);
//! - wake subscribers through `NOTIFY` and let them catch up without ever skipping an event ([`Subscription`]);
//! - store the content events name by digest with them ([`blob`]);
//! - verify the SHA-256 hash chain ([`verify`]);
//! - upcast old payload versions on read ([`Upcasters`]);
//! - tell a database that is unavailable for now from a failed request ([`is_unavailable`]).
//!
//! Architecture invariant: appends are serialised by a transaction-scoped advisory lock, so positions are
//! gapless and position order equals commit order. Every reader relies on this.

mod append;
pub mod audit;
pub mod blob;
mod canonical;
mod pipeline;
pub mod read;
mod record;
pub mod sql;
mod subscribe;
mod unavailable;
mod upcast;
pub mod verify;

pub use append::{
    append_batch, AppendError, AppendStats, Appended, EventStore, ExpectedVersion, InlineProjector, NewCommand,
    NewEvent, APPEND_LOCK_KEY,
};
pub use blob::NewBlob;
pub use canonical::{canonical_bytes, chain_hash, content_hash, link_hash, GENESIS_HASH};
pub use record::{EventJson, RecordedEvent};
pub use subscribe::{Subscription, Wakeup};
pub use unavailable::is_unavailable;
pub use upcast::Upcasters;

/// The channel every append notifies after commit. The payload is `<last position>` only: a hint, never data.
pub const EVENTS_CHANNEL: &str = "jct_events";

/// A connection that sat idle in the pool for longer than this is checked with a round trip before it is handed
/// out; busier connections are handed out as they are (HikariCP's rule, with its 500 ms window widened).
pub const PING_CONNECTIONS_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Pool settings for every JCT process. sqlx's default pings every connection before handing it out: one round
/// trip more for every query and transaction, 0.3-0.7 ms each on a loaded 2-core machine. Here only a connection
/// idle for [`PING_CONNECTIONS_IDLE_FOR`] is pinged, and one that fails the ping is replaced. A connection that
/// dies while in steady use (the database restarted) fails its next query, as an in-flight one would, and the
/// pool replaces it (the append batcher retries a batch whose connection was lost, on a fresh connection each
/// time, up to four more times).
pub fn pool_options() -> sqlx::postgres::PgPoolOptions {
    use sqlx::Connection as _;
    sqlx::postgres::PgPoolOptions::new().test_before_acquire(false).before_acquire(|conn, meta| {
        Box::pin(async move {
            if meta.idle_for >= PING_CONNECTIONS_IDLE_FOR {
                conn.ping().await?;
            }
            Ok(true)
        })
    })
}

/// The server settings every JCT connection runs with, added to `options` (a `DATABASE_URL`'s, parsed): the
/// pool's and the appender's pipelined connection (which takes the pool's options) alike.
///
/// - `jit = off`. PostgreSQL compiles a statement whose estimated cost passes `jit_above_cost` (100,000), and
///   the estimates of the claim's read grow with the log (its admission step's range over `TaskEnqueued` is
///   estimated, never known, at plan time). Past a few hundred thousand events every claim spent 50-60 ms
///   compiling a statement that runs in 0.3 ms, which capped a worker at a few hundred tasks/s (runbook,
///   2026-12-05). No statement of ours reads enough rows for compiled expressions to pay off.
///
/// A URL whose options already name a JIT setting (`?options=-c%20jit%3Don`, or `jit_above_cost`) is left as the
/// operator set it.
pub fn with_session_settings(options: sqlx::postgres::PgConnectOptions) -> sqlx::postgres::PgConnectOptions {
    let named = options.get_options().is_some_and(|given| given.contains("jit"));
    if named {
        options
    } else {
        options.options([("jit", "off")])
    }
}

/// The event store's migrations (`migrations/` at the workspace root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");
