-- The `tasks` read model (projection `tasks`): one row per task, its GET shape in `document`, and the columns
-- the list filters use. Folded from task events only; rebuildable from audit_log.
create table tasks (
    task_id text not null,
    status text not null,
    operation text not null,
    requester_kind text not null,
    target_repo text not null,
    trace_id text,
    cwom_issue_id text,
    idempotency_key text,
    -- Position of the TaskCreated event: creation order, strictly increasing, for "newest first".
    created_position bigint not null,
    document jsonb not null,
    constraint tasks_pkey primary key (task_id)
);

create index tasks_created_position_idx on tasks (created_position desc);
create index tasks_status_idx on tasks (status, created_position desc);
create index tasks_operation_idx on tasks (operation, created_position desc);
create index tasks_requester_kind_idx on tasks (requester_kind, created_position desc);
create index tasks_target_repo_idx on tasks (target_repo, created_position desc);
-- No index on trace_id or cwom_issue_id: nothing reads tasks by them (an auditor's trace is read from audit_log),
-- and every insert and status change of a task would pay for them (version 3 dropped them).
