//! Ends of attempts that ride with the next claim: an attempt whose handler has returned hands its end to the claim
//! being read for its slot, which appends both in one batch (one transaction, one commit) instead of two.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use store::{AppendError, Appended, EventStore, NewCommand};
use tokio::sync::{oneshot, Notify};

type Reply = oneshot::Sender<Result<Appended, AppendError>>;

/// Where a worker's attempts append their ends. An end waits only while a claim of the same worker is about to
/// read or reading ([`EndsAwaitingClaim::carry`]): that claim takes it as soon as its read is done and appends it in
/// the batch of its own claims ([`store::EventStore::append_all`]). With no claim reading, an end is appended at
/// once, so an end never waits for more than one claim's read (or a read-ahead's patience,
/// [`crate::worker::ClaimRequest::read_ahead`]).
#[derive(Default)]
pub struct EndsAwaitingClaim {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    waiting: Mutex<Waiting>,
    /// Wakes a read-ahead claim waiting for a slot to free.
    arrived: Notify,
    /// Wakes the worker loop when a claim has taken the ends (its read is done, its picks are registered).
    taken: Notify,
}

#[derive(Default)]
struct Waiting {
    ends: Vec<(NewCommand, Reply)>,
    /// Claims between the start of their read and the moment they take the ends.
    readers: usize,
    /// The worker is shutting down: read-aheads stop waiting for slots to free ([`EndsAwaitingClaim::close`]).
    closed: bool,
}

impl std::fmt::Debug for EndsAwaitingClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting = self.shared.waiting.lock().expect("not poisoned");
        f.debug_struct("EndsAwaitingClaim")
            .field("ends", &waiting.ends.len())
            .field("readers", &waiting.readers)
            .field("closed", &waiting.closed)
            .finish()
    }
}

impl EndsAwaitingClaim {
    /// Appends the end of an attempt: with the claim being read, if one is; at once through `store` otherwise.
    pub async fn append(&self, store: &EventStore, command: NewCommand) -> Result<Appended, AppendError> {
        let answer = {
            let mut waiting = self.shared.waiting.lock().expect("not poisoned");
            if waiting.readers == 0 {
                Err(command)
            } else {
                let (reply, answer) = oneshot::channel();
                waiting.ends.push((command, reply));
                Ok(answer)
            }
        };
        match answer {
            Err(command) => store.append(command).await,
            Ok(answer) => {
                self.shared.arrived.notify_waiters();
                answer.await.map_err(|_| anyhow::anyhow!("the claim carrying this end dropped it"))?
            }
        }
    }

    /// How many claims are about to read or reading (have not taken the ends yet).
    pub fn readers(&self) -> usize {
        self.shared.waiting.lock().expect("not poisoned").readers
    }

    /// Resolves when a claim has taken the ends since the last call (or is taking them).
    pub async fn taken(&self) {
        self.shared.taken.notified().await;
    }

    /// The worker is shutting down: a read-ahead waiting for a slot, or starting to, gives up at once, so no new
    /// task is claimed for a slot that frees now. Ends still go with claims already reading.
    pub fn close(&self) {
        self.shared.waiting.lock().expect("not poisoned").closed = true;
        self.shared.arrived.notify_waiters();
    }

    /// Registers a claim about to read: ends appended from now on wait for it, and it takes them after its read
    /// ([`crate::worker::claim`]). Register before the attempts whose ends it should carry can end.
    pub fn carry(&self, store: &EventStore) -> CarriedEnds {
        self.shared.waiting.lock().expect("not poisoned").readers += 1;
        CarriedEnds { shared: self.shared.clone(), store: store.clone(), taken: false }
    }
}

/// A claim about to read or reading, which will take the ends that arrive meanwhile. Dropped without being taken
/// (its claim failed, or never started), it appends them on its own, so no end is left waiting.
pub struct CarriedEnds {
    shared: Arc<Shared>,
    store: EventStore,
    taken: bool,
}

/// Ends taken by a claim: their commands go first in its batch; [`TakenEnds::answer`] replies to each attempt.
pub(crate) struct TakenEnds {
    replies: Vec<Reply>,
}

impl CarriedEnds {
    /// Waits until an end is waiting (a slot has freed), at most `patience`; whether one is.
    /// `false` at once once the worker is shutting down ([`EndsAwaitingClaim::close`]).
    pub(crate) async fn wait_for_end(&self, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        let ready = || {
            let waiting = self.shared.waiting.lock().expect("not poisoned");
            (!waiting.closed).then_some(!waiting.ends.is_empty())
        };
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            match ready() {
                None => return false,
                Some(true) => return true,
                Some(false) => {}
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return ready() == Some(true);
            }
        }
    }

    /// Stops waiting and takes every end waiting: their commands, and who to answer.
    pub(crate) fn take(mut self) -> (Vec<NewCommand>, TakenEnds) {
        self.taken = true;
        let ends = self.shared.take();
        let (commands, replies) = ends.into_iter().unzip();
        (commands, TakenEnds { replies })
    }
}

impl Shared {
    fn take(&self) -> Vec<(NewCommand, Reply)> {
        let ends = {
            let mut waiting = self.waiting.lock().expect("not poisoned");
            waiting.readers -= 1;
            std::mem::take(&mut waiting.ends)
        };
        self.taken.notify_one();
        ends
    }
}

impl Drop for CarriedEnds {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let ends = self.shared.take();
        if ends.is_empty() {
            return;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            let (commands, replies): (Vec<NewCommand>, Vec<Reply>) = ends.into_iter().unzip();
            TakenEnds { replies }.answer(store.append_all(commands).await);
        });
    }
}

impl TakenEnds {
    /// Replies to each attempt with its end's result (the first [`TakenEnds::len`] results of the batch).
    pub(crate) fn answer(self, results: impl IntoIterator<Item = Result<Appended, AppendError>>) {
        for (reply, result) in self.replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}
