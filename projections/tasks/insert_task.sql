-- TaskCreated: $1 task_id, $2 the task document, $3 the event's position.
insert into tasks (task_id, status, operation, requester_kind, target_repo, trace_id, cwom_issue_id,
                   idempotency_key, created_position, document)
values ($1, $2::jsonb ->> 'status', $2::jsonb ->> 'operation', $2::jsonb -> 'requested_by' ->> 'kind',
        $2::jsonb -> 'target' ->> 'repo', $2::jsonb ->> 'trace_id', $2::jsonb ->> 'cwom_issue_id',
        $2::jsonb ->> 'idempotency_key', $3, $2::jsonb)
on conflict (task_id) do nothing
