//! No reader ever skips an event: concurrent appenders, a concurrent subscriber, and a held-open writer.

use std::collections::HashSet;
use std::time::Duration;

use store::{read, EventStore, Subscription};

use crate::support::{command, fresh_pool};

const N_APPENDERS: usize = 16;
const COMMANDS_PER_APPENDER: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_sees_every_event_of_sixteen_concurrent_appenders_once_and_in_order() {
    let pool = fresh_pool(40).await;
    let total = (N_APPENDERS * COMMANDS_PER_APPENDER) as i64;
    let mut subscription = Subscription::start(pool.clone(), 0, Duration::from_millis(200), 300).await;
    let subscriber = tokio::spawn(async move {
        let mut seen = Vec::new();
        while (seen.len() as i64) < total {
            let batch = tokio::time::timeout(Duration::from_secs(60), subscription.next_batch())
                .await
                .expect("the subscriber stalled");
            seen.extend(batch.into_iter().map(|event| (event.position, event.event_id)));
        }
        // Nothing beyond what was appended arrives.
        let extra = tokio::time::timeout(Duration::from_millis(500), subscription.next_batch()).await;
        assert!(extra.is_err(), "unexpected events after the last append");
        seen
    });

    // Every appender has its own store: its own batching task and connections, all racing for the append lock.
    let appenders: Vec<_> = (0..N_APPENDERS)
        .map(|_| {
            let store = EventStore::new(pool.clone());
            tokio::spawn(async move {
                let mut positions = Vec::with_capacity(COMMANDS_PER_APPENDER);
                for _ in 0..COMMANDS_PER_APPENDER {
                    positions.push(store.append(command(1)).await.expect("append").last_position());
                }
                positions
            })
        })
        .collect();
    let mut acknowledged = HashSet::new();
    for appender in appenders {
        acknowledged.extend(appender.await.unwrap());
    }
    assert_eq!(acknowledged.len() as i64, total);

    let seen = subscriber.await.unwrap();
    let positions: Vec<i64> = seen.iter().map(|(position, _)| *position).collect();
    assert_eq!(positions, (1..=total).collect::<Vec<_>>(), "every position once, in order");
    let stored: Vec<(i64, String)> = read::read_after(&pool, 0, total + 10)
        .await
        .unwrap()
        .into_iter()
        .map(|event| (event.position, event.event_id))
        .collect();
    assert_eq!(seen, stored, "the subscriber saw exactly the table");
    assert!(positions.iter().all(|position| acknowledged.contains(position)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_held_open_is_still_delivered_after_a_later_writer() {
    let pool = fresh_pool(10).await;
    // Writer A takes the append lock and holds its transaction open.
    let mut writer_a = pool.begin().await.unwrap();
    let a_events = store::append_batch(&mut writer_a, vec![command(1)]).await.unwrap();
    let a_event_id = a_events[0].as_ref().unwrap().events[0].event_id.clone();

    // Writer B tries to commit meanwhile.
    let store = EventStore::new(pool.clone());
    let writer_b = tokio::spawn(async move { store.append(command(1)).await });

    // The reader polls while A is open: it must see nothing, and B must not have got ahead of A.
    let mut subscription = Subscription::start(pool.clone(), 0, Duration::from_millis(20), 100).await;
    let early = tokio::time::timeout(Duration::from_millis(400), subscription.next_batch()).await;
    assert!(early.is_err(), "nothing is readable while A is open");
    assert!(!writer_b.is_finished(), "B waits for A: commit order is position order");

    writer_a.commit().await.unwrap();
    let b = writer_b.await.unwrap().unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(5), subscription.next_batch()).await.unwrap();
        seen.extend(batch);
    }
    assert_eq!(seen[0].event_id, a_event_id, "A's event is delivered");
    assert_eq!(seen[0].position, 1);
    assert_eq!(seen[1].event_id, b.events[0].event_id);
    assert_eq!(seen[1].position, 2);
}
