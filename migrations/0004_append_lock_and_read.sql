-- One round trip for the start of every append batch: take the append lock, then read what the batch is
-- checked against (the log's head, the current version of each stream it touches, the owners of the unique
-- keys it claims). The read is a statement of its own inside a volatile function, so under read committed it
-- takes its snapshot after the lock is granted and sees every batch committed before (ADR 0002).
create function append_lock_and_read(lock_key bigint, stream_kinds text[], stream_ids text[], claim_keys text[])
returns table (what text, a text, b text, c text, n bigint, head_hash bytea)
language plpgsql volatile as $$
begin
    perform pg_advisory_xact_lock(lock_key);
    return query
        select 'head'::text, null::text, null::text, null::text, head.position, head.hash
          from (select l.position, l.hash from audit_log l order by l.position desc limit 1) as head
        union all
        select 'stream'::text, s.kind, s.id, null::text,
               (select max(l.stream_version)::bigint from audit_log l
                 where l.entity_kind = s.kind and l.entity_id = s.id),
               null::bytea
          from (select distinct u.kind, u.id from unnest(stream_kinds, stream_ids) as u(kind, id)) as s
        union all
        select 'claim'::text, uc.key, uc.entity_kind, uc.entity_id, uc.position, null::bytea
          from unique_claims uc where uc.key = any(claim_keys);
end;
$$;
