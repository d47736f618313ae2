-- TaskCreated for many tasks at once (a batch), each document carrying the batch's later changes: arrays $1
-- task_id, $2 document, $3 the TaskCreated event's position, $4 the batch's later changes. A null $2 takes the
-- document from that event's row of `audit_log` (`payload.task`, an object, stored earlier in the same
-- transaction: `Documents::InTheLog`) and merges $4 into it, as the sent documents have it merged.
insert into tasks (task_id, status, operation, requester_kind, target_repo, trace_id, cwom_issue_id,
                   idempotency_key, created_position, document)
select t.task_id, d.document ->> 'status', d.document ->> 'operation', d.document -> 'requested_by' ->> 'kind',
       d.document -> 'target' ->> 'repo', d.document ->> 'trace_id', d.document ->> 'cwom_issue_id',
       d.document ->> 'idempotency_key', t.position, d.document
  from unnest($1::text[], $2::jsonb[], $3::bigint[], $4::jsonb[]) as t(task_id, document, position, changes)
 cross join lateral (
       select coalesce(t.document,
                       (select l.payload -> 'task' from audit_log l where l.position = t.position)
                           || coalesce(t.changes, '{}'::jsonb)) as document
       ) as d
on conflict (task_id) do nothing
