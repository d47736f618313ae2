-- Unique keys claimed by events (idempotency keys, repo slugs, doctrine identities), written in the append
-- transaction. It is derived state: every row comes from `audit_log.unique_keys` and can be rebuilt from it.
create table unique_claims (
    key text not null,
    entity_kind text not null,
    entity_id text not null,
    position bigint not null,
    constraint unique_claims_pkey primary key (key)
);
