-- An `updated` or `status_changed` event on a Run stream: $1 the stream id, $2 `payload.changes` (the changed
-- top-level fields of the GET shape, merged in; the filter columns follow the merged document).
update cwom_runs
   set document = document || $2::jsonb,
       for_issue_id = (document || $2::jsonb) -> 'for_issue' ->> 'id',
       repo_id = (document || $2::jsonb) -> 'repo' ->> 'id',
       status = (document || $2::jsonb) ->> 'status',
       mode = (document || $2::jsonb) ->> 'mode'
 where id = $1
