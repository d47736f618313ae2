-- A claim, lease renewal, retry or release: $1 task_id, $2 state, $3 due_at, $4 attempt, $5 worker_id,
-- $6 stream version. Only moves forward: an event older than the row is ignored.
update task_queue
   set state = $2, due_at = $3, attempt = $4, worker_id = $5, version = $6
 where task_id = $1 and version < $6
