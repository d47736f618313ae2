//! The pool settings every process uses: connections idle past the ping window are checked before use.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;

#[tokio::test]
async fn a_connection_the_server_closed_while_it_sat_idle_is_replaced_before_use() {
    let url = devdb::test_server().await.expect("test server").fresh_database().await.expect("fresh database");
    let admin = PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let pool = store::pool_options().max_connections(1).connect(&url).await.unwrap();
    let first: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&pool).await.unwrap();

    // The server ends the pooled connection's session, as a restart would.
    let terminated: bool =
        sqlx::query_scalar("select pg_terminate_backend($1)").bind(first).fetch_one(&admin).await.unwrap();
    assert!(terminated);
    tokio::time::sleep(store::PING_CONNECTIONS_IDLE_FOR + Duration::from_millis(200)).await;

    let second: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&pool).await.expect("a fresh connection");
    assert_ne!(first, second);
}
