//! The `cwom` projection's set-based `apply_batch` against its reference, `apply` event by event: many seeded
//! random event sequences (every kind, duplicate creates, several changes and links of one object in one batch,
//! duplicate links, links to unknown kinds, events that do not fit the contract) folded both ways into schemas
//! of their own, the batches of random sizes, and every `cwom_*` table compared row for row. Events carry their
//! streams' real versions, so both ways a batch is folded are compared: a batch of objects that all begin in it
//! (folded in Rust and inserted) and one that changes objects from before (the recursive fold of
//! `apply_batch.sql`). The in-memory fold of rebuilds (`Projection::in_memory_fold`) is compared with `apply` the
//! same way.

use chrono::{DateTime, Duration, TimeZone, Utc};
use domain::event::{Action, ActorKind, EntityKind, StreamId};
use projections::cwom::CwomProjection;
use projections::Projection;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use store::RecordedEvent;

use crate::harness::fresh_database;

/// Every table of the `cwom` read model.
pub const TABLES: [&str; 13] = [
    "cwom_repos",
    "cwom_issues",
    "cwom_context_packets",
    "cwom_constraint_snapshots",
    "cwom_doctrine_refs",
    "cwom_runs",
    "cwom_artifacts",
    "cwom_issue_context_packets",
    "cwom_issue_doctrine_refs",
    "cwom_issue_constraint_snapshots",
    "cwom_run_context_packets",
    "cwom_run_doctrine_refs",
    "cwom_context_packet_doctrine_refs",
];

/// The list fields links append to, and the kinds their refs name.
const LISTS: [(&str, &str); 3] =
    [("context_packets", "ContextPacket"), ("constraints", "ConstraintSnapshot"), ("doctrine_refs", "DoctrineRef")];

/// Seeded generator of event sequences.
struct Generator {
    rng: StdRng,
    position: i64,
    /// Few ids per kind, so that creates, changes and links of one object pile up.
    ids_per_kind: u32,
    /// Each stream's version so far: a batch holding a stream's first event folds that object as new.
    versions: std::collections::HashMap<StreamId, i32>,
}

impl Generator {
    fn new(seed: u64) -> Generator {
        let mut rng = StdRng::seed_from_u64(seed);
        let ids_per_kind = *[2, 3, 5, 12].choose(&mut rng).expect("a choice");
        Generator { rng, position: 0, ids_per_kind, versions: Default::default() }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        items.choose(&mut self.rng).expect("a non-empty slice")
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    fn id_of(&mut self, kind: &str) -> String {
        format!("{}-{}", kind.to_lowercase(), self.rng.gen_range(0..self.ids_per_kind))
    }

    fn word(&mut self) -> Value {
        json!(*self.pick(&["a", "b", "open", "done", "high", "low", "repo", "org", "é ü", "\"q\""]))
    }

    /// A scalar or odd value where the GET shape has something else.
    fn odd(&mut self) -> Value {
        self.pick(&[
            json!(null),
            json!(7),
            json!(12345678901234567890_u64),
            json!(0.1),
            json!([]),
            json!({}),
            json!("x"),
        ])
        .clone()
    }

    /// `{"id": ...}` of some kind, mostly; sometimes not an object at all.
    fn reference(&mut self) -> Value {
        if self.chance(0.8) {
            let kind = self.pick(&domain::cwom::KINDS).as_str();
            json!({"kind": kind, "id": self.id_of(kind)})
        } else {
            self.odd()
        }
    }

    /// An element of a list field: mostly a ref as links append them, sometimes with more keys (it still
    /// contains the plain ref), of another kind, or no ref at all.
    fn list_element(&mut self, ref_kind: &str) -> Value {
        let id = self.id_of(ref_kind);
        match self.rng.gen_range(0..10) {
            0..=5 => json!({"kind": ref_kind, "id": id}),
            6 => json!({"kind": ref_kind, "id": id, "note": self.word()}),
            7 => json!({"kind": "Issue", "id": id}),
            8 => json!(id),
            _ => json!([{"kind": ref_kind, "id": id}]),
        }
    }

    /// A list field's value: an array of refs mostly, else something that is not an array.
    fn list(&mut self, ref_kind: &str) -> Value {
        if self.chance(0.7) {
            let len = self.rng.gen_range(0..4);
            Value::Array((0..len).map(|_| self.list_element(ref_kind)).collect())
        } else {
            match self.rng.gen_range(0..3) {
                0 => self.list_element(ref_kind),
                _ => self.odd(),
            }
        }
    }

    /// Any top-level field of any kind's GET shape (the filter columns and lists included), with a value.
    fn field(&mut self) -> (String, Value) {
        const PLAIN: [&str; 13] = [
            "slug",
            "visibility",
            "status",
            "type",
            "priority",
            "scope",
            "namespace",
            "name",
            "version",
            "mode",
            "title",
            "updated_at",
            "seq",
        ];
        const REFERENCES: [&str; 4] = ["repo", "for_issue", "produced_by", "owner"];
        match self.rng.gen_range(0..10) {
            0..=4 => {
                let key = *self.pick(&PLAIN);
                let value = if self.chance(0.9) { self.word() } else { self.odd() };
                (key.to_owned(), value)
            }
            5..=6 => {
                let key = *self.pick(&REFERENCES);
                let value = if key == "owner" && self.chance(0.7) {
                    json!({"actor_kind": "human", "actor_id": self.word()})
                } else {
                    self.reference()
                };
                (key.to_owned(), value)
            }
            _ => {
                let (key, ref_kind) = *self.pick(&LISTS);
                (key.to_owned(), self.list(ref_kind))
            }
        }
    }

    fn object(&mut self, kind: EntityKind, id: &str) -> Value {
        let mut object = Map::new();
        object.insert("kind".into(), json!(kind.as_str()));
        object.insert("id".into(), json!(id));
        for _ in 0..self.rng.gen_range(0..8) {
            let (key, value) = self.field();
            object.insert(key, value);
        }
        if self.chance(0.6) {
            for (key, _) in LISTS {
                object.insert(key.into(), json!([]));
            }
        }
        Value::Object(object)
    }

    fn changes(&mut self) -> Value {
        let mut changes = Map::new();
        if self.chance(0.6) {
            changes.insert("status".into(), self.word());
        }
        for _ in 0..self.rng.gen_range(0..4) {
            let (key, value) = self.field();
            changes.insert(key, value);
        }
        Value::Object(changes)
    }

    /// A `linked` payload: mostly a kind the owner links to, sometimes any kind, an unknown one or none.
    fn link(&mut self, owner: EntityKind) -> Value {
        let linkable: &[&str] = match owner {
            EntityKind::Issue => &["ContextPacket", "ConstraintSnapshot", "DoctrineRef"],
            EntityKind::Run => &["ContextPacket", "DoctrineRef"],
            EntityKind::ContextPacket => &["DoctrineRef"],
            _ => &["Issue"],
        };
        let linked_kind = match self.rng.gen_range(0..20) {
            0..=15 => json!(*self.pick(linkable)),
            16 => json!(self.pick(&EntityKind::ALL).as_str()),
            17 => json!("Nonsense"),
            18 => json!(3),
            _ => Value::Null,
        };
        let linked_id = match linked_kind.as_str() {
            Some(kind) if self.chance(0.95) => json!(self.id_of(kind)),
            _ if self.chance(0.5) => json!(17),
            _ => Value::Null,
        };
        let mut payload = json!({"linked_kind": linked_kind, "linked_id": linked_id});
        let payload_map = payload.as_object_mut().expect("an object");
        payload_map.retain(|_, value| !value.is_null());
        payload
    }

    fn event(&mut self) -> RecordedEvent {
        let kind = if self.chance(0.05) { EntityKind::Task } else { *self.pick(&domain::cwom::KINDS) };
        let id = self.id_of(kind.as_str());
        let (action, payload) = match self.rng.gen_range(0..100) {
            0..=24 => {
                let payload = match self.rng.gen_range(0..20) {
                    0 => json!({}),
                    1 => json!({"object": self.odd()}),
                    2 => json!({"object": [self.object(kind, &id)]}),
                    _ => json!({"object": self.object(kind, &id)}),
                };
                (Action::Created, payload)
            }
            25..=54 => {
                let action = if self.chance(0.5) { Action::Updated } else { Action::StatusChanged };
                let payload = match self.rng.gen_range(0..20) {
                    0 => json!({}),
                    1 => json!({"changes": self.odd()}),
                    2 => json!({"changes": [self.changes()]}),
                    _ => json!({"changes": self.changes()}),
                };
                (action, payload)
            }
            55..=94 => (Action::Linked, self.link(kind)),
            95..=97 => (Action::Unlinked, self.link(kind)),
            _ => (Action::Deleted, json!({})),
        };
        self.position += 1;
        let stream = StreamId::new(kind, id);
        let version = self.versions.entry(stream.clone()).or_default();
        *version += 1;
        let mut event = recorded(self.position, stream, action, payload);
        event.stream_version = *version;
        event
    }
}

fn recorded(position: i64, stream: StreamId, action: Action, payload: Value) -> RecordedEvent {
    let epoch: DateTime<Utc> = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single().expect("a valid time");
    RecordedEvent {
        position,
        event_id: format!("event-{position}"),
        ts: epoch + Duration::milliseconds(position * 1_234),
        stream,
        stream_version: 1,
        event_type: "Generated".into(),
        schema_version: 1,
        payload,
        action,
        actor_kind: ActorKind::System,
        actor_id: "generator".into(),
        before: None,
        after: None,
        note: None,
        trace_id: None,
        correlation_id: None,
        causation_id: None,
        idempotency_key: None,
        unique_keys: Vec::new(),
        prev_hash: Vec::new(),
        hash: Vec::new(),
    }
}

/// Splits `events` into consecutive batches of random sizes up to `max`.
fn chunks<'e>(rng: &mut StdRng, events: &'e [RecordedEvent], max: usize) -> Vec<&'e [RecordedEvent]> {
    let mut chunks = Vec::new();
    let mut rest = events;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rng.gen_range(1..=max).min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// A fresh schema holding the cwom tables.
async fn create_schema(pool: &PgPool, schema: &str) {
    sqlx::raw_sql(&format!("drop schema if exists {schema} cascade; create schema {schema}"))
        .execute(pool)
        .await
        .expect("create the schema");
    let mut tx = pool.begin().await.expect("begin");
    use_schema(&mut tx, schema).await;
    sqlx::raw_sql(CwomProjection.schema()).execute(&mut *tx).await.expect("create the cwom tables");
    tx.commit().await.expect("commit");
}

async fn use_schema(conn: &mut sqlx::PgConnection, schema: &str) {
    sqlx::query(&format!("set local search_path to {schema}, public")).execute(conn).await.expect("search_path");
}

/// The reference: `apply`, one event at a time (one transaction per batch, as a projector would).
async fn fold_one_by_one(pool: &PgPool, schema: &str, batches: &[&[RecordedEvent]]) {
    create_schema(pool, schema).await;
    for batch in batches {
        let mut tx = pool.begin().await.expect("begin");
        use_schema(&mut tx, schema).await;
        for event in *batch {
            CwomProjection.apply(&mut tx, event).await.expect("apply");
        }
        tx.commit().await.expect("commit");
    }
}

/// `apply_batch`, one call per batch.
async fn fold_in_batches(pool: &PgPool, schema: &str, batches: &[&[RecordedEvent]]) {
    create_schema(pool, schema).await;
    for batch in batches {
        let mut tx = pool.begin().await.expect("begin");
        use_schema(&mut tx, schema).await;
        CwomProjection.apply_batch(&mut tx, batch).await.expect("apply_batch");
        tx.commit().await.expect("commit");
    }
}

/// What a rebuild does: the in-memory fold (`Projection::in_memory_fold`) fed the batches, then written once.
async fn fold_in_memory(pool: &PgPool, schema: &str, batches: &[&[RecordedEvent]]) {
    create_schema(pool, schema).await;
    let mut fold = CwomProjection.in_memory_fold().expect("cwom folds in memory");
    for batch in batches {
        fold.fold(batch.to_vec());
    }
    let tables = projections::rebuild::ShadowTables::new(pool.clone(), schema);
    fold.write(&tables).await.expect("write the folded rows");
}

/// Every row of every cwom table in `schema`, as text, in a fixed order.
async fn rows(pool: &PgPool, schema: &str) -> Vec<(&'static str, Vec<String>)> {
    let mut tables = Vec::new();
    for table in TABLES {
        let rows: Vec<String> = sqlx::query_scalar(&format!("select t::text from {schema}.{table} t order by t::text"))
            .fetch_all(pool)
            .await
            .expect("read a table");
        tables.push((table, rows));
    }
    tables
}

/// The first difference between two schemas' tables, if any.
async fn difference(pool: &PgPool, expected: &str, actual: &str) -> Option<String> {
    let (expected, actual) = (rows(pool, expected).await, rows(pool, actual).await);
    for ((table, expected), (_, actual)) in expected.iter().zip(&actual) {
        if expected != actual {
            let at = expected.iter().zip(actual).position(|(one, other)| one != other);
            let at = at.unwrap_or(expected.len().min(actual.len()));
            return Some(format!(
                "{table}: {} rows one by one, {} the other way; first difference at row {at}:\n  one by one: {:?}\n  other way: {:?}",
                expected.len(),
                actual.len(),
                expected.get(at),
                actual.get(at)
            ));
        }
    }
    None
}

/// Which of the cases the batches must cover happened in a run (counted over the batches of all sequences).
#[derive(Debug, Default)]
struct Coverage {
    kinds_created: std::collections::BTreeSet<&'static str>,
    duplicate_creates: usize,
    changes_of_one_object: usize,
    links_of_one_owner: usize,
    duplicate_links: usize,
    links_to_unknown_kinds: usize,
    creates_without_object: usize,
    changes_not_an_object: usize,
    /// Batches whose objects all begin in them (folded in Rust) and batches that change objects from before.
    batches_of_new_objects_only: usize,
    batches_changing_existing_objects: usize,
    rows_compared: usize,
}

impl Coverage {
    fn count(&mut self, batch: &[RecordedEvent]) {
        use std::collections::HashMap;
        let mut creates: HashMap<&StreamId, usize> = HashMap::new();
        let mut changes: HashMap<&StreamId, usize> = HashMap::new();
        let mut links: HashMap<&StreamId, usize> = HashMap::new();
        let mut pairs: HashMap<(&StreamId, String), usize> = HashMap::new();
        let mut beginning: HashMap<&StreamId, bool> = HashMap::new();
        for event in batch {
            let stream = &event.stream;
            *beginning.entry(stream).or_default() |= event.stream_version == 1;
            match event.action {
                Action::Created => {
                    if event.payload.get("object").is_some_and(Value::is_object) && stream.kind != EntityKind::Task {
                        self.kinds_created.insert(stream.kind.as_str());
                        *creates.entry(stream).or_default() += 1;
                    } else {
                        self.creates_without_object += 1;
                    }
                }
                Action::Updated | Action::StatusChanged => {
                    if event.payload.get("changes").is_some_and(Value::is_object) {
                        *changes.entry(stream).or_default() += 1;
                    } else {
                        self.changes_not_an_object += 1;
                    }
                }
                Action::Linked => {
                    let linked_kind = event.payload.get("linked_kind").and_then(Value::as_str);
                    if linked_kind.and_then(EntityKind::parse).is_none() {
                        self.links_to_unknown_kinds += 1;
                    }
                    *links.entry(stream).or_default() += 1;
                    *pairs.entry((stream, event.payload.to_string())).or_default() += 1;
                }
                Action::Unlinked | Action::Deleted => {}
            }
        }
        fn repeated<K>(counts: HashMap<K, usize>) -> usize {
            counts.values().filter(|&&n| n > 1).count()
        }
        self.duplicate_creates += repeated(creates);
        self.changes_of_one_object += repeated(changes);
        self.links_of_one_owner += repeated(links);
        self.duplicate_links += repeated(pairs);
        let cwom = |stream: &&StreamId| stream.kind != EntityKind::Task;
        if beginning.iter().filter(|(stream, _)| cwom(stream)).all(|(_, &begins)| begins) {
            self.batches_of_new_objects_only += 1;
        } else {
            self.batches_changing_existing_objects += 1;
        }
    }

    fn check(&self) {
        assert_eq!(self.kinds_created.len(), domain::cwom::KINDS.len(), "{self:?}");
        for (what, n) in [
            ("duplicate creates in a batch", self.duplicate_creates),
            ("several changes of one object in a batch", self.changes_of_one_object),
            ("several links of one owner in a batch", self.links_of_one_owner),
            ("duplicate links in a batch", self.duplicate_links),
            ("links to unknown kinds", self.links_to_unknown_kinds),
            ("creates without an object", self.creates_without_object),
            ("changes that are not an object", self.changes_not_an_object),
            ("batches of new objects only", self.batches_of_new_objects_only),
            ("batches changing objects from before", self.batches_changing_existing_objects),
        ] {
            assert!(n >= 20, "the sequences have too few {what}: {self:?}");
        }
        assert!(self.rows_compared >= 1_500, "too few rows compared: {self:?}");
    }
}

/// And the in-memory fold of rebuilds, fed the same batches, gives the same rows too.
#[tokio::test]
async fn apply_batch_equals_applying_the_events_one_by_one() {
    let (pool, _url) = fresh_database().await;
    let mut coverage = Coverage::default();
    for seed in 0..40_u64 {
        let mut generator = Generator::new(seed);
        let n_events = generator.rng.gen_range(50..400);
        let events: Vec<RecordedEvent> = (0..n_events).map(|_| generator.event()).collect();
        let max = *generator.pick(&[1, 2, 5, 20, 100, 1_000]);
        let batches = chunks(&mut generator.rng, &events, max);
        for batch in &batches {
            coverage.count(batch);
        }
        fold_one_by_one(&pool, "cwom_one_by_one", &[&events]).await;
        fold_in_batches(&pool, "cwom_in_batches", &batches).await;
        if let Some(difference) = difference(&pool, "cwom_one_by_one", "cwom_in_batches").await {
            panic!("seed {seed} ({n_events} events, batches of up to {max}): {difference}");
        }
        fold_in_memory(&pool, "cwom_in_memory", &batches).await;
        if let Some(difference) = difference(&pool, "cwom_one_by_one", "cwom_in_memory").await {
            panic!("seed {seed} ({n_events} events, folded in memory in batches of up to {max}): {difference}");
        }
        coverage.rows_compared +=
            rows(&pool, "cwom_in_batches").await.iter().map(|(_, rows)| rows.len()).sum::<usize>();
    }
    coverage.check();
}

/// The comparison above can fail: the same events folded one by one but in another order within each batch give
/// other rows for most sequences, so a batch fold that lost an object's order would be caught.
#[tokio::test]
async fn the_comparison_notices_events_applied_out_of_order() {
    let (pool, _url) = fresh_database().await;
    let mut noticed = 0;
    for seed in 100..110_u64 {
        let mut generator = Generator::new(seed);
        let events: Vec<RecordedEvent> = (0..200).map(|_| generator.event()).collect();
        let batches = chunks(&mut generator.rng, &events, 50);
        let reversed: Vec<Vec<RecordedEvent>> =
            batches.iter().map(|batch| batch.iter().rev().cloned().collect()).collect();
        let reversed: Vec<&[RecordedEvent]> = reversed.iter().map(Vec::as_slice).collect();
        fold_one_by_one(&pool, "cwom_in_order", &batches).await;
        fold_one_by_one(&pool, "cwom_reversed", &reversed).await;
        if difference(&pool, "cwom_in_order", "cwom_reversed").await.is_some() {
            noticed += 1;
        }
    }
    assert!(noticed >= 9, "only {noticed} of 10 reorderings were noticed");
}
