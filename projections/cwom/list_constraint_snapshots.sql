-- GET /cwom/constraint-snapshots: exact-match filters (null = any), newest first (the original orders by
-- `captured_at`, which is the creation time).
select document
  from cwom_constraint_snapshots
 where ($1::text is null or scope = $1)
   and ($2::text is null or owner_id = $2)
 order by created_position desc
 limit $3 offset $4
