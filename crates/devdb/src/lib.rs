//! Zero-config PostgreSQL: a managed cluster under ./var and fresh databases for tests
