-- A batch's rows in one statement (`QueueProjection::apply_batch`); each task is in one list only.
-- $1: tasks that completed, failed or were cancelled (their rows go).
-- $2..$7: tasks enqueued in the batch, at their state after it (task_id, state, due_at, attempt, worker_id,
--   version); an existing row only moves forward.
-- $8..$13: the batch's other tasks, at their state after it (same arrays); rows only move forward, and a task
--   that left the queue is not brought back.
with leaving as (
    delete from task_queue where task_id = any($1)
),
enqueued as (
    insert into task_queue (task_id, state, due_at, attempt, worker_id, version)
    select * from unnest($2::text[], $3::text[], $4::timestamptz[], $5::int[], $6::text[], $7::int[])
    on conflict (task_id) do update
       set state = excluded.state, due_at = excluded.due_at, attempt = excluded.attempt,
           worker_id = excluded.worker_id, version = excluded.version
     where task_queue.version < excluded.version
),
moved as (
    update task_queue q
       set state = u.state, due_at = u.due_at, attempt = u.attempt, worker_id = u.worker_id, version = u.version
      from unnest($8::text[], $9::text[], $10::timestamptz[], $11::int[], $12::text[], $13::int[])
           as u(task_id, state, due_at, attempt, worker_id, version)
     where q.task_id = u.task_id and q.version < u.version
       -- Redundant with the join, on purpose: it gives the generic plan (`Planning::Generic`, the appender's
       -- connection) the primary key to find the rows by. Without it, a plan PostgreSQL cached while the queue was
       -- small hashed the batch and read the whole queue at every batch (9 million rows in 4 s of a 12,000-task
       -- backlog, 2026-12-04) until the table's statistics changed.
       and q.task_id = any($8)
)
select 1
