-- A `linked` event on an Issue stream to a ConstraintSnapshot: $1 the Issue id, $2 the ConstraintSnapshot id, $3 the event's ts,
-- $4 its position. Records the link, and appends {"kind", "id"} to the Issue's `constraints` unless a ref with that
-- kind and id is already there (a list that is not an array is started afresh).
with link as (
    insert into cwom_issue_constraint_snapshots (issue_id, constraint_snapshot_id, created_at, created_position)
    values ($1, $2, $3, $4)
    on conflict (issue_id, constraint_snapshot_id) do nothing
)
update cwom_issues
   set document = jsonb_set(
           document,
           '{constraints}',
           case when jsonb_typeof(document -> 'constraints') = 'array' then document -> 'constraints' else '[]'::jsonb end
           || jsonb_build_array(jsonb_build_object('kind', 'ConstraintSnapshot', 'id', $2::text)))
 where id = $1
   and not coalesce(document -> 'constraints' @> jsonb_build_array(jsonb_build_object('kind', 'ConstraintSnapshot', 'id', $2::text)), false)
