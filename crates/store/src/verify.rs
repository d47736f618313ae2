//! Verifying the hash chain: recompute every event's hash from its stored columns and its predecessor's hash.
//!
//! The log is read in chunks by position (keyset pagination), the next chunk fetched while the current one is
//! checked. Decoding a row and hashing its contents is independent per event, so it runs on every core; only
//! linking the content hashes into the chain is sequential, and that step hashes 64 bytes per event.

use anyhow::Context as _;
use rayon::prelude::*;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::append::canonical_of;
use crate::canonical::{canonical_bytes, content_hash, link_hash, GENESIS_HASH};
use crate::record::{RecordedEvent, COLUMNS};

/// Rows per chunk read from PostgreSQL.
const CHUNK_SIZE: i64 = 10_000;

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

/// What the chaining step needs of one row.
struct Checked {
    position: i64,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
    content_hash: [u8; 32],
}

fn check_row(row: &PgRow) -> anyhow::Result<Checked> {
    let event = RecordedEvent::from_row(row).context("decode event")?;
    let content_hash = content_hash(&canonical_bytes(&canonical_of(&event)));
    Ok(Checked { position: event.position, prev_hash: event.prev_hash, hash: event.hash, content_hash })
}

/// Recomputes the whole chain and names the first position that does not verify.
pub async fn verify_chain(pool: &PgPool) -> anyhow::Result<VerifyReport> {
    let (chunks, mut received) = mpsc::channel::<anyhow::Result<Vec<PgRow>>>(2);
    let reader = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let sql = format!("select {COLUMNS} from audit_log where position > $1 order by position limit $2");
            let mut after = i64::MIN;
            loop {
                let rows = sqlx::query(&sql).bind(after).bind(CHUNK_SIZE).fetch_all(&pool).await;
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(error) => {
                        let _ = chunks.send(Err(anyhow::Error::from(error).context("read audit_log"))).await;
                        return;
                    }
                };
                let last = rows.last().map(|row| sqlx::Row::try_get::<i64, _>(row, "position"));
                let done = (rows.len() as i64) < CHUNK_SIZE;
                if chunks.send(Ok(rows)).await.is_err() || done {
                    return;
                }
                match last {
                    Some(Ok(position)) => after = position,
                    _ => return,
                }
            }
        })
    };

    let mut expected_position = 1_i64;
    let mut prev_hash = GENESIS_HASH.to_vec();
    let mut events_checked = 0_i64;
    let mut report = None;
    while let Some(rows) = received.recv().await {
        let rows = rows?;
        let checked = tokio::task::spawn_blocking(move || rows.par_iter().map(check_row).collect::<Vec<_>>())
            .await
            .context("hash a chunk")?;
        for row in checked {
            let row = row?;
            events_checked += 1;
            let failure = if row.position != expected_position {
                Some(format!("expected position {expected_position}, found {}: an event is missing", row.position))
            } else if row.prev_hash != prev_hash {
                Some("prev_hash does not match the previous event's hash: events were removed or reordered".into())
            } else if link_hash(&prev_hash, &row.content_hash).as_slice() != row.hash {
                Some("the stored hash does not match the event's contents: the event was altered".into())
            } else {
                None
            };
            if let Some(reason) = failure {
                report = Some(VerifyReport {
                    ok: false,
                    events_checked,
                    first_bad_position: Some(expected_position),
                    reason: Some(reason),
                    head_hash: hex::encode(&prev_hash),
                });
                break;
            }
            prev_hash = row.hash;
            expected_position += 1;
        }
        if report.is_some() {
            break;
        }
    }
    drop(received);
    reader.abort();
    Ok(report.unwrap_or_else(|| VerifyReport {
        ok: true,
        events_checked,
        first_bad_position: None,
        reason: None,
        head_hash: hex::encode(&prev_hash),
    }))
}
