-- Which of the given objects exist: $1 their kinds, $2 their ids (pairwise). Returns the pairs that exist.
select r.kind, r.id
  from unnest($1::text[], $2::text[]) as r(kind, id)
 where (r.kind = 'Repo' and exists (select 1 from cwom_repos o where o.id = r.id))
    or (r.kind = 'Issue' and exists (select 1 from cwom_issues o where o.id = r.id))
    or (r.kind = 'ContextPacket' and exists (select 1 from cwom_context_packets o where o.id = r.id))
    or (r.kind = 'ConstraintSnapshot' and exists (select 1 from cwom_constraint_snapshots o where o.id = r.id))
    or (r.kind = 'DoctrineRef' and exists (select 1 from cwom_doctrine_refs o where o.id = r.id))
    or (r.kind = 'Run' and exists (select 1 from cwom_runs o where o.id = r.id))
    or (r.kind = 'Artifact' and exists (select 1 from cwom_artifacts o where o.id = r.id))
