-- How many tasks the queue holds in each state (`queued`, `leased`), with the checkpoint they stand at; run in one
-- repeatable-read snapshot with the checkpoint's read (`queue::count_at_checkpoint`).
select state, count(*) from task_queue group by state
