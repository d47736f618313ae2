//! Reading the log: everything after a position, one stream, the head. Always in position order.

use anyhow::Context as _;
use domain::event::{EntityKind, StreamId};
use sqlx::PgExecutor;

use crate::record::{RecordedEvent, COLUMNS, COLUMNS_WITHOUT_IMAGES};

/// Up to `limit` events with a position greater than `after`, in position order.
///
/// Because appends are serialised and commit in position order, a reader that continues from the last
/// position it actually read never skips an event (docs/adr/0002-no-reader-skips-an-event.md).
pub async fn read_after<'c>(
    executor: impl PgExecutor<'c>,
    after: i64,
    limit: i64,
) -> anyhow::Result<Vec<RecordedEvent>> {
    let rows = sqlx::query(&format!("select {COLUMNS} from audit_log where position > $1 order by position limit $2"))
        .bind(after)
        .bind(limit)
        .fetch_all(executor)
        .await
        .context("read events after a position")?;
    decode_many(rows).await
}

/// The end of the next stretch of the log to read: the last of up to `limit` positions after `after` (`None` when
/// there is none). Appends are serialised and commit in position order, so every position up to it is visible and
/// a reader of that stretch ([`read_range`]) may move on to it, whatever kinds of event it fetched.
pub async fn stretch_end<'c>(executor: impl PgExecutor<'c>, after: i64, limit: i64) -> anyhow::Result<Option<i64>> {
    sqlx::query_scalar(
        "select max(position) from (select position from audit_log where position > $1 order by position limit $2) s",
    )
    .bind(after)
    .bind(limit)
    .fetch_one(executor)
    .await
    .context("find the end of the stretch to read")
}

/// Whether a read returns the events' `before` and `after` images (with the payloads, most of a log's bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Images {
    Included,
    /// `before` and `after` are `None` in the events read.
    LeftOut,
}

/// The events with a position in `(after, up_to]`, in position order: all of them, or only those of streams of
/// the given kinds; with their `before` and `after` images or without.
///
/// A reader that filters by kind still covers every position of the stretch: when every position up to `up_to`
/// is visible (it is at or below the head read earlier, and appends commit in position order), it may move on to
/// `up_to` having read fewer rows, and skips none of the events it folds. The filter is applied by PostgreSQL, so
/// the rows of other kinds are neither sent nor decoded.
pub async fn read_range<'c>(
    executor: impl PgExecutor<'c>,
    after: i64,
    up_to: i64,
    kinds: Option<&[EntityKind]>,
    images: Images,
) -> anyhow::Result<Vec<RecordedEvent>> {
    let columns = match images {
        Images::Included => COLUMNS,
        Images::LeftOut => COLUMNS_WITHOUT_IMAGES,
    };
    let rows = match kinds {
        None => {
            sqlx::query(&format!(
                "select {columns} from audit_log where position > $1 and position <= $2 order by position"
            ))
            .bind(after)
            .bind(up_to)
            .fetch_all(executor)
            .await
        }
        Some(kinds) => {
            let kinds: Vec<&str> = kinds.iter().map(|kind| kind.as_str()).collect();
            // The kinds are tested with `is true`, which no index serves, on the stretch's rows (read in position
            // order from the primary key). As a plain `entity_kind = any($3)` PostgreSQL, before it has analysed the
            // table, may intersect the stretch with a bitmap of every event of those kinds in the stream index, read
            // whole for every stretch (5-10 ms per call at 100,000 events in `jct bench worker`, and growing).
            sqlx::query(&format!(
                "select {columns} from audit_log \
                  where position > $1 and position <= $2 and (entity_kind = any($3)) is true \
                  order by position"
            ))
            .bind(after)
            .bind(up_to)
            .bind(&kinds)
            .fetch_all(executor)
            .await
        }
    }
    .context("read a stretch of events")?;
    decode_many(rows).await
}

/// Rows decoded per task when a large read is decoded on every core.
const DECODE_CHUNK: usize = 512;

/// Decodes rows of `select {COLUMNS}`; a large read on every core (decoding the jsonb columns into `Value`s is
/// most of a bulk reader's work), off the async runtime.
async fn decode_many(rows: Vec<sqlx::postgres::PgRow>) -> anyhow::Result<Vec<RecordedEvent>> {
    let decode = |rows: &[sqlx::postgres::PgRow]| -> anyhow::Result<Vec<RecordedEvent>> {
        rows.iter().map(|row| RecordedEvent::from_row(row).context("decode event")).collect()
    };
    if rows.len() <= DECODE_CHUNK {
        return decode(&rows);
    }
    tokio::task::spawn_blocking(move || {
        use rayon::prelude::*;
        let chunks: Vec<Vec<RecordedEvent>> =
            rows.par_chunks(DECODE_CHUNK).map(decode).collect::<anyhow::Result<_>>()?;
        Ok(chunks.into_iter().flatten().collect())
    })
    .await
    .context("decode events")?
}

/// Every event of one stream, in order, optionally only up to a position (for as-of reads).
pub async fn read_stream<'c>(
    executor: impl PgExecutor<'c>,
    stream: &StreamId,
    up_to_position: Option<i64>,
) -> anyhow::Result<Vec<RecordedEvent>> {
    let rows = sqlx::query(&format!(
        "select {COLUMNS} from audit_log where entity_kind = $1 and entity_id = $2 and position <= $3 \
         order by stream_version"
    ))
    .bind(stream.kind.as_str())
    .bind(&stream.id)
    .bind(up_to_position.unwrap_or(i64::MAX))
    .fetch_all(executor)
    .await
    .context("read a stream")?;
    rows.iter().map(|row| RecordedEvent::from_row(row).context("decode event")).collect()
}

/// The position of the last event, 0 for an empty log.
pub async fn head_position<'c>(executor: impl PgExecutor<'c>) -> anyhow::Result<i64> {
    let head: Option<i64> = sqlx::query_scalar("select max(position) from audit_log")
        .fetch_one(executor)
        .await
        .context("read the head position")?;
    Ok(head.unwrap_or(0))
}

/// The stream that owns a unique key (an idempotency key, a repo slug, ...), with the position that claimed it.
pub async fn claim_owner<'c>(executor: impl PgExecutor<'c>, key: &str) -> anyhow::Result<Option<(StreamId, i64)>> {
    let row: Option<(String, String, i64)> =
        sqlx::query_as("select entity_kind, entity_id, position from unique_claims where key = $1")
            .bind(key)
            .fetch_optional(executor)
            .await
            .context("read a unique claim")?;
    row.map(|(kind, id, position)| {
        let kind = domain::event::EntityKind::parse(&kind)
            .with_context(|| format!("unknown entity kind {kind:?} in unique_claims"))?;
        Ok((StreamId::new(kind, id), position))
    })
    .transpose()
}

/// Every event of one trace, in position order.
pub async fn read_trace<'c>(executor: impl PgExecutor<'c>, trace_id: &str) -> anyhow::Result<Vec<RecordedEvent>> {
    let rows = sqlx::query(&format!("select {COLUMNS} from audit_log where trace_id = $1 order by position"))
        .bind(trace_id)
        .fetch_all(executor)
        .await
        .context("read a trace")?;
    rows.iter().map(|row| RecordedEvent::from_row(row).context("decode event")).collect()
}

/// Every event of several streams in one round trip, in position order (so each stream's events are in version
/// order); group them by `event.stream`. A stream named twice is read once.
pub async fn read_streams<'c>(
    executor: impl PgExecutor<'c>,
    streams: &[StreamId],
) -> anyhow::Result<Vec<RecordedEvent>> {
    read_bounded(executor, streams.iter().map(|stream| (stream, i32::MAX))).await
}

/// The events of several streams before a version each (`(stream, version)`: its events up to `version - 1`), in one
/// round trip and in position order; group them by `event.stream`. A stream named twice is read once, up to the
/// larger of its versions. For a reader that holds a stream's later events already.
pub async fn read_stream_prefixes<'c>(
    executor: impl PgExecutor<'c>,
    streams: &[(StreamId, i32)],
) -> anyhow::Result<Vec<RecordedEvent>> {
    read_bounded(executor, streams.iter().map(|(stream, version)| (stream, *version))).await
}

/// [`read_streams_sql`] for `(stream, the version it is read up to)`, without copying the streams' names.
async fn read_bounded<'s, 'c>(
    executor: impl PgExecutor<'c>,
    streams: impl Iterator<Item = (&'s StreamId, i32)>,
) -> anyhow::Result<Vec<RecordedEvent>> {
    let (mut kinds, mut ids, mut before) = (Vec::new(), Vec::new(), Vec::new());
    for (stream, version) in streams {
        kinds.push(stream.kind.as_str());
        ids.push(stream.id.as_str());
        before.push(version);
    }
    if kinds.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(&read_streams_sql())
        .bind(&kinds)
        .bind(&ids)
        .bind(&before)
        .fetch_all(executor)
        .await
        .context("read streams")?;
    rows.iter().map(|row| RecordedEvent::from_row(row).context("decode event")).collect()
}

/// [`read_stream_prefixes`]' statement: `$1` the streams' kinds, `$2` their ids, `$3` the version each is read up to
/// (not included).
///
/// Each stream is looked up on its own in the stream index: a lateral subquery behind `offset 0`, which PostgreSQL
/// plans on its own with the stream as a parameter, so the only plans it can choose read that index once per
/// stream. As `(entity_kind, entity_id) in (select ... from unnest(...))` the planner, misled by the log's
/// statistics (it guessed 460 events a stream), hashed the ids and read the whole log in parallel instead: 100 ms
/// and three processes a call at 200,000 events, measured on 2026-12-04 while the trace folders caught up,
/// competing with the worker for the machine. Without `offset 0` the lateral subquery is pulled up into a join, and
/// the generic plan of a connection that prepared it on a nearly empty log was that same hash join over the whole
/// log, kept until the log is analysed.
pub fn read_streams_sql() -> String {
    format!(
        "select e.* from (select kind, id, max(before) as before \
                            from unnest($1::text[], $2::text[], $3::int4[]) as u(kind, id, before) \
                           group by kind, id) as s \
           cross join lateral (select {COLUMNS} from audit_log a \
                                where a.entity_kind = s.kind and a.entity_id = s.id and a.stream_version < s.before \
                               offset 0) as e \
          order by e.position"
    )
}
