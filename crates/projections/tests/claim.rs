//! What a claimer reads in one round trip (`queue::claim_candidates`): newly enqueued tasks admitted to the
//! queue, due tasks picked, and the picked tasks' streams with their Issues' and the ContextPackets and
//! ConstraintSnapshots those link, without images.
//!
//! Runs on a fresh database of its own from `devdb` (the server at `DATABASE_URL`, or a throwaway cluster).

use domain::event::{Action, Actor, EntityKind, EventData, NewEvent, StreamId};
use projections::queue::{self, QueueProjection};
use projections::runner;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use store::{read, EventStore, NewCommand, Upcasters};

extern crate jct_projections as projections;

fn event(stream: &StreamId, event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent::new(
        EventData {
            stream: stream.clone(),
            event_type: event_type.to_owned(),
            schema_version: 1,
            payload,
            action: Action::Updated,
            before: None,
            after: None,
            note: None,
        },
        Actor::system("test"),
    )
}

fn with_images(mut event: NewEvent, action: Action, document: serde_json::Value) -> NewEvent {
    event.data.action = action;
    event.data.before = Some(json!({"earlier": document}));
    event.data.after = Some(document);
    event
}

fn link(issue: &StreamId, linked: &StreamId) -> NewEvent {
    let payload = json!({"linked_kind": linked.kind.as_str(), "linked_id": linked.id});
    with_images(event(issue, "IssueLinked", payload), Action::Linked, json!({"id": issue.id, "links": [linked.id]}))
}

/// A task with its Issue, the Issue's ContextPacket and ConstraintSnapshot, and a DoctrineRef it links too.
fn enqueue(task: &StreamId, issue: &StreamId, packet: &StreamId, snapshot: &StreamId) -> NewCommand {
    let doctrine = StreamId::new(EntityKind::DoctrineRef, ulid::Ulid::new().to_string());
    let created = |stream: &StreamId| {
        let document = json!({"id": stream.id, "kind": stream.kind.as_str()});
        with_images(event(stream, "Created", json!({"object": document})), Action::Created, document)
    };
    let task_document = json!({"task_id": task.id, "cwom_issue_id": issue.id});
    NewCommand {
        events: vec![
            created(issue),
            created(packet),
            created(snapshot),
            created(&doctrine),
            link(issue, packet),
            link(issue, snapshot),
            link(issue, &doctrine),
            with_images(
                event(task, "TaskCreated", json!({"task": task_document})),
                Action::Created,
                task_document.clone(),
            ),
            event(task, "TaskEnqueued", json!({})),
        ],
        ..NewCommand::default()
    }
}

/// New streams for a task, its Issue, and the Issue's ContextPacket and ConstraintSnapshot.
fn task_streams() -> [StreamId; 4] {
    let stream = |kind| StreamId::new(kind, ulid::Ulid::new().to_string());
    [
        stream(EntityKind::Task),
        stream(EntityKind::Issue),
        stream(EntityKind::ContextPacket),
        stream(EntityKind::ConstraintSnapshot),
    ]
}

/// A fresh, migrated database with the queue projection installed, and a store without inline read models.
async fn queue_database() -> (sqlx::PgPool, EventStore) {
    let url = devdb::test_server().await.expect("test server").fresh_database().await.expect("fresh database");
    let pool = PgPoolOptions::new().max_connections(4).connect(&url).await.expect("connect");
    store::MIGRATOR.run(&pool).await.expect("migrate");
    runner::install(&pool, &QueueProjection, &Upcasters::new()).await.unwrap();
    let store = EventStore::new(pool.clone());
    (pool, store)
}

#[tokio::test]
async fn a_claim_admits_new_tasks_and_reads_the_picked_ones_streams_with_their_issues_packets_and_snapshots() {
    // No inline read models and no projector: the queue is empty until a claimer admits the tasks.
    let (pool, store) = queue_database().await;
    let picked: Vec<[StreamId; 4]> = (0..2).map(|_| task_streams()).collect();
    let later = task_streams();
    for [task, issue, packet, snapshot] in picked.iter().chain([&later]) {
        store.append(enqueue(task, issue, packet, snapshot)).await.unwrap();
    }
    // A later event on a picked Issue is read too.
    let issue = &picked[0][1];
    let changes = json!({"status": "in_progress"});
    let updated = with_images(event(issue, "Updated", json!({"changes": changes})), Action::Updated, changes);
    store.append(NewCommand { events: vec![updated], ..NewCommand::default() }).await.unwrap();
    let queued: i64 = sqlx::query_scalar("select count(*) from task_queue").fetch_one(&pool).await.unwrap();
    assert_eq!(queued, 0);

    // The two due longest, out of a window of two: exactly the first two tasks.
    let candidates = queue::claim_candidates(&pool, 2, 2, &[]).await.unwrap();
    let queued: Vec<String> =
        sqlx::query_scalar("select task_id from task_queue order by due_at").fetch_all(&pool).await.unwrap();
    let mut every_task: Vec<String> = picked.iter().chain([&later]).map(|[task, ..]| task.id.clone()).collect();
    assert_eq!(queued, every_task, "every enqueued task is admitted");
    every_task.pop();
    assert_eq!(candidates.task_ids, every_task);
    let clock: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select clock_timestamp()").fetch_one(&pool).await.unwrap();
    assert!(candidates.now <= clock && candidates.now > clock - chrono::TimeDelta::seconds(5));

    let wanted: Vec<&StreamId> = picked.iter().flatten().collect();
    let everything = read::read_after(&pool, 0, 1000).await.unwrap();
    let expected: Vec<_> = everything.iter().filter(|event| wanted.contains(&&event.stream)).collect();
    assert_eq!(candidates.events.len(), expected.len(), "every event of the picked tasks' streams and theirs only");
    assert_eq!(expected.iter().filter(|event| event.after.is_some()).count(), 15, "the stored events have images");
    for (got, stored) in candidates.events.iter().zip(expected) {
        assert_eq!((got.position, &got.stream, &got.payload), (stored.position, &stored.stream, &stored.payload));
        assert_eq!((&got.before, &got.after), (&None, &None), "images are left out");
    }
    assert!(!candidates.events.iter().any(|event| event.stream.kind == EntityKind::DoctrineRef));

    // From a wider window the picks vary, but always come from the due: all three here, and never more than asked.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let candidates = queue::claim_candidates(&pool, 1, 3, &[]).await.unwrap();
        assert_eq!(candidates.task_ids.len(), 1);
        seen.insert(candidates.task_ids[0].clone());
    }
    assert_eq!(seen.len(), 3, "a random pick from the window: {seen:?}");

    // Tasks this process is still claiming are skipped: the window is the three due longest of the others.
    let claiming: Vec<String> = every_task.clone();
    for _ in 0..10 {
        let candidates = queue::claim_candidates(&pool, 3, 3, &claiming).await.unwrap();
        let task_ids: Vec<&String> = candidates.task_ids.iter().collect();
        assert_eq!(task_ids, [&later[0].id], "only the task not being claimed");
    }

    // Nothing due: only the clock.
    sqlx::query("update task_queue set due_at = now() + interval '1 hour'").execute(&pool).await.unwrap();
    let candidates = queue::claim_candidates(&pool, 5, 20, &[]).await.unwrap();
    assert!(candidates.task_ids.is_empty() && candidates.events.is_empty());
}

#[tokio::test]
async fn a_claim_reads_each_stream_by_its_key_even_when_planned_on_an_empty_log_never_analysed() {
    let (pool, store) = queue_database().await;

    // First on the empty log, which PostgreSQL guesses at ten pages: a plan made then is kept until the log is
    // analysed, which with autovacuum off is never. Then on a log of some hundreds of tasks, analysed.
    for analysed in [false, true] {
        if analysed {
            for _ in 0..300 {
                let [task, issue, packet, snapshot] = task_streams();
                store.append(enqueue(&task, &issue, &packet, &snapshot)).await.unwrap();
            }
            sqlx::query("analyze audit_log, task_queue").execute(&pool).await.unwrap();
        }
        let plan = devdb::generic_plan(&pool, queue::CLAIM_CANDIDATES_SQL, "1, 4, '{}'").await.unwrap();
        assert!(!plan.contains("Seq Scan on audit_log"), "analysed: {analysed}\n{plan}");
        // Every lookup in the stream index names the stream, kind and id: none reads every event of a kind.
        let stream_lookups: Vec<&str> =
            plan.lines().filter(|line| line.contains("Index Cond: ") && line.contains("entity_kind")).collect();
        assert_eq!(stream_lookups.len(), 4, "admit, tasks, Issues, linked objects; analysed: {analysed}\n{plan}");
        for lookup in stream_lookups {
            assert!(lookup.contains("entity_id = "), "analysed: {analysed}: {lookup}\n{plan}");
        }
    }
}
