-- An `updated` or `status_changed` event on an Issue stream: $1 the stream id, $2 `payload.changes` (the changed
-- top-level fields of the GET shape, merged in; the filter columns follow the merged document).
update cwom_issues
   set document = document || $2::jsonb,
       repo_id = (document || $2::jsonb) -> 'repo' ->> 'id',
       status = (document || $2::jsonb) ->> 'status',
       issue_type = (document || $2::jsonb) ->> 'type',
       priority = (document || $2::jsonb) ->> 'priority'
 where id = $1
