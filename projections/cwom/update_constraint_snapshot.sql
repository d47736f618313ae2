-- An `updated` or `status_changed` event on a ConstraintSnapshot stream: $1 the stream id, $2 `payload.changes` (the changed
-- top-level fields of the GET shape, merged in; the filter columns follow the merged document).
update cwom_constraint_snapshots
   set document = document || $2::jsonb,
       scope = (document || $2::jsonb) ->> 'scope',
       owner_id = (document || $2::jsonb) -> 'owner' ->> 'actor_id'
 where id = $1
