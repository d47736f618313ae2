-- A `created` event on a DoctrineRef stream: $1 the stream id, $2 `payload.object` (the GET shape), $3 the event's
-- position. The first `created` wins.
insert into cwom_doctrine_refs (id, namespace, name, version, doctrine_type, priority, created_position, document)
values ($1,
        $2::jsonb ->> 'namespace',
        $2::jsonb ->> 'name',
        $2::jsonb ->> 'version',
        $2::jsonb ->> 'type',
        $2::jsonb ->> 'priority',
        $3,
        $2::jsonb)
on conflict (id) do nothing
