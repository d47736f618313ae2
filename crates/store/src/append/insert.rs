//! The two statements of every append, as values: the locked read its checks need, and the insert of its events,
//! claims and blobs (with the `NOTIFY`).

use chrono::{DateTime, Utc};
use domain::event::StreamId;
use serde_json::Value;

use super::{idempotency_claim, LogState, NewCommand, APPEND_LOCK_KEY};
use crate::blob::NewBlob;
use crate::canonical::GENESIS_HASH;
use crate::record::RecordedEvent;
use crate::sql::{Param, Statement};
use crate::EVENTS_CHANNEL;

/// Takes the append lock, then reads what the batch's checks need under it, in the same round trip: the head,
/// stream versions and claims as no other appender can move them now (migrations/0004_append_lock_and_read.sql).
pub(super) fn lock_and_read(commands: &[NewCommand]) -> Statement<'_> {
    let mut stream_kinds = Vec::new();
    let mut stream_ids = Vec::new();
    let mut claim_keys = Vec::new();
    for command in commands {
        for event in &command.events {
            stream_kinds.push(event.data.stream.kind.as_str());
            stream_ids.push(event.data.stream.id.as_str());
            claim_keys.extend(event.unique_keys.iter().cloned());
        }
        for (stream, _) in &command.expected {
            stream_kinds.push(stream.kind.as_str());
            stream_ids.push(stream.id.as_str());
        }
        if let Some(key) = &command.idempotency_key {
            claim_keys.push(idempotency_claim(key));
        }
    }
    Statement::prepared(
        "take the append lock; read the log head, stream versions and claims",
        "select what, a, b, c, n, head_hash as hash from append_lock_and_read($1, $2, $3, $4)",
        vec![
            Param::Int8(APPEND_LOCK_KEY),
            Param::Texts(stream_kinds),
            Param::Texts(stream_ids),
            Param::OwnedTexts(claim_keys),
        ],
    )
}

/// Takes the append lock and fails the transaction unless the log's head is at `position` with `hash`: the first
/// statement of a speculative batch, checked against what the appender remembers instead of a read
/// (migrations/0008_append_lock_at_head.sql).
pub(super) fn lock_at_head(position: i64, hash: &[u8]) -> Statement<'_> {
    Statement::prepared(
        "take the append lock at the expected head",
        "select append_lock_at_head($1, $2, $3)",
        vec![Param::Int8(APPEND_LOCK_KEY), Param::Int8(position), Param::Bytea(hash)],
    )
}

/// Fails the transaction unless each stream is exactly at the version the batch guessed for it: the second
/// statement of a speculative batch that expects versions of streams the appender does not remember
/// (migrations/0010_append_expect_stream_versions.sql).
pub(super) fn expect_stream_versions(guesses: &[(StreamId, i32)]) -> Statement<'_> {
    Statement::prepared(
        "check the stream versions the batch guessed",
        "select append_expect_stream_versions($1, $2, $3)",
        vec![
            Param::Texts(guesses.iter().map(|(stream, _)| stream.kind.as_str()).collect()),
            Param::Texts(guesses.iter().map(|(stream, _)| stream.id.as_str()).collect()),
            Param::Int4s(guesses.iter().map(|(_, version)| *version).collect()),
        ],
    )
}

/// One row of [`lock_and_read`]'s answer, whichever driver read it.
pub(super) struct ReadRow {
    pub what: String,
    pub a: Option<String>,
    pub b: Option<String>,
    pub c: Option<String>,
    pub n: Option<i64>,
    pub hash: Option<Vec<u8>>,
}

/// The log's state from [`lock_and_read`]'s rows.
pub(super) fn log_state(rows: impl IntoIterator<Item = ReadRow>) -> anyhow::Result<LogState> {
    use anyhow::Context as _;
    let mut state = LogState {
        head_position: 0,
        head_hash: GENESIS_HASH.to_vec(),
        versions: std::collections::HashMap::new(),
        claims: std::collections::HashMap::new(),
    };
    for row in rows {
        match row.what.as_str() {
            "head" => {
                state.head_position = row.n.context("the head has a position")?;
                state.head_hash = row.hash.context("the head has a hash")?;
            }
            "stream" => {
                let key = (row.a.context("a stream has a kind")?, row.b.context("a stream has an id")?);
                let version = i32::try_from(row.n.unwrap_or(0)).context("stream version out of range")?;
                state.versions.insert(key, version);
            }
            _ => {
                let kind = row.b.context("a claim has a kind")?;
                let kind = domain::event::EntityKind::parse(&kind)
                    .with_context(|| format!("unknown entity kind {kind:?} in unique_claims"))?;
                let stream = domain::event::StreamId::new(kind, row.c.context("a claim has an id")?);
                state.claims.insert(row.a.context("a claim has a key")?, stream);
            }
        }
    }
    Ok(state)
}

/// The key of the payload's only member when `after` equals that member's value, as it does for every `created`
/// event (`{"object": X}` with `after` X). The insert then takes `after` from the payload PostgreSQL has already
/// parsed (`payload -> key`, the same jsonb) instead of sending and parsing the same document twice.
fn payload_member_equal_to_after(record: &RecordedEvent) -> Option<&str> {
    let (Value::Object(members), Some(after)) = (&record.payload, &record.after) else { return None };
    let mut members = members.iter();
    match (members.next(), members.next()) {
        (Some((key, value)), None) if value == after => Some(key),
        _ => None,
    }
}

/// Column arrays for one multi-row insert through `unnest`, borrowed from the batch's records.
#[derive(Default)]
pub(super) struct InsertColumns<'r> {
    position: Vec<i64>,
    event_id: Vec<&'r str>,
    ts: Vec<DateTime<Utc>>,
    entity_kind: Vec<&'static str>,
    entity_id: Vec<&'r str>,
    stream_version: Vec<i32>,
    event_type: Vec<&'r str>,
    schema_version: Vec<i32>,
    payload: Vec<&'r Value>,
    action: Vec<&'static str>,
    actor_kind: Vec<&'static str>,
    actor_id: Vec<&'r str>,
    before: Vec<Option<&'r Value>>,
    /// `None` where `after_key` names the payload member it equals.
    after: Vec<Option<&'r Value>>,
    after_key: Vec<Option<&'r str>>,
    note: Vec<Option<&'r str>>,
    trace_id: Vec<Option<&'r str>>,
    correlation_id: Vec<Option<&'r str>>,
    causation_id: Vec<Option<&'r str>>,
    idempotency_key: Vec<Option<&'r str>>,
    unique_keys: Vec<&'r [String]>,
    prev_hash: Vec<&'r [u8]>,
    hash: Vec<&'r [u8]>,
    claim_key: Vec<&'r str>,
    claim_kind: Vec<&'static str>,
    claim_id: Vec<&'r str>,
    claim_position: Vec<i64>,
    blob_digest: Vec<&'r str>,
    blob_size: Vec<i64>,
    blob_content: Vec<&'r [u8]>,
    blob_position: Vec<i64>,
}

impl<'r> InsertColumns<'r> {
    pub(super) fn is_empty(&self) -> bool {
        self.position.is_empty()
    }

    pub(super) fn push(&mut self, record: &'r RecordedEvent) {
        self.position.push(record.position);
        self.event_id.push(&record.event_id);
        self.ts.push(record.ts);
        self.entity_kind.push(record.stream.kind.as_str());
        self.entity_id.push(&record.stream.id);
        self.stream_version.push(record.stream_version);
        self.event_type.push(&record.event_type);
        self.schema_version.push(record.schema_version);
        self.payload.push(&record.payload);
        self.action.push(record.action.as_str());
        self.actor_kind.push(record.actor_kind.as_str());
        self.actor_id.push(&record.actor_id);
        self.before.push(record.before.as_ref());
        let after_key = payload_member_equal_to_after(record);
        self.after.push(if after_key.is_some() { None } else { record.after.as_ref() });
        self.after_key.push(after_key);
        self.note.push(record.note.as_deref());
        self.trace_id.push(record.trace_id.as_deref());
        self.correlation_id.push(record.correlation_id.as_deref());
        self.causation_id.push(record.causation_id.as_deref());
        self.idempotency_key.push(record.idempotency_key.as_deref());
        self.unique_keys.push(&record.unique_keys);
        self.prev_hash.push(&record.prev_hash);
        self.hash.push(&record.hash);
        for key in &record.unique_keys {
            self.claim_key.push(key);
            self.claim_kind.push(record.stream.kind.as_str());
            self.claim_id.push(&record.stream.id);
            self.claim_position.push(record.position);
        }
    }

    pub(super) fn push_blob(&mut self, blob: &'r NewBlob, position: i64) {
        self.blob_digest.push(&blob.digest);
        self.blob_size.push(blob.size_bytes() as i64);
        self.blob_content.push(&blob.content);
        self.blob_position.push(position);
    }

    /// The insert of every row pushed, notifying [`EVENTS_CHANNEL`] of `last_position` at commit.
    pub(super) fn into_statement(self, last_position: i64) -> Statement<'r> {
        Statement::prepared(
            "insert events",
            "with events as ( \
               insert into audit_log (position, event_id, ts, entity_kind, entity_id, stream_version, event_type, \
                 schema_version, payload, action, actor_kind, actor_id, before, after, note, trace_id, \
                 correlation_id, causation_id, idempotency_key, unique_keys, prev_hash, hash) \
               select u.position, u.event_id, u.ts, u.entity_kind, u.entity_id, u.stream_version, u.event_type, \
                 u.schema_version, u.payload, u.action, u.actor_kind, u.actor_id, u.before, \
                 case when u.after_key is null then u.after else u.payload -> u.after_key end, u.note, \
                 u.trace_id, u.correlation_id, u.causation_id, u.idempotency_key, \
                 array(select jsonb_array_elements_text(u.unique_keys)), u.prev_hash, u.hash \
               from unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::int[], \
                 $7::text[], $8::int[], $9::jsonb[], $10::text[], $11::text[], $12::text[], $13::jsonb[], \
                 $14::jsonb[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], $20::jsonb[], \
                 $21::bytea[], $22::bytea[], $23::text[]) \
               as u(position, event_id, ts, entity_kind, entity_id, stream_version, event_type, schema_version, \
                 payload, action, actor_kind, actor_id, before, after, note, trace_id, correlation_id, \
                 causation_id, idempotency_key, unique_keys, prev_hash, hash, after_key) \
             ), claims as ( \
               insert into unique_claims (key, entity_kind, entity_id, position) \
               select * from unnest($24::text[], $25::text[], $26::text[], $27::bigint[]) \
             ), blobs as ( \
               insert into blobs (digest, size_bytes, content, position) \
               select * from unnest($30::text[], $31::bigint[], $32::bytea[], $33::bigint[]) \
               on conflict (digest) do nothing \
             ) \
             select pg_notify($28, $29::text)",
            vec![
                Param::Int8s(self.position),
                Param::Texts(self.event_id),
                Param::Timestamps(self.ts),
                Param::Texts(self.entity_kind),
                Param::Texts(self.entity_id),
                Param::Int4s(self.stream_version),
                Param::Texts(self.event_type),
                Param::Int4s(self.schema_version),
                Param::Jsonbs(self.payload),
                Param::Texts(self.action),
                Param::Texts(self.actor_kind),
                Param::Texts(self.actor_id),
                Param::OptionalJsonbs(self.before),
                Param::OptionalJsonbs(self.after),
                Param::OptionalTexts(self.note),
                Param::OptionalTexts(self.trace_id),
                Param::OptionalTexts(self.correlation_id),
                Param::OptionalTexts(self.causation_id),
                Param::OptionalTexts(self.idempotency_key),
                Param::StringListsAsJsonb(self.unique_keys),
                Param::Byteas(self.prev_hash),
                Param::Byteas(self.hash),
                Param::OptionalTexts(self.after_key),
                Param::Texts(self.claim_key),
                Param::Texts(self.claim_kind),
                Param::Texts(self.claim_id),
                Param::Int8s(self.claim_position),
                Param::Text(EVENTS_CHANNEL),
                Param::Int8(last_position),
                Param::Texts(self.blob_digest),
                Param::Int8s(self.blob_size),
                Param::Byteas(self.blob_content),
                Param::Int8s(self.blob_position),
            ],
        )
    }
}
