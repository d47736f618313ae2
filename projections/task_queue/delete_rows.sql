-- Tasks that completed, failed or were cancelled: $1 task ids.
delete from task_queue where task_id = any($1)
