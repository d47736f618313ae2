//! Verifying the hash chain: recompute every event's hash from its stored columns and its predecessor's hash.
//!
//! The log is cut into stretches of positions that are read over several connections at once, each stretch
//! as one binary `COPY (select ...) TO STDOUT`, each row decoded and hashed as soon as its message arrives,
//! and the results taken in position order. Decoding a row and hashing its contents is independent per event;
//! only linking the content hashes into the chain is sequential, and that step hashes 64 bytes per event.
//!
//! Rows are not decoded into [`crate::RecordedEvent`]s, nor into sqlx `PgRow`s: the canonical bytes are
//! written straight from the `COPY` fields, the jsonb ones from the JSON text PostgreSQL sends
//! ([`crate::canonical::canonical_bytes_of_text`], the same bytes the appender hashed), so no
//! `serde_json::Value` trees are built and nothing is allocated per row but the unique keys.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use sqlx::PgPool;

use crate::canonical::{canonical_bytes_of_text, content_hash, link_hash, CanonicalEvent, JsonText, GENESIS_HASH};

/// Positions per stretch read with one `COPY`.
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

/// The columns hashed, in the order of [`CanonicalEvent`], then the two hashes; what [`check_tuple`] reads.
const VERIFY_COLUMNS: &str = "position, event_id, ts, entity_kind, entity_id, stream_version, event_type, \
     schema_version, payload, action, actor_kind, actor_id, before, after, note, trace_id, correlation_id, \
     causation_id, idempotency_key, unique_keys, prev_hash, hash";
const N_VERIFY_COLUMNS: i16 = 22;
/// The start of PostgreSQL's binary `COPY` format.
const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01 00:00 UTC.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A cursor over the binary `COPY` data of one stretch.
struct CopyData<'d> {
    data: &'d [u8],
    at: usize,
}

impl<'d> CopyData<'d> {
    fn take(&mut self, length: usize) -> anyhow::Result<&'d [u8]> {
        let bytes = self.data.get(self.at..self.at + length).context("truncated COPY data")?;
        self.at += length;
        Ok(bytes)
    }

    fn i16(&mut self) -> anyhow::Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into()?))
    }

    fn i32(&mut self) -> anyhow::Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
    }

    /// Skips the header: the signature, the flags and the header extension.
    fn header(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.take(COPY_SIGNATURE.len())? == COPY_SIGNATURE, "not binary COPY data");
        let _flags = self.i32()?;
        let extension = usize::try_from(self.i32()?)?;
        self.take(extension)?;
        Ok(())
    }

    /// The next field of a tuple (`None` for SQL null).
    fn field(&mut self) -> anyhow::Result<Option<&'d [u8]>> {
        match self.i32()? {
            -1 => Ok(None),
            length => Ok(Some(self.take(usize::try_from(length)?)?)),
        }
    }

    fn not_null(&mut self) -> anyhow::Result<&'d [u8]> {
        self.field()?.context("unexpected null")
    }

    fn text(&mut self) -> anyhow::Result<&'d str> {
        Ok(std::str::from_utf8(self.not_null()?)?)
    }

    fn optional_text(&mut self) -> anyhow::Result<Option<&'d str>> {
        self.field()?.map(std::str::from_utf8).transpose().map_err(Into::into)
    }

    fn int8(&mut self) -> anyhow::Result<i64> {
        Ok(i64::from_be_bytes(self.not_null()?.try_into()?))
    }

    fn int4(&mut self) -> anyhow::Result<i32> {
        Ok(i32::from_be_bytes(self.not_null()?.try_into()?))
    }

    /// A jsonb field: the binary format is a version byte, 1, and the JSON text.
    fn json(&mut self) -> anyhow::Result<Option<JsonText<'d>>> {
        match self.field()? {
            None => Ok(None),
            Some([1, text @ ..]) => Ok(Some(JsonText(text))),
            Some(_) => anyhow::bail!("unsupported jsonb format version"),
        }
    }

    /// A one-dimensional `text[]` without nulls, into `out`.
    fn text_array(&mut self, out: &mut Vec<String>) -> anyhow::Result<()> {
        out.clear();
        let mut array = CopyData { data: self.not_null()?, at: 0 };
        let dimensions = array.i32()?;
        let _has_nulls = array.i32()?;
        let _element_type = array.i32()?;
        match dimensions {
            0 => {}
            1 => {
                let length = array.i32()?;
                let _lower_bound = array.i32()?;
                for _ in 0..length {
                    out.push(array.text()?.to_owned());
                }
            }
            _ => anyhow::bail!("unique_keys has {dimensions} dimensions"),
        }
        Ok(())
    }
}

/// Decodes the next tuple of the `COPY` just enough to hash it (`None` at the end of the data); `scratch` holds
/// its canonical bytes, `unique_keys` its keys.
///
/// A value that decoded wrongly could only change the bytes hashed, so it would be reported, never pass.
fn check_tuple(
    copy: &mut CopyData<'_>,
    scratch: &mut Vec<u8>,
    unique_keys: &mut Vec<String>,
) -> anyhow::Result<Option<Checked>> {
    match copy.i16()? {
        -1 => return Ok(None),
        N_VERIFY_COLUMNS => {}
        fields => anyhow::bail!("a row of {fields} columns"),
    }
    let position = copy.int8()?;
    decode_tuple(copy, position, scratch, unique_keys)
        .map(Some)
        .with_context(|| format!("decode the event at position {position}"))
}

/// The rest of [`check_tuple`], after the position.
fn decode_tuple(
    copy: &mut CopyData<'_>,
    position: i64,
    scratch: &mut Vec<u8>,
    unique_keys: &mut Vec<String>,
) -> anyhow::Result<Checked> {
    let event_id = copy.text()?;
    let ts = copy.int8()?.checked_add(POSTGRES_EPOCH_MICROS).context("ts out of range")?;
    let ts = DateTime::<Utc>::from_timestamp_micros(ts).context("ts out of range")?;
    let (entity_kind, entity_id) = (copy.text()?, copy.text()?);
    let stream_version = copy.int4()?;
    let event_type = copy.text()?;
    let schema_version = copy.int4()?;
    let payload = copy.json()?.context("payload is null")?;
    let (action, actor_kind, actor_id) = (copy.text()?, copy.text()?, copy.text()?);
    let (before, after) = (copy.json()?, copy.json()?);
    let note = copy.optional_text()?;
    let trace_id = copy.optional_text()?;
    let correlation_id = copy.optional_text()?;
    let causation_id = copy.optional_text()?;
    let idempotency_key = copy.optional_text()?;
    copy.text_array(unique_keys)?;
    let event = CanonicalEvent {
        position,
        event_id,
        ts,
        entity_kind,
        entity_id,
        stream_version,
        event_type,
        schema_version,
        payload,
        action,
        actor_kind,
        actor_id,
        before,
        after,
        note,
        trace_id,
        correlation_id,
        causation_id,
        idempotency_key,
        unique_keys,
    };
    scratch.clear();
    canonical_bytes_of_text(scratch, &event).context("a jsonb column is not JSON serde_json reads")?;
    // A stored hash of the wrong length matches nothing.
    let hash = |field: Option<&[u8]>| field.and_then(|bytes| bytes.try_into().ok());
    Ok(Checked {
        position,
        prev_hash: hash(copy.field()?),
        hash: hash(copy.field()?),
        content_hash: content_hash(scratch),
    })
}

/// The length of the tuple at the start of `data` (the trailer's included), or `None` if it is not all there.
fn tuple_length(data: &[u8]) -> Option<usize> {
    let fields = i16::from_be_bytes(*data.first_chunk::<2>()?);
    let mut length = 2_usize;
    for _ in 0..fields.max(0) {
        let field = i32::from_be_bytes(*data.get(length..)?.first_chunk::<4>()?);
        length = length.checked_add(4 + usize::try_from(field).unwrap_or(0))?;
    }
    (length <= data.len()).then_some(length)
}

/// Checks the tuples of one stretch's binary `COPY` data as its messages arrive. PostgreSQL sends one tuple
/// per message (the header comes with the first), so tuples are checked where they lie; one split between
/// messages is put together in `pending` first.
#[derive(Default)]
struct StretchChecker {
    header_read: bool,
    trailer_read: bool,
    pending: Vec<u8>,
    scratch: Vec<u8>,
    unique_keys: Vec<String>,
    checked: Vec<Checked>,
}

impl StretchChecker {
    fn feed(&mut self, message: &[u8]) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            let used = self.check_complete_tuples(message)?;
            self.pending.extend_from_slice(&message[used..]);
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(message);
            let used = self.check_complete_tuples(&pending)?;
            pending.drain(..used);
            self.pending = pending;
        }
        Ok(())
    }

    /// Checks the complete tuples at the start of `data` (after the header, if it has not been read yet) and
    /// returns how many bytes they took.
    fn check_complete_tuples(&mut self, data: &[u8]) -> anyhow::Result<usize> {
        let mut copy = CopyData { data, at: 0 };
        if !self.header_read {
            let header_length = data.get(COPY_SIGNATURE.len() + 4..COPY_SIGNATURE.len() + 8).map(|extension| {
                COPY_SIGNATURE.len() + 8 + i32::from_be_bytes(extension.try_into().expect("4 bytes")) as usize
            });
            match header_length {
                Some(header_length) if header_length <= data.len() => copy.header()?,
                _ => return Ok(0),
            }
            self.header_read = true;
        }
        while let Some(length) = tuple_length(&data[copy.at..]) {
            anyhow::ensure!(!self.trailer_read, "COPY data after its trailer");
            let tuple_start = copy.at;
            let mut tuple = CopyData { data: &data[..tuple_start + length], at: tuple_start };
            match check_tuple(&mut tuple, &mut self.scratch, &mut self.unique_keys)? {
                Some(checked) => self.checked.push(checked),
                None => self.trailer_read = true,
            }
            copy.at = tuple_start + length;
        }
        Ok(copy.at)
    }

    fn finish(self) -> anyhow::Result<Vec<Checked>> {
        anyhow::ensure!(self.trailer_read && self.pending.is_empty(), "truncated COPY data");
        Ok(self.checked)
    }
}

/// Reads the rows whose positions lie in `(after, up_to]`, in position order, and checks them.
///
/// The rows come as one binary `COPY`, each checked (decoded and hashed) as soon as its message arrives: sqlx
/// passes a `COPY` message on with less work than it decodes a query's row into a `PgRow`, and nothing is
/// buffered. Checking a row takes microseconds, so the task yields to others between rows.
async fn read_and_check(pool: PgPool, after: i64, up_to: i64) -> anyhow::Result<Vec<Checked>> {
    let sql = format!(
        "copy (select {VERIFY_COLUMNS} from audit_log where position > {after} and position <= {up_to} \
         order by position) to stdout with (format binary)"
    );
    let mut conn = UntilCopied { conn: pool.acquire().await.context("connect to read audit_log")?, copied: false };
    let mut checker = StretchChecker::default();
    {
        let mut messages = conn.conn.copy_out_raw(&sql).await.context("read audit_log")?;
        while let Some(message) = messages.try_next().await.context("read audit_log")? {
            checker.feed(&message)?;
        }
    }
    conn.copied = true;
    checker.finish()
}

/// A connection reading a `COPY`: closed, not returned to the pool, unless the `COPY` was read to its end
/// (a failed or aborted stretch leaves the rest of its data on the way, which the next user would read).
struct UntilCopied {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    copied: bool,
}

impl Drop for UntilCopied {
    fn drop(&mut self) {
        if !self.copied {
            self.conn.close_on_drop();
        }
    }
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
