-- A batch of CWOM events in one statement (`CwomProjection::apply_batch`), with the same rows as applying them one
-- by one with the single-row statements beside this file, which stay the reference. Parallel arrays, one element
-- per event the contract does not ignore, in log order: $1 a number for the event's object (its kind and id) in
-- this batch, $2 the event's step on that object (1, 2, ... in log order), $3 whether it is the object's last in
-- the batch, $4 the stream's kind, $5 its id, $6 'create', 'update' or 'link', $7 `payload.object` (create) or
-- `payload.changes` (update; an object), $8 the event's position, $9 its ts (link), $10 and $11 the linked kind and
-- id (link; only the six pairs with a link table).
--
-- Why it equals the per-event fold: each single-row statement reads and writes only its own object's row (and,
-- for a link, its own link-table row), so events on different objects commute and only each object's own order
-- matters. `fold` replays every object's events in that order, one step per event, from its stored row:
-- - create: the stored document if there is one (the first `created` wins), else the object at this position;
-- - update: document || changes (nothing without a row: `||` gives null);
-- - link: append {kind, id} to the owner's list unless a ref containing it is already there, a list that is not
--   an array starting afresh (nothing without a row, nor for a Run, whose GET shape has no such list).
-- Each object a step changed (`dirty`) is then written once, with the filter columns taken from its final
-- document: the single-row statements keep them equal to those expressions of the document (a link changes only a
-- list field, which no filter column reads), so that is what they hold after the last event too. A link-table row
-- depends on no document: the first link of each pair is inserted, `on conflict do nothing` as one by one.
with recursive op as materialized (
    select o.*,
           -- A link's list field in the owner's document, and the ref it appends (as a one-element array).
           case
               when o.kind = 'Issue' and o.linked_kind = 'ContextPacket' then 'context_packets'
               when o.kind = 'Issue' and o.linked_kind = 'ConstraintSnapshot' then 'constraints'
               when o.kind = 'Issue' and o.linked_kind = 'DoctrineRef' then 'doctrine_refs'
               when o.kind = 'ContextPacket' and o.linked_kind = 'DoctrineRef' then 'doctrine_refs'
           end as list,
           case when o.op = 'link' then jsonb_build_array(jsonb_build_object('kind', o.linked_kind, 'id', o.linked_id))
           end as ref
      from unnest($1::int[], $2::int[], $3::bool[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::bigint[],
                  $9::timestamptz[], $10::text[], $11::text[])
           with ordinality as o(key, step, last, kind, id, op, value, position, ts, linked_kind, linked_id, ord)
),
fold (key, step, last, kind, id, dirty, document, created_position) as (
    -- Each object as stored before the batch (one primary-key lookup in its kind's table), at step 0.
    select o.key, 0, false, o.kind, o.id, false, s.document, s.created_position
      from op o
      left join lateral (
          select t.document, t.created_position from cwom_repos t where o.kind = 'Repo' and t.id = o.id
          union all
          select t.document, t.created_position from cwom_issues t where o.kind = 'Issue' and t.id = o.id
          union all
          select t.document, t.created_position
            from cwom_context_packets t where o.kind = 'ContextPacket' and t.id = o.id
          union all
          select t.document, t.created_position
            from cwom_constraint_snapshots t where o.kind = 'ConstraintSnapshot' and t.id = o.id
          union all
          select t.document, t.created_position from cwom_doctrine_refs t where o.kind = 'DoctrineRef' and t.id = o.id
          union all
          select t.document, t.created_position from cwom_runs t where o.kind = 'Run' and t.id = o.id
          union all
          select t.document, t.created_position from cwom_artifacts t where o.kind = 'Artifact' and t.id = o.id
      ) s on true
     where o.step = 1
    union all
    -- Then the object's next event, one per iteration: what its single-row statement does to the document.
    select f.key, o.step, o.last, f.kind, f.id,
           f.dirty or case
               when o.op = 'create' then f.document is null
               when o.op = 'update' then f.document is not null
               else o.list is not null and f.document is not null
                    and not coalesce(f.document -> o.list @> o.ref, false)
           end,
           case
               when o.op = 'create' then coalesce(f.document, o.value)
               when o.op = 'update' then f.document || o.value
               when o.list is null or f.document is null
                    or coalesce(f.document -> o.list @> o.ref, false) then f.document
               else jsonb_set(
                   f.document,
                   array[o.list],
                   case when jsonb_typeof(f.document -> o.list) = 'array' then f.document -> o.list else '[]'::jsonb end
                   || o.ref)
           end,
           case when o.op = 'create' and f.document is null then o.position else f.created_position end
      from fold f
      join op o on o.key = f.key and o.step = f.step + 1
),
-- Each object after its last event, if any event changed it; written below with its kind's filter columns.
changed as materialized (
    select kind, id, document, created_position from fold where last and dirty
),
repos as (
    insert into cwom_repos (id, slug, visibility, created_position, document)
    select id, document ->> 'slug', document ->> 'visibility', created_position, document
      from changed where kind = 'Repo'
    on conflict (id) do update
       set slug = excluded.slug, visibility = excluded.visibility, document = excluded.document
),
issues as (
    insert into cwom_issues (id, repo_id, status, issue_type, priority, created_position, document)
    select id, document -> 'repo' ->> 'id', document ->> 'status', document ->> 'type', document ->> 'priority',
           created_position, document
      from changed where kind = 'Issue'
    on conflict (id) do update
       set repo_id = excluded.repo_id, status = excluded.status, issue_type = excluded.issue_type,
           priority = excluded.priority, document = excluded.document
),
context_packets as (
    insert into cwom_context_packets (id, for_issue_id, created_position, document)
    select id, document -> 'for_issue' ->> 'id', created_position, document
      from changed where kind = 'ContextPacket'
    on conflict (id) do update
       set for_issue_id = excluded.for_issue_id, document = excluded.document
),
constraint_snapshots as (
    insert into cwom_constraint_snapshots (id, scope, owner_id, created_position, document)
    select id, document ->> 'scope', document -> 'owner' ->> 'actor_id', created_position, document
      from changed where kind = 'ConstraintSnapshot'
    on conflict (id) do update
       set scope = excluded.scope, owner_id = excluded.owner_id, document = excluded.document
),
doctrine_refs as (
    insert into cwom_doctrine_refs (id, namespace, name, version, doctrine_type, priority, created_position, document)
    select id, document ->> 'namespace', document ->> 'name', document ->> 'version', document ->> 'type',
           document ->> 'priority', created_position, document
      from changed where kind = 'DoctrineRef'
    on conflict (id) do update
       set namespace = excluded.namespace, name = excluded.name, version = excluded.version,
           doctrine_type = excluded.doctrine_type, priority = excluded.priority, document = excluded.document
),
runs as (
    insert into cwom_runs (id, for_issue_id, repo_id, status, mode, created_position, document)
    select id, document -> 'for_issue' ->> 'id', document -> 'repo' ->> 'id', document ->> 'status',
           document ->> 'mode', created_position, document
      from changed where kind = 'Run'
    on conflict (id) do update
       set for_issue_id = excluded.for_issue_id, repo_id = excluded.repo_id, status = excluded.status,
           mode = excluded.mode, document = excluded.document
),
artifacts as (
    insert into cwom_artifacts (id, produced_by_id, for_issue_id, artifact_type, created_position, document)
    select id, document -> 'produced_by' ->> 'id', document -> 'for_issue' ->> 'id', document ->> 'type',
           created_position, document
      from changed where kind = 'Artifact'
    on conflict (id) do update
       set produced_by_id = excluded.produced_by_id, for_issue_id = excluded.for_issue_id,
           artifact_type = excluded.artifact_type, document = excluded.document
),
link as materialized (
    select distinct on (kind, id, linked_kind, linked_id) kind, id, linked_kind, linked_id, ts, position
      from op
     where op = 'link'
     order by kind, id, linked_kind, linked_id, ord
),
issue_context_packets as (
    insert into cwom_issue_context_packets (issue_id, context_packet_id, created_at, created_position)
    select id, linked_id, ts, position from link where kind = 'Issue' and linked_kind = 'ContextPacket'
    on conflict (issue_id, context_packet_id) do nothing
),
issue_constraint_snapshots as (
    insert into cwom_issue_constraint_snapshots (issue_id, constraint_snapshot_id, created_at, created_position)
    select id, linked_id, ts, position from link where kind = 'Issue' and linked_kind = 'ConstraintSnapshot'
    on conflict (issue_id, constraint_snapshot_id) do nothing
),
issue_doctrine_refs as (
    insert into cwom_issue_doctrine_refs (issue_id, doctrine_ref_id, created_at, created_position)
    select id, linked_id, ts, position from link where kind = 'Issue' and linked_kind = 'DoctrineRef'
    on conflict (issue_id, doctrine_ref_id) do nothing
),
run_context_packets as (
    insert into cwom_run_context_packets (run_id, context_packet_id, created_at, created_position)
    select id, linked_id, ts, position from link where kind = 'Run' and linked_kind = 'ContextPacket'
    on conflict (run_id, context_packet_id) do nothing
),
run_doctrine_refs as (
    insert into cwom_run_doctrine_refs (run_id, doctrine_ref_id, created_at, created_position)
    select id, linked_id, ts, position from link where kind = 'Run' and linked_kind = 'DoctrineRef'
    on conflict (run_id, doctrine_ref_id) do nothing
),
context_packet_doctrine_refs as (
    insert into cwom_context_packet_doctrine_refs (context_packet_id, doctrine_ref_id, created_at, created_position)
    select id, linked_id, ts, position from link where kind = 'ContextPacket' and linked_kind = 'DoctrineRef'
    on conflict (context_packet_id, doctrine_ref_id) do nothing
)
select count(*) from changed
