//! The `cwom` read model: the seven core CWOM kinds (one table each, the GET shape in `document`) and the six
//! link tables, folded from every CWOM stream by the generic event contract, and the queries `/cwom` reads.
//!
//! The contract (also in `projections/README.md` and [`domain::cwom`]): on a Repo, Issue, ContextPacket,
//! ConstraintSnapshot, DoctrineRef, Run or Artifact stream, an event whose `action` is
//! - `created` inserts `payload.object` (the full GET shape), whatever the event type;
//! - `updated` or `status_changed` merges `payload.changes` (changed top-level fields) into the document;
//! - `linked` (Issue, Run, ContextPacket streams) records `payload.linked_kind` / `payload.linked_id` in its link
//!   table and appends `{"kind", "id"}` to the owner's list field where the GET shape has one.
//!
//! Anything else, and any event that does not fit (a payload without an object, a link to an unknown kind), is
//! ignored, so no writer can stop the projection. Apply reads only the event: no clock, no randomness.
//!
//! `apply` runs one single-row statement per event and is the reference; `apply_batch` (what the projector, the
//! inline appends and rebuilds call) folds a whole batch in one statement, `apply_batch.sql`, to the same rows
//! (`tests/cwom_batch.rs` compares the two on random event sequences). Rebuilds fold the whole log in memory
//! instead and write the tables once ([`in_memory`]), to the same rows.

mod in_memory;

use std::collections::{HashMap, HashSet};

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::event::{Action, EntityKind};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use store::sql::{Param, Statement};
use store::RecordedEvent;

use crate::rebuild::InMemoryFold;
use crate::Projection;

/// Folds CWOM streams into the `cwom_*` tables.
pub struct CwomProjection;

impl CwomProjection {
    pub const NAME: &'static str = "cwom";
    pub const VERSION: i32 = 1;
}

/// The longest batch (in events that do something) `apply_batch` runs as a prepared statement, whose plan PostgreSQL
/// caches and may make generic, i.e. made without knowing the arrays' lengths. Such a plan may join by nested
/// loops, harmless for the few events of an append (applied inline) but not for thousands (a catch-up or a
/// rebuild), so longer batches go unnamed and are planned for their own arrays every time.
const PREPARED_BATCH_LIMIT: usize = 64;

/// The statements of one object table.
struct Statements {
    insert: &'static str,
    update: &'static str,
    select: &'static str,
}

macro_rules! statements {
    ($key:literal) => {
        Statements {
            insert: include_str!(concat!("../../../projections/cwom/insert_", $key, ".sql")),
            update: include_str!(concat!("../../../projections/cwom/update_", $key, ".sql")),
            select: include_str!(concat!("../../../projections/cwom/select_", $key, ".sql")),
        }
    };
}

fn statements(kind: EntityKind) -> Option<Statements> {
    Some(match kind {
        EntityKind::Repo => statements!("repo"),
        EntityKind::Issue => statements!("issue"),
        EntityKind::ContextPacket => statements!("context_packet"),
        EntityKind::ConstraintSnapshot => statements!("constraint_snapshot"),
        EntityKind::DoctrineRef => statements!("doctrine_ref"),
        EntityKind::Run => statements!("run"),
        EntityKind::Artifact => statements!("artifact"),
        EntityKind::Task => return None,
    })
}

/// The statement recording a link from `owner` to `linked` (the six link tables).
fn link_statement(owner: EntityKind, linked: EntityKind) -> Option<&'static str> {
    use EntityKind::{ConstraintSnapshot, ContextPacket, DoctrineRef, Issue, Run};
    Some(match (owner, linked) {
        (Issue, ContextPacket) => {
            include_str!("../../../projections/cwom/link_issue_context_packet.sql")
        }
        (Issue, ConstraintSnapshot) => {
            include_str!("../../../projections/cwom/link_issue_constraint_snapshot.sql")
        }
        (Issue, DoctrineRef) => include_str!("../../../projections/cwom/link_issue_doctrine_ref.sql"),
        (ContextPacket, DoctrineRef) => {
            include_str!("../../../projections/cwom/link_context_packet_doctrine_ref.sql")
        }
        (Run, ContextPacket) => include_str!("../../../projections/cwom/link_run_context_packet.sql"),
        (Run, DoctrineRef) => include_str!("../../../projections/cwom/link_run_doctrine_ref.sql"),
        _ => return None,
    })
}

#[async_trait]
impl Projection for CwomProjection {
    fn name(&self) -> &'static str {
        CwomProjection::NAME
    }

    fn version(&self) -> i32 {
        CwomProjection::VERSION
    }

    fn schema(&self) -> &'static str {
        include_str!("../../../projections/cwom/schema.sql")
    }

    /// The seven CWOM kinds: no other stream changes it.
    fn entity_kinds(&self) -> Option<&'static [EntityKind]> {
        Some(&domain::cwom::KINDS)
    }

    /// Its fold reads payloads only.
    fn folds_images(&self) -> bool {
        false
    }

    fn in_memory_fold(&self) -> Option<Box<dyn InMemoryFold>> {
        Some(Box::<in_memory::CwomInMemory>::default())
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> anyhow::Result<()> {
        let Some(statements) = statements(event.stream.kind) else {
            return Ok(());
        };
        let Some(op) = op_of(event) else {
            return Ok(());
        };
        let id = &event.stream.id;
        match op {
            Op::Create { object } => {
                sqlx::query(statements.insert)
                    .bind(id)
                    .bind(object)
                    .bind(event.position)
                    .execute(conn)
                    .await
                    .with_context(|| format!("insert {}", event.stream))?;
            }
            Op::Update { changes } => {
                sqlx::query(statements.update)
                    .bind(id)
                    .bind(changes)
                    .execute(conn)
                    .await
                    .with_context(|| format!("update {}", event.stream))?;
            }
            Op::Link { linked_kind, linked_id, statement } => {
                sqlx::query(statement)
                    .bind(id)
                    .bind(linked_id)
                    .bind(event.ts)
                    .bind(event.position)
                    .execute(conn)
                    .await
                    .with_context(|| format!("link {} to {linked_kind}:{linked_id}", event.stream))?;
            }
        }
        Ok(())
    }

    /// Set-based: the whole batch in one statement (`apply_batch.sql`, whose header argues why the rows equal
    /// applying the events one by one with [`CwomProjection::apply`]), however long the batch.
    ///
    /// A batch whose CWOM events all belong to objects whose streams begin in it (their event at stream version 1
    /// is in the batch), as an enqueue's do, has no row to start from: it is folded in Rust from nothing, as a
    /// rebuild folds ([`in_memory`]), and written by plain inserts (`insert_new_objects.sql`), a third cheaper than
    /// the recursive fold. A batch that also changes existing objects goes through the recursive fold whole: two
    /// statements would cost a worker's small batches (a new Run, a changed Issue) more than they save.
    fn batch_statements<'e>(&self, events: &'e [RecordedEvent]) -> anyhow::Result<Option<Vec<Statement<'e>>>> {
        let beginning: HashSet<(EntityKind, &str)> = events
            .iter()
            .filter(|event| event.stream_version == 1)
            .map(|event| (event.stream.kind, event.stream.id.as_str()))
            .collect();
        let only_new_objects = events
            .iter()
            .filter(|event| statements(event.stream.kind).is_some())
            .all(|event| beginning.contains(&(event.stream.kind, event.stream.id.as_str())));
        if only_new_objects {
            let mut new_objects = in_memory::CwomInMemory::default();
            for event in events {
                new_objects.fold_event(event);
            }
            return Ok(Some(new_objects.insert_statement().into_iter().collect()));
        }
        let mut batch = Batch::default();
        for event in events {
            if let Some(op) = op_of(event) {
                batch.push(event, op);
            }
        }
        if batch.positions.is_empty() {
            return Ok(Some(Vec::new()));
        }
        batch.mark_last_steps();
        let sql = include_str!("../../../projections/cwom/apply_batch.sql");
        let what = "apply a batch of CWOM events";
        let prepared = batch.keys.len() <= PREPARED_BATCH_LIMIT;
        let params = vec![
            Param::Int4s(batch.keys),
            Param::Int4s(batch.steps),
            Param::Bools(batch.lasts),
            Param::Texts(batch.kinds),
            Param::Texts(batch.ids),
            Param::Texts(batch.ops),
            Param::OptionalJsonbs(batch.values),
            Param::Int8s(batch.positions),
            Param::OptionalTimestamps(batch.ts),
            Param::OptionalTexts(batch.linked_kinds),
            Param::OptionalTexts(batch.linked_ids),
        ];
        Ok(Some(vec![if prepared {
            Statement::prepared(what, sql, params)
        } else {
            Statement::planned_each_time(what, sql, params)
        }]))
    }

    async fn apply_batch(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let position = |event: Option<&RecordedEvent>| event.map_or(0, |event| event.position);
        let (first, last) = (position(events.first()), position(events.last()));
        crate::execute_all(conn, self.batch_statements(events)?)
            .await
            .with_context(|| format!("apply the CWOM events at positions {first}..={last} as one batch"))
    }
}

/// What one event does to the read model under the contract; `None` for an event it ignores. Shared by
/// `apply` and `apply_batch`, so both ignore (and warn about) the same events.
enum Op<'e> {
    /// `created`: insert `payload.object` unless the object exists.
    Create { object: &'e Value },
    /// `updated` or `status_changed`: merge `payload.changes` into the document.
    Update { changes: &'e Value },
    /// `linked`, to a kind with a link table: `statement` records it one by one.
    Link { linked_kind: EntityKind, linked_id: &'e str, statement: &'static str },
}

fn op_of(event: &RecordedEvent) -> Option<Op<'_>> {
    let kind = event.stream.kind;
    statements(kind)?;
    match event.action {
        Action::Created => {
            let Some(object) = event.payload.get("object").filter(|object| object.is_object()) else {
                tracing::warn!(
                    position = event.position,
                    "a created event on {} has no payload.object; ignored",
                    event.stream
                );
                return None;
            };
            Some(Op::Create { object })
        }
        Action::Updated | Action::StatusChanged => {
            let Some(changes) = event.payload.get("changes").filter(|changes| changes.is_object()) else {
                tracing::warn!(
                    position = event.position,
                    "a change event on {} has no payload.changes; ignored",
                    event.stream
                );
                return None;
            };
            Some(Op::Update { changes })
        }
        Action::Linked => {
            let linked_kind = event.payload.get("linked_kind").and_then(Value::as_str).and_then(EntityKind::parse)?;
            let linked_id = event.payload.get("linked_id").and_then(Value::as_str)?;
            let statement = link_statement(kind, linked_kind)?;
            Some(Op::Link { linked_kind, linked_id, statement })
        }
        Action::Unlinked | Action::Deleted => None,
    }
}

/// The parallel arrays `apply_batch.sql` takes: one element per event that does something, in log order.
#[derive(Default)]
struct Batch<'e> {
    /// The object's number in this batch, its step count so far and the index of its latest event.
    objects: HashMap<(EntityKind, &'e str), (i32, i32, usize)>,
    keys: Vec<i32>,
    steps: Vec<i32>,
    lasts: Vec<bool>,
    kinds: Vec<&'static str>,
    ids: Vec<&'e str>,
    ops: Vec<&'static str>,
    values: Vec<Option<&'e Value>>,
    positions: Vec<i64>,
    ts: Vec<Option<DateTime<Utc>>>,
    linked_kinds: Vec<Option<&'static str>>,
    linked_ids: Vec<Option<&'e str>>,
}

impl<'e> Batch<'e> {
    fn push(&mut self, event: &'e RecordedEvent, op: Op<'e>) {
        let index = self.keys.len();
        let n_objects = self.objects.len() as i32;
        let (key, step, latest) =
            self.objects.entry((event.stream.kind, &event.stream.id)).or_insert((n_objects, 0, 0));
        *step += 1;
        *latest = index;
        self.keys.push(*key);
        self.steps.push(*step);
        self.lasts.push(false);
        self.kinds.push(event.stream.kind.as_str());
        self.ids.push(&event.stream.id);
        self.positions.push(event.position);
        let (op, value, ts, linked) = match op {
            Op::Create { object } => ("create", Some(object), None, None),
            Op::Update { changes } => ("update", Some(changes), None, None),
            Op::Link { linked_kind, linked_id, statement: _ } => {
                ("link", None, Some(event.ts), Some((linked_kind.as_str(), linked_id)))
            }
        };
        self.ops.push(op);
        self.values.push(value);
        self.ts.push(ts);
        self.linked_kinds.push(linked.map(|(kind, _)| kind));
        self.linked_ids.push(linked.map(|(_, id)| id));
    }

    /// Marks each object's last event in the batch, once every event is in.
    fn mark_last_steps(&mut self) {
        for &(_, _, latest) in self.objects.values() {
            self.lasts[latest] = true;
        }
    }
}

/// One object's GET shape, or `None`. `kind` must be a CWOM kind.
pub async fn get<'c>(executor: impl PgExecutor<'c>, kind: EntityKind, id: &str) -> anyhow::Result<Option<Value>> {
    let statements = statements(kind).with_context(|| format!("{kind} is not a CWOM kind"))?;
    sqlx::query_scalar(statements.select)
        .bind(id)
        .fetch_optional(executor)
        .await
        .with_context(|| format!("read {kind} {id}"))
}

/// [`existing`]'s statement: `$1` the objects' kinds, `$2` their ids.
pub const EXISTING_SQL: &str = include_str!("../../../projections/cwom/existing.sql");

/// Which of `objects` exist.
pub async fn existing<'c>(
    executor: impl PgExecutor<'c>,
    objects: &[(EntityKind, String)],
) -> anyhow::Result<HashSet<(EntityKind, String)>> {
    if objects.is_empty() {
        return Ok(HashSet::new());
    }
    let kinds: Vec<&str> = objects.iter().map(|(kind, _)| kind.as_str()).collect();
    let ids: Vec<&str> = objects.iter().map(|(_, id)| id.as_str()).collect();
    let rows: Vec<(String, String)> = sqlx::query_as(EXISTING_SQL)
        .bind(&kinds)
        .bind(&ids)
        .fetch_all(executor)
        .await
        .context("look up CWOM objects")?;
    Ok(rows.into_iter().filter_map(|(kind, id)| EntityKind::parse(&kind).map(|kind| (kind, id))).collect())
}

/// A page of a list: `limit` rows after skipping `offset`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

/// `GET /cwom/repos` filters.
#[derive(Debug, Clone, Default)]
pub struct RepoFilter {
    pub visibility: Option<String>,
}

/// Repos, newest first.
pub async fn list_repos<'c>(
    executor: impl PgExecutor<'c>,
    filter: &RepoFilter,
    page: Page,
) -> anyhow::Result<Vec<Value>> {
    crate::list_query(include_str!("../../../projections/cwom/list_repos.sql"))
        .bind(&filter.visibility)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(executor)
        .await
        .context("list repos")
}

/// `GET /cwom/issues` filters.
#[derive(Debug, Clone, Default)]
pub struct IssueFilter {
    pub repo_id: Option<String>,
    pub status: Option<String>,
    pub issue_type: Option<String>,
    pub priority: Option<String>,
}

/// Issues, newest first.
pub async fn list_issues<'c>(
    executor: impl PgExecutor<'c>,
    filter: &IssueFilter,
    page: Page,
) -> anyhow::Result<Vec<Value>> {
    crate::list_query(include_str!("../../../projections/cwom/list_issues.sql"))
        .bind(&filter.repo_id)
        .bind(&filter.status)
        .bind(&filter.issue_type)
        .bind(&filter.priority)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(executor)
        .await
        .context("list issues")
}

/// The ContextPackets made for an issue, newest first.
pub async fn list_context_packets<'c>(
    executor: impl PgExecutor<'c>,
    issue_id: &str,
    page: Page,
) -> anyhow::Result<Vec<Value>> {
    crate::list_query(include_str!("../../../projections/cwom/list_context_packets.sql"))
        .bind(issue_id)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(executor)
        .await
        .context("list context packets")
}

/// `GET /cwom/constraint-snapshots` filters.
#[derive(Debug, Clone, Default)]
pub struct ConstraintSnapshotFilter {
    pub scope: Option<String>,
    pub owner_id: Option<String>,
}

/// ConstraintSnapshots, newest first.
pub async fn list_constraint_snapshots<'c>(
    executor: impl PgExecutor<'c>,
    filter: &ConstraintSnapshotFilter,
    page: Page,
) -> anyhow::Result<Vec<Value>> {
    crate::list_query(include_str!("../../../projections/cwom/list_constraint_snapshots.sql"))
        .bind(&filter.scope)
        .bind(&filter.owner_id)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(executor)
        .await
        .context("list constraint snapshots")
}

/// `GET /cwom/doctrine-refs` filters.
#[derive(Debug, Clone, Default)]
pub struct DoctrineRefFilter {
    pub namespace: Option<String>,
    pub doctrine_type: Option<String>,
    pub priority: Option<String>,
}

/// DoctrineRefs by namespace, then name.
pub async fn list_doctrine_refs<'c>(
    executor: impl PgExecutor<'c>,
    filter: &DoctrineRefFilter,
    page: Page,
) -> anyhow::Result<Vec<Value>> {
    crate::list_query(include_str!("../../../projections/cwom/list_doctrine_refs.sql"))
        .bind(&filter.namespace)
        .bind(&filter.doctrine_type)
        .bind(&filter.priority)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(executor)
        .await
        .context("list doctrine refs")
}

/// `GET /cwom/runs` filters.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub issue_id: Option<String>,
    pub repo_id: Option<String>,
    pub status: Option<String>,
    pub mode: Option<String>,
}

/// Runs, newest first.
pub async fn list_runs<'c>(
    executor: impl PgExecutor<'c>,
    filter: &RunFilter,
    page: Page,
) -> anyhow::Result<Vec<Value>> {
    crate::list_query(include_str!("../../../projections/cwom/list_runs.sql"))
        .bind(&filter.issue_id)
        .bind(&filter.repo_id)
        .bind(&filter.status)
        .bind(&filter.mode)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(executor)
        .await
        .context("list runs")
}

/// Artifact filters: of a run, of an issue, of a type.
#[derive(Debug, Clone, Default)]
pub struct ArtifactFilter {
    pub run_id: Option<String>,
    pub issue_id: Option<String>,
    pub artifact_type: Option<String>,
}

/// Artifacts, newest first.
pub async fn list_artifacts<'c>(
    executor: impl PgExecutor<'c>,
    filter: &ArtifactFilter,
    page: Page,
) -> anyhow::Result<Vec<Value>> {
    crate::list_query(include_str!("../../../projections/cwom/list_artifacts.sql"))
        .bind(&filter.run_id)
        .bind(&filter.issue_id)
        .bind(&filter.artifact_type)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(executor)
        .await
        .context("list artifacts")
}
