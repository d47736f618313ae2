-- A task event that changes fields: $1 task_id, $2 the changed document fields (status among them, or not).
update tasks
   set document = document || $2::jsonb,
       status = coalesce($2::jsonb ->> 'status', status)
 where task_id = $1
