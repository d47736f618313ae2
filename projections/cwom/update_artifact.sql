-- An `updated` or `status_changed` event on an Artifact stream: $1 the stream id, $2 `payload.changes` (the changed
-- top-level fields of the GET shape, merged in; the filter columns follow the merged document).
update cwom_artifacts
   set document = document || $2::jsonb,
       produced_by_id = (document || $2::jsonb) -> 'produced_by' ->> 'id',
       for_issue_id = (document || $2::jsonb) -> 'for_issue' ->> 'id',
       artifact_type = (document || $2::jsonb) ->> 'type'
 where id = $1
