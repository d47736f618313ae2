-- The first statement of an append's pipelined read-model writes (docs/adr/0008-pipelined-appends.md): moves the
-- checkpoints of the named read models (at the given versions) from `after_position` to `to_position`, and fails
-- the transaction unless every one of them was exactly at `after_position` and free. The read models' own
-- statements are already on their way behind it, computed on the assumption that every read model is current; a
-- failure here aborts the transaction before any of them can apply to a read model that is behind or being caught
-- up by its projector (a checkpoint row another transaction holds is skipped, never waited for under the append
-- lock), and the appender appends the batch again step by step.
create function move_inline_checkpoints(names text[], versions int[], after_position bigint, to_position bigint)
returns void
language plpgsql volatile as $$
declare
    moved integer;
begin
    update projection_checkpoints c
       set position = to_position, updated_at = now()
      from (select name from projection_checkpoints
             where (name, version) in (select * from unnest(names, versions))
               and position = after_position
               for update skip locked) as current
     where c.name = current.name;
    get diagnostics moved = row_count;
    if moved <> cardinality(names) then
        raise exception 'read models not at position %: % of % current', after_position, moved, cardinality(names)
            using errcode = 'JCT01',
                  hint = 'a projector is catching one up, or it is behind; the batch is appended step by step';
    end if;
end;
$$;
