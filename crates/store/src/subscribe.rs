//! Catch-up subscriptions: wake on `NOTIFY`, fall back to polling, catch up after every reconnect.
//!
//! A notification is only a hint that something was appended; the subscriber always reads the log itself,
//! from the last position it actually read. It listens before its first read, so nothing appended between
//! the two is missed, and it treats a listener error or reconnect as "catch up now".

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;

use crate::read::read_after;
use crate::record::RecordedEvent;
use crate::EVENTS_CHANNEL;

/// Waits for "something may have been appended": a notification, a reconnect, or the poll interval passing.
pub struct Wakeup {
    pool: PgPool,
    channel: String,
    listener: Option<PgListener>,
    poll_interval: Duration,
}

impl Wakeup {
    /// Listens on the events channel with a dedicated connection. If that fails, it polls and retries later.
    pub async fn new(pool: PgPool, poll_interval: Duration) -> Wakeup {
        Wakeup::on_channel(pool, EVENTS_CHANNEL, poll_interval).await
    }

    pub async fn on_channel(pool: PgPool, channel: &str, poll_interval: Duration) -> Wakeup {
        let mut wakeup = Wakeup { pool, channel: channel.to_owned(), listener: None, poll_interval };
        wakeup.ensure_listening().await;
        wakeup
    }

    async fn ensure_listening(&mut self) {
        if self.listener.is_some() {
            return;
        }
        match PgListener::connect_with(&self.pool).await {
            // It never reconnects by itself: a reconnect inside `wait`'s or `drain`'s cancellable receive could be
            // dropped half done, handing a connection still listening (or mid-statement) back to the pool. A lost
            // connection drops the listener instead, and the next `wait` connects a new one here, to completion.
            Ok(mut listener) => match listener.listen(&self.channel).await {
                Ok(()) => {
                    listener.eager_reconnect(false);
                    self.listener = Some(listener);
                }
                Err(error) => tracing::warn!("failed to listen on {}: {error:#}", self.channel),
            },
            Err(error) => tracing::warn!("failed to connect a listener: {error:#}"),
        }
    }

    /// Returns when the caller should look at the log again. Never fails: errors mean "look now".
    pub async fn wait(&mut self) {
        self.ensure_listening().await;
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(self.poll_interval).await;
            return;
        };
        tokio::select! {
            received = listener.try_recv() => match received {
                Ok(Some(_notification)) => {}
                // The connection was lost; sqlx reconnects on the next call and notifications in between are
                // gone, so the caller catches up now.
                Ok(None) => {
                    tracing::debug!("listener lost its connection; catching up");
                    self.listener = None;
                }
                Err(error) => {
                    tracing::warn!("listener failed, catching up and reconnecting: {error:#}");
                    self.listener = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = tokio::time::sleep(self.poll_interval) => {}
        }
    }

    /// Drains notifications that are already queued, so a burst of appends causes one catch-up, not many.
    pub async fn drain(&mut self) {
        let Some(listener) = self.listener.as_mut() else { return };
        loop {
            match tokio::time::timeout(Duration::ZERO, listener.try_recv()).await {
                Ok(Ok(Some(_))) => continue,
                // Nothing more queued.
                Err(_elapsed) => return,
                // The connection was lost (or failed): the next `wait` connects a new listener.
                Ok(Ok(None) | Err(_)) => {
                    self.listener = None;
                    return;
                }
            }
        }
    }
}

/// Delivers every event after a starting position exactly once, in position order.
pub struct Subscription {
    pool: PgPool,
    wakeup: Wakeup,
    position: i64,
    batch_size: i64,
}

impl Subscription {
    /// Subscribes to events after `after`. Listening starts before the first read.
    pub async fn start(pool: PgPool, after: i64, poll_interval: Duration, batch_size: i64) -> Subscription {
        let wakeup = Wakeup::new(pool.clone(), poll_interval).await;
        Subscription { pool, wakeup, position: after, batch_size }
    }

    /// The position of the last event delivered.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// The next events, at least one; waits until there are some. Read errors are logged and retried.
    pub async fn next_batch(&mut self) -> Vec<RecordedEvent> {
        loop {
            match read_after(&self.pool, self.position, self.batch_size).await {
                Ok(events) if !events.is_empty() => {
                    self.position = events.last().expect("not empty").position;
                    return events;
                }
                Ok(_) => {
                    self.wakeup.drain().await;
                    // Read again after draining: a notification drained here may be for events not yet read.
                    match read_after(&self.pool, self.position, self.batch_size).await {
                        Ok(events) if !events.is_empty() => {
                            self.position = events.last().expect("not empty").position;
                            return events;
                        }
                        Ok(_) => self.wakeup.wait().await,
                        Err(error) => {
                            tracing::warn!("failed to read the log: {error:#}");
                            self.wakeup.wait().await;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!("failed to read the log: {error:#}");
                    self.wakeup.wait().await;
                }
            }
        }
    }
}
