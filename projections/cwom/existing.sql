-- Which of the given objects exist: $1 their kinds, $2 their ids (pairwise). Returns the pairs that exist.
-- Each is one primary-key lookup: `offset 0` keeps every `exists` a subplan run with the id as a parameter. Without
-- it PostgreSQL may hash each table instead ("hashed SubPlan"), and the generic plan a pooled connection made while
-- the tables were empty read all seven of them whole at every call, a cost that grew with every object (ADR 0012).
select r.kind, r.id
  from unnest($1::text[], $2::text[]) as r(kind, id)
 where (r.kind = 'Repo' and exists (select 1 from cwom_repos o where o.id = r.id offset 0))
    or (r.kind = 'Issue' and exists (select 1 from cwom_issues o where o.id = r.id offset 0))
    or (r.kind = 'ContextPacket' and exists (select 1 from cwom_context_packets o where o.id = r.id offset 0))
    or (r.kind = 'ConstraintSnapshot'
        and exists (select 1 from cwom_constraint_snapshots o where o.id = r.id offset 0))
    or (r.kind = 'DoctrineRef' and exists (select 1 from cwom_doctrine_refs o where o.id = r.id offset 0))
    or (r.kind = 'Run' and exists (select 1 from cwom_runs o where o.id = r.id offset 0))
    or (r.kind = 'Artifact' and exists (select 1 from cwom_artifacts o where o.id = r.id offset 0))
