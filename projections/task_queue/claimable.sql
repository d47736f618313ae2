-- Up to $2 tasks claimable at $1 (queued and due, or leased under an expired lease), oldest due first, locked
-- for this transaction; rows other claimers hold are skipped.
select task_id
  from task_queue
 where due_at <= $1
 order by due_at, task_id
 limit $2
   for update skip locked
