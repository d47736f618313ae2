//! Zero-config PostgreSQL: a managed cluster under ./var and fresh databases for tests
//!
//! - [`ManagedCluster`]: `jct up` without `DATABASE_URL` runs on a cluster it creates (initdb) and runs
//!   itself from the PostgreSQL installed on the machine, listening on a unix socket under the data root
//!   only. As root, the server runs as an unprivileged OS user (`postgres`, else `nobody`, else `jct`).
//! - [`test_server`] and [`TestServer::fresh_database`]: tests use the server at `DATABASE_URL`, or else
//!   a throwaway cluster per test process, and a new database per test (on a shared server, dropped by a later
//!   test process once ten minutes old and unused, or six hours old); [`scratch_dir`], a directory per test
//!   for its files, swept after six hours.

mod binaries;
mod cluster;
mod os_user;
mod testing;

pub use cluster::{ManagedCluster, DEFAULT_DATABASE, SUPERUSER};
pub use testing::{generic_plan, prepared_plan, scratch_dir, test_server, TestServer};
