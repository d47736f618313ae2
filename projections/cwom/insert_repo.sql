-- A `created` event on a Repo stream: $1 the stream id, $2 `payload.object` (the GET shape), $3 the event's
-- position. The first `created` wins.
insert into cwom_repos (id, slug, visibility, created_position, document)
values ($1,
        $2::jsonb ->> 'slug',
        $2::jsonb ->> 'visibility',
        $3,
        $2::jsonb)
on conflict (id) do nothing
