-- GET /cwom/repos: exact-match filters (null = any), newest first.
select document
  from cwom_repos
 where ($1::text is null or visibility = $1)
 order by created_position desc
 limit $2 offset $3
