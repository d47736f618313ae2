-- A batch's other tasks, at their state after the batch (same arrays as upsert_rows.sql). Rows only move
-- forward, and a task that left the queue is not brought back.
update task_queue q
   set state = u.state, due_at = u.due_at, attempt = u.attempt, worker_id = u.worker_id, version = u.version
  from unnest($1::text[], $2::text[], $3::timestamptz[], $4::int[], $5::text[], $6::int[])
       as u(task_id, state, due_at, attempt, worker_id, version)
 where q.task_id = u.task_id and q.version < u.version
