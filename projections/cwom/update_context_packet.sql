-- An `updated` or `status_changed` event on a ContextPacket stream: $1 the stream id, $2 `payload.changes` (the changed
-- top-level fields of the GET shape, merged in; the filter columns follow the merged document).
update cwom_context_packets
   set document = document || $2::jsonb,
       for_issue_id = (document || $2::jsonb) -> 'for_issue' ->> 'id'
 where id = $1
