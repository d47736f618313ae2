-- The changes of a batch to tasks created before it: arrays $1 task_id, $2 the changed fields, merged in order.
-- Run with a generic plan on the appender's connection (`Planning::Generic`): the redundant `t.task_id = any($1)`
-- beside the join gives that plan the primary key to find the rows by.
update tasks t
   set document = t.document || c.changes,
       status = coalesce(c.changes ->> 'status', t.status)
  from unnest($1::text[], $2::jsonb[]) as c(task_id, changes)
 where t.task_id = c.task_id
   and t.task_id = any($1)
