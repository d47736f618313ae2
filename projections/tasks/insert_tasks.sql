-- TaskCreated for many tasks at once (a batch), each document already carrying the batch's later changes:
-- arrays $1 task_id, $2 document, $3 the TaskCreated event's position.
insert into tasks (task_id, status, operation, requester_kind, target_repo, trace_id, cwom_issue_id,
                   idempotency_key, created_position, document)
select t.task_id, t.document ->> 'status', t.document ->> 'operation', t.document -> 'requested_by' ->> 'kind',
       t.document -> 'target' ->> 'repo', t.document ->> 'trace_id', t.document ->> 'cwom_issue_id',
       t.document ->> 'idempotency_key', t.position, t.document
  from unnest($1::text[], $2::jsonb[], $3::bigint[]) as t(task_id, document, position)
on conflict (task_id) do nothing
