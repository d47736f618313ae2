-- A batch's tasks that were enqueued in it, at their state after the batch: arrays $1 task_id, $2 state,
-- $3 due_at, $4 attempt, $5 worker_id, $6 version. An existing row only moves forward.
insert into task_queue (task_id, state, due_at, attempt, worker_id, version)
select * from unnest($1::text[], $2::text[], $3::timestamptz[], $4::int[], $5::text[], $6::int[])
on conflict (task_id) do update
   set state = excluded.state, due_at = excluded.due_at, attempt = excluded.attempt,
       worker_id = excluded.worker_id, version = excluded.version
 where task_queue.version < excluded.version
