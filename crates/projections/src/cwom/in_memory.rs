//! The `cwom` read model folded from the whole log in memory and written with `COPY`, for rebuilds
//! ([`Projection::in_memory_fold`](crate::Projection::in_memory_fold)): the rows `apply_batch.sql` gives from
//! empty tables, without a statement per batch.
//!
//! Why the rows are the same (read beside the header of `apply_batch.sql`): from empty tables, an object gets a
//! row at its first `created` event (the document is `payload.object`, `created_position` that event's position)
//! and never before; a later `created` changes nothing; an `updated` or `status_changed` merges `payload.changes`
//! into the document top-level (`||`); a `linked` whose pair has a list field appends `{"kind", "id"}` to it
//! unless an element of the list is an object with that `kind` and `id` (what `@>` finds), the field becoming an
//! array first if it is not one; and an event on an object without a row changes nothing. The filter columns are
//! taken from the final document: by Rust where the value is a string or SQL null (what `->>` gives then is
//! plain), else by PostgreSQL with the same expressions (`insert_new_objects.sql`). A link-table row is the first
//! link of its pair, with that event's ts and position, whether or not either object exists. Which events do
//! something is decided by the same [`op_of`]. `tests/cwom_batch.rs` compares this with `apply`, event by event.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use domain::event::EntityKind;
use serde_json::{json, Map, Value};
use sqlx::postgres::PgCopyIn;
use sqlx::PgConnection;
use store::sql::{Param, Statement};
use store::RecordedEvent;

use super::{op_of, Op};
use crate::rebuild::{InMemoryFold, ShadowTables};

/// How many bytes of `COPY` data are sent at a time.
const COPY_CHUNK: usize = 1 << 20;

/// The objects and links folded so far.
#[derive(Default)]
pub(crate) struct CwomInMemory {
    objects: HashMap<(EntityKind, String), Object>,
    links: HashMap<Link, (DateTime<Utc>, i64)>,
}

/// An object with a row: its document and the position of its `created` event.
struct Object {
    document: Document,
    created_position: i64,
}

/// An object's document, kept compact while no event has changed it since its `created` (most objects of a
/// log): its JSON text and filter columns, made once when it is folded. A tree of `Value`s costs several times
/// the memory of its text: with every document a tree, a million events peaked at 3.2 GB, and a quarter of the
/// fold's CPU went to the kernel zeroing fresh pages for it (1.8 GB and 1 s of system time instead of 5–8 s).
enum Document {
    /// As created: the JSON text written to the `document` column, and the filter columns
    /// ([`text_at`] of each path of its table, `None` if Rust cannot tell one of them exactly).
    Created { json: Box<str>, filters: Option<Box<[Option<Box<str>>]>> },
    /// Changed since: the tree the changes are merged into.
    Changed(Map<String, Value>),
}

impl Document {
    fn created(kind: EntityKind, document: &Map<String, Value>) -> Document {
        let filters =
            filter_texts(kind, document).map(|texts| texts.into_iter().map(|text| text.map(Box::from)).collect());
        let json = serde_json::to_string(document).expect("a JSON map serialises").into_boxed_str();
        Document::Created { json, filters }
    }

    /// The tree, to change it.
    fn tree(&mut self) -> &mut Map<String, Value> {
        if let Document::Created { json, .. } = self {
            *self = Document::Changed(serde_json::from_str(json).expect("the text was serialised from a JSON map"));
        }
        let Document::Changed(tree) = self else { unreachable!("made a tree above") };
        tree
    }

    /// The text of the `document` column.
    fn json(&self) -> Cow<'_, str> {
        match self {
            Document::Created { json, .. } => Cow::Borrowed(json),
            Document::Changed(tree) => Cow::Owned(serde_json::to_string(tree).expect("a JSON map serialises")),
        }
    }

    /// The filter columns of `kind`'s table, as [`filter_texts`] gives them.
    fn filters(&self, kind: EntityKind) -> Option<Vec<Option<&str>>> {
        match self {
            Document::Created { filters, .. } => {
                filters.as_ref().map(|filters| filters.iter().map(Option::as_deref).collect())
            }
            Document::Changed(tree) => filter_texts(kind, tree),
        }
    }
}

/// A link-table row's key: the owner and the linked object.
#[derive(PartialEq, Eq, Hash)]
struct Link {
    owner_kind: EntityKind,
    owner_id: String,
    linked_kind: EntityKind,
    linked_id: String,
}

/// What an event does, owning what it needs of the event.
enum Step {
    Create,
    Update,
    Link { linked_kind: EntityKind, linked_id: String },
}

impl CwomInMemory {
    /// Folds one event into the objects and links so far (what [`InMemoryFold::fold`] does to each event).
    pub(super) fn fold_event(&mut self, event: &RecordedEvent) {
        let step = match op_of(event) {
            None => return,
            Some(Op::Create { .. }) => Step::Create,
            Some(Op::Update { .. }) => Step::Update,
            Some(Op::Link { linked_kind, linked_id, statement: _ }) => {
                Step::Link { linked_kind, linked_id: linked_id.to_owned() }
            }
        };
        let kind = event.stream.kind;
        let key = (kind, event.stream.id.clone());
        match step {
            Step::Create => {
                if let Entry::Vacant(vacant) = self.objects.entry(key) {
                    // `op_of` found an object there.
                    if let Some(Value::Object(document)) = event.payload.get("object") {
                        let document = Document::created(kind, document);
                        vacant.insert(Object { document, created_position: event.position });
                    }
                }
            }
            Step::Update => {
                if let Some(object) = self.objects.get_mut(&key) {
                    if let Some(Value::Object(changes)) = event.payload.get("changes") {
                        object.document.tree().extend(changes.clone());
                    }
                }
            }
            Step::Link { linked_kind, linked_id } => {
                if let (Some(list), Some(object)) =
                    (domain::cwom::link_list(kind, linked_kind), self.objects.get_mut(&key))
                {
                    append_ref(object.document.tree(), list, linked_kind, &linked_id);
                }
                let (owner_kind, owner_id) = key;
                self.links
                    .entry(Link { owner_kind, owner_id, linked_kind, linked_id })
                    .or_insert((event.ts, event.position));
            }
        }
    }

    /// The insert of every object and link folded (`insert_new_objects.sql`), or `None` when there are none.
    /// Only for objects that have no row yet: those whose streams begin in the batch folded.
    pub(super) fn insert_statement(self) -> Option<Statement<'static>> {
        if self.objects.is_empty() && self.links.is_empty() {
            return None;
        }
        let mut objects: Vec<_> = self.objects.into_iter().collect();
        objects.sort_unstable_by_key(|(_, object)| object.created_position);
        let mut links: Vec<_> = self.links.into_iter().collect();
        links.sort_unstable_by_key(|(_, (_, position))| *position);
        Some(insert_objects_and_links(objects.iter(), links.iter()))
    }
}

/// `insert_new_objects.sql` for `objects` and `links`, into tables that hold none of them: the filter columns taken
/// from each document by PostgreSQL.
fn insert_objects_and_links<'f>(
    objects: impl Iterator<Item = &'f ((EntityKind, String), Object)>,
    links: impl Iterator<Item = &'f (Link, (DateTime<Utc>, i64))>,
) -> Statement<'static> {
    let (mut kinds, mut ids, mut positions, mut documents) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((kind, id), object) in objects {
        kinds.push(kind.as_str());
        ids.push(id.clone());
        positions.push(object.created_position);
        documents.push(object.document.json().into_owned());
    }
    let (mut owner_kinds, mut owner_ids, mut linked_kinds, mut linked_ids) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut link_ts, mut link_positions) = (Vec::new(), Vec::new());
    for (link, (ts, position)) in links {
        owner_kinds.push(link.owner_kind.as_str());
        owner_ids.push(link.owner_id.clone());
        linked_kinds.push(link.linked_kind.as_str());
        linked_ids.push(link.linked_id.clone());
        link_ts.push(*ts);
        link_positions.push(*position);
    }
    Statement::prepared(
        "insert CWOM objects and links that have no rows yet",
        include_str!("../../../../projections/cwom/insert_new_objects.sql"),
        vec![
            Param::Texts(kinds),
            Param::OwnedTexts(ids),
            Param::Int8s(positions),
            Param::OwnedTexts(documents),
            Param::Texts(owner_kinds),
            Param::OwnedTexts(owner_ids),
            Param::Texts(linked_kinds),
            Param::OwnedTexts(linked_ids),
            Param::Timestamps(link_ts),
            Param::Int8s(link_positions),
        ],
    )
}

#[async_trait]
impl InMemoryFold for CwomInMemory {
    fn fold(&mut self, events: Vec<RecordedEvent>) {
        for event in &events {
            self.fold_event(event);
        }
    }

    async fn write(self: Box<Self>, tables: &ShadowTables) -> anyhow::Result<()> {
        use futures::{StreamExt as _, TryStreamExt as _};
        let CwomInMemory { objects, links } = *self;
        let mut objects: Vec<_> = objects.into_iter().collect();
        objects.sort_unstable_by_key(|(_, object)| object.created_position);
        let mut links: Vec<_> = links.into_iter().collect();
        links.sort_unstable_by_key(|(_, (_, position))| *position);
        // A table at a time would leave PostgreSQL, which parses every document, on one core; the tables are
        // independent, so they are written at once, each in a transaction of its own, the largest first.
        let mut writes: Vec<(usize, Write<'_>)> = Vec::new();
        for (kind, table, columns) in OBJECT_TABLES {
            let rows = objects.iter().filter(|((object_kind, _), _)| *object_kind == kind).count();
            writes.push((rows, Write::Objects { kind, table, columns, objects: &objects }));
        }
        let odd = objects.iter().filter(|((kind, _), object)| object.document.filters(*kind).is_none()).count();
        writes.push((odd, Write::OddObjects { objects: &objects }));
        for (table, owner_column, linked_column, owner_kind, linked_kind) in LINK_TABLES {
            let rows = links
                .iter()
                .filter(|(link, _)| link.owner_kind == owner_kind && link.linked_kind == linked_kind)
                .count();
            writes.push((
                rows,
                Write::Links { table, owner_column, linked_column, owner_kind, linked_kind, links: &links },
            ));
        }
        writes.retain(|(rows, _)| *rows > 0);
        writes.sort_by_key(|(rows, _)| std::cmp::Reverse(*rows));
        // Boxed before they go into the stream: a closure mapping `Write<'_>`s would not be `Send` for every
        // lifetime, which `async_trait` asks of this future.
        let writes: Vec<futures::future::BoxFuture<'_, anyhow::Result<()>>> =
            writes.into_iter().map(|(_, write)| Box::pin(write.commit(tables)) as _).collect();
        futures::stream::iter(writes).buffer_unordered(WRITERS).try_collect::<Vec<()>>().await?;
        tracing::debug!("cwom: {} objects written, {odd} of them through insert_new_objects.sql", objects.len());
        // Freeing a million documents and keys takes most of a second; the rebuild goes on to its indexes meanwhile.
        tokio::task::spawn_blocking(move || drop((objects, links)));
        Ok(())
    }
}

/// How many tables are written at once, each on a connection of its own.
const WRITERS: usize = 3;

/// How many objects whose filter columns only PostgreSQL can tell one insert writes.
const ODD_OBJECTS_PER_STATEMENT: usize = 10_000;

/// One table's rows (or the objects whose filter columns only PostgreSQL can tell), written by one `COPY`.
enum Write<'f> {
    /// The objects of `kind` whose filter columns Rust can tell exactly, straight into the kind's table.
    Objects {
        kind: EntityKind,
        table: &'static str,
        columns: FilterColumns,
        objects: &'f [((EntityKind, String), Object)],
    },
    /// The rest of the objects, of any kind, through PostgreSQL's own expressions (`insert_new_objects.sql`).
    OddObjects { objects: &'f [((EntityKind, String), Object)] },
    /// The links of one pair of kinds.
    Links {
        table: &'static str,
        owner_column: &'static str,
        linked_column: &'static str,
        owner_kind: EntityKind,
        linked_kind: EntityKind,
        links: &'f [(Link, (DateTime<Utc>, i64))],
    },
}

impl Write<'_> {
    /// Writes the rows in a transaction of their own and commits it.
    async fn commit(self, tables: &ShadowTables) -> anyhow::Result<()> {
        let mut tx = tables.begin().await?;
        self.run(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn run(self, conn: &mut PgConnection) -> anyhow::Result<()> {
        match self {
            Write::Objects { kind, table, columns, objects } => {
                let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
                let statement =
                    format!("copy {table} (id, {}, created_position, document) from stdin", names.join(", "));
                let mut copy = Copy::begin(conn, &statement).await?;
                for ((object_kind, id), object) in objects {
                    if *object_kind != kind {
                        continue;
                    }
                    let Some(texts) = object.document.filters(kind) else { continue };
                    let created_position = object.created_position.to_string();
                    let document = object.document.json();
                    let mut fields = Vec::with_capacity(texts.len() + 3);
                    fields.push(Some(id.as_str()));
                    fields.extend(texts);
                    fields.push(Some(created_position.as_str()));
                    fields.push(Some(&document));
                    copy.row(&fields);
                    copy.send_if_full().await?;
                }
                copy.finish().await?;
            }
            Write::OddObjects { objects } => {
                // Few objects (a filter value that is not a string), so plain inserts, a chunk at a time.
                let odd: Vec<_> =
                    objects.iter().filter(|((kind, _), object)| object.document.filters(*kind).is_none()).collect();
                for chunk in odd.chunks(ODD_OBJECTS_PER_STATEMENT) {
                    insert_objects_and_links(chunk.iter().copied(), std::iter::empty()).execute(&mut *conn).await?;
                }
            }
            Write::Links { table, owner_column, linked_column, owner_kind, linked_kind, links } => {
                let statement =
                    format!("copy {table} ({owner_column}, {linked_column}, created_at, created_position) from stdin");
                let mut copy = Copy::begin(conn, &statement).await?;
                for (link, (ts, position)) in links {
                    if link.owner_kind == owner_kind && link.linked_kind == linked_kind {
                        let ts = ts.to_rfc3339_opts(SecondsFormat::Micros, true);
                        let position = position.to_string();
                        copy.row(&[Some(&link.owner_id), Some(&link.linked_id), Some(&ts), Some(&position)]);
                        copy.send_if_full().await?;
                    }
                }
                copy.finish().await?;
            }
        }
        Ok(())
    }
}

/// The object tables: kind, name, and each filter column with the path in the document it is taken from
/// (`document -> a ->> b` in `apply_batch.sql`).
type FilterColumns = &'static [(&'static str, &'static [&'static str])];
const OBJECT_TABLES: [(EntityKind, &str, FilterColumns); 7] = [
    (EntityKind::Repo, "cwom_repos", &[("slug", &["slug"]), ("visibility", &["visibility"])]),
    (
        EntityKind::Issue,
        "cwom_issues",
        &[
            ("repo_id", &["repo", "id"]),
            ("status", &["status"]),
            ("issue_type", &["type"]),
            ("priority", &["priority"]),
        ],
    ),
    (EntityKind::ContextPacket, "cwom_context_packets", &[("for_issue_id", &["for_issue", "id"])]),
    (
        EntityKind::ConstraintSnapshot,
        "cwom_constraint_snapshots",
        &[("scope", &["scope"]), ("owner_id", &["owner", "actor_id"])],
    ),
    (
        EntityKind::DoctrineRef,
        "cwom_doctrine_refs",
        &[
            ("namespace", &["namespace"]),
            ("name", &["name"]),
            ("version", &["version"]),
            ("doctrine_type", &["type"]),
            ("priority", &["priority"]),
        ],
    ),
    (
        EntityKind::Run,
        "cwom_runs",
        &[
            ("for_issue_id", &["for_issue", "id"]),
            ("repo_id", &["repo", "id"]),
            ("status", &["status"]),
            ("mode", &["mode"]),
        ],
    ),
    (
        EntityKind::Artifact,
        "cwom_artifacts",
        &[
            ("produced_by_id", &["produced_by", "id"]),
            ("for_issue_id", &["for_issue", "id"]),
            ("artifact_type", &["type"]),
        ],
    ),
];

/// [`text_at`] of each filter column of `kind`'s table in `document`; `None` if Rust cannot tell one exactly.
fn filter_texts(kind: EntityKind, document: &Map<String, Value>) -> Option<Vec<Option<&str>>> {
    let columns =
        OBJECT_TABLES.iter().find(|(table_kind, _, _)| *table_kind == kind).map_or(&[][..], |(_, _, columns)| columns);
    columns.iter().map(|(_, path)| text_at(document, path)).collect()
}

/// `document -> a -> ... ->> last` as PostgreSQL gives it, where Rust can tell it exactly: `Some(None)` for SQL
/// null (a missing key, a JSON null, or a step into something that is not an object), `Some(Some(text))` for a
/// string; `None` for a number, boolean, object or array, whose text only PostgreSQL gives exactly.
fn text_at<'d>(document: &'d Map<String, Value>, path: &[&str]) -> Option<Option<&'d str>> {
    let (last, steps) = path.split_last()?;
    let mut object = document;
    for step in steps {
        match object.get(*step) {
            Some(Value::Object(inner)) => object = inner,
            _ => return Some(None),
        }
    }
    match object.get(*last) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(text)) => Some(Some(text)),
        Some(_) => None,
    }
}

/// The six link tables: name, owner column, linked column, and the pair of kinds (as `link_*.sql` has them).
const LINK_TABLES: [(&str, &str, &str, EntityKind, EntityKind); 6] = [
    ("cwom_issue_context_packets", "issue_id", "context_packet_id", EntityKind::Issue, EntityKind::ContextPacket),
    ("cwom_issue_doctrine_refs", "issue_id", "doctrine_ref_id", EntityKind::Issue, EntityKind::DoctrineRef),
    (
        "cwom_issue_constraint_snapshots",
        "issue_id",
        "constraint_snapshot_id",
        EntityKind::Issue,
        EntityKind::ConstraintSnapshot,
    ),
    ("cwom_run_context_packets", "run_id", "context_packet_id", EntityKind::Run, EntityKind::ContextPacket),
    ("cwom_run_doctrine_refs", "run_id", "doctrine_ref_id", EntityKind::Run, EntityKind::DoctrineRef),
    (
        "cwom_context_packet_doctrine_refs",
        "context_packet_id",
        "doctrine_ref_id",
        EntityKind::ContextPacket,
        EntityKind::DoctrineRef,
    ),
];

/// Appends `{"kind", "id"}` to the list `field` unless an element of it is an object with that kind and id; a
/// field that is not an array becomes one first. What `apply_batch.sql` does with `@>` and `jsonb_set`.
fn append_ref(document: &mut Map<String, Value>, field: &str, kind: EntityKind, id: &str) {
    let is_the_ref = |item: &Value| {
        item.get("kind").and_then(Value::as_str) == Some(kind.as_str())
            && item.get("id").and_then(Value::as_str) == Some(id)
    };
    let the_ref = json!({ "kind": kind.as_str(), "id": id });
    match document.get_mut(field) {
        Some(Value::Array(items)) if items.iter().any(is_the_ref) => {}
        Some(Value::Array(items)) => items.push(the_ref),
        _ => {
            document.insert(field.to_owned(), json!([the_ref]));
        }
    }
}

/// A `COPY ... from stdin` in text format, its rows sent a chunk at a time.
struct Copy<'c> {
    copy: PgCopyIn<&'c mut PgConnection>,
    buffer: Vec<u8>,
}

impl<'c> Copy<'c> {
    async fn begin(conn: &'c mut PgConnection, statement: &str) -> anyhow::Result<Copy<'c>> {
        let copy = conn.copy_in_raw(statement).await?;
        Ok(Copy { copy, buffer: Vec::with_capacity(COPY_CHUNK + 4096) })
    }

    /// One row; `None` is SQL null.
    fn row(&mut self, fields: &[Option<&str>]) {
        for (field_idx, field) in fields.iter().enumerate() {
            if field_idx > 0 {
                self.buffer.push(b'\t');
            }
            match field {
                Some(field) => escape_into(&mut self.buffer, field),
                None => self.buffer.extend_from_slice(b"\\N"),
            }
        }
        self.buffer.push(b'\n');
    }

    async fn send_if_full(&mut self) -> anyhow::Result<()> {
        if self.buffer.len() >= COPY_CHUNK {
            self.copy.send(self.buffer.as_slice()).await?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Sends the rest; a failed `COPY` fails its transaction, which is then rolled back.
    async fn finish(mut self) -> anyhow::Result<u64> {
        self.copy.send(self.buffer.as_slice()).await?;
        Ok(self.copy.finish().await?)
    }
}

/// A field of `COPY`'s text format: backslash, tab, newline and carriage return escaped.
fn escape_into(buffer: &mut Vec<u8>, field: &str) {
    for &byte in field.as_bytes() {
        match byte {
            b'\\' => buffer.extend_from_slice(b"\\\\"),
            b'\t' => buffer.extend_from_slice(b"\\t"),
            b'\n' => buffer.extend_from_slice(b"\\n"),
            b'\r' => buffer.extend_from_slice(b"\\r"),
            _ => buffer.push(byte),
        }
    }
}
