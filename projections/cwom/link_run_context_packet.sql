-- A `linked` event on a Run stream to a ContextPacket: $1 the Run id, $2 the ContextPacket id, $3 the event's ts,
-- $4 its position. The Run's GET shape has no list of these: the link table alone records it.
insert into cwom_run_context_packets (run_id, context_packet_id, created_at, created_position)
values ($1, $2, $3, $4)
on conflict (run_id, context_packet_id) do nothing
