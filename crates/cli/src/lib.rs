//! The jct binary: up, serve, worker, migrate, projections, audit, bench
