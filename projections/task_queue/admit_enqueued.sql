-- A claim's first statement: the TaskEnqueued events the projector has not applied yet (past the checkpoint),
-- applied early so a new task is claimable at once, whoever applies the projection and whenever. Same rows as
-- the fold (a queued row per TaskEnqueued, due at queued_at), and as idempotent: an existing row wins, and a
-- task that already ended is not admitted. Inserted in log order, so concurrent claims cannot deadlock.
insert into task_queue (task_id, state, due_at, attempt, worker_id, version)
select e.entity_id, 'queued', coalesce((e.payload ->> 'queued_at')::timestamptz, e.ts), 0, null, e.stream_version
  from audit_log e
 where e.event_type = 'TaskEnqueued'
   and e.entity_kind = 'Task'
   and e.position > (select position from projection_checkpoints where name = 'task_queue')
   and not exists (select 1 from audit_log t
                    where t.entity_kind = 'Task' and t.entity_id = e.entity_id
                      and t.event_type in ('TaskCompleted', 'TaskFailed', 'TaskCancelled'))
 order by e.position
on conflict (task_id) do nothing
