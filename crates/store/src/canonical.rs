//! The canonical bytes of an event and the SHA-256 chain over them.
//!
//! The bytes are a JSON array of every column but the hashes, with object keys sorted at every depth and no
//! whitespace. Sorting is done here, not left to serde_json's map type, so the bytes do not depend on a cargo
//! feature (`preserve_order`) that another crate could switch on. The timestamp enters as microseconds since
//! the epoch, the precision PostgreSQL stores, so it reads back identically.
//!
//! An event's hash is `sha256(prev_hash || sha256(canonical bytes))` (docs/adr/0003-hash-chain.md).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The fields that make up an event's canonical bytes. Borrowed so appends and verification share one encoder.
pub struct CanonicalEvent<'a> {
    pub position: i64,
    pub event_id: &'a str,
    pub ts: DateTime<Utc>,
    pub entity_kind: &'a str,
    pub entity_id: &'a str,
    pub stream_version: i32,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub payload: &'a Value,
    pub action: &'a str,
    pub actor_kind: &'a str,
    pub actor_id: &'a str,
    pub before: Option<&'a Value>,
    pub after: Option<&'a Value>,
    pub note: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub causation_id: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub unique_keys: &'a [String],
}

/// The canonical bytes of one event.
pub fn canonical_bytes(event: &CanonicalEvent<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.push(b'[');
    write_number(&mut out, event.position);
    out.push(b',');
    write_string(&mut out, event.event_id);
    out.push(b',');
    write_number(&mut out, event.ts.timestamp_micros());
    for text in [event.entity_kind, event.entity_id] {
        out.push(b',');
        write_string(&mut out, text);
    }
    out.push(b',');
    write_number(&mut out, i64::from(event.stream_version));
    out.push(b',');
    write_string(&mut out, event.event_type);
    out.push(b',');
    write_number(&mut out, i64::from(event.schema_version));
    out.push(b',');
    write_value(&mut out, event.payload);
    for text in [event.action, event.actor_kind, event.actor_id] {
        out.push(b',');
        write_string(&mut out, text);
    }
    for value in [event.before, event.after] {
        out.push(b',');
        match value {
            Some(value) => write_value(&mut out, value),
            None => out.extend_from_slice(b"null"),
        }
    }
    for text in [event.note, event.trace_id, event.correlation_id, event.causation_id, event.idempotency_key] {
        out.push(b',');
        match text {
            Some(text) => write_string(&mut out, text),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b",[");
    for (key_idx, key) in event.unique_keys.iter().enumerate() {
        if key_idx > 0 {
            out.push(b',');
        }
        write_string(&mut out, key);
    }
    out.extend_from_slice(b"]]");
    out
}

/// `sha256(canonical bytes)`: the digest of one event's contents. Independent of other events, so a verifier
/// computes these in parallel and only the cheap chaining step is sequential.
pub fn content_hash(canonical: &[u8]) -> [u8; 32] {
    Sha256::digest(canonical).into()
}

/// `sha256(prev_hash || content_hash)`: the link of the chain.
pub fn link_hash(prev_hash: &[u8], content_hash: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(content_hash);
    hasher.finalize().into()
}

/// `sha256(prev_hash || sha256(canonical bytes))`: an event's stored hash.
pub fn chain_hash(prev_hash: &[u8], canonical: &[u8]) -> [u8; 32] {
    link_hash(prev_hash, &content_hash(canonical))
}

fn write_number(out: &mut Vec<u8>, number: i64) {
    out.extend_from_slice(number.to_string().as_bytes());
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    // serde_json's string escaping is deterministic; reuse it rather than re-implementing JSON escapes.
    serde_json::to_writer(&mut *out, text).expect("writing a string to a Vec cannot fail");
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (key_idx, key) in keys.into_iter().enumerate() {
                if key_idx > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_value(out, &map[key]);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (item_idx, item) in items.iter().enumerate() {
                if item_idx > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing a scalar to a Vec cannot fail"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(payload: &'a Value, keys: &'a [String]) -> CanonicalEvent<'a> {
        CanonicalEvent {
            position: 7,
            event_id: "01J0000000000000000000000A",
            ts: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            entity_kind: "Task",
            entity_id: "01J0000000000000000000000B",
            stream_version: 2,
            event_type: "TaskEnqueued",
            schema_version: 1,
            payload,
            action: "created",
            actor_kind: "human",
            actor_id: "alice",
            before: None,
            after: Some(payload),
            note: Some("n\"ote"),
            trace_id: Some("t"),
            correlation_id: None,
            causation_id: None,
            idempotency_key: None,
            unique_keys: keys,
        }
    }

    #[test]
    fn object_keys_are_sorted_at_every_depth() {
        let payload: Value = serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":1,"x":2}],"c":null}}"#).unwrap();
        let keys = vec!["idempotency:k".to_owned()];
        let bytes = String::from_utf8(canonical_bytes(&event(&payload, &keys))).unwrap();
        assert_eq!(
            bytes,
            r#"[7,"01J0000000000000000000000A",1700000000123456,"Task","01J0000000000000000000000B",2,"TaskEnqueued",1,{"a":{"c":null,"z":[{"x":2,"y":1}]},"b":1},"created","human","alice",null,{"a":{"c":null,"z":[{"x":2,"y":1}]},"b":1},"n\"ote","t",null,null,null,["idempotency:k"]]"#
        );
    }

    #[test]
    fn the_chain_depends_on_the_previous_hash() {
        let payload = serde_json::json!({"a": 1});
        let bytes = canonical_bytes(&event(&payload, &[]));
        assert_ne!(chain_hash(&GENESIS_HASH, &bytes), chain_hash(&[1; 32], &bytes));
        assert_eq!(chain_hash(&GENESIS_HASH, &bytes), chain_hash(&GENESIS_HASH, &bytes));
    }
}
