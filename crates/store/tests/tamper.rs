//! Tamper evidence: a superuser who switches the guard off and alters, removes or reorders rows is caught.

use sqlx::PgPool;
use store::EventStore;

use crate::support::{command, fresh_pool, tamper};

async fn log_of_ten_events() -> PgPool {
    let pool = fresh_pool(4).await;
    let store = EventStore::new(pool.clone());
    for _ in 0..5 {
        store.append(command(2)).await.unwrap();
    }
    let report = store::verify::verify_chain(&pool).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 10);
    pool
}

async fn first_bad_position(pool: &PgPool) -> Option<i64> {
    let report = store::verify::verify_chain(pool).await.unwrap();
    assert_eq!(report.ok, report.first_bad_position.is_none());
    report.first_bad_position
}

#[tokio::test]
async fn an_altered_row_is_named() {
    let pool = log_of_ten_events().await;
    tamper(&pool, &["update audit_log set payload = '{\"n\": 99}' where position = 5"]).await;
    assert_eq!(first_bad_position(&pool).await, Some(5));
}

#[tokio::test]
async fn an_altered_audit_column_is_named() {
    let pool = log_of_ten_events().await;
    tamper(&pool, &["update audit_log set actor_id = 'mallory' where position = 8"]).await;
    assert_eq!(first_bad_position(&pool).await, Some(8));
}

#[tokio::test]
async fn a_removed_row_is_named() {
    let pool = log_of_ten_events().await;
    tamper(&pool, &["delete from audit_log where position = 4"]).await;
    assert_eq!(first_bad_position(&pool).await, Some(4));
}

#[tokio::test]
async fn the_last_row_removed_and_renumbered_rows_are_caught() {
    let pool = log_of_ten_events().await;
    // Remove row 3 and close the gap by renumbering the rest: positions look contiguous again.
    tamper(
        &pool,
        &[
            "delete from audit_log where position = 3",
            "update audit_log set position = position - 1 where position > 3",
        ],
    )
    .await;
    assert_eq!(first_bad_position(&pool).await, Some(3));
}

#[tokio::test]
async fn two_swapped_rows_are_named() {
    let pool = log_of_ten_events().await;
    tamper(
        &pool,
        &[
            "update audit_log set position = 1000 where position = 6",
            "update audit_log set position = 6 where position = 7",
            "update audit_log set position = 7 where position = 1000",
        ],
    )
    .await;
    assert_eq!(first_bad_position(&pool).await, Some(6));
}
