-- How many tasks the queue holds in each state (`queued`, `leased`). `queue::count_at_checkpoint` runs it in one
-- repeatable-read snapshot with its read of the queue's checkpoint, so the counts stand exactly at that position.
select state, count(*) from task_queue group by state
