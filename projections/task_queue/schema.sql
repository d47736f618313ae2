-- The `task_queue` read model (projection `task_queue`): the hot set of tasks a worker may claim, queued or
-- leased, and nothing else (a task leaves it when it completes, fails or is cancelled). Folded from task
-- events only; rebuildable from audit_log. Claimers pick due rows from it (claim_candidates.sql) and their
-- claims, fenced by each task's stream version, update it inline (each row remembers the stream version it
-- reflects, so applying an event again, inline then by the runner, changes nothing).
create table task_queue (
    task_id text not null,
    -- `queued` (claimable from `due_at`) or `leased` (claimable again when the lease expires at `due_at`).
    state text not null,
    due_at timestamptz not null,
    -- The last attempt's number (0 before the first claim).
    attempt integer not null,
    -- The worker holding the lease.
    worker_id text,
    -- The stream version of the last event applied to this row.
    version integer not null,
    constraint task_queue_pkey primary key (task_id),
    constraint task_queue_state_check check (state in ('queued', 'leased'))
);

create index task_queue_due_idx on task_queue (due_at, task_id);
