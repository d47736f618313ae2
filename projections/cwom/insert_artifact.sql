-- A `created` event on an Artifact stream: $1 the stream id, $2 `payload.object` (the GET shape), $3 the event's
-- position. The first `created` wins.
insert into cwom_artifacts (id, produced_by_id, for_issue_id, artifact_type, created_position, document)
values ($1,
        $2::jsonb -> 'produced_by' ->> 'id',
        $2::jsonb -> 'for_issue' ->> 'id',
        $2::jsonb ->> 'type',
        $3,
        $2::jsonb)
on conflict (id) do nothing
