//! A stored event: one row of `audit_log`, as readers see it.

use chrono::{DateTime, Utc};
use domain::event::{Action, ActorKind, EntityKind, StreamId};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::Row;

/// One row of `audit_log`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub position: i64,
    pub event_id: String,
    pub ts: DateTime<Utc>,
    pub stream: StreamId,
    pub stream_version: i32,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
    pub action: Action,
    pub actor_kind: ActorKind,
    pub actor_id: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub note: Option<String>,
    pub trace_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub unique_keys: Vec<String>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// The column list every read of whole events uses, in the order [`RecordedEvent::from_row`] expects.
pub(crate) const COLUMNS: &str = "position, event_id, ts, entity_kind, entity_id, stream_version, event_type, \
     schema_version, payload, action, actor_kind, actor_id, before, after, note, trace_id, correlation_id, \
     causation_id, idempotency_key, unique_keys, prev_hash, hash";
/// [`COLUMNS`] with `before` and `after` left out (null), for readers that fold neither.
pub(crate) const COLUMNS_WITHOUT_IMAGES: &str = "position, event_id, ts, entity_kind, entity_id, stream_version, \
     event_type, schema_version, payload, action, actor_kind, actor_id, null::jsonb as before, null::jsonb as after, \
     note, trace_id, correlation_id, causation_id, idempotency_key, unique_keys, prev_hash, hash";

impl RecordedEvent {
    /// Decodes a row holding every column of [`COLUMNS`] by name (a statement of another crate that reads events
    /// with its own SQL, e.g. a claim's, selects them under the same names).
    pub fn from_row(row: &PgRow) -> Result<RecordedEvent, sqlx::Error> {
        let kind: String = row.try_get("entity_kind")?;
        let action: String = row.try_get("action")?;
        let actor_kind: String = row.try_get("actor_kind")?;
        let decode = |column: &str, what: &str, value: &str| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: format!("unknown {what} {value:?}").into(),
        };
        Ok(RecordedEvent {
            position: row.try_get("position")?,
            event_id: row.try_get("event_id")?,
            ts: row.try_get("ts")?,
            stream: StreamId {
                kind: EntityKind::parse(&kind).ok_or_else(|| decode("entity_kind", "entity kind", &kind))?,
                id: row.try_get("entity_id")?,
            },
            stream_version: row.try_get("stream_version")?,
            event_type: row.try_get("event_type")?,
            schema_version: row.try_get("schema_version")?,
            payload: row.try_get("payload")?,
            action: Action::parse(&action).ok_or_else(|| decode("action", "action", &action))?,
            actor_kind: ActorKind::parse(&actor_kind).ok_or_else(|| decode("actor_kind", "actor kind", &actor_kind))?,
            actor_id: row.try_get("actor_id")?,
            before: row.try_get("before")?,
            after: row.try_get("after")?,
            note: row.try_get("note")?,
            trace_id: row.try_get("trace_id")?,
            correlation_id: row.try_get("correlation_id")?,
            causation_id: row.try_get("causation_id")?,
            idempotency_key: row.try_get("idempotency_key")?,
            unique_keys: row.try_get("unique_keys")?,
            prev_hash: row.try_get("prev_hash")?,
            hash: row.try_get("hash")?,
        })
    }

    /// The event as JSON, for the audit API, exports and `events.jsonl`. Hashes are hex.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "position": self.position,
            "event_id": self.event_id,
            "ts": self.ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "entity_kind": self.stream.kind.as_str(),
            "entity_id": self.stream.id,
            "stream_version": self.stream_version,
            "event_type": self.event_type,
            "schema_version": self.schema_version,
            "payload": self.payload,
            "action": self.action.as_str(),
            "actor_kind": self.actor_kind.as_str(),
            "actor_id": self.actor_id,
            "before": self.before,
            "after": self.after,
            "note": self.note,
            "trace_id": self.trace_id,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "idempotency_key": self.idempotency_key,
            "unique_keys": self.unique_keys,
            "prev_hash": hex::encode(&self.prev_hash),
            "hash": hex::encode(&self.hash),
        })
    }
}
