-- TaskEnqueued: $1 task_id, $2 queued_at, $3 stream version.
insert into task_queue (task_id, state, due_at, attempt, worker_id, version)
values ($1, 'queued', $2, 0, null, $3)
on conflict (task_id) do nothing
