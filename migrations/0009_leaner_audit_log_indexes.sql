-- Two indexes of the log cost every append more than they give back (measured with `jct bench enqueue`: index
-- insertion was a quarter of the appending backend's time, at eight indexes on seven events per enqueue).
-- - `audit_log_idempotency_key_idx`: nothing looks an event up by its command's idempotency key (a repeat is found
--   in `unique_claims`), and every event of a keyed command carries the key.
-- - `audit_log_ts_idx`: time filters (`GET /audit/events?since=&until=`, `as_of` times) need only find the
--   stretch of the log a time falls in. `ts` is taken under the append lock, so it follows `position` (across
--   processes, up to their clocks' disagreement): a BRIN index summarises each stretch of pages in a few bytes, is
--   nearly free to keep up, and stays correct whatever the order (it only narrows the pages read).
drop index audit_log_idempotency_key_idx;
drop index audit_log_ts_idx;
create index audit_log_ts_brin_idx on audit_log using brin (ts) with (autosummarize = on);
