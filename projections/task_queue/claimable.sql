-- Up to $1 tasks claimable now (queued and due, or leased under an expired lease), oldest due first, locked for
-- this transaction; rows other claimers hold are skipped. Each row carries the database's clock as read for the
-- claim (`now`), which also decided what is due; with no row claimable, the one row has a null task_id.
with clock as (select clock_timestamp() as now)
select q.task_id, clock.now
  from clock
  left join lateral (select task_id
                       from task_queue
                      where due_at <= clock.now
                      order by due_at, task_id
                      limit $1
                        for update skip locked) as q on true
