//! Shared helpers: a fresh migrated database per test and small command builders.

use domain::event::{Action, Actor, EntityKind, EventData, StreamId};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use store::{NewCommand, NewEvent};

/// A pool on a new, migrated database of its own.
pub async fn fresh_pool(max_connections: u32) -> PgPool {
    let url = devdb::test_server().await.expect("test server").fresh_database().await.expect("fresh database");
    let pool = PgPoolOptions::new().max_connections(max_connections).connect(&url).await.expect("connect");
    store::MIGRATOR.run(&pool).await.expect("migrate");
    pool
}

pub fn event(stream: &StreamId, event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent::new(
        EventData {
            stream: stream.clone(),
            event_type: event_type.to_owned(),
            schema_version: 1,
            payload,
            action: Action::Created,
            before: None,
            after: None,
            note: None,
        },
        Actor::system("test"),
    )
}

/// A command of `n_events` events on one new task stream.
pub fn command(n_events: usize) -> NewCommand {
    let stream = StreamId::new(EntityKind::Task, ulid::Ulid::new().to_string());
    NewCommand {
        events: (0..n_events)
            .map(|event_idx| event(&stream, "TestHappened", serde_json::json!({ "n": event_idx })))
            .collect(),
        trace_id: Some("trace-test".into()),
        ..NewCommand::default()
    }
}

pub async fn count_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from audit_log").fetch_one(pool).await.expect("count")
}

/// Runs statements as a superuser with triggers switched off (`session_replication_role = replica`).
pub async fn tamper(pool: &PgPool, statements: &[&str]) {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("set session_replication_role = replica").execute(&mut *conn).await.unwrap();
    for statement in statements {
        sqlx::query(statement).execute(&mut *conn).await.unwrap();
    }
    sqlx::query("set session_replication_role = origin").execute(&mut *conn).await.unwrap();
}
