//! The appender's pipelined connection: statements sent one behind the other without waiting for each answer.
//!
//! sqlx waits for every statement's answer before it sends the next, so a transaction of n statements costs n round
//! trips, and on a busy machine each costs a scheduling delay on both sides as well. The batching task holds the
//! append lock across its whole transaction, so those delays hold up every appender. This connection (tokio-postgres,
//! which pipelines whatever requests are outstanding) sends a whole step of an append (`begin` and the locked read;
//! then the insert, the read models' writes and `commit`) as one flight and reads the answers as they come. A flight
//! may also go out while the one before it is still being answered (the appender's speculative batches, ADR 0009):
//! the server runs them in the order they were sent.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions as _;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::sql::Statement;

/// One request of a pipeline.
pub(crate) enum Step<'s, 'a> {
    /// A statement without parameters or rows (`begin`, `commit`), by the simple protocol.
    Simple(&'static str),
    /// A statement whose rows are wanted.
    Query(&'s Statement<'a>),
    /// A statement whose rows are not wanted.
    Execute(&'s Statement<'a>),
}

impl Step<'_, '_> {
    /// What the step does, for errors.
    pub(crate) fn what(&self) -> &'static str {
        match self {
            Step::Simple(sql) => sql,
            Step::Query(statement) | Step::Execute(statement) => statement.what,
        }
    }
}

/// What one step answered.
pub(crate) enum Answer {
    Done,
    Rows(Vec<Row>),
}

type Pending<'f> = Pin<Box<dyn Future<Output = Result<Answer, tokio_postgres::Error>> + Send + 'f>>;

/// A connection of the appender's own, with the statements it has prepared. Clones share the connection, so a
/// flight can be sent from a task of its own while the appender goes on.
#[derive(Clone)]
pub(crate) struct PipelinedConnection {
    client: Arc<Client>,
    prepared: Arc<Mutex<HashMap<&'static str, tokio_postgres::Statement>>>,
}

impl PipelinedConnection {
    /// Connects with the same settings as the pool's connections; the connection's driver runs on the current
    /// runtime until the client is dropped or the server goes away.
    pub(crate) async fn connect(options: &PgConnectOptions) -> anyhow::Result<PipelinedConnection> {
        let (client, connection) =
            config_of(options).connect(tokio_postgres::NoTls).await.context("connect the appender's connection")?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("the appender's pipelined connection ended: {error}");
            }
        });
        Ok(PipelinedConnection { client: Arc::new(client), prepared: Arc::default() })
    }

    /// Whether the connection is gone (the next append should connect anew).
    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Ends whatever transaction is open (after a failure, to give the append lock back); a connection that cannot
    /// is dropped by the next [`PipelinedConnection::is_closed`] check.
    pub(crate) async fn rollback(&self) {
        if let Err(error) = self.client.batch_execute("rollback").await {
            tracing::debug!("the appender's pipelined connection could not roll back: {error}");
        }
    }

    /// Sends every step at once, in order, and waits for all their answers; each answer is the step's own. A step
    /// that fails inside a transaction aborts it: the steps after it fail too, and a `commit` among them rolls back.
    pub(crate) async fn run(
        &self,
        steps: &[Step<'_, '_>],
    ) -> anyhow::Result<Vec<Result<Answer, tokio_postgres::Error>>> {
        self.run_telling_when_sent(steps, |_| ()).await
    }

    /// [`PipelinedConnection::run`], calling `sent` as soon as every step has gone out (with `true`), or as soon as
    /// it is known that not all of them will (with `false`: the caller must roll back before sending more).
    pub(crate) async fn run_telling_when_sent(
        &self,
        steps: &[Step<'_, '_>],
        sent: impl FnOnce(bool),
    ) -> anyhow::Result<Vec<Result<Answer, tokio_postgres::Error>>> {
        if let Err(error) = self.prepare(steps).await {
            sent(false);
            return Err(error);
        }
        let prepared: Vec<Option<tokio_postgres::Statement>> = {
            let known = self.prepared.lock().expect("not poisoned");
            steps
                .iter()
                .map(|step| match step {
                    Step::Query(statement) | Step::Execute(statement) => known.get(statement.sql).cloned(),
                    Step::Simple(_) => None,
                })
                .collect()
        };
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = steps
            .iter()
            .map(|step| match step {
                Step::Query(statement) | Step::Execute(statement) => {
                    statement.params.iter().map(|param| param as &(dyn ToSql + Sync)).collect()
                }
                Step::Simple(_) => Vec::new(),
            })
            .collect();
        let client = &*self.client;
        let mut pending: Vec<Pending<'_>> = Vec::with_capacity(steps.len());
        for ((step, params), prepared) in steps.iter().zip(&params).zip(&prepared) {
            pending.push(match step {
                Step::Simple(sql) => Box::pin(async move { client.batch_execute(sql).await.map(|()| Answer::Done) }),
                Step::Query(statement) | Step::Execute(statement) => {
                    let wants_rows = matches!(step, Step::Query(_));
                    match prepared {
                        Some(prepared) => Box::pin(async move {
                            if wants_rows {
                                client.query(prepared, params).await.map(Answer::Rows)
                            } else {
                                client.execute(prepared, params).await.map(|_| Answer::Done)
                            }
                        }),
                        None => {
                            let typed: Vec<(&(dyn ToSql + Sync), tokio_postgres::types::Type)> =
                                params.iter().copied().zip(statement.types()).collect();
                            Box::pin(async move {
                                if wants_rows {
                                    client.query_typed(statement.sql, &typed).await.map(Answer::Rows)
                                } else {
                                    client.execute_typed(statement.sql, &typed).await.map(|_| Answer::Done)
                                }
                            })
                        }
                    }
                }
            });
        }
        // Each request goes out when its future is first polled: poll them once in order, so the server gets them
        // in order, then wait for them all. A future that is ready at its first poll failed before its request went
        // out (the connection is closed, or a parameter would not encode): the steps behind it are never sent (a
        // `commit` must not follow a statement that was left out), and the caller rolls back.
        let mut in_flight = Vec::with_capacity(pending.len());
        for mut future in pending {
            if let std::task::Poll::Ready(answer) = futures::poll!(future.as_mut()) {
                sent(false);
                let error = answer.err().map_or_else(
                    || anyhow::anyhow!("a pipelined step was answered before it was sent"),
                    anyhow::Error::new,
                );
                futures::future::join_all(in_flight).await;
                return Err(error.context("send a pipelined step"));
            }
            in_flight.push(future);
        }
        sent(true);
        Ok(futures::future::join_all(in_flight).await)
    }

    /// Prepares the steps' statements this connection has not prepared yet, in one flight.
    async fn prepare(&self, steps: &[Step<'_, '_>]) -> anyhow::Result<()> {
        let mut missing: Vec<&Statement<'_>> = Vec::new();
        {
            let known = self.prepared.lock().expect("not poisoned");
            for step in steps {
                if let Step::Query(statement) | Step::Execute(statement) = step {
                    if statement.is_prepared()
                        && !known.contains_key(statement.sql)
                        && !missing.iter().any(|listed| listed.sql == statement.sql)
                    {
                        missing.push(statement);
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let client = &*self.client;
        let types: Vec<Vec<tokio_postgres::types::Type>> = missing.iter().map(|statement| statement.types()).collect();
        let prepared = futures::future::join_all(
            missing.iter().zip(&types).map(|(statement, types)| client.prepare_typed(statement.sql, types)),
        )
        .await;
        let mut known = self.prepared.lock().expect("not poisoned");
        for (statement, prepared) in missing.into_iter().zip(prepared) {
            let prepared = prepared.with_context(|| format!("prepare the statement to {}", statement.what))?;
            known.insert(statement.sql, prepared);
        }
        Ok(())
    }
}

/// The tokio-postgres settings equal to the pool's: the same server (host or unix socket directory, port), user,
/// password, database, options and application name.
fn config_of(options: &PgConnectOptions) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    match options.get_socket() {
        Some(directory) => config.host_path(directory),
        None => config.host(options.get_host()),
    };
    config.port(options.get_port()).user(options.get_username());
    if let Some(database) = options.get_database() {
        config.dbname(database);
    }
    // The options hold the password (given in the URL, or found in a pgpass file) but show it only in their URL.
    if let Some(password) = options.to_url_lossy().password() {
        config.password(percent_decode(password));
    }
    if let Some(server_options) = options.get_options() {
        config.options(server_options);
    }
    config.application_name(options.get_application_name().unwrap_or("jct-append"));
    config
}

fn percent_decode(text: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(text).collect()
}

#[cfg(test)]
mod tests {
    use tokio_postgres::config::Host;

    use super::*;

    fn config(url: &str) -> tokio_postgres::Config {
        config_of(&url.parse::<PgConnectOptions>().expect("a valid URL"))
    }

    #[test]
    fn the_pipelined_connection_reaches_the_pools_server_as_the_same_user() {
        let tcp = config("postgres://jct:p%40ss%20word@db.example:6543/events?options=-c%20statement_timeout%3D5s");
        assert_eq!(tcp.get_hosts(), [Host::Tcp("db.example".into())]);
        assert_eq!(tcp.get_ports(), [6543]);
        assert_eq!(tcp.get_user(), Some("jct"));
        assert_eq!(tcp.get_password(), Some(&b"p@ss word"[..]));
        assert_eq!(tcp.get_dbname(), Some("events"));
        assert_eq!(tcp.get_options(), Some("-c statement_timeout=5s"));
        assert_eq!(tcp.get_application_name(), Some("jct-append"));

        let socket = config("postgres://postgres@localhost:5432/jct?host=/var/run/jct%20pg");
        assert_eq!(socket.get_hosts(), [Host::Unix("/var/run/jct pg".into())]);
        assert_eq!(socket.get_ports(), [5432]);
        assert_eq!(socket.get_password(), None);
        assert_eq!(socket.get_dbname(), Some("jct"));
    }
}
