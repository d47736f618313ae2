-- A `created` event on a Run stream: $1 the stream id, $2 `payload.object` (the GET shape), $3 the event's
-- position. The first `created` wins.
insert into cwom_runs (id, for_issue_id, repo_id, status, mode, created_position, document)
values ($1,
        $2::jsonb -> 'for_issue' ->> 'id',
        $2::jsonb -> 'repo' ->> 'id',
        $2::jsonb ->> 'status',
        $2::jsonb ->> 'mode',
        $3,
        $2::jsonb)
on conflict (id) do nothing
