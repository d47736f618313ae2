//! The settings every process connects with: connections idle past the ping window are checked before use, and
//! sessions run without JIT unless the URL says otherwise.

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

#[tokio::test]
async fn an_append_whose_connections_all_died_a_moment_ago_still_commits() {
    let url = devdb::test_server().await.expect("test server").fresh_database().await.expect("fresh database");
    let admin = PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    store::MIGRATOR.run(&admin).await.unwrap();
    let pool = store::pool_options().max_connections(3).connect(&url).await.unwrap();
    let store = store::EventStore::new(pool.clone());
    store.append(crate::support::command(1)).await.unwrap();
    // Every connection to the database but the admin's (the batching task's own, used within the ping window, so
    // none is checked before its next use, and the pool's) is ended by the server, as a restart would.
    let ended: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_stat_activity \
          where datname = current_database() and pid <> pg_backend_pid()",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!ended.is_empty() && ended.iter().all(|ended| *ended), "{ended:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;

    let appended = store.append(crate::support::command(2)).await.expect("committed on a fresh connection");
    assert_eq!(appended.events.len(), 2);
    assert_eq!(crate::support::count_events(&admin).await, 3);
    // And the pipelined connection is connected anew: the next batch goes through the pipeline again.
    let before = store.stats();
    store.append(crate::support::command(1)).await.unwrap();
    assert_eq!(store.stats().pipelined_batches, before.pipelined_batches + 1, "{:?}", store.stats());
}

#[tokio::test]
async fn connections_run_without_jit_unless_the_url_sets_it() {
    use sqlx::postgres::PgConnectOptions;
    let url = devdb::test_server().await.expect("test server").fresh_database().await.expect("fresh database");
    let jit = |options: PgConnectOptions| async move {
        let pool = store::pool_options().max_connections(1).connect_with(options).await.unwrap();
        let jit: String = sqlx::query_scalar("show jit").fetch_one(&pool).await.unwrap();
        pool.close().await;
        jit
    };
    let plain: PgConnectOptions = url.parse().unwrap();
    assert_eq!(jit(store::with_session_settings(plain.clone())).await, "off");
    let operators = plain.options([("jit", "on"), ("statement_timeout", "5s")]);
    assert_eq!(jit(store::with_session_settings(operators)).await, "on");
}

#[tokio::test]
async fn a_query_on_a_connection_the_server_ended_fails_as_unavailable_and_a_failed_query_does_not() {
    use sqlx::Connection as _;
    let url = devdb::test_server().await.expect("test server").fresh_database().await.expect("fresh database");
    let admin = PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&mut conn).await.unwrap();

    let failed = sqlx::query("select 1 / 0").execute(&mut conn).await.unwrap_err();
    assert!(!store::is_unavailable(&anyhow::Error::from(failed).context("divide")));

    // The server ends the session, as a restart or an administrator would.
    let terminated: bool =
        sqlx::query_scalar("select pg_terminate_backend($1)").bind(pid).fetch_one(&admin).await.unwrap();
    assert!(terminated);
    // Gone from the server before the next query, which then cannot slip in first.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, bool>("select exists (select 1 from pg_stat_activity where pid = $1)")
        .bind(pid)
        .fetch_one(&admin)
        .await
        .unwrap()
    {
        assert!(std::time::Instant::now() < deadline, "the ended backend did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ended = sqlx::query("select 1").execute(&mut conn).await.unwrap_err();
    let ended = anyhow::Error::from(ended).context("read the task");
    assert!(store::is_unavailable(&ended), "{ended:#}");
}
