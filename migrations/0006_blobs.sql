-- Content the log's events name by digest (handler logs and artifacts up to `store::MAX_INLINE_BLOB_BYTES`),
-- stored in the transaction of the first event that names it, so no event can name content a crash lost and the
-- trace folders can be rendered again from the database alone, on any host. Larger content stays in the blob
-- root on the filesystem. Content-addressed: the database checks that each digest is the SHA-256 of its content,
-- and a row, once written, never changes (the same triggers as `audit_log`'s). `position` is the log position
-- of the event that first named the blob.
create table blobs (
    digest text not null,
    size_bytes bigint not null,
    content bytea not null,
    position bigint not null,
    constraint blobs_pkey primary key (digest),
    constraint blobs_digest_check check (digest = 'sha256:' || encode(sha256(content), 'hex')),
    constraint blobs_size_check check (size_bytes = octet_length(content))
);

create function blobs_refuse_change() returns trigger
language plpgsql as $$
begin
    raise exception 'blobs are content-addressed and never change: % is not allowed', tg_op
        using errcode = 'insufficient_privilege';
end;
$$;

create trigger blobs_refuse_update_delete
    before update or delete on blobs
    for each row execute function blobs_refuse_change();

create trigger blobs_refuse_truncate
    before truncate on blobs
    for each statement execute function blobs_refuse_change();
