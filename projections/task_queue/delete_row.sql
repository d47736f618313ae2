-- The task completed, failed or was cancelled: $1 task_id.
delete from task_queue where task_id = $1
