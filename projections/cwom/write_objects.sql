-- The objects a rebuild folded in memory (`crates/projections/src/cwom/in_memory.rs`) whose filter columns only
-- PostgreSQL can tell exactly (a number, boolean, object or array where the GET shape has a string), each after
-- its last event, from the temporary table `cwom_folded` into their kinds' tables, with the filter columns taken
-- from the document by the same expressions as `apply_batch.sql` (a change to one changes the other, and
-- `OBJECT_TABLES` in `in_memory.rs`).
insert into cwom_repos (id, slug, visibility, created_position, document)
select id, document ->> 'slug', document ->> 'visibility', created_position, document
  from cwom_folded where kind = 'Repo';

insert into cwom_issues (id, repo_id, status, issue_type, priority, created_position, document)
select id, document -> 'repo' ->> 'id', document ->> 'status', document ->> 'type', document ->> 'priority',
       created_position, document
  from cwom_folded where kind = 'Issue';

insert into cwom_context_packets (id, for_issue_id, created_position, document)
select id, document -> 'for_issue' ->> 'id', created_position, document
  from cwom_folded where kind = 'ContextPacket';

insert into cwom_constraint_snapshots (id, scope, owner_id, created_position, document)
select id, document ->> 'scope', document -> 'owner' ->> 'actor_id', created_position, document
  from cwom_folded where kind = 'ConstraintSnapshot';

insert into cwom_doctrine_refs (id, namespace, name, version, doctrine_type, priority, created_position, document)
select id, document ->> 'namespace', document ->> 'name', document ->> 'version', document ->> 'type',
       document ->> 'priority', created_position, document
  from cwom_folded where kind = 'DoctrineRef';

insert into cwom_runs (id, for_issue_id, repo_id, status, mode, created_position, document)
select id, document -> 'for_issue' ->> 'id', document -> 'repo' ->> 'id', document ->> 'status',
       document ->> 'mode', created_position, document
  from cwom_folded where kind = 'Run';

insert into cwom_artifacts (id, produced_by_id, for_issue_id, artifact_type, created_position, document)
select id, document -> 'produced_by' ->> 'id', document -> 'for_issue' ->> 'id', document ->> 'type',
       created_position, document
  from cwom_folded where kind = 'Artifact';
