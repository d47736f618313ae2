//! Whether an error means the database could not be reached or used for a while (the connection was lost: the
//! server restarted, ended the session or the network failed; or no connection was free in time), as opposed to a
//! failure of the request itself. The appender appends a batch whose connection was lost again on another; the
//! API answers "retry shortly" (HTTP 503) instead of an internal error.

use std::error::Error as StdError;

/// SQLSTATE class 08 (connection exception) and 57P (operator intervention: admin or crash shutdown, cannot
/// connect now).
fn connection_sqlstate(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P")
}

/// One link of an error chain that says its connection is gone, in either driver's errors: sqlx's (the pool, the
/// stepwise appends) and tokio-postgres's (the appender's pipeline). Any IO error counts: the store's only IO is
/// its connections.
fn lost_cause(cause: &(dyn StdError + 'static)) -> bool {
    if let Some(error) = cause.downcast_ref::<sqlx::Error>() {
        return match error {
            sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => true,
            sqlx::Error::Database(database) => database.code().is_some_and(|code| connection_sqlstate(&code)),
            _ => false,
        };
    }
    if let Some(error) = cause.downcast_ref::<tokio_postgres::Error>() {
        return error.is_closed() || error.code().is_some_and(|code| connection_sqlstate(code.code()));
    }
    cause.downcast_ref::<std::io::Error>().is_some()
}

/// One link that says no connection could be had: the pool gave up waiting for one, or is closed, or the server
/// has no room for another (`too_many_connections`).
fn no_connection_cause(cause: &(dyn StdError + 'static)) -> bool {
    match cause.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed) => true,
        Some(sqlx::Error::Database(database)) => database.code().is_some_and(|code| code == "53300"),
        _ => false,
    }
}

/// Whether `error` says the database connection was lost (or the server is shutting down or starting), rather
/// than anything about the commands: then the same batch may succeed on another connection, and may have committed
/// on the lost one.
pub(crate) fn connection_lost(error: &anyhow::Error) -> bool {
    error.chain().any(lost_cause)
}

/// Whether `error`, or any error in its chain, says the database is unavailable for now: its connection was lost,
/// or no connection could be had (see the module doc).
pub fn is_unavailable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| lost_cause(cause) || no_connection_cause(cause))
        || matches!(error.downcast_ref::<crate::AppendError>(), Some(crate::AppendError::Internal(inner)) if is_unavailable(inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    #[test]
    fn lost_connections_and_a_full_pool_are_unavailability_and_request_failures_are_not() {
        let refused = sqlx::Error::Io(std::io::Error::from(ErrorKind::ConnectionRefused));
        assert!(is_unavailable(&anyhow::Error::from(refused).context("read the task")));
        assert!(is_unavailable(&anyhow::Error::from(sqlx::Error::PoolTimedOut)));
        assert!(is_unavailable(&anyhow::Error::from(sqlx::Error::PoolClosed)));
        let reset = std::io::Error::from(ErrorKind::ConnectionReset);
        assert!(is_unavailable(&anyhow::Error::from(reset).context("send the batch").context("append")));
        let in_append = crate::AppendError::Internal(anyhow::Error::from(sqlx::Error::PoolTimedOut).context("lock"));
        assert!(is_unavailable(&anyhow::Error::from(in_append)));
        // A transparent variant hides its inner error's own head from the chain.
        let bare = crate::AppendError::Internal(anyhow::Error::from(sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&anyhow::Error::from(bare).context("enqueue")));

        assert!(!is_unavailable(&anyhow::Error::from(sqlx::Error::RowNotFound)));
        assert!(!is_unavailable(&anyhow::anyhow!("task {} is missing from its read model", "01ABC")));
        let invalid = crate::AppendError::Invalid("no events".into());
        assert!(!is_unavailable(&anyhow::Error::from(invalid)));
    }

    #[test]
    fn a_full_pool_is_no_lost_connection_for_the_appender_to_retry() {
        assert!(!connection_lost(&anyhow::Error::from(sqlx::Error::PoolTimedOut)));
        assert!(connection_lost(&anyhow::Error::from(std::io::Error::from(ErrorKind::BrokenPipe))));
    }

    #[test]
    fn sqlstates_of_a_lost_connection_or_a_server_going_away_or_starting() {
        for code in ["08006", "08001", "57P01", "57P02", "57P03"] {
            assert!(connection_sqlstate(code), "{code}");
        }
        for code in ["23505", "40001", "57014", "42P01", "22P02", "53300"] {
            assert!(!connection_sqlstate(code), "{code}");
        }
    }
}
