-- An `updated` or `status_changed` event on a DoctrineRef stream: $1 the stream id, $2 `payload.changes` (the changed
-- top-level fields of the GET shape, merged in; the filter columns follow the merged document).
update cwom_doctrine_refs
   set document = document || $2::jsonb,
       namespace = (document || $2::jsonb) ->> 'namespace',
       name = (document || $2::jsonb) ->> 'name',
       version = (document || $2::jsonb) ->> 'version',
       doctrine_type = (document || $2::jsonb) ->> 'type',
       priority = (document || $2::jsonb) ->> 'priority'
 where id = $1
