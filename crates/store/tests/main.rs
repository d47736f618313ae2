//! Event store tests on a real PostgreSQL: one fresh database per test.

extern crate jct_store as store;

mod append;
mod blobs;
mod guard;
mod lost_answer;
mod planning;
mod pool;
mod speculative;
mod subscribe;
mod support;
mod tamper;
mod verify;
