-- GET /cwom/runs: exact-match filters (null = any), newest first.
select document
  from cwom_runs
 where ($1::text is null or for_issue_id = $1)
   and ($2::text is null or repo_id = $2)
   and ($3::text is null or status = $3)
   and ($4::text is null or mode = $4)
 order by created_position desc
 limit $5 offset $6
