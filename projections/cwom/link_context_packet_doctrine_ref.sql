-- A `linked` event on a ContextPacket stream to a DoctrineRef: $1 the ContextPacket id, $2 the DoctrineRef id, $3 the event's ts,
-- $4 its position. Records the link, and appends {"kind", "id"} to the ContextPacket's `doctrine_refs` unless a ref with that
-- kind and id is already there (a list that is not an array is started afresh).
with link as (
    insert into cwom_context_packet_doctrine_refs (context_packet_id, doctrine_ref_id, created_at, created_position)
    values ($1, $2, $3, $4)
    on conflict (context_packet_id, doctrine_ref_id) do nothing
)
update cwom_context_packets
   set document = jsonb_set(
           document,
           '{doctrine_refs}',
           case when jsonb_typeof(document -> 'doctrine_refs') = 'array' then document -> 'doctrine_refs' else '[]'::jsonb end
           || jsonb_build_array(jsonb_build_object('kind', 'DoctrineRef', 'id', $2::text)))
 where id = $1
   and not coalesce(document -> 'doctrine_refs' @> jsonb_build_array(jsonb_build_object('kind', 'DoctrineRef', 'id', $2::text)), false)
