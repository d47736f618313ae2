-- The event log: every state change of JCT is one row here, and nothing else is authoritative.
-- Rows are appended under a transaction-scoped advisory lock (see docs/adr/0002-no-reader-skips-an-event.md),
-- so `position` is gapless and its order is commit order. `hash` chains every row to its predecessor
-- (docs/adr/0003-hash-chain.md).
create table audit_log (
    position bigint not null,
    event_id text not null,
    ts timestamptz not null,
    entity_kind text not null,
    entity_id text not null,
    stream_version integer not null,
    event_type text not null,
    schema_version integer not null,
    payload jsonb not null,
    action text not null,
    actor_kind text not null,
    actor_id text not null,
    before jsonb,
    after jsonb,
    note text,
    trace_id text,
    correlation_id text,
    causation_id text,
    idempotency_key text,
    unique_keys text[] not null default '{}',
    prev_hash bytea not null,
    hash bytea not null,
    constraint audit_log_pkey primary key (position),
    constraint audit_log_event_id_key unique (event_id),
    constraint audit_log_stream_version_key unique (entity_kind, entity_id, stream_version),
    constraint audit_log_position_check check (position > 0),
    constraint audit_log_stream_version_check check (stream_version > 0),
    constraint audit_log_action_check
        check (action in ('created', 'updated', 'status_changed', 'linked', 'unlinked', 'deleted')),
    constraint audit_log_actor_kind_check check (actor_kind in ('human', 'agent', 'system')),
    constraint audit_log_hash_length_check check (octet_length(hash) = 32 and octet_length(prev_hash) = 32)
);

create index audit_log_trace_id_idx on audit_log (trace_id, position) where trace_id is not null;
create index audit_log_actor_idx on audit_log (actor_kind, actor_id, position);
create index audit_log_ts_idx on audit_log (ts);
create index audit_log_event_type_idx on audit_log (event_type, position);
create index audit_log_idempotency_key_idx on audit_log (idempotency_key) where idempotency_key is not null;

-- Append-only, for every role including the table's owner: UPDATE, DELETE and TRUNCATE raise.
-- A superuser can still disable the triggers; the hash chain (`jct audit verify`) catches what they change.
create function audit_log_refuse_change() returns trigger
language plpgsql as $$
begin
    raise exception 'audit_log is append-only: % is not allowed', tg_op
        using errcode = 'insufficient_privilege';
end;
$$;

create trigger audit_log_refuse_update_delete
    before update or delete on audit_log
    for each row execute function audit_log_refuse_change();

create trigger audit_log_refuse_truncate
    before truncate on audit_log
    for each statement execute function audit_log_refuse_change();
