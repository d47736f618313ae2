//! System tests of JCT: the service through HTTP (in-process), on a real PostgreSQL with a fresh database
//! per test. One binary for faster linking; modules split by feature.

mod audit;
mod cwom;
mod cwom_batch;
mod harness;
mod inline;
mod openapi_spec;
mod schema_change;
mod tasks;
mod tidy;
mod worker;
