//! A PostgreSQL cluster created and run by jct itself: initdb on first use, start or reuse, stop.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor};

use crate::binaries;
use crate::os_user::{make_ancestors_traversable, RunAs};

/// The database [`ManagedCluster::start`] creates for the application.
pub const DEFAULT_DATABASE: &str = "jct";
/// The superuser initdb creates; local connections need no password (trust).
pub const SUPERUSER: &str = "postgres";
/// Only names the socket file (`.s.PGSQL.5432`): the server listens on no TCP port at all.
const PORT: u16 = 5432;
/// Our settings, rewritten at every start and included at the end of postgresql.conf.
const CONF_FILE: &str = "postgresql.jct.conf";
/// Longest unix socket path the kernel accepts (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long pg_ctl may take to start or stop the server, in seconds.
const PG_CTL_TIMEOUT: &str = "60";

/// How a cluster is run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    /// For tests: no fsync, more connections, and the whole data root is removed when the
    /// cluster stops or this process exits.
    pub(crate) throwaway: bool,
}

/// A PostgreSQL server that jct runs itself from the machine's PostgreSQL installation.
///
/// Layout under the data root: `postgres/data` (the cluster), `postgres/server.log` (the server's log)
/// and `postgres/run` (its unix socket; `/tmp/jct-pg-<hash>` if that path would be too long for a socket).
/// The server listens on that socket only, never on TCP, so it cannot clash with another server.
///
/// When this process is root the server runs as the OS user `postgres` (else `nobody`, else a `jct`
/// user created with useradd), which then owns `postgres/` under the data root.
///
/// The server is stopped by [`ManagedCluster::stop`], on drop, and, should this process die without
/// either (a crash, SIGKILL, an unhandled Ctrl-C), by a small watchdog process that waits for this
/// process to exit. A server left running anyway (say the watchdog was killed too) is adopted by the
/// next start; a stale postmaster.pid (say after a reboot) is cleared. Use a data root from one
/// process at a time.
#[derive(Debug)]
pub struct ManagedCluster {
    bindir: PathBuf,
    data_root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    run_as: Option<RunAs>,
    options: Options,
    /// Whether we started (or adopted) a server that we must stop.
    running: bool,
    watchdog: Option<Watchdog>,
}

impl ManagedCluster {
    /// Starts the cluster kept under `data_root` (created with initdb on first use), or adopts its
    /// server if one is still running from an earlier run, waits until it accepts connections, and
    /// creates the database [`DEFAULT_DATABASE`] if it is missing.
    ///
    /// Fails, saying how to get PostgreSQL, if no PostgreSQL is installed. Takes about a second the
    /// first time (initdb) and a fraction of one afterwards.
    pub async fn start(data_root: &Path) -> anyhow::Result<ManagedCluster> {
        Self::start_with(data_root, Options::default()).await
    }

    pub(crate) async fn start_with(data_root: &Path, options: Options) -> anyhow::Result<ManagedCluster> {
        let started = Instant::now();
        // Look for PostgreSQL before creating anything.
        let data_root = std::path::absolute(data_root)?;
        let bindir = binaries::find_bindir(binaries::data_dir_major(&data_root.join("postgres").join("data")))?;
        std::fs::create_dir_all(&data_root).with_context(|| format!("creating {}", data_root.display()))?;
        let data_root = data_root.canonicalize()?;
        let root = data_root.join("postgres");
        std::fs::create_dir_all(&root)?;
        let data_dir = root.join("data");
        let socket_dir = socket_dir_for(&root);
        std::fs::create_dir_all(&socket_dir)?;

        let mut cluster = ManagedCluster {
            bindir,
            log_file: root.join("server.log"),
            run_as: RunAs::for_this_process()?,
            data_root,
            data_dir,
            socket_dir,
            options,
            running: false,
            watchdog: None,
        };
        if let Some(user) = &cluster.run_as {
            let owned = if options.throwaway { &cluster.data_root } else { &root };
            user.chown_tree(owned)?;
            user.chown_tree(&cluster.socket_dir)?;
            make_ancestors_traversable(&cluster.data_dir)?;
            make_ancestors_traversable(&cluster.socket_dir.join(".s.PGSQL"))?;
        }

        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.initdb(&root).await?;
        }
        cluster.write_conf()?;
        if !cluster.reuse_running_server().await? {
            cluster.start_server().await?;
        }
        cluster.watchdog = Some(Watchdog::spawn(&cluster).context("starting the watchdog process")?);
        cluster.ensure_database(DEFAULT_DATABASE).await?;
        tracing::info!(
            data_dir = %cluster.data_dir.display(),
            socket_dir = %cluster.socket_dir.display(),
            user = cluster.run_as.as_ref().map_or("(this user)", |u| u.name.as_str()),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "managed PostgreSQL is up"
        );
        Ok(cluster)
    }

    /// A URL for `database` on this server that sqlx (and libpq) accepts, e.g.
    /// `postgres://postgres@localhost:5432/jct?host=/abs/var/postgres/run` (the socket directory).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost:{PORT}/{}?host={}",
            percent_encode(database.as_bytes()),
            percent_encode(self.socket_dir.as_os_str().as_bytes())
        )
    }

    /// Creates `database` if it does not exist yet (safe to call concurrently).
    pub async fn ensure_database(&self, database: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut conn = connect_socket(&self.socket_dir, PORT, "postgres", deadline, true).await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut conn)
            .await?;
        if !exists {
            create_database(&mut conn, database).await?;
        }
        conn.close().await?;
        Ok(())
    }

    /// The cluster's data directory (`<data_root>/postgres/data`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log file (`<data_root>/postgres/server.log`).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Stops the server (`pg_ctl stop -m fast`), waiting until it is down; failures are logged.
    pub async fn stop(mut self) {
        if self.running {
            self.running = false;
            if let Err(e) = self.pg_ctl_stop("fast").await {
                tracing::warn!("stopping PostgreSQL: {e:#}");
            }
        }
        if let Some(watchdog) = self.watchdog.take() {
            let _ = tokio::task::spawn_blocking(move || watchdog.finish()).await;
        }
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`: no shutdown checkpoint; every connection
    /// is cut), then starts it again, which recovers from the WAL. The server comes back at the same socket, so
    /// URLs stay valid. For fault tests: a transaction whose commit was acknowledged survives only if the
    /// cluster is durable (not a throwaway one, which runs with `synchronous_commit = off`).
    pub async fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.pg_ctl_stop("immediate").await?;
        self.running = false;
        self.start_server().await
    }

    /// Runs initdb into a scratch directory and moves it into place only once it succeeded, so an
    /// interrupted initdb never leaves a half-made cluster behind.
    async fn initdb(&self, root: &Path) -> anyhow::Result<()> {
        let scratch = root.join("data.initdb");
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch)?;
        }
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&scratch);
        cmd.args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--auth=trust"]);
        if self.options.throwaway {
            cmd.arg("--no-sync");
        }
        tracing::info!(data_dir = %self.data_dir.display(), "creating a PostgreSQL cluster with initdb");
        run(cmd, "initdb").await?;
        std::fs::rename(&scratch, &self.data_dir)?;
        Ok(())
    }

    /// Writes our settings file and makes sure postgresql.conf includes it.
    fn write_conf(&self) -> anyhow::Result<()> {
        let include = format!("include_if_exists = '{CONF_FILE}'");
        let main_conf = self.data_dir.join("postgresql.conf");
        let text = std::fs::read_to_string(&main_conf).context("reading postgresql.conf")?;
        if !text.lines().any(|l| l.trim() == include) {
            let separator = if text.ends_with('\n') { "" } else { "\n" };
            std::fs::write(&main_conf, format!("{text}{separator}\n# Added by jct-devdb.\n{include}\n"))?;
        }

        let socket_dir = self.socket_dir.to_str().context("the socket directory's path is not UTF-8")?;
        let mut conf = format!(
            "# Written by jct-devdb at every start: edit postgresql.conf instead.\n\
             listen_addresses = ''\n\
             port = {PORT}\n\
             unix_socket_directories = '{}'\n",
            socket_dir.replace('\'', "''")
        );
        if self.options.throwaway {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 300\n");
        }
        let path = self.data_dir.join(CONF_FILE);
        std::fs::write(&path, conf)?;
        if let Some(user) = &self.run_as {
            user.chown_tree(&path)?;
        }
        Ok(())
    }

    /// Deals with a postmaster.pid left by an earlier run. Returns true when its server is alive,
    /// ours and listening where we want: then we adopt it. A live server listening elsewhere is
    /// stopped; a dead one's pid file and socket lock are removed so the new server can start even if
    /// its pid now belongs to another process (as after a reboot).
    async fn reuse_running_server(&mut self) -> anyhow::Result<bool> {
        let Some(pid_file) = PidFile::read(&self.data_dir)? else {
            return Ok(false);
        };
        let answer = match &pid_file.socket_dir {
            Some(dir) => data_directory_at(dir, pid_file.port).await,
            None => None,
        };
        match answer {
            Some(dir) if same_path(&dir, &self.data_dir) => {
                if pid_file.socket_dir.as_deref() == Some(&self.socket_dir) && pid_file.port == PORT {
                    tracing::info!(pid = pid_file.pid, "reusing the PostgreSQL server left running by an earlier run");
                    self.running = true;
                    return Ok(true);
                }
                tracing::info!("restarting the PostgreSQL server left running by an earlier run");
                self.pg_ctl_stop("fast").await?;
            }
            Some(_) => {
                tracing::warn!("removing a stale postmaster.pid (its socket now belongs to another server)");
                remove_if_exists(&self.data_dir.join("postmaster.pid"))?;
            }
            None if pid_file.pid.is_some_and(|pid| process_serves(pid, &self.data_dir)) => {
                tracing::warn!(pid = pid_file.pid, "the PostgreSQL server left running does not answer: stopping it");
                self.pg_ctl_stop("immediate").await?;
            }
            None => {
                tracing::warn!(pid = pid_file.pid, "removing a stale postmaster.pid");
                remove_if_exists(&self.data_dir.join("postmaster.pid"))?;
                if let Some(dir) = &pid_file.socket_dir {
                    remove_if_exists(&dir.join(format!(".s.PGSQL.{}", pid_file.port)))?;
                    remove_if_exists(&dir.join(format!(".s.PGSQL.{}.lock", pid_file.port)))?;
                }
            }
        }
        Ok(false)
    }

    async fn start_server(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start").arg("-D").arg(&self.data_dir).arg("-l").arg(&self.log_file);
        cmd.args(["-w", "-t", PG_CTL_TIMEOUT, "-s"]);
        if let Err(e) = run(cmd, "pg_ctl start").await {
            bail!("{e:#}\nThe end of {}:\n{}", self.log_file.display(), log_tail(&self.log_file, 20));
        }
        self.running = true;
        Ok(())
    }

    async fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        run(self.stop_command(mode), "pg_ctl stop").await.map(drop)
    }

    fn stop_command(&self, mode: &str) -> Command {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(&self.data_dir).args(["-m", mode, "-w", "-t", PG_CTL_TIMEOUT, "-s"]);
        cmd
    }

    /// One of the PostgreSQL programs, run as the cluster's OS user from the cluster's directory.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.current_dir(self.data_dir.parent().unwrap_or(&self.data_root)).env_remove("PGDATA").stdin(Stdio::null());
        if let Some(user) = &self.run_as {
            user.apply(&mut cmd);
        }
        cmd
    }
}

impl Drop for ManagedCluster {
    /// Stops the server if [`ManagedCluster::stop`] was not called (blocking the thread for the
    /// fraction of a second that takes).
    fn drop(&mut self) {
        if self.running {
            match self.stop_command("fast").output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => tracing::warn!("pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr).trim()),
                Err(e) => tracing::warn!("pg_ctl stop: {e}"),
            }
        }
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.finish();
        }
    }
}

/// A `sh` process, in its own process group so a Ctrl-C aimed at us does not reach it, that reads its
/// stdin (a pipe whose only writer is this process) until end of file, which happens however this
/// process ends. Then it stops the server (a no-op if it is already down) and, for a throwaway cluster,
/// removes the data root.
#[derive(Debug)]
struct Watchdog {
    child: std::process::Child,
}

const WATCHDOG_SCRIPT: &str = r#"trap '' HUP INT
cat >/dev/null
"$1" stop -D "$2" -m "$3" -w -t 60 -s >/dev/null 2>&1
shift 3
if [ $# -gt 0 ]; then rm -rf -- "$@"; fi
"#;

impl Watchdog {
    fn spawn(cluster: &ManagedCluster) -> io::Result<Watchdog> {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", WATCHDOG_SCRIPT, "jct-devdb-watchdog"])
            .arg(cluster.bindir.join("pg_ctl"))
            .arg(&cluster.data_dir);
        if cluster.options.throwaway {
            cmd.arg("immediate").arg(&cluster.data_root);
            if !cluster.socket_dir.starts_with(&cluster.data_root) {
                cmd.arg(&cluster.socket_dir);
            }
        } else {
            cmd.arg("fast");
        }
        cmd.current_dir("/").stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
        if let Some(user) = &cluster.run_as {
            user.apply(&mut cmd);
        }
        Ok(Watchdog { child: cmd.spawn()? })
    }

    /// Closes the pipe and waits for the watchdog to do its job.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The parts of postmaster.pid we use: pid, port and socket directory (lines 1, 4 and 5).
struct PidFile {
    pid: Option<i32>,
    port: u16,
    socket_dir: Option<PathBuf>,
}

impl PidFile {
    fn read(data_dir: &Path) -> anyhow::Result<Option<PidFile>> {
        let text = match std::fs::read_to_string(data_dir.join("postmaster.pid")) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other.context("reading postmaster.pid")?,
        };
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let line = |i: usize| lines.get(i).copied().filter(|l| !l.is_empty());
        Ok(Some(PidFile {
            pid: line(0).and_then(|l| l.parse::<i32>().ok()).map(i32::abs),
            port: line(3).and_then(|l| l.parse().ok()).unwrap_or(PORT),
            socket_dir: line(4).map(PathBuf::from),
        }))
    }
}

/// Whether process `pid` is a postmaster serving `data_dir`: a postmaster's working directory is its
/// data directory. Only knowable through /proc (Linux); elsewhere this says no.
fn process_serves(pid: i32, data_dir: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| same_path(&cwd, data_dir))
}

/// The data directory of the server answering on the socket in `dir`, if one answers (waiting while
/// it is still starting up, as after a crash).
async fn data_directory_at(dir: &Path, port: u16) -> Option<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conn = connect_socket(dir, port, "postgres", deadline, false).await.ok()?;
    let data_dir: String = sqlx::query_scalar("SHOW data_directory").fetch_one(&mut conn).await.ok()?;
    let _ = conn.close().await;
    Some(PathBuf::from(data_dir))
}

/// Connects as the superuser over the unix socket in `dir`. Retries until `deadline` while the
/// server says it is starting up, and on any error if `retry_all`.
async fn connect_socket(
    dir: &Path,
    port: u16,
    database: &str,
    deadline: Instant,
    retry_all: bool,
) -> anyhow::Result<PgConnection> {
    let options = PgConnectOptions::new().socket(dir).port(port).username(SUPERUSER).database(database);
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let error = match tokio::time::timeout(left, PgConnection::connect_with(&options)).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => e,
            Err(_) => bail!("connecting to PostgreSQL on {}: timed out", dir.display()),
        };
        let starting_up = matches!(&error, sqlx::Error::Database(e) if e.code().as_deref() == Some("57P03"));
        if !(starting_up || retry_all) || Instant::now() >= deadline {
            return Err(error).with_context(|| format!("connecting to PostgreSQL on {}", dir.display()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `CREATE DATABASE`, treating "already exists" (a concurrent creator won) as success.
pub(crate) async fn create_database(conn: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    match conn.execute(format!("CREATE DATABASE {}", quote_ident(name)).as_str()).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
        other => other.map(drop).with_context(|| format!("creating database {name}")),
    }
}

/// Quotes an SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `<root>/run`, or a short directory under /tmp (named after a hash of `root`) if a socket in it would
/// exceed the kernel's limit.
fn socket_dir_for(root: &Path) -> PathBuf {
    let preferred = root.join("run");
    if preferred.as_os_str().len() + format!("/.s.PGSQL.{PORT}").len() <= MAX_SOCKET_PATH {
        return preferred;
    }
    // FNV-1a: stable across Rust releases, unlike std's hasher.
    let hash = root
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3));
    PathBuf::from(format!("/tmp/jct-pg-{hash:016x}"))
}

/// Percent-encodes all but unreserved characters and `/`, for URL paths and query values.
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Runs `cmd` to completion, failing with its stderr if it fails.
async fn run(cmd: Command, what: &str) -> anyhow::Result<Output> {
    let out = tokio::process::Command::from(cmd).output().await.with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        bail!("{what} failed ({}): {}{}", out.status, stderr.trim(), stdout.trim());
    }
    Ok(out)
}

/// The last `lines` lines of a log file, or a note that it cannot be read.
fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_roots_get_a_short_socket_dir() {
        let short = socket_dir_for(Path::new("/work/var/postgres"));
        assert_eq!(short, Path::new("/work/var/postgres/run"));
        let long_root = PathBuf::from(format!("/{}/postgres", "x".repeat(120)));
        let dir = socket_dir_for(&long_root);
        assert!(dir.to_str().unwrap().starts_with("/tmp/jct-pg-"), "{}", dir.display());
        assert_eq!(dir, socket_dir_for(&long_root), "the same root always gets the same directory");
    }

    #[test]
    fn urls_are_encoded() {
        assert_eq!(percent_encode(b"/a b/c%d"), "/a%20b/c%25d");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
