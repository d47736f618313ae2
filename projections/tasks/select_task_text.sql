-- GET /tasks/{task_id}, the document as JSON text (sent to the client as it is)
select document::text from tasks where task_id = $1
