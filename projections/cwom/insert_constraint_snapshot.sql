-- A `created` event on a ConstraintSnapshot stream: $1 the stream id, $2 `payload.object` (the GET shape), $3 the event's
-- position. The first `created` wins.
insert into cwom_constraint_snapshots (id, scope, owner_id, created_position, document)
values ($1,
        $2::jsonb ->> 'scope',
        $2::jsonb -> 'owner' ->> 'actor_id',
        $3,
        $2::jsonb)
on conflict (id) do nothing
