-- A claim's one read (`queue::claim_candidates`), in a statement of its own (no transaction stays open):
-- 1. admit: the TaskEnqueued events the projector has not applied yet (past the checkpoint) are applied early, so a
--    new task is claimable at once, whoever applies the projection and whenever. Same rows as the fold (a queued
--    row per TaskEnqueued, due at queued_at), and as idempotent: an existing row wins, and a task that already
--    ended is not admitted. Inserted in log order, so concurrent claimers cannot deadlock.
-- 2. pick: up to $1 tasks claimable now (queued and due, or leased under an expired lease; not those in $3, which
--    this process's claims still being appended have picked), drawn at random from the $2 that have been due
--    longest, so that claimers in several processes seldom pick the same task. Picking
--    reserves nothing: the claim's append expects each task's stream at the version read here, and a task another
--    claimer took first is a conflict, never a second claim.
-- 3. read what deciding needs: the picked tasks' streams, their CWOM Issues' streams, and the ContextPackets and
--    ConstraintSnapshots those link, without before/after images, in log order.
-- Every row carries the database's clock as read for the claim (`now`), which also decided what is due; with
-- nothing claimable the one row has nulls but `now`.
with clock as materialized (
    select clock_timestamp() as now
),
admitted as (
    insert into task_queue (task_id, state, due_at, attempt, worker_id, version)
    select e.entity_id, 'queued', coalesce((e.payload ->> 'queued_at')::timestamptz, e.ts), 0, null, e.stream_version
      from audit_log e
     where e.event_type = 'TaskEnqueued'
       -- `is true`, which no index serves: the kind is checked on the rows the event type and position find. As a
       -- plain `=`, PostgreSQL (before it has analysed the log) intersected them with a bitmap of every Task event
       -- in the stream index, read whole at every claim (20 ms at 100,000 events).
       and (e.entity_kind = 'Task') is true
       and e.position > (select position from projection_checkpoints where name = 'task_queue')
       and not exists (select 1 from audit_log t
                        where t.entity_kind = 'Task' and t.entity_id = e.entity_id
                          and t.event_type in ('TaskCompleted', 'TaskFailed', 'TaskCancelled')
                        -- looked up by the stream's key for each event, never joined (see `task_events`)
                        offset 0)
     order by e.position
    on conflict (task_id) do nothing
    returning task_id, due_at
),
-- The queue's share is its $2 longest due, read in the order of task_queue_due_idx and no further (the clock as
-- a scalar, so the index is searched with it): a claim does not sort every queued task.
due as (
    (select q.task_id, q.due_at from task_queue q
      where q.due_at <= (select now from clock) and q.task_id <> all($3::text[])
      order by q.due_at, q.task_id
      limit $2)
    union all
    select a.task_id, a.due_at from admitted a, clock where a.due_at <= clock.now and a.task_id <> all($3::text[])
),
picked as materialized (
    select w.task_id
      from (select d.task_id from due d order by d.due_at, d.task_id limit $2) as w
     order by random()
     limit $1
),
-- Each stream is read by its key, (entity_kind, entity_id), once per picked task, Issue or linked object: a lateral
-- subquery behind `offset 0`, which PostgreSQL plans on its own with the id as a parameter. As a join, its generic
-- plan (built at a connection's sixth claim, maybe on a nearly empty log, and kept until the log is analysed)
-- could read every event of the kind and filter them by id: a claim that grew with the log (31 ms at 10,000
-- tasks), which sank the worker of a fresh `jct up` at 300 tasks/s.
task_events as (
    select a.* from picked p
     cross join lateral (select * from audit_log a where a.entity_kind = 'Task' and a.entity_id = p.task_id
                         offset 0) a
),
issue_ids as (
    select distinct payload -> 'task' ->> 'cwom_issue_id' as id
      from task_events
     where event_type = 'TaskCreated' and payload -> 'task' ->> 'cwom_issue_id' is not null
),
issue_events as (
    select a.* from issue_ids i
     cross join lateral (select * from audit_log a where a.entity_kind = 'Issue' and a.entity_id = i.id offset 0) a
),
linked as (
    select distinct payload ->> 'linked_kind' as kind, payload ->> 'linked_id' as id
      from issue_events
     where action = 'linked' and payload ->> 'linked_kind' in ('ContextPacket', 'ConstraintSnapshot')
),
streams as (
    select * from task_events
    union all
    select * from issue_events
    union all
    select a.* from linked l
     cross join lateral (select * from audit_log a where a.entity_kind = l.kind and a.entity_id = l.id offset 0) a
)
select clock.now, s.position, s.event_id, s.ts, s.entity_kind, s.entity_id, s.stream_version, s.event_type,
       s.schema_version, s.payload, s.action, s.actor_kind, s.actor_id, null::jsonb as before, null::jsonb as after,
       s.note, s.trace_id, s.correlation_id, s.causation_id, s.idempotency_key, s.unique_keys, s.prev_hash, s.hash
  from clock
  left join streams s on true
 order by s.position
