//! `audit_log` is append-only for every role: the database refuses UPDATE, DELETE and TRUNCATE.

use crate::support::{command, count_events, fresh_pool};

#[tokio::test]
async fn update_delete_and_truncate_are_refused_by_the_database() {
    let pool = fresh_pool(4).await;
    let store = store::EventStore::new(pool.clone());
    store.append(command(3)).await.expect("append");
    assert_eq!(count_events(&pool).await, 3);

    // The test connects as a superuser that owns the table: the triggers hold even for the owner.
    for statement in [
        "update audit_log set note = 'rewritten' where position = 1",
        "delete from audit_log where position = 2",
        "truncate audit_log",
    ] {
        let error = sqlx::query(statement).execute(&pool).await.expect_err(statement);
        assert!(error.to_string().contains("append-only"), "{statement}: {error}");
    }
    assert_eq!(count_events(&pool).await, 3);
    let notes: Vec<Option<String>> =
        sqlx::query_scalar("select note from audit_log order by position").fetch_all(&pool).await.unwrap();
    assert_eq!(notes, vec![None, None, None]);
}
