-- The task events the queue folds, after $1 and up to $2 (a stretch ended by `store::read::stretch_end`), in log order:
-- $3 the event types. The kind is tested with `is true`, which no index serves: as a plain `=`, PostgreSQL (before it
-- has analysed the log) may intersect the stretch with a bitmap of every Task event in the stream index.
select position, event_id, ts, entity_id, stream_version, event_type, schema_version, payload
  from audit_log
 where position > $1 and position <= $2 and (entity_kind = 'Task') is true and event_type = any($3)
 order by position
