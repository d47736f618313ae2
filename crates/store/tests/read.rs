//! Reads: what a claim reads in one round trip.

use domain::event::{Action, EntityKind, StreamId};
use serde_json::json;
use store::{read, EventStore, NewCommand, NewEvent};

use crate::support::{event, fresh_pool};

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

#[tokio::test]
async fn a_claim_reads_its_tasks_issues_and_their_linked_packets_and_snapshots_without_images() {
    let pool = fresh_pool(4).await;
    let store = EventStore::new(pool.clone());
    let stream = |kind| StreamId::new(kind, ulid::Ulid::new().to_string());
    let claimed: Vec<[StreamId; 4]> = (0..2)
        .map(|_| {
            [
                stream(EntityKind::Task),
                stream(EntityKind::Issue),
                stream(EntityKind::ContextPacket),
                stream(EntityKind::ConstraintSnapshot),
            ]
        })
        .collect();
    let other = [
        stream(EntityKind::Task),
        stream(EntityKind::Issue),
        stream(EntityKind::ContextPacket),
        stream(EntityKind::ConstraintSnapshot),
    ];
    for [task, issue, packet, snapshot] in claimed.iter().chain([&other]) {
        store.append(enqueue(task, issue, packet, snapshot)).await.unwrap();
    }
    // A later event on a claimed Issue is read too.
    let issue = &claimed[0][1];
    let changes = json!({"status": "in_progress"});
    let updated = with_images(event(issue, "Updated", json!({"changes": changes})), Action::Updated, changes);
    store.append(NewCommand { events: vec![updated], ..NewCommand::default() }).await.unwrap();

    let task_ids: Vec<String> = claimed.iter().map(|[task, ..]| task.id.clone()).collect();
    let read = read::read_claim_streams(&pool, &task_ids).await.unwrap();

    let wanted: Vec<&StreamId> = claimed.iter().flatten().collect();
    let everything = read::read_after(&pool, 0, 1000).await.unwrap();
    let expected: Vec<_> = everything.iter().filter(|event| wanted.contains(&&event.stream)).collect();
    assert_eq!(read.len(), expected.len(), "every event of the claimed tasks' streams and theirs only");
    assert_eq!(expected.iter().filter(|event| event.after.is_some()).count(), 15, "the stored events have images");
    for (got, stored) in read.iter().zip(expected) {
        assert_eq!((got.position, &got.stream, &got.payload), (stored.position, &stored.stream, &stored.payload));
        assert_eq!((&got.before, &got.after), (&None, &None), "images are left out");
    }
    assert!(!read.iter().any(|event| event.stream.kind == EntityKind::DoctrineRef), "only packets and snapshots");
}
