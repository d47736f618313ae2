-- The objects and links of CWOM streams that begin in a batch (`CwomProjection::apply_batch`), folded in Rust from
-- nothing (`crates/projections/src/cwom/in_memory.rs`, the rebuild's fold): such an object has no row yet, so its
-- rows are plain inserts, without the recursive fold and the lookups of `apply_batch.sql`, which the batch's other
-- objects still go through. $1..$4 each object after its last event in the batch: kind, id, the position of its
-- `created` event, the document's JSON text. $5..$10 the first link of each pair whose owner begins in the batch:
-- owner kind and id, linked kind and id, the event's ts and position. Rebuilds write through it too, for the
-- objects whose filter columns only PostgreSQL can tell (a number where the GET shape has a string). The filter
-- columns are taken from the document by the same expressions as `apply_batch.sql` (a change to one changes the
-- other; `tests/cwom_batch.rs` compares the rows with `apply`, event by event).
with object as materialized (
    select o.kind, o.id, o.created_position, o.document::jsonb as document
      from unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) as o(kind, id, created_position, document)
),
link as materialized (
    select *
      from unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::bigint[])
           as l(kind, id, linked_kind, linked_id, ts, position)
),
repos as (
    insert into cwom_repos (id, slug, visibility, created_position, document)
    select id, document ->> 'slug', document ->> 'visibility', created_position, document
      from object where kind = 'Repo'
),
issues as (
    insert into cwom_issues (id, repo_id, status, issue_type, priority, created_position, document)
    select id, document -> 'repo' ->> 'id', document ->> 'status', document ->> 'type', document ->> 'priority',
           created_position, document
      from object where kind = 'Issue'
),
context_packets as (
    insert into cwom_context_packets (id, for_issue_id, created_position, document)
    select id, document -> 'for_issue' ->> 'id', created_position, document
      from object where kind = 'ContextPacket'
),
constraint_snapshots as (
    insert into cwom_constraint_snapshots (id, scope, owner_id, created_position, document)
    select id, document ->> 'scope', document -> 'owner' ->> 'actor_id', created_position, document
      from object where kind = 'ConstraintSnapshot'
),
doctrine_refs as (
    insert into cwom_doctrine_refs (id, namespace, name, version, doctrine_type, priority, created_position, document)
    select id, document ->> 'namespace', document ->> 'name', document ->> 'version', document ->> 'type',
           document ->> 'priority', created_position, document
      from object where kind = 'DoctrineRef'
),
runs as (
    insert into cwom_runs (id, for_issue_id, repo_id, status, mode, created_position, document)
    select id, document -> 'for_issue' ->> 'id', document -> 'repo' ->> 'id', document ->> 'status',
           document ->> 'mode', created_position, document
      from object where kind = 'Run'
),
artifacts as (
    insert into cwom_artifacts (id, produced_by_id, for_issue_id, artifact_type, created_position, document)
    select id, document -> 'produced_by' ->> 'id', document -> 'for_issue' ->> 'id', document ->> 'type',
           created_position, document
      from object where kind = 'Artifact'
),
issue_context_packets as (
    insert into cwom_issue_context_packets (issue_id, context_packet_id, created_at, created_position)
    select id, linked_id, ts, position from link where kind = 'Issue' and linked_kind = 'ContextPacket'
),
issue_constraint_snapshots as (
    insert into cwom_issue_constraint_snapshots (issue_id, constraint_snapshot_id, created_at, created_position)
    select id, linked_id, ts, position from link where kind = 'Issue' and linked_kind = 'ConstraintSnapshot'
),
issue_doctrine_refs as (
    insert into cwom_issue_doctrine_refs (issue_id, doctrine_ref_id, created_at, created_position)
    select id, linked_id, ts, position from link where kind = 'Issue' and linked_kind = 'DoctrineRef'
),
run_context_packets as (
    insert into cwom_run_context_packets (run_id, context_packet_id, created_at, created_position)
    select id, linked_id, ts, position from link where kind = 'Run' and linked_kind = 'ContextPacket'
),
run_doctrine_refs as (
    insert into cwom_run_doctrine_refs (run_id, doctrine_ref_id, created_at, created_position)
    select id, linked_id, ts, position from link where kind = 'Run' and linked_kind = 'DoctrineRef'
),
context_packet_doctrine_refs as (
    insert into cwom_context_packet_doctrine_refs (context_packet_id, doctrine_ref_id, created_at, created_position)
    select id, linked_id, ts, position from link where kind = 'ContextPacket' and linked_kind = 'DoctrineRef'
)
select count(*) from object
