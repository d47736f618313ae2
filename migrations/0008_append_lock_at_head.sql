-- The first statement of a speculative append (docs/adr/0009-speculative-appends.md): takes the append lock, then
-- fails the transaction unless the log's head is exactly the position and hash the appender expects, that is
-- unless nothing was appended since the batch it last sent (which may still be on its way, in the same pipeline).
-- Everything else the batch was checked against without reading (stream versions, unique claims) is checked by
-- the insert itself: a stream version or a claim that was not as the appender remembered it collides with a
-- unique constraint, and the batch is appended again after a read. Like `append_lock_and_read`, the check is a
-- statement of its own in a volatile function, so under read committed it sees every batch committed before the
-- lock was granted (ADR 0002).
create function append_lock_at_head(lock_key bigint, expected_position bigint, expected_hash bytea)
returns void
language plpgsql volatile as $$
declare
    head_position bigint;
    head_hash bytea;
begin
    perform pg_advisory_xact_lock(lock_key);
    select l.position, l.hash into head_position, head_hash from audit_log l order by l.position desc limit 1;
    if coalesce(head_position, 0) <> expected_position
       or (head_position is not null and head_hash <> expected_hash) then
        raise exception 'the log''s head is at %, not at % as this appender expected', coalesce(head_position, 0),
            expected_position
            using errcode = 'JCT02',
                  hint = 'another appender wrote, or the batch before this one failed; the batch is appended after a read';
    end if;
end;
$$;
