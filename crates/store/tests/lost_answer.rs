//! A batch whose connection dies after the server committed it but before its answer arrived: the appender asks
//! the log, under the append lock, whether the batch is there, and tells its callers it committed, instead of
//! appending it again (which would refuse it for its own event ids and idempotency keys, or store it twice).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use store::{read, EventStore, NewCommand};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::support::command;

/// A proxy to PostgreSQL that, once armed, forwards the next client message holding a `commit`, lets the server
/// answer it (the answer is dropped), and then closes the client's connection: a commit whose answer was lost.
struct CuttingProxy {
    port: u16,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

/// Where the test server listens: a TCP address or a Unix socket.
enum Upstream {
    Tcp(String),
    Unix(PathBuf),
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

impl Upstream {
    async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Upstream::Tcp(address) => Box::new(tokio::net::TcpStream::connect(address).await?),
            Upstream::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        })
    }
}

impl CuttingProxy {
    async fn start(upstream: Upstream) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("an address").port();
        let (armed, cuts) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let upstream = Arc::new(upstream);
        let (proxy_armed, proxy_cuts) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = upstream.connect().await else { continue };
                tokio::spawn(relay(client, server, proxy_armed.clone(), proxy_cuts.clone()));
            }
        });
        CuttingProxy { port, armed, cuts }
    }

    /// Cuts the connection that sends the next `commit`, after the server has answered it.
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

async fn relay(client: tokio::net::TcpStream, server: Box<dyn Stream>, armed: Arc<AtomicBool>, cuts: Arc<AtomicUsize>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let cut = Arc::new(AtomicBool::new(false));
    let (committed, answered) = tokio::sync::oneshot::channel::<()>();
    let answers = tokio::spawn({
        let cut = cut.clone();
        async move {
            let mut committed = Some(committed);
            let mut buffer = vec![0_u8; 64 * 1024];
            loop {
                let n = match server_read.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if !cut.load(Ordering::SeqCst) {
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                } else if buffer[..n].windows(7).any(|window| window == b"COMMIT\0") {
                    // The server's CommandComplete for the commit: dropped, and the client's connection cut.
                    if let Some(committed) = committed.take() {
                        let _ = committed.send(());
                    }
                }
            }
        }
    });
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let commits = buffer[..n].windows(7).any(|window| window.eq_ignore_ascii_case(b"commit\0"));
        if commits && armed.swap(false, Ordering::SeqCst) {
            cut.store(true, Ordering::SeqCst);
        }
        if server_write.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        if cut.load(Ordering::SeqCst) {
            // Once the server has committed (its answer says so), drop the client without that answer. A server
            // that never answers fails the test below: the client then gets no answer and no cut is counted.
            if tokio::time::timeout(Duration::from_secs(30), answered).await.is_ok_and(|got| got.is_ok()) {
                cuts.fetch_add(1, Ordering::SeqCst);
            }
            break;
        }
    }
    answers.abort();
}

/// A store whose connections all go through a [`CuttingProxy`], and a pool straight to the same database.
async fn store_behind_a_proxy() -> (EventStore, CuttingProxy, sqlx::PgPool) {
    let url = devdb::test_server().await.expect("test server").fresh_database().await.expect("fresh database");
    let direct = PgPoolOptions::new().max_connections(4).connect(&url).await.expect("connect");
    store::MIGRATOR.run(&direct).await.expect("migrate");
    let options: PgConnectOptions = url.parse().expect("a database URL");
    let upstream = match options.get_socket() {
        Some(dir) => Upstream::Unix(dir.join(format!(".s.PGSQL.{}", options.get_port()))),
        None => Upstream::Tcp(format!("{}:{}", options.get_host(), options.get_port())),
    };
    let proxy = CuttingProxy::start(upstream).await;
    let proxied = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(proxy.port)
        .username(options.get_username())
        .database(options.get_database().expect("a database"));
    let pool = PgPoolOptions::new().max_connections(4).connect_lazy_with(proxied);
    (EventStore::new(pool), proxy, direct)
}

/// Every position from 1 to the head is stored once, and the hash chain holds.
async fn assert_log_whole(pool: &sqlx::PgPool, expected_events: usize) {
    let stored = read::read_after(pool, 0, 100_000).await.unwrap();
    let positions: Vec<i64> = stored.iter().map(|event| event.position).collect();
    assert_eq!(positions, (1..=expected_events as i64).collect::<Vec<_>>());
    assert!(store::verify::verify_chain(pool).await.unwrap().ok);
}

fn keyed(n_events: usize) -> NewCommand {
    NewCommand { idempotency_key: Some(ulid::Ulid::new().to_string()), ..command(n_events) }
}

#[tokio::test]
async fn a_batch_appended_after_a_read_whose_answer_was_lost_is_reported_committed() {
    let (store, proxy, direct) = store_behind_a_proxy().await;
    proxy.arm();
    let appended = store.append(command(3)).await.expect("committed, though its answer was lost");
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1, "the commit's answer was cut");
    assert_eq!(appended.events.iter().map(|event| event.position).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_log_whole(&direct, 3).await;
    // The store goes on, on a new connection.
    store.append(keyed(2)).await.expect("the next batch");
    assert_log_whole(&direct, 5).await;
}

#[tokio::test]
async fn a_speculative_batch_whose_answer_was_lost_is_reported_committed() {
    let (store, proxy, direct) = store_behind_a_proxy().await;
    store.append(command(1)).await.expect("the first batch, after a read");
    proxy.arm();
    let key = ulid::Ulid::new().to_string();
    let lost = store
        .append(NewCommand { idempotency_key: Some(key.clone()), ..command(2) })
        .await
        .expect("committed, though its answer was lost");
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1, "the commit's answer was cut");
    assert_eq!(store.stats().speculative_batches, 1, "the second batch was speculative");
    assert_eq!(lost.events.iter().map(|event| event.position).collect::<Vec<_>>(), vec![2, 3]);
    assert_log_whole(&direct, 3).await;
    // Its idempotency key is its own: a repeat is refused as a duplicate of what was stored.
    let repeat = store.append(NewCommand { idempotency_key: Some(key), ..command(1) }).await;
    assert!(matches!(repeat, Err(store::AppendError::DuplicateIdempotencyKey { .. })), "{repeat:?}");
    for _ in 0..3 {
        store.append(command(1)).await.expect("later batches");
    }
    assert_log_whole(&direct, 6).await;
}
