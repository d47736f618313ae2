-- A `created` event on an Issue stream: $1 the stream id, $2 `payload.object` (the GET shape), $3 the event's
-- position. The first `created` wins.
insert into cwom_issues (id, repo_id, status, issue_type, priority, created_position, document)
values ($1,
        $2::jsonb -> 'repo' ->> 'id',
        $2::jsonb ->> 'status',
        $2::jsonb ->> 'type',
        $2::jsonb ->> 'priority',
        $3,
        $2::jsonb)
on conflict (id) do nothing
