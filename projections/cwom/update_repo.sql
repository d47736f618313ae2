-- An `updated` or `status_changed` event on a Repo stream: $1 the stream id, $2 `payload.changes` (the changed
-- top-level fields of the GET shape, merged in; the filter columns follow the merged document).
update cwom_repos
   set document = document || $2::jsonb,
       slug = (document || $2::jsonb) ->> 'slug',
       visibility = (document || $2::jsonb) ->> 'visibility'
 where id = $1
