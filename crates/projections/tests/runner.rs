//! The background loop (`runner::run`): a projection that asks for a settle time gets a burst of appends,
//! committed one after another, as one batch.
//!
//! Runs on a fresh database of its own from `devdb` (the server at `DATABASE_URL`, or a throwaway cluster).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::event::{Action, Actor, EntityKind, EventData, NewEvent, StreamId};
use projections::{runner, Projection};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgConnection;
use store::{EventStore, NewCommand, RecordedEvent, Upcasters};
use tokio_util::sync::CancellationToken;

extern crate jct_projections as projections;

/// Records the size of every batch it is given.
struct Batches {
    sizes: Arc<Mutex<Vec<usize>>>,
    settle: Duration,
}

#[async_trait]
impl Projection for Batches {
    fn name(&self) -> &'static str {
        "batches"
    }
    fn version(&self) -> i32 {
        1
    }
    fn schema(&self) -> &'static str {
        "select 1"
    }
    async fn apply(&self, _conn: &mut PgConnection, _event: &RecordedEvent) -> anyhow::Result<()> {
        unreachable!("the runner applies batches")
    }
    async fn apply_batch(&self, _conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        self.sizes.lock().unwrap().push(events.len());
        Ok(())
    }
    fn settle(&self) -> Duration {
        self.settle
    }
}

fn one_event() -> NewCommand {
    let data = EventData {
        stream: StreamId::new(EntityKind::Task, ulid::Ulid::new().to_string()),
        event_type: "TestHappened".into(),
        schema_version: 1,
        payload: serde_json::json!({}),
        action: Action::Created,
        before: None,
        after: None,
        note: None,
    };
    NewCommand { events: vec![NewEvent::new(data, Actor::system("test"))], ..NewCommand::default() }
}

async fn wait_for_checkpoint(pool: &sqlx::PgPool, position: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while runner::checkpoint(pool, "batches").await.unwrap() < position {
        assert!(Instant::now() < deadline, "the runner did not reach {position}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_projection_with_a_settle_time_gets_a_burst_of_appends_as_one_batch() {
    let url = devdb::test_server().await.expect("test server").fresh_database().await.expect("fresh database");
    let pool = PgPoolOptions::new().max_connections(6).connect(&url).await.expect("connect");
    store::MIGRATOR.run(&pool).await.expect("migrate");
    let store = EventStore::new(pool.clone());
    let upcasters = Upcasters::new();
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let projection = Arc::new(Batches { sizes: sizes.clone(), settle: Duration::from_millis(500) });
    runner::install(&pool, projection.as_ref(), &upcasters).await.unwrap();

    // The runner catches up on what is there, and then on the notification of the first append (no poll: 1 h).
    let first = store.append(one_event()).await.unwrap().last_position();
    let stop = CancellationToken::new();
    let running = tokio::spawn(runner::run(pool.clone(), vec![projection], upcasters, Duration::from_secs(3600), {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));
    wait_for_checkpoint(&pool, first).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(*sizes.lock().unwrap(), vec![1]);

    // Three commits in a row, each with its own notification: one batch, after the settle time.
    let mut last = 0;
    for _ in 0..3 {
        last = store.append(one_event()).await.unwrap().last_position();
    }
    wait_for_checkpoint(&pool, last).await;
    assert_eq!(*sizes.lock().unwrap(), vec![1, 3]);

    stop.cancel();
    running.await.unwrap();
}
