//! Verifying the hash chain: recompute every event's hash from its stored columns and its predecessor's hash.

use anyhow::Context as _;
use futures::TryStreamExt as _;
use serde::Serialize;
use sqlx::PgPool;

use crate::append::canonical_of;
use crate::canonical::{canonical_bytes, chain_hash, GENESIS_HASH};
use crate::record::{RecordedEvent, COLUMNS};

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

/// Recomputes the whole chain and names the first position that does not verify.
pub async fn verify_chain(pool: &PgPool) -> anyhow::Result<VerifyReport> {
    let sql = format!("select {COLUMNS} from audit_log order by position");
    let mut rows = sqlx::query(&sql).fetch(pool);
    let mut expected_position = 1_i64;
    let mut prev_hash = GENESIS_HASH.to_vec();
    let mut events_checked = 0_i64;
    while let Some(row) = rows.try_next().await.context("read audit_log")? {
        events_checked += 1;
        let event = RecordedEvent::from_row(&row).context("decode event")?;
        let failure = if event.position != expected_position {
            Some(format!("expected position {expected_position}, found {}: an event is missing", event.position))
        } else if event.prev_hash != prev_hash {
            Some("prev_hash does not match the previous event's hash: events were removed or reordered".into())
        } else if chain_hash(&prev_hash, &canonical_bytes(&canonical_of(&event))).as_slice() != event.hash {
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
                head_hash: hex::encode(&prev_hash),
            });
        }
        prev_hash = event.hash;
        expected_position += 1;
    }
    Ok(VerifyReport {
        ok: true,
        events_checked,
        first_bad_position: None,
        reason: None,
        head_hash: hex::encode(&prev_hash),
    })
}
