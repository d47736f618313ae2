//! Databases for tests: one server per test process (DATABASE_URL's, or a throwaway cluster) and a fresh database per test.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};
use tokio::sync::OnceCell;
use url::Url;

use crate::cluster::{create_database, quote_ident, ManagedCluster, Options};

/// Names of the databases [`TestServer::fresh_database`] creates start with this, then the creation
/// time in Unix seconds and a random number: `jct_test_1767225600_3f9a0c41d2e8b7a6`.
const PREFIX: &str = "jct_test_";
/// On a shared server, test databases nobody is connected to are dropped once they are this old, when a test
/// process starts: a failed test's database stays for a look for a while, and a day of test runs does not leave
/// a thousand databases (some GB) behind.
const UNUSED_AFTER_SECS: u64 = 10 * 60;
/// Test databases older than this are dropped when a test process starts, even while something is connected.
const STALE_AFTER_SECS: u64 = 6 * 3600;

/// The PostgreSQL server the tests of one process share; each test gets its own database on it.
///
/// Either the server `DATABASE_URL` names, or a throwaway [`ManagedCluster`] in a temporary directory.
/// The throwaway cluster is never dropped when it lives in [`test_server`]'s static: its watchdog process
/// (see [`ManagedCluster`]) stops it and removes its directory once the test process has exited, however it
/// exits. A `TestServer` made with [`TestServer::throwaway`] and dropped is cleaned up at once.
#[derive(Debug)]
pub struct TestServer {
    admin_url: String,
    cluster: Option<ManagedCluster>,
}

static SERVER: OnceCell<TestServer> = OnceCell::const_new();

/// The process-wide test server, set up by the first call: the server at `DATABASE_URL` (an admin URL,
/// e.g. `postgres://postgres@127.0.0.1:5432/postgres`) if that is set, else a throwaway cluster
/// (about a second to set up).
///
/// Holds no connection or pool, so it serves the tests of every tokio runtime in the process.
pub async fn test_server() -> anyhow::Result<&'static TestServer> {
    SERVER
        .get_or_try_init(|| async {
            match std::env::var("DATABASE_URL") {
                Ok(url) if !url.trim().is_empty() => TestServer::external(url.trim()).await,
                _ => TestServer::throwaway().await,
            }
        })
        .await
}

impl TestServer {
    /// Uses the existing server at `admin_url` (a user allowed to create databases), after dropping the test
    /// databases earlier runs left there more than ten minutes ago that nobody is connected to, and those left
    /// more than six hours ago.
    pub async fn external(admin_url: &str) -> anyhow::Result<TestServer> {
        let mut conn = PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("connecting to DATABASE_URL ({admin_url})"))?;
        if let Err(e) = drop_stale_databases(&mut conn).await {
            tracing::warn!("dropping stale test databases: {e:#}");
        }
        conn.close().await?;
        Ok(TestServer { admin_url: admin_url.to_owned(), cluster: None })
    }

    /// Starts a throwaway cluster in a new temporary directory, tuned for speed over durability.
    pub async fn throwaway() -> anyhow::Result<TestServer> {
        let dir =
            std::env::temp_dir().join(format!("jct-test-pg-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        match ManagedCluster::start_with(&dir, Options { throwaway: true }).await {
            Ok(cluster) => Ok(TestServer { admin_url: cluster.url("postgres"), cluster: Some(cluster) }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// A URL to the server's `postgres` database as a superuser.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The throwaway cluster, if this server is one.
    pub fn cluster(&self) -> Option<&ManagedCluster> {
        self.cluster.as_ref()
    }

    /// Creates a new, empty, uniquely named database and returns its URL. Safe to call from any number
    /// of tests, threads and processes at once.
    pub async fn fresh_database(&self) -> anyhow::Result<String> {
        let name = format!("{PREFIX}{}_{:016x}", unix_now(), rand::random::<u64>());
        let mut conn = PgConnection::connect(&self.admin_url).await.context("connecting to the test server")?;
        create_database(&mut conn, &name).await?;
        let _ = conn.close().await;
        database_url(&self.admin_url, &name)
    }

    /// Drops a database made by [`TestServer::fresh_database`], given its URL, closing any connections
    /// still open to it. Refuses any other database.
    pub async fn drop_database(&self, database_url: &str) -> anyhow::Result<()> {
        let name = database_name(database_url)?;
        if !name.starts_with(PREFIX) {
            bail!("refusing to drop {name}: not a database made by fresh_database");
        }
        let mut conn = PgConnection::connect(&self.admin_url).await.context("connecting to the test server")?;
        drop_database(&mut conn, &name, true).await.with_context(|| format!("dropping database {name}"))?;
        let _ = conn.close().await;
        Ok(())
    }

    /// The directory a throwaway cluster lives in (removed when it stops).
    pub fn cluster_dir(&self) -> Option<PathBuf> {
        let cluster = self.cluster.as_ref()?;
        Some(cluster.data_dir().parent()?.parent()?.to_path_buf())
    }
}

/// `admin_url` with its database replaced by `name`.
fn database_url(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url = Url::parse(admin_url).context("parsing the admin URL")?;
    url.set_path(&format!("/{name}"));
    let query: Vec<(String, String)> =
        url.query_pairs().filter(|(k, _)| k != "dbname").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    url.set_query(None);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url.into())
}

/// The database a URL names (its path, or a `dbname` parameter).
fn database_name(database_url: &str) -> anyhow::Result<String> {
    let url = Url::parse(database_url).context("parsing a database URL")?;
    let from_query = url.query_pairs().find(|(k, _)| k == "dbname").map(|(_, v)| v.into_owned());
    match from_query.unwrap_or_else(|| url.path().trim_start_matches('/').to_owned()) {
        name if name.is_empty() => bail!("{database_url} names no database"),
        name => Ok(name),
    }
}

/// Drops `name` if it exists; with `force`, closing the connections to it first, else failing with
/// [`OBJECT_IN_USE`] while anyone is connected (PostgreSQL checks that atomically with the drop).
async fn drop_database(conn: &mut PgConnection, name: &str, force: bool) -> Result<(), sqlx::Error> {
    let with_force = if force { " WITH (FORCE)" } else { "" };
    conn.execute(format!("DROP DATABASE IF EXISTS {}{with_force}", quote_ident(name)).as_str()).await?;
    Ok(())
}

/// Drops the test databases that are old enough that no test can still be using them, and those a few minutes
/// old that nobody is connected to (PostgreSQL refuses to drop a database in use without `force`, atomically, so a
/// test still running elsewhere keeps its own).
async fn drop_stale_databases(conn: &mut PgConnection) -> anyhow::Result<()> {
    let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
        .bind(PREFIX)
        .fetch_all(&mut *conn)
        .await?;
    let now = unix_now();
    for name in names {
        let Some(created) = name[PREFIX.len()..].split('_').next().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if created + STALE_AFTER_SECS < now {
            tracing::info!(database = %name, "dropping a stale test database");
            drop_database(conn, &name, true).await.with_context(|| format!("dropping database {name}"))?;
        } else if created + UNUSED_AFTER_SECS < now {
            match drop_database(conn, &name, false).await {
                Ok(()) => tracing::debug!(database = %name, "dropped an unused test database"),
                Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some(OBJECT_IN_USE) => {}
                Err(error) => return Err(error).with_context(|| format!("dropping database {name}")),
            }
        }
    }
    Ok(())
}

/// SQLSTATE `object_in_use`: a database someone is connected to.
const OBJECT_IN_USE: &str = "55006";

/// Names of the directories [`scratch_dir`] makes start with this; then what they are for, the creation time in
/// Unix seconds and a 16-digit hex random number: `jct-scratch-worker-exec-1767225600-3f9a0c41d2e8b7a6`. (Not
/// `jct-test-`: a throwaway cluster's directory starts with that.)
const DIR_PREFIX: &str = "jct-scratch-";

/// A new directory under the system's temp dir for one test's files (trace folders, blobs, process logs). It is
/// kept after the test, whose files help when it fails; the first call in a process removes the directories
/// earlier runs left more than six hours ago, as [`TestServer::external`] drops test databases six hours old.
pub fn scratch_dir(what: &str) -> PathBuf {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let root = std::env::temp_dir();
    SWEPT.call_once(|| remove_stale_dirs(&root));
    let dir = root.join(format!("{DIR_PREFIX}{what}-{}-{:016x}", unix_now(), rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("create {}: {error}", dir.display()));
    dir
}

fn remove_stale_dirs(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    let now = unix_now();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else { continue };
        // Only names `scratch_dir` makes: `<what>-<secs>-<16 hex digits>`.
        let mut parts = rest.rsplit('-');
        let random = parts.next().unwrap_or_default();
        if random.len() != 16 || !random.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            continue;
        }
        let created = parts.next().and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|created| created + STALE_AFTER_SECS < now) {
            if let Err(error) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!("removing the stale test directory {name}: {error}");
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The generic plan PostgreSQL makes for `sql` on `pool`'s database as it is now, one line per plan node: the plan
/// a pooled connection caches for a prepared statement from its sixth execution on, and keeps until the tables'
/// statistics change (with autovacuum off, never). `arguments` is the SQL list of values to explain it with; a
/// generic plan does not depend on them. Every parameter must have its type written in `sql` (`$1::text[]`) or
/// inferable from it.
pub async fn generic_plan(pool: &sqlx::PgPool, sql: &str, arguments: &str) -> anyhow::Result<String> {
    prepared_plan(pool, "set local plan_cache_mode = force_generic_plan", sql, arguments).await
}

/// The plan of `sql` prepared and explained with `arguments` in a transaction that first runs `settings` (`set
/// local ...`), one line per plan node; nothing of it outlives the call.
pub async fn prepared_plan(pool: &sqlx::PgPool, settings: &str, sql: &str, arguments: &str) -> anyhow::Result<String> {
    use sqlx::Row as _;
    let mut tx = pool.begin().await?;
    tx.execute(settings).await.context("settings")?;
    tx.execute(format!("prepare jct_plan_probe as {sql}").as_str()).await.context("prepare")?;
    let rows = tx.fetch_all(format!("explain execute jct_plan_probe({arguments})").as_str()).await?;
    // A prepared statement outlives its transaction.
    tx.execute("deallocate jct_plan_probe").await?;
    tx.rollback().await?;
    rows.iter()
        .map(|row| row.try_get::<String, _>(0).context("a plan line"))
        .collect::<Result<Vec<_>, _>>()
        .map(|lines| lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dirs_older_than_six_hours_are_swept_and_newer_ones_kept() {
        let root = std::env::temp_dir().join(format!("jct-sweep-{:016x}", rand::random::<u64>()));
        let random = "00000000000000ff";
        let old = root.join(format!("{DIR_PREFIX}worker-exec-{}-{random}", unix_now() - STALE_AFTER_SECS - 60));
        let new = root.join(format!("{DIR_PREFIX}worker-exec-{}-{random}", unix_now()));
        // Not made by `scratch_dir`, however old they look: a throwaway cluster's directory, and a name without
        // the random part.
        let cluster = root.join("jct-test-pg-1234-0badcafe");
        let other = root.join(format!("{DIR_PREFIX}1-2"));
        for dir in [&old, &new, &cluster, &other] {
            std::fs::create_dir_all(dir.join("traces")).unwrap();
        }
        remove_stale_dirs(&root);
        assert!(!old.exists(), "a stale scratch directory is removed");
        assert!(new.exists() && cluster.exists() && other.exists(), "everything else is kept");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn database_urls_swap_the_database() {
        let url = database_url("postgres://postgres@127.0.0.1:5432/postgres", "jct_test_1_2").unwrap();
        assert_eq!(url, "postgres://postgres@127.0.0.1:5432/jct_test_1_2");
        let url = database_url("postgres://postgres@localhost:5432/postgres?host=/tmp/x&dbname=postgres", "d").unwrap();
        assert_eq!(database_name(&url).unwrap(), "d");
        assert!(url.contains("host=%2Ftmp%2Fx"), "{url}");
    }
}
