-- One row per projection: the version of its schema that is live and the last audit_log position applied to it.
-- A projector updates its row in the same transaction as its table changes.
create table projection_checkpoints (
    name text not null,
    version integer not null,
    position bigint not null,
    updated_at timestamptz not null default now(),
    constraint projection_checkpoints_pkey primary key (name)
);
