//! The PostgreSQL event store: the append-only `audit_log`, its hash chain, reads, and catch-up subscriptions.
//!
//! Duties:
//! - append the events of one command atomically, with per-stream expected versions, idempotency keys and
//!   unique-key claims ([`EventStore::append`]);
//! - read everything after a position, or one stream, in position order ([`read`]);
//! - wake subscribers through `NOTIFY` and let them catch up without ever skipping an event ([`Subscription`]);
//! - verify the SHA-256 hash chain ([`verify`]);
//! - upcast old payload versions on read ([`Upcasters`]).
//!
//! Architecture invariant: appends are serialised by a transaction-scoped advisory lock, so positions are
//! gapless and position order equals commit order. Every reader relies on this.

mod append;
pub mod audit;
mod canonical;
pub mod read;
mod record;
mod subscribe;
mod upcast;
pub mod verify;

pub use append::{
    append_batch, AppendError, Appended, EventStore, ExpectedVersion, InlineProjector, NewCommand, NewEvent,
    APPEND_LOCK_KEY,
};
pub use canonical::{canonical_bytes, chain_hash, content_hash, link_hash, GENESIS_HASH};
pub use record::RecordedEvent;
pub use subscribe::{Subscription, Wakeup};
pub use upcast::Upcasters;

/// The channel every append notifies after commit. The payload is `<last position>` only: a hint, never data.
pub const EVENTS_CHANNEL: &str = "jct_events";

/// The event store's migrations (`migrations/` at the workspace root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");
