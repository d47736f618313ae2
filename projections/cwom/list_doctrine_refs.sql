-- GET /cwom/doctrine-refs: exact-match filters (null = any), by namespace then name (byte order), then creation.
select document
  from cwom_doctrine_refs
 where ($1::text is null or namespace = $1)
   and ($2::text is null or doctrine_type = $2)
   and ($3::text is null or priority = $3)
 order by namespace collate "C", name collate "C", created_position
 limit $4 offset $5
