//! Appends: positions, stream versions, optimistic concurrency, idempotency, unique claims, upcasting.

use domain::event::{EntityKind, StreamId};
use store::{read, AppendError, EventStore, ExpectedVersion, NewCommand, Upcasters};

use crate::support::{command, event, fresh_pool};

#[tokio::test]
async fn a_command_appends_its_events_with_consecutive_positions_and_stream_versions() {
    let pool = fresh_pool(4).await;
    let store = EventStore::new(pool.clone());
    let first = store.append(command(7)).await.unwrap();
    let second = store.append(command(1)).await.unwrap();
    let positions: Vec<i64> = first.events.iter().chain(&second.events).map(|event| event.position).collect();
    assert_eq!(positions, (1..=8).collect::<Vec<_>>());
    let versions: Vec<i32> = first.events.iter().map(|event| event.stream_version).collect();
    assert_eq!(versions, (1..=7).collect::<Vec<_>>());
    assert_eq!(second.events[0].stream_version, 1);
    let stored = read::read_after(&pool, 0, 100).await.unwrap();
    assert_eq!(stored, first.events.iter().chain(&second.events).cloned().collect::<Vec<_>>());
    assert_eq!(first.last_position(), 7);
}

#[tokio::test]
async fn reading_several_streams_returns_each_named_stream_once_in_log_order() {
    let pool = fresh_pool(4).await;
    let store = EventStore::new(pool.clone());
    let (a, b, c) = (command(3), command(2), command(1));
    let streams: Vec<StreamId> = [&a, &b, &c].iter().map(|command| command.events[0].data.stream.clone()).collect();
    // Interleaved, so that log order is not stream order.
    let mut appended = Vec::new();
    for command in [a, c, b] {
        appended.extend(store.append(command).await.unwrap().events);
    }
    let issue = StreamId::new(EntityKind::Issue, streams[0].id.clone());
    appended.extend(
        store
            .append(NewCommand {
                events: vec![event(&issue, "TestHappened", serde_json::json!({}))],
                ..Default::default()
            })
            .await
            .unwrap()
            .events,
    );

    // A stream named twice comes back once; an id of another kind is another stream; unknown streams add nothing.
    let unknown = StreamId::new(EntityKind::Task, "no-such-task");
    let read = read::read_streams(&pool, &[streams[1].clone(), streams[0].clone(), streams[1].clone(), unknown])
        .await
        .unwrap();
    let expected: Vec<_> =
        appended.iter().filter(|event| event.stream == streams[0] || event.stream == streams[1]).cloned().collect();
    assert_eq!(read, expected);
    assert_eq!(read.len(), 5);
    assert!(read.windows(2).all(|pair| pair[0].position < pair[1].position));
    assert!(read::read_streams(&pool, &[]).await.unwrap().is_empty());

    // Prefixes: each stream up to the version named (not included), the larger one for a stream named twice.
    let prefixes =
        read::read_stream_prefixes(&pool, &[(streams[0].clone(), 2), (streams[1].clone(), 2), (streams[0].clone(), 3)])
            .await
            .unwrap();
    let expected: Vec<_> = expected
        .iter()
        .filter(|event| event.stream_version < if event.stream == streams[0] { 3 } else { 2 })
        .cloned()
        .collect();
    assert_eq!(prefixes, expected);
    assert_eq!(prefixes.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_appenders_expecting_the_same_version_exactly_one_wins() {
    let pool = fresh_pool(8).await;
    let stream = StreamId::new(EntityKind::Task, ulid::Ulid::new().to_string());
    let setup = EventStore::new(pool.clone());
    setup
        .append(NewCommand {
            events: vec![event(&stream, "TestHappened", serde_json::json!({}))],
            ..Default::default()
        })
        .await
        .unwrap();

    for round in 0..20 {
        let expected = ExpectedVersion::Exactly(round + 1);
        // Separate stores: separate batching tasks and connections, racing for the lock.
        let racers: Vec<_> = (0..2)
            .map(|racer| {
                let store = EventStore::new(pool.clone());
                let stream = stream.clone();
                tokio::spawn(async move {
                    store
                        .append(NewCommand {
                            events: vec![event(&stream, "TestChanged", serde_json::json!({ "racer": racer }))],
                            expected: vec![(stream.clone(), expected)],
                            ..Default::default()
                        })
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        let mut conflicts = 0;
        for racer in racers {
            match racer.await.unwrap() {
                Ok(_) => wins += 1,
                Err(AppendError::Conflict { actual, .. }) => {
                    assert_eq!(actual, round + 2);
                    conflicts += 1;
                }
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert_eq!((wins, conflicts), (1, 1), "round {round}");
    }
    let events = read::read_stream(&pool, &stream, None).await.unwrap();
    assert_eq!(events.len(), 21);

    // Within one batch, too: two commands in one transaction expecting the same version.
    let mut tx = pool.begin().await.unwrap();
    let contenders = (0..2)
        .map(|_| NewCommand {
            events: vec![event(&stream, "TestChanged", serde_json::json!({}))],
            expected: vec![(stream.clone(), ExpectedVersion::Exactly(21))],
            ..Default::default()
        })
        .collect();
    let results = store::append_batch(&mut tx, contenders).await.unwrap();
    tx.commit().await.unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(AppendError::Conflict { actual: 22, .. })));

    // NoStream refuses an existing stream.
    let result = setup
        .append(NewCommand {
            events: vec![event(&stream, "TestHappened", serde_json::json!({}))],
            expected: vec![(stream.clone(), ExpectedVersion::NoStream)],
            ..Default::default()
        })
        .await;
    assert!(matches!(result, Err(AppendError::Conflict { .. })));
}

#[tokio::test]
async fn commands_appended_together_share_one_transaction_and_each_stays_all_or_nothing() {
    let pool = fresh_pool(4).await;
    let store = EventStore::new(pool.clone());
    let refused = {
        let mut command = command(2);
        let stream = command.events[0].data.stream.clone();
        command.expected = vec![(stream, ExpectedVersion::Exactly(5))];
        command
    };
    let invalid = NewCommand::default();
    let results = store.append_all(vec![command(2), refused, invalid, command(3)]).await;
    assert_eq!(results.len(), 4);
    assert!(matches!(results[1], Err(AppendError::Conflict { actual: 0, .. })), "{:?}", results[1]);
    assert!(matches!(results[2], Err(AppendError::Invalid(_))), "{:?}", results[2]);
    let (first, last) = (results[0].as_ref().unwrap(), results[3].as_ref().unwrap());
    let positions: Vec<i64> = first.events.iter().chain(&last.events).map(|event| event.position).collect();
    assert_eq!(positions, (1..=5).collect::<Vec<_>>());
    // One transaction: every row was written by the same one.
    let transactions: i64 =
        sqlx::query_scalar("select count(distinct xmin::text) from audit_log").fetch_one(&pool).await.unwrap();
    assert_eq!(transactions, 1);
    assert!(store.append_all(Vec::new()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_commands_with_one_idempotency_key_take_effect_once() {
    let pool = fresh_pool(40).await;
    let stores: Vec<EventStore> = (0..4).map(|_| EventStore::new(pool.clone())).collect();
    let attempts: Vec<_> = (0..32)
        .map(|attempt| {
            let store = stores[attempt % stores.len()].clone();
            tokio::spawn(async move {
                let mut command = command(3);
                command.idempotency_key = Some("key-1".into());
                store.append(command).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut duplicates = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(appended) => winners.push(appended.events[0].stream.clone()),
            Err(AppendError::DuplicateIdempotencyKey { key, existing }) => {
                assert_eq!(key, "key-1");
                duplicates += 1;
                assert_eq!(existing.kind, EntityKind::Task);
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!((winners.len(), duplicates), (1, 31));
    let stored: i64 = sqlx::query_scalar("select count(*) from audit_log where idempotency_key = 'key-1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 3, "one command's three events, nothing else");
    let owner: String = sqlx::query_scalar("select entity_id from unique_claims where key = 'idempotency:key-1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(owner, winners[0].id);
}

#[tokio::test]
async fn a_unique_key_belongs_to_one_stream() {
    let pool = fresh_pool(4).await;
    let store = EventStore::new(pool.clone());
    let first = StreamId::new(EntityKind::Repo, "01J00000000000000000000001");
    let second = StreamId::new(EntityKind::Repo, "01J00000000000000000000002");
    let claim = |stream: &StreamId| NewCommand {
        events: vec![event(stream, "RepoCreated", serde_json::json!({})).claiming("repo_slug:acme/svc".into())],
        ..Default::default()
    };
    store.append(claim(&first)).await.unwrap();
    match store.append(claim(&second)).await {
        Err(AppendError::UniqueKeyTaken { key, existing }) => {
            assert_eq!(key, "repo_slug:acme/svc");
            assert_eq!(existing, first);
        }
        other => panic!("expected UniqueKeyTaken, got {other:?}"),
    }
    assert_eq!(crate::support::count_events(&pool).await, 1);
}

#[tokio::test]
async fn the_store_remembers_a_claims_owner_but_not_its_absence() {
    let pool = fresh_pool(4).await;
    let store = EventStore::new(pool.clone());
    let repo = StreamId::new(EntityKind::Repo, "01J00000000000000000000003");
    let key = "repo_slug:acme/cache";
    assert_eq!(store.claim_owner(key).await.unwrap(), None);
    let appended = store
        .append(NewCommand {
            events: vec![event(&repo, "RepoCreated", serde_json::json!({})).claiming(key.into())],
            ..Default::default()
        })
        .await
        .unwrap();
    // An absence is never remembered: the claim made since is seen.
    let owner = Some((repo.clone(), appended.last_position()));
    assert_eq!(store.claim_owner(key).await.unwrap(), owner);
    // An owner is: a claim never changes owner, so the store answers without reading the table again.
    crate::support::tamper(&pool, &["delete from unique_claims"]).await;
    assert_eq!(store.claim_owner(key).await.unwrap(), owner);
    assert_eq!(read::claim_owner(&pool, key).await.unwrap(), None, "the table no longer has it");
}

#[tokio::test]
async fn text_with_nul_is_refused_and_does_not_break_the_batch() {
    let pool = fresh_pool(4).await;
    let store = EventStore::new(pool.clone());
    let mut bad = command(1);
    bad.events[0].data.payload = serde_json::json!({ "text": "a\u{0}b" });
    let (bad, good) = tokio::join!(store.append(bad), store.append(command(2)));
    assert!(matches!(bad, Err(AppendError::Invalid(_))));
    assert_eq!(good.unwrap().events.len(), 2);
}

#[tokio::test]
async fn a_command_the_database_refuses_fails_alone_and_the_rest_of_its_batch_is_stored_as_given() {
    let pool = fresh_pool(8).await;
    let store = EventStore::new(pool.clone());
    // The database refuses one kind of event: a batch holding it fails as a whole, then its commands are appended
    // again, one by one, from what the failed attempt gives back.
    sqlx::query("alter table audit_log add constraint refuse_poison check (event_type <> 'Poison') not valid")
        .execute(&pool)
        .await
        .unwrap();
    let mut poison = command(1);
    poison.events[0].data.event_type = "Poison".into();
    let mut keyed = command(2);
    keyed.idempotency_key = Some("key-kept".into());
    keyed.events[1].unique_keys.push("slug:kept".into());
    keyed.blobs.push(store::NewBlob::new(b"a blob".to_vec()));
    let mut claiming = command(1);
    claiming.events[0].unique_keys.push("slug:later".into());
    // The second claimer of a key is refused in the failed batch because of the first: it is checked again.
    let mut also_claiming = command(1);
    also_claiming.events[0].unique_keys.push("slug:later".into());
    let repeat = keyed.clone();
    let (poison, keyed, claiming, also_claiming) =
        tokio::join!(store.append(poison), store.append(keyed), store.append(claiming), store.append(also_claiming));
    assert!(matches!(poison, Err(AppendError::Internal(_))), "{poison:?}");
    let keyed_events = keyed.unwrap().events;
    assert_eq!(keyed_events.len(), 2);
    assert_eq!(keyed_events[0].unique_keys, ["idempotency:key-kept"]);
    assert_eq!(keyed_events[1].unique_keys, ["slug:kept"]);
    assert_eq!(keyed_events[0].idempotency_key.as_deref(), Some("key-kept"));
    assert_eq!(keyed_events[1].trace_id.as_deref(), Some("trace-test"));
    assert_eq!(
        [claiming.is_ok(), also_claiming.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "one of the two claimers holds the key: {claiming:?} {also_claiming:?}"
    );
    let stored = read::read_after(&pool, 0, 100).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|event| event.event_type != "Poison"));
    assert_eq!(
        (stored[0].payload.clone(), stored[0].stream_version),
        (keyed_events[0].payload.clone(), keyed_events[0].stream_version)
    );
    let blobs: i64 = sqlx::query_scalar("select count(*) from blobs").fetch_one(&pool).await.unwrap();
    assert_eq!(blobs, 1);
    // The key was claimed once, as given.
    match store.append(repeat).await {
        Err(AppendError::DuplicateIdempotencyKey { key, .. }) => assert_eq!(key, "key-kept"),
        other => panic!("a repeat of the key: {other:?}"),
    }
    assert!(store::verify::verify_chain(&pool).await.unwrap().ok);
}

#[tokio::test]
async fn an_upcaster_lifts_a_stored_v1_event_to_the_v2_shape() {
    let pool = fresh_pool(4).await;
    let store = EventStore::new(pool.clone());
    let stream = StreamId::new(EntityKind::Task, ulid::Ulid::new().to_string());
    store
        .append(NewCommand {
            events: vec![event(&stream, "TestRenamed", serde_json::json!({ "name": "Ada Lovelace" }))],
            ..Default::default()
        })
        .await
        .unwrap();
    let upcasters = Upcasters::new()
        .register("TestRenamed", 1, |payload| {
            let name = payload["name"].as_str().unwrap_or_default().to_owned();
            let (first, last) = name.split_once(' ').unwrap_or((&name, ""));
            serde_json::json!({ "first_name": first, "last_name": last })
        })
        .register("TestRenamed", 2, |mut payload| {
            payload["display"] = serde_json::json!("v3");
            payload
        });
    let stored = read::read_stream(&pool, &stream, None).await.unwrap().remove(0);
    assert_eq!(stored.schema_version, 1);
    let upcast = upcasters.upcast(stored.clone());
    assert_eq!(upcast.schema_version, 3);
    assert_eq!(upcast.payload, serde_json::json!({ "first_name": "Ada", "last_name": "Lovelace", "display": "v3" }));
    // The stored row is untouched, and still verifies.
    let again = read::read_stream(&pool, &stream, None).await.unwrap().remove(0);
    assert_eq!(again, stored);
    assert!(store::verify::verify_chain(&pool).await.unwrap().ok);
}

#[tokio::test]
async fn after_is_stored_as_given_whether_or_not_it_repeats_a_payload_member() {
    use serde_json::json;
    let pool = fresh_pool(4).await;
    let store = EventStore::new(pool.clone());
    let stream = StreamId::new(EntityKind::Task, ulid::Ulid::new().to_string());
    let object = json!({ "title": "Fix the build", "n": 12, "tags": ["a", "b"], "nested": { "x": null } });
    // (payload, after): the first two take `after` from the payload; the others send it as it is.
    let cases = [
        (json!({ "object": object }), Some(object.clone())),
        (json!({ "k": null }), Some(json!(null))),
        (json!({ "object": object }), Some(json!({ "title": "Something else" }))),
        (json!({ "object": object, "more": 1 }), Some(object.clone())),
        (json!({ "object": object }), None),
        (json!([object]), Some(object.clone())),
    ];
    let events = cases
        .iter()
        .map(|(payload, after)| {
            let mut new_event = event(&stream, "TestHappened", payload.clone());
            new_event.data.after = after.clone();
            new_event
        })
        .collect();
    let appended = store.append(NewCommand { events, ..NewCommand::default() }).await.unwrap();

    let stored = read::read_after(&pool, 0, 100).await.unwrap();
    assert_eq!(stored, appended.events);
    let afters: Vec<Option<serde_json::Value>> = stored.into_iter().map(|event| event.after).collect();
    let expected: Vec<Option<serde_json::Value>> = cases.into_iter().map(|(_, after)| after).collect();
    assert_eq!(afters, expected);
    // SQL null for no `after`, jsonb null for a JSON null.
    let nulls: Vec<Option<String>> = sqlx::query_scalar("select jsonb_typeof(after) from audit_log order by position")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(nulls[1].as_deref(), Some("null"));
    assert_eq!(nulls[4], None);
    let report = store::verify::verify_chain(&pool).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 6);
}
