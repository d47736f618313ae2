-- GET /tasks: exact-match filters (null = any), newest first.
select document
  from tasks
 where ($1::text is null or status = $1)
   and ($2::text is null or operation = $2)
   and ($3::text is null or requester_kind = $3)
   and ($4::text is null or target_repo = $4)
 order by created_position desc
 limit $5 offset $6
