-- A `created` event on a ContextPacket stream: $1 the stream id, $2 `payload.object` (the GET shape), $3 the event's
-- position. The first `created` wins.
insert into cwom_context_packets (id, for_issue_id, created_position, document)
values ($1,
        $2::jsonb -> 'for_issue' ->> 'id',
        $3,
        $2::jsonb)
on conflict (id) do nothing
