//! The PostgreSQL event store: the append-only audit_log, hash chain, subscriptions, migrations
