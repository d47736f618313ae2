-- GET /tasks/{task_id}
select document from tasks where task_id = $1
