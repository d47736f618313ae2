-- The task events the queue folds, after $1 and up to $2 (a stretch ended by `store::read::stretch_end`), in log order:
-- $3 the event types.
select position, event_id, ts, entity_id, stream_version, event_type, schema_version, payload
  from audit_log
 where position > $1 and position <= $2 and entity_kind = 'Task' and event_type = any($3)
 order by position
