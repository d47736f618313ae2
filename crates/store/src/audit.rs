//! Audit queries: events filtered by trace, entity, actor, action, type, time and position, in position order,
//! one page at a time (a cursor is the last position of the previous page).

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Postgres, QueryBuilder};

use crate::record::{RecordedEvent, COLUMNS};

/// Filters of `GET /audit/events`; every one is optional and they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub trace_id: Option<String>,
    pub entity_kind: Option<String>,
    pub entity_id: Option<String>,
    pub actor_kind: Option<String>,
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub event_type: Option<String>,
    /// Events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Events before this time.
    pub until: Option<DateTime<Utc>>,
    /// Events at or after this position.
    pub from_position: Option<i64>,
    /// Events at or before this position.
    pub to_position: Option<i64>,
}

/// Up to `limit` events matching `filter` with a position greater than `after`, in position order.
pub async fn query_events<'c>(
    executor: impl PgExecutor<'c>,
    filter: &AuditFilter,
    after: i64,
    limit: i64,
) -> anyhow::Result<Vec<RecordedEvent>> {
    let mut query: QueryBuilder<'_, Postgres> =
        QueryBuilder::new(format!("select {COLUMNS} from audit_log where position > "));
    query.push_bind(after);
    let text_filters = [
        ("trace_id", &filter.trace_id),
        ("entity_kind", &filter.entity_kind),
        ("entity_id", &filter.entity_id),
        ("actor_kind", &filter.actor_kind),
        ("actor_id", &filter.actor_id),
        ("action", &filter.action),
        ("event_type", &filter.event_type),
    ];
    for (column, value) in text_filters {
        if let Some(value) = value {
            query.push(format!(" and {column} = ")).push_bind(value.clone());
        }
    }
    if let Some(since) = filter.since {
        query.push(" and ts >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        query.push(" and ts < ").push_bind(until);
    }
    if let Some(from_position) = filter.from_position {
        query.push(" and position >= ").push_bind(from_position);
    }
    if let Some(to_position) = filter.to_position {
        query.push(" and position <= ").push_bind(to_position);
    }
    query.push(" order by position limit ").push_bind(limit);
    let rows = query.build().fetch_all(executor).await.context("query the audit log")?;
    rows.iter().map(|row| RecordedEvent::from_row(row).context("decode event")).collect()
}

/// The position of the last event at or before `ts` (0 when there is none): turns an `as_of` time into a
/// position.
pub async fn position_at<'c>(executor: impl PgExecutor<'c>, ts: DateTime<Utc>) -> anyhow::Result<i64> {
    let position: Option<i64> = sqlx::query_scalar("select max(position) from audit_log where ts <= $1")
        .bind(ts)
        .fetch_one(executor)
        .await
        .context("find the position at a time")?;
    Ok(position.unwrap_or(0))
}
