-- A `linked` event on an Issue stream to a ContextPacket: $1 the Issue id, $2 the ContextPacket id, $3 the event's ts,
-- $4 its position. Records the link, and appends {"kind", "id"} to the Issue's `context_packets` unless a ref with that
-- kind and id is already there (a list that is not an array is started afresh).
with link as (
    insert into cwom_issue_context_packets (issue_id, context_packet_id, created_at, created_position)
    values ($1, $2, $3, $4)
    on conflict (issue_id, context_packet_id) do nothing
)
update cwom_issues
   set document = jsonb_set(
           document,
           '{context_packets}',
           case when jsonb_typeof(document -> 'context_packets') = 'array' then document -> 'context_packets' else '[]'::jsonb end
           || jsonb_build_array(jsonb_build_object('kind', 'ContextPacket', 'id', $2::text)))
 where id = $1
   and not coalesce(document -> 'context_packets' @> jsonb_build_array(jsonb_build_object('kind', 'ContextPacket', 'id', $2::text)), false)
