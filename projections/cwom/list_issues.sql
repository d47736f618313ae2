-- GET /cwom/issues: exact-match filters (null = any), newest first.
select document
  from cwom_issues
 where ($1::text is null or repo_id = $1)
   and ($2::text is null or status = $2)
   and ($3::text is null or issue_type = $3)
   and ($4::text is null or priority = $4)
 order by created_position desc
 limit $5 offset $6
