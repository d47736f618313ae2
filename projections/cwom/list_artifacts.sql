-- GET /cwom/runs/{run_id}/artifacts and /cwom/issues/{issue_id}/artifacts: exact-match filters (null = any),
-- newest first.
select document
  from cwom_artifacts
 where ($1::text is null or produced_by_id = $1)
   and ($2::text is null or for_issue_id = $2)
   and ($3::text is null or artifact_type = $3)
 order by created_position desc
 limit $4 offset $5
