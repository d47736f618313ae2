//! Tests of the managed cluster (start, reuse, adopt, stale pid file, stop) and of test databases.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jct_devdb::{test_server, ManagedCluster, TestServer, DEFAULT_DATABASE};
use sqlx::{Connection, PgConnection};

async fn select_one(url: &str) -> anyhow::Result<i32> {
    let mut conn = PgConnection::connect(url).await?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await?;
    conn.close().await?;
    Ok(one)
}

fn postmaster_pid(cluster: &ManagedCluster) -> String {
    let text = std::fs::read_to_string(cluster.data_dir().join("postmaster.pid")).unwrap();
    text.lines().next().unwrap().to_owned()
}

#[tokio::test]
async fn cluster_starts_keeps_its_data_across_restarts_and_stops() {
    let root = tempfile::tempdir().unwrap();

    let cluster = ManagedCluster::start(root.path()).await.unwrap();
    let url = cluster.url(DEFAULT_DATABASE);
    assert_eq!(select_one(&url).await.unwrap(), 1);
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE kept (x int)").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    assert!(cluster.log_file().is_file());
    cluster.stop().await;
    assert!(select_one(&url).await.is_err(), "the server is down after stop");

    let cluster = ManagedCluster::start(root.path()).await.unwrap();
    assert_eq!(cluster.url(DEFAULT_DATABASE), url);
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT x FROM kept").fetch_all(&mut conn).await.expect("the data directory was reused");
    conn.close().await.unwrap();
    drop(cluster);
    assert!(select_one(&url).await.is_err(), "the server is down after drop");
}

#[tokio::test]
async fn cluster_adopts_a_server_left_running_and_ignores_a_stale_pid_file() {
    let root = tempfile::tempdir().unwrap();

    // A run that "crashed": its server is still up.
    let first = ManagedCluster::start(root.path()).await.unwrap();
    let pid = postmaster_pid(&first);
    let data_dir = first.data_dir().to_path_buf();
    let socket_dir = first.socket_dir().to_path_buf();
    let pid_file = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
    std::mem::forget(first);

    let second = ManagedCluster::start(root.path()).await.unwrap();
    assert_eq!(postmaster_pid(&second), pid, "the running server was adopted, not restarted");
    assert_eq!(select_one(&second.url(DEFAULT_DATABASE)).await.unwrap(), 1);
    second.stop().await;

    // A reboot: postmaster.pid and the socket lock name a pid that now belongs to another live
    // process of the server's user. PostgreSQL alone would refuse to start.
    let owner = std::fs::metadata(&data_dir).unwrap();
    let mut impostor = std::process::Command::new("sleep").arg("60").uid(owner.uid()).gid(owner.gid()).spawn().unwrap();
    let fake = pid_file.replacen(&pid, &impostor.id().to_string(), 1);
    std::fs::write(data_dir.join("postmaster.pid"), &fake).unwrap();
    std::fs::write(socket_dir.join(".s.PGSQL.5432.lock"), format!("{}\n", impostor.id())).unwrap();

    let third = ManagedCluster::start(root.path()).await;
    impostor.kill().unwrap();
    impostor.wait().unwrap();
    let third = third.unwrap();
    assert_eq!(select_one(&third.url(DEFAULT_DATABASE)).await.unwrap(), 1);
    third.stop().await;
}

/// Makes `count` databases at once, checks each is its own and accepts connections, then drops them.
async fn check_fresh_databases(server: &TestServer, count: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let admin = server.admin_url().to_owned();
        tasks.spawn(async move {
            // A server per task, as tests in other processes would have.
            let server = TestServer::external(&admin).await.unwrap();
            server.fresh_database().await.unwrap()
        });
    }
    let mut urls = Vec::new();
    let mut names = Vec::new();
    while let Some(url) = tasks.join_next().await {
        let url = url.unwrap();
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        assert!(name.starts_with("jct_test_"), "{name}");
        names.push(name);
        urls.push(url);
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), count, "every database is new");

    for url in &urls {
        server.drop_database(url).await.unwrap();
        assert!(select_one(url).await.is_err(), "{url} was dropped");
    }
    assert!(server.drop_database(server.admin_url()).await.is_err(), "only test databases can be dropped");
}

#[tokio::test]
async fn fresh_databases_from_the_process_wide_server() {
    // DATABASE_URL's server if set, else a throwaway cluster.
    let server = test_server().await.unwrap();
    assert_eq!(server.cluster().is_some(), std::env::var("DATABASE_URL").is_err());
    let url = server.fresh_database().await.unwrap();
    assert_eq!(select_one(&url).await.unwrap(), 1);
    server.drop_database(&url).await.unwrap();
    check_fresh_databases(server, 8).await;
}

/// An admin URL to use as an existing server: the machine's when DATABASE_URL is set, else the process-wide
/// throwaway one's.
async fn external_admin_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => test_server().await.unwrap().admin_url().to_owned(),
    }
}

#[tokio::test]
async fn fresh_databases_on_an_existing_server() {
    let admin = external_admin_url().await;
    let server = TestServer::external(&admin).await.unwrap();
    assert!(server.cluster().is_none());
    check_fresh_databases(&server, 4).await;
}

#[tokio::test]
async fn a_dropped_throwaway_server_is_stopped_and_removed() {
    let server = TestServer::throwaway().await.unwrap();
    let dir = server.cluster_dir().unwrap();
    let url = server.fresh_database().await.unwrap();
    assert_eq!(select_one(&url).await.unwrap(), 1);
    drop(server);
    assert!(!dir.exists(), "{} was removed", dir.display());
    assert!(select_one(&url).await.is_err());
}

const CHILD_ENV: &str = "JCT_DEVDB_TEST_CHILD";

/// Run by the next test in a child process of this test binary: starts the process-wide throwaway
/// server, prints where it lives, and exits without any cleanup of its own.
#[tokio::test]
#[ignore = "run by throwaway_server_is_removed_when_the_process_exits"]
async fn child_starts_a_throwaway_server() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let server = test_server().await.unwrap();
    println!("CLUSTER_DIR={}", server.cluster_dir().unwrap().display());
}

#[tokio::test]
async fn throwaway_server_is_removed_when_the_process_exits() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_starts_a_throwaway_server", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env_remove("DATABASE_URL")
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let dir = stdout
        .lines()
        .find_map(|l| l.split_once("CLUSTER_DIR=").map(|(_, dir)| dir.trim()))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("the child said where its cluster is: {stdout}"));

    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!dir.exists(), "{} was removed", dir.display());
    assert!(processes_working_in(&dir).is_empty(), "no server is left running");
}

/// Processes whose working directory is in `dir` (a postmaster works in its data directory); Linux only.
fn processes_working_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| Some((e.file_name().into_string().ok()?, std::fs::read_link(e.path().join("cwd")).ok()?)))
        .filter(|(_, cwd)| cwd.starts_with(dir))
        .map(|(pid, _)| pid)
        .collect()
}

#[tokio::test]
async fn cluster_under_a_long_path_puts_its_socket_under_tmp() {
    let root = tempfile::tempdir().unwrap();
    let deep = root.path().join("a-rather-long-directory-name-".repeat(4));
    let cluster = ManagedCluster::start(&deep).await.unwrap();
    let socket_dir = cluster.socket_dir().to_path_buf();
    assert!(socket_dir.starts_with("/tmp"), "{}", socket_dir.display());
    assert_eq!(select_one(&cluster.url(DEFAULT_DATABASE)).await.unwrap(), 1);
    cluster.stop().await;
    std::fs::remove_dir(&socket_dir).unwrap();
}

/// A test database as an earlier test process would have left it `age_secs` ago (the name carries its creation
/// time); returns its name.
async fn leave_test_database(admin: &str, age_secs: u64) -> String {
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - age_secs;
    let name = format!("jct_test_{created}_{:016x}", rand::random::<u64>());
    let mut conn = PgConnection::connect(admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    name
}

async fn database_exists(admin: &str, name: &str) -> bool {
    let mut conn = PgConnection::connect(admin).await.unwrap();
    let exists: bool = sqlx::query_scalar("SELECT exists (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    exists
}

#[tokio::test]
async fn a_test_process_drops_earlier_test_databases_nobody_uses() {
    let admin = external_admin_url().await;
    let unused = leave_test_database(&admin, 11 * 60).await;
    let in_use = leave_test_database(&admin, 11 * 60).await;
    let recent = leave_test_database(&admin, 60).await;
    let options = admin.parse::<sqlx::postgres::PgConnectOptions>().unwrap().database(&in_use);
    let mut user = PgConnection::connect_with(&options).await.unwrap();

    // What every test process does when it starts on a server of its own choosing.
    let server = TestServer::external(&admin).await.unwrap();
    assert!(!database_exists(&admin, &unused).await, "an unused database ten minutes old is dropped");
    assert!(database_exists(&admin, &in_use).await, "a database in use is kept");
    assert!(database_exists(&admin, &recent).await, "a recent database is kept");
    sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut user).await.expect("its connection was left alone");

    user.close().await.unwrap();
    for name in [&in_use, &recent] {
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        server.drop_database(url.as_str()).await.unwrap();
    }
}
