-- The end of the next stretch of the log to catch up on: the last of up to $2 positions after $1 (null when
-- there is none). Appends are serialised and commit in position order, so every position up to it is visible.
select max(position) from (select position from audit_log where position > $1 order by position limit $2) as s
