//! Blobs stored with the events that name them: in the command's transaction, once per digest, checked
//! (digest, size) by the store and by the database, and never changed.

use std::sync::Arc;

use store::{AppendError, EventStore, NewBlob, NewCommand};

use crate::support::{command, fresh_pool};

fn with_blobs(blobs: Vec<NewBlob>) -> NewCommand {
    NewCommand { blobs, ..command(2) }
}

async fn stored(pool: &sqlx::PgPool) -> Vec<(String, i64, Vec<u8>, i64)> {
    sqlx::query_as("select digest, size_bytes, content, position from blobs order by position, digest")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_commands_blobs_are_stored_with_its_events_once_per_digest() {
    let pool = fresh_pool(4).await;
    let store = EventStore::new(pool.clone());
    let log = NewBlob::new(b"the handler's log\n".to_vec());
    let artifact = NewBlob::new(b"an artifact".to_vec());
    let first = store.append(with_blobs(vec![log.clone(), artifact.clone(), log.clone()])).await.unwrap();
    // The same content again, from concurrent commands in one batch and from a later one: stored once.
    let again: Vec<_> = (0..4).map(|_| store.append(with_blobs(vec![artifact.clone()]))).collect();
    for result in futures::future::join_all(again).await {
        result.unwrap();
    }
    let rows = stored(&pool).await;
    let first_position = first.events[0].position;
    let mut expected = vec![
        (log.digest.clone(), 18, log.content.to_vec(), first_position),
        (artifact.digest.clone(), 11, artifact.content.to_vec(), first_position),
    ];
    expected.sort_by(|a, b| (a.3, &a.0).cmp(&(b.3, &b.0)));
    assert_eq!(rows, expected);
    let read = store::blob::read_blobs(&pool, &[log.digest.clone(), "sha256:absent".into()]).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[&log.digest], log.content.to_vec());
}

#[tokio::test]
async fn a_blob_that_is_not_its_digests_content_or_too_large_is_refused_and_changes_nothing() {
    let pool = fresh_pool(4).await;
    let store = EventStore::new(pool.clone());
    let forged = NewBlob { digest: NewBlob::new(b"one".to_vec()).digest, content: Arc::from(&b"another"[..]) };
    let too_large = NewBlob::new(vec![7_u8; store::blob::MAX_INLINE_BLOB_BYTES + 1]);
    let many = (0..5_u8).map(|n| NewBlob::new(vec![n; store::blob::MAX_INLINE_BLOB_BYTES])).collect();
    for (blobs, says) in [(vec![forged], "not the SHA-256"), (vec![too_large], "at most"), (many, "in all")] {
        match store.append(with_blobs(blobs)).await {
            Err(AppendError::Invalid(message)) => assert!(message.contains(says), "{message}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let events: i64 = sqlx::query_scalar("select count(*) from audit_log").fetch_one(&pool).await.unwrap();
    assert_eq!((events, stored(&pool).await.len()), (0, 0));

    // The database holds the same line for anyone who writes around the store.
    let error = sqlx::query("insert into blobs (digest, size_bytes, content, position) values ($1, 3, 'abc', 1)")
        .bind(NewBlob::new(b"xyz".to_vec()).digest)
        .execute(&pool)
        .await
        .expect_err("a forged digest");
    assert!(error.to_string().contains("blobs_digest_check"), "{error}");
}

#[tokio::test]
async fn a_stored_blob_never_changes() {
    let pool = fresh_pool(4).await;
    let store = EventStore::new(pool.clone());
    store.append(with_blobs(vec![NewBlob::new(b"kept".to_vec())])).await.unwrap();
    for statement in ["update blobs set position = 99", "delete from blobs", "truncate blobs"] {
        let error = sqlx::query(statement).execute(&pool).await.expect_err(statement);
        assert!(error.to_string().contains("never change"), "{statement}: {error}");
    }
    assert_eq!(stored(&pool).await[0].2, b"kept");
}

#[tokio::test]
async fn blobs_are_read_by_their_key_even_when_planned_on_an_empty_table_never_analysed() {
    let pool = fresh_pool(2).await;
    // `blobs` is empty (guessed at ten pages) and has never been analysed.
    let plan = devdb::generic_plan(&pool, store::blob::READ_BLOBS_SQL, "'{sha256:a,sha256:b}'").await.unwrap();
    assert!(!plan.contains("Seq Scan on blobs"), "{plan}");
    assert!(plan.contains("Index Cond: (digest = d.digest)"), "{plan}");
}
