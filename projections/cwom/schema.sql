-- The CWOM read model (projection `cwom`): one table per core kind, each row the object's GET shape in `document`
-- plus the columns the list filters and orderings use, and the six link tables of the original (reference
-- §4.5). Folded from the CWOM streams by the generic event contract (projections/README.md); rebuildable from
-- audit_log. No foreign keys: every row comes from the log, in log order. Filter columns are nullable so that no
-- document, whoever wrote it, can stop the projection.

create table cwom_repos (
    id text not null,
    slug text,
    visibility text,
    -- Position of the object's `created` event: creation order, for "newest first".
    created_position bigint not null,
    document jsonb not null,
    constraint cwom_repos_pkey primary key (id)
);
create index cwom_repos_created_idx on cwom_repos (created_position desc);
create index cwom_repos_visibility_idx on cwom_repos (visibility, created_position desc);
create index cwom_repos_slug_idx on cwom_repos (slug);

create table cwom_issues (
    id text not null,
    repo_id text,
    status text,
    issue_type text,
    priority text,
    created_position bigint not null,
    document jsonb not null,
    constraint cwom_issues_pkey primary key (id)
);
create index cwom_issues_created_idx on cwom_issues (created_position desc);
create index cwom_issues_repo_idx on cwom_issues (repo_id, created_position desc);
create index cwom_issues_status_idx on cwom_issues (status, created_position desc);

create table cwom_context_packets (
    id text not null,
    for_issue_id text,
    created_position bigint not null,
    document jsonb not null,
    constraint cwom_context_packets_pkey primary key (id)
);
create index cwom_context_packets_issue_idx on cwom_context_packets (for_issue_id, created_position desc);

create table cwom_constraint_snapshots (
    id text not null,
    scope text,
    owner_id text,
    created_position bigint not null,
    document jsonb not null,
    constraint cwom_constraint_snapshots_pkey primary key (id)
);
create index cwom_constraint_snapshots_created_idx on cwom_constraint_snapshots (created_position desc);
create index cwom_constraint_snapshots_scope_idx on cwom_constraint_snapshots (scope, created_position desc);
create index cwom_constraint_snapshots_owner_idx on cwom_constraint_snapshots (owner_id, created_position desc);

create table cwom_doctrine_refs (
    id text not null,
    namespace text,
    name text,
    version text,
    doctrine_type text,
    priority text,
    created_position bigint not null,
    document jsonb not null,
    constraint cwom_doctrine_refs_pkey primary key (id)
);
create index cwom_doctrine_refs_order_idx
    on cwom_doctrine_refs (namespace collate "C", name collate "C", created_position);

create table cwom_runs (
    id text not null,
    for_issue_id text,
    repo_id text,
    status text,
    mode text,
    created_position bigint not null,
    document jsonb not null,
    constraint cwom_runs_pkey primary key (id)
);
create index cwom_runs_created_idx on cwom_runs (created_position desc);
create index cwom_runs_issue_idx on cwom_runs (for_issue_id, created_position desc);
create index cwom_runs_repo_idx on cwom_runs (repo_id, created_position desc);
create index cwom_runs_status_idx on cwom_runs (status, created_position desc);

create table cwom_artifacts (
    id text not null,
    produced_by_id text,
    for_issue_id text,
    artifact_type text,
    created_position bigint not null,
    document jsonb not null,
    constraint cwom_artifacts_pkey primary key (id)
);
create index cwom_artifacts_run_idx on cwom_artifacts (produced_by_id, created_position desc);
create index cwom_artifacts_issue_idx on cwom_artifacts (for_issue_id, created_position desc);

-- The link tables: the two ids, and when and at which position the `linked` event was appended.
create table cwom_issue_context_packets (
    issue_id text not null,
    context_packet_id text not null,
    created_at timestamptz not null,
    created_position bigint not null,
    constraint cwom_issue_context_packets_pkey primary key (issue_id, context_packet_id)
);

create table cwom_issue_doctrine_refs (
    issue_id text not null,
    doctrine_ref_id text not null,
    created_at timestamptz not null,
    created_position bigint not null,
    constraint cwom_issue_doctrine_refs_pkey primary key (issue_id, doctrine_ref_id)
);

create table cwom_issue_constraint_snapshots (
    issue_id text not null,
    constraint_snapshot_id text not null,
    created_at timestamptz not null,
    created_position bigint not null,
    constraint cwom_issue_constraint_snapshots_pkey primary key (issue_id, constraint_snapshot_id)
);

create table cwom_run_context_packets (
    run_id text not null,
    context_packet_id text not null,
    created_at timestamptz not null,
    created_position bigint not null,
    constraint cwom_run_context_packets_pkey primary key (run_id, context_packet_id)
);

create table cwom_run_doctrine_refs (
    run_id text not null,
    doctrine_ref_id text not null,
    created_at timestamptz not null,
    created_position bigint not null,
    constraint cwom_run_doctrine_refs_pkey primary key (run_id, doctrine_ref_id)
);

create table cwom_context_packet_doctrine_refs (
    context_packet_id text not null,
    doctrine_ref_id text not null,
    created_at timestamptz not null,
    created_position bigint not null,
    constraint cwom_context_packet_doctrine_refs_pkey primary key (context_packet_id, doctrine_ref_id)
);
