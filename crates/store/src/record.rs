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
        serde_json::to_value(self.as_json()).expect("an event serialises")
    }

    /// [`RecordedEvent::to_json`] without building it: a view that serialises to the same JSON, byte for byte,
    /// borrowing the payload and images instead of copying them (`events.jsonl` writes every event of every task).
    pub fn as_json(&self) -> EventJson<'_> {
        EventJson {
            action: self.action.as_str(),
            actor_id: &self.actor_id,
            actor_kind: self.actor_kind.as_str(),
            after: self.after.as_ref(),
            before: self.before.as_ref(),
            causation_id: self.causation_id.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            entity_id: &self.stream.id,
            entity_kind: self.stream.kind.as_str(),
            event_id: &self.event_id,
            event_type: &self.event_type,
            hash: hex::encode(&self.hash),
            idempotency_key: self.idempotency_key.as_deref(),
            note: self.note.as_deref(),
            payload: &self.payload,
            position: self.position,
            prev_hash: hex::encode(&self.prev_hash),
            schema_version: self.schema_version,
            stream_version: self.stream_version,
            trace_id: self.trace_id.as_deref(),
            ts: self.ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            unique_keys: &self.unique_keys,
        }
    }
}

/// An event as JSON ([`RecordedEvent::as_json`]). Its fields are in the order of their names, as a JSON object's
/// keys are (`serde_json` keeps them sorted), so it serialises exactly as [`RecordedEvent::to_json`] did when that
/// built a `Value`; `events.jsonl` files written before stay byte for byte what a rebuild writes.
#[derive(Debug, serde::Serialize)]
pub struct EventJson<'e> {
    action: &'static str,
    actor_id: &'e str,
    actor_kind: &'static str,
    after: Option<&'e Value>,
    before: Option<&'e Value>,
    causation_id: Option<&'e str>,
    correlation_id: Option<&'e str>,
    entity_id: &'e str,
    entity_kind: &'static str,
    event_id: &'e str,
    event_type: &'e str,
    hash: String,
    idempotency_key: Option<&'e str>,
    note: Option<&'e str>,
    payload: &'e Value,
    position: i64,
    prev_hash: String,
    schema_version: i32,
    stream_version: i32,
    trace_id: Option<&'e str>,
    ts: String,
    unique_keys: &'e [String],
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(note: Option<&str>, before: Option<Value>) -> RecordedEvent {
        RecordedEvent {
            position: 42,
            event_id: "01EVENT".into(),
            ts: DateTime::from_timestamp_micros(1_764_806_400_123_456).expect("a time"),
            stream: StreamId::new(EntityKind::Task, "01TASK"),
            stream_version: 3,
            event_type: "RunStarted".into(),
            schema_version: 1,
            payload: json!({"z": [1, {"b": null, "a": "é\n"}], "a": 1.5}),
            action: Action::StatusChanged,
            actor_kind: ActorKind::Agent,
            actor_id: "worker-1".into(),
            before,
            after: Some(json!({"status": "running"})),
            note: note.map(str::to_owned),
            trace_id: Some("trace-1".into()),
            correlation_id: None,
            causation_id: Some("01CAUSE".into()),
            idempotency_key: None,
            unique_keys: vec!["task:key".into()],
            prev_hash: vec![0; 32],
            hash: vec![0xab; 32],
        }
    }

    /// What `to_json` built before `EventJson` (a `Value`, whose keys serialise sorted); `events.jsonl` files
    /// written then must stay what a rebuild writes now.
    fn as_value(event: &RecordedEvent) -> Value {
        json!({
            "position": event.position,
            "event_id": event.event_id,
            "ts": event.ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "entity_kind": event.stream.kind.as_str(),
            "entity_id": event.stream.id,
            "stream_version": event.stream_version,
            "event_type": event.event_type,
            "schema_version": event.schema_version,
            "payload": event.payload,
            "action": event.action.as_str(),
            "actor_kind": event.actor_kind.as_str(),
            "actor_id": event.actor_id,
            "before": event.before,
            "after": event.after,
            "note": event.note,
            "trace_id": event.trace_id,
            "correlation_id": event.correlation_id,
            "causation_id": event.causation_id,
            "idempotency_key": event.idempotency_key,
            "unique_keys": event.unique_keys,
            "prev_hash": hex::encode(&event.prev_hash),
            "hash": hex::encode(&event.hash),
        })
    }

    #[test]
    fn the_json_view_serialises_byte_for_byte_as_the_json_value_did() {
        for event in [event(None, None), event(Some("a note"), Some(json!({"status": "queued"})))] {
            let expected = as_value(&event).to_string();
            assert_eq!(serde_json::to_string(&event.as_json()).unwrap(), expected);
            assert_eq!(event.to_json().to_string(), expected);
            assert_eq!(event.to_json(), as_value(&event));
        }
    }
}
