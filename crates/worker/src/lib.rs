//! The task worker: wake on TaskEnqueued, claim, run handlers, append run events
