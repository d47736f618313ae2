//! Whether an error means the database could not be reached or used for a while (it is restarting, the network
//! to it failed, no connection was free in time), as opposed to a failure of the request itself: callers answer
//! the first with "retry shortly" (HTTP 503) instead of an internal error.

use std::error::Error as StdError;
use std::io::ErrorKind;

/// SQLSTATEs of a server that is going away, starting or full: class 08 (connection exception), `admin_shutdown`,
/// `crash_shutdown`, `cannot_connect_now` and `too_many_connections`.
fn unavailable_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

fn unavailable_io(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
            | ErrorKind::TimedOut
    )
}

/// One link of an error chain, by its type: sqlx's and tokio-postgres's errors (the pool and the appender's
/// pipelined connection) and the IO errors beneath them.
fn unavailable_cause(cause: &(dyn StdError + 'static)) -> bool {
    if let Some(error) = cause.downcast_ref::<sqlx::Error>() {
        return match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Io(io) => unavailable_io(io),
            sqlx::Error::Database(database) => database.code().is_some_and(|code| unavailable_sqlstate(&code)),
            _ => false,
        };
    }
    if let Some(error) = cause.downcast_ref::<tokio_postgres::Error>() {
        return error.is_closed() || error.code().is_some_and(|state| unavailable_sqlstate(state.code()));
    }
    cause.downcast_ref::<std::io::Error>().is_some_and(unavailable_io)
}

/// Whether `error`, or any error in its chain, says the database is unavailable for now (see the module doc).
pub fn is_unavailable(error: &anyhow::Error) -> bool {
    error.chain().any(unavailable_cause)
        || matches!(error.downcast_ref::<crate::AppendError>(), Some(crate::AppendError::Internal(inner)) if is_unavailable(inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_and_a_full_pool_are_unavailability_and_request_failures_are_not() {
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
        assert!(!is_unavailable(&anyhow::Error::from(std::io::Error::from(ErrorKind::NotFound))));
        assert!(!is_unavailable(&anyhow::anyhow!("task {} is missing from its read model", "01ABC")));
        let conflict = crate::AppendError::Invalid("no events".into());
        assert!(!is_unavailable(&anyhow::Error::from(conflict)));
    }

    #[test]
    fn sqlstates_of_a_server_going_away_starting_or_full_are_unavailability() {
        for code in ["08006", "08001", "57P01", "57P02", "57P03", "53300"] {
            assert!(unavailable_sqlstate(code), "{code}");
        }
        for code in ["23505", "40001", "57014", "42P01", "22P02"] {
            assert!(!unavailable_sqlstate(code), "{code}");
        }
    }
}
