-- A speculative append's check of the stream versions it guessed (docs/adr/0009-speculative-appends.md, "Streams
-- another process wrote"): a command that expects a stream at version n, when the appender does not remember the
-- stream, is sent on the guess that the stream is at n. Run under the append lock, after `append_lock_at_head`,
-- this fails the transaction unless each such stream is exactly at its version: event n is in the log and event
-- n + 1 is not. So a wrong guess fails the batch (which is then appended after a read) and never stores anything,
-- and a batch that commits has proved each guess, which the appender then remembers.
create function append_expect_stream_versions(kinds text[], ids text[], versions int[])
returns void
language plpgsql volatile as $$
declare
    wrong record;
begin
    select e.kind, e.id, e.version into wrong
      from unnest(kinds, ids, versions) as e(kind, id, version)
     where not exists (select 1 from audit_log l
                        where l.entity_kind = e.kind and l.entity_id = e.id and l.stream_version = e.version)
        or exists (select 1 from audit_log l
                    where l.entity_kind = e.kind and l.entity_id = e.id and l.stream_version = e.version + 1)
     limit 1;
    if found then
        raise exception 'the stream %/% is not at version % as this appender guessed', wrong.kind, wrong.id,
            wrong.version
            using errcode = 'JCT03',
                  hint = 'the batch is appended after a read, which tells each command the stream''s version';
    end if;
end;
$$;
