//! Verifying the hash chain: recompute every event's hash from its stored columns and its predecessor's hash.
//!
//! The log is cut into stretches of positions that are read over several connections at once, each stretch
//! decoded and hashed as soon as it arrives, and the results taken in position order. Decoding a row and
//! hashing its contents is independent per event; only linking the content hashes into the chain is
//! sequential, and that step hashes 64 bytes per event.
//!
//! Rows are not decoded into [`crate::RecordedEvent`]s: the canonical bytes are written straight from the
//! row's columns, the jsonb ones from the JSON text PostgreSQL sends ([`crate::canonical::canonical_bytes_of_text`],
//! the same bytes the appender hashed), so no `serde_json::Value` trees are built.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use sqlx::postgres::{PgRow, PgValueFormat};
use sqlx::{PgPool, Row as _, ValueRef as _};

use crate::canonical::{canonical_bytes_of_text, content_hash, link_hash, CanonicalEvent, JsonText, GENESIS_HASH};
use crate::record::COLUMNS;

/// Positions per stretch read with one query.
const STRETCH: i64 = 2_048;
/// Stretches read (and hashed) at once, each on a connection of its own. PostgreSQL sends rows on one core per
/// connection, so several keep both it and the hashing busy; few, so a verification through the API leaves the
/// pool to the other requests.
const STRETCHES_IN_FLIGHT: usize = 4;

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Events read and checked, up to and including the first bad one.
    pub events_checked: i64,
    /// The first position that does not verify: altered, missing, or out of place.
    pub first_bad_position: Option<i64>,
    pub reason: Option<String>,
    /// The hash of the last verified event (hex); compare it with a copy kept elsewhere to detect truncation.
    pub head_hash: String,
}

/// What the chaining step needs of one row. A stored hash of the wrong length is `None`, which matches nothing.
struct Checked {
    position: i64,
    prev_hash: Option<[u8; 32]>,
    hash: Option<[u8; 32]>,
    content_hash: [u8; 32],
}

/// The JSON text of a jsonb column (`None` for SQL null).
fn json_text(row: &PgRow, index: usize) -> anyhow::Result<Option<JsonText<'_>>> {
    let value = row.try_get_raw(index)?;
    if value.is_null() {
        return Ok(None);
    }
    let format = value.format();
    let bytes = value.as_bytes().map_err(|error| anyhow::anyhow!(error))?;
    match (format, bytes) {
        // The binary format of jsonb is a version byte, 1, and the text.
        (PgValueFormat::Binary, [1, text @ ..]) => Ok(Some(JsonText(text))),
        (PgValueFormat::Binary, _) => anyhow::bail!("unsupported jsonb format version in column {index}"),
        (PgValueFormat::Text, text) => Ok(Some(JsonText(text))),
    }
}

fn hash_of(row: &PgRow, index: usize) -> anyhow::Result<Option<[u8; 32]>> {
    let bytes: &[u8] = row.try_get_unchecked(index)?;
    Ok(bytes.try_into().ok())
}

/// Decodes one row of `select {COLUMNS}` just enough to hash it; `scratch` holds its canonical bytes.
///
/// Columns are taken by index without sqlx's per-value type check: the column list is fixed, and a value that
/// decoded wrongly could only change the bytes hashed, so it would be reported, never pass.
fn check_row(row: &PgRow, scratch: &mut Vec<u8>) -> anyhow::Result<Checked> {
    let position: i64 = row.try_get_unchecked(0)?;
    let unique_keys: Vec<String> = row.try_get_unchecked(19)?;
    let event = CanonicalEvent {
        position,
        event_id: row.try_get_unchecked(1)?,
        ts: row.try_get_unchecked::<DateTime<Utc>, _>(2)?,
        entity_kind: row.try_get_unchecked(3)?,
        entity_id: row.try_get_unchecked(4)?,
        stream_version: row.try_get_unchecked(5)?,
        event_type: row.try_get_unchecked(6)?,
        schema_version: row.try_get_unchecked(7)?,
        payload: json_text(row, 8)?.context("payload is null")?,
        action: row.try_get_unchecked(9)?,
        actor_kind: row.try_get_unchecked(10)?,
        actor_id: row.try_get_unchecked(11)?,
        before: json_text(row, 12)?,
        after: json_text(row, 13)?,
        note: row.try_get_unchecked(14)?,
        trace_id: row.try_get_unchecked(15)?,
        correlation_id: row.try_get_unchecked(16)?,
        causation_id: row.try_get_unchecked(17)?,
        idempotency_key: row.try_get_unchecked(18)?,
        unique_keys: &unique_keys,
    };
    scratch.clear();
    canonical_bytes_of_text(scratch, &event).context("a jsonb column is not JSON serde_json reads")?;
    Ok(Checked { position, prev_hash: hash_of(row, 20)?, hash: hash_of(row, 21)?, content_hash: content_hash(scratch) })
}

fn check_rows(rows: &[PgRow]) -> anyhow::Result<Vec<Checked>> {
    let mut scratch = Vec::with_capacity(8192);
    rows.iter()
        .map(|row| {
            check_row(row, &mut scratch).with_context(|| {
                let position = row.try_get::<i64, _>(0).map_or_else(|_| "?".to_owned(), |p| p.to_string());
                format!("decode the event at position {position}")
            })
        })
        .collect()
}

/// Reads the rows whose positions lie in `(after, up_to]`, in position order, and checks them.
async fn read_and_check(pool: PgPool, after: i64, up_to: i64) -> anyhow::Result<Vec<Checked>> {
    let sql = format!("select {COLUMNS} from audit_log where position > $1 and position <= $2 order by position");
    let rows = sqlx::query(&sql).bind(after).bind(up_to).fetch_all(&pool).await.context("read audit_log")?;
    tokio::task::spawn_blocking(move || check_rows(&rows)).await.context("hash a stretch")?
}

/// A spawned task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Recomputes the whole chain and names the first position that does not verify.
pub async fn verify_chain(pool: &PgPool) -> anyhow::Result<VerifyReport> {
    let bounds: (Option<i64>, Option<i64>) = sqlx::query_as("select min(position), max(position) from audit_log")
        .fetch_one(pool)
        .await
        .context("read the log's bounds")?;
    // Stretches cover every position from below the lowest row (which should be 1) to the highest, so any row,
    // wherever a tamperer put it, is read in position order.
    let (first, head) = match bounds {
        (Some(low), Some(high)) => (low.min(1), high),
        _ => (1, 0),
    };
    let stretches = {
        let mut after = first.saturating_sub(1);
        std::iter::from_fn(move || {
            (after < head).then(|| {
                let up_to = after.saturating_add(STRETCH).min(head);
                let stretch = (after, up_to);
                after = up_to;
                stretch
            })
        })
    };
    let mut checked_stretches = futures::stream::iter(stretches)
        .map(|(after, up_to)| {
            // A task each, so rows are received and decoded on every worker thread; aborted when the
            // verification ends early.
            let mut reading = AbortOnDrop(tokio::spawn(read_and_check(pool.clone(), after, up_to)));
            async move { (&mut reading.0).await.context("read a stretch")? }
        })
        .buffered(STRETCHES_IN_FLIGHT);

    let mut expected_position = 1_i64;
    let mut prev_hash = GENESIS_HASH;
    let mut events_checked = 0_i64;
    while let Some(checked) = checked_stretches.try_next().await? {
        for row in checked {
            events_checked += 1;
            let link = link_hash(&prev_hash, &row.content_hash);
            let failure = if row.position != expected_position {
                Some(format!("expected position {expected_position}, found {}: an event is missing", row.position))
            } else if row.prev_hash != Some(prev_hash) {
                Some("prev_hash does not match the previous event's hash: events were removed or reordered".into())
            } else if row.hash != Some(link) {
                Some("the stored hash does not match the event's contents: the event was altered".into())
            } else {
                None
            };
            if let Some(reason) = failure {
                return Ok(VerifyReport {
                    ok: false,
                    events_checked,
                    first_bad_position: Some(expected_position),
                    reason: Some(reason),
                    head_hash: hex::encode(prev_hash),
                });
            }
            prev_hash = link;
            expected_position += 1;
        }
    }
    Ok(VerifyReport {
        ok: true,
        events_checked,
        first_bad_position: None,
        reason: None,
        head_hash: hex::encode(prev_hash),
    })
}
