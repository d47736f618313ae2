//! Content the log's events name by digest, stored in PostgreSQL (`blobs`, migration 0006) with the command whose
//! events name it: handler logs and artifacts up to [`MAX_INLINE_BLOB_BYTES`]. Larger content lives in the
//! filesystem blob store (`projections::trace::BlobStore`).
//!
//! A blob is stored in the same transaction as its command's events, so an event can never name content that a
//! crash lost, and no flush of a file and its directory is needed before the append. The database checks that
//! each digest is the SHA-256 of its content and refuses any change to a stored blob.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use sqlx::PgExecutor;

/// The largest blob a command may carry to be stored with its events. Larger content goes to the filesystem blob
/// store, flushed to the disk before the event naming it is appended.
pub const MAX_INLINE_BLOB_BYTES: usize = 1024 * 1024;

/// The most blob bytes one command may carry in all: a command's blobs are sent with its batch, under the append
/// lock, so this bounds what one command adds to everyone's wait.
pub const MAX_INLINE_BLOB_BYTES_PER_COMMAND: usize = 4 * 1024 * 1024;

/// `sha256:<hex>` of `bytes`: how events name content.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Content to store with a command ([`crate::NewCommand::blobs`]). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBlob {
    /// `sha256:<hex>` of `content`.
    pub digest: String,
    pub content: Arc<[u8]>,
}

impl NewBlob {
    pub fn new(content: impl Into<Arc<[u8]>>) -> NewBlob {
        let content = content.into();
        NewBlob { digest: sha256_digest(&content), content }
    }

    pub fn size_bytes(&self) -> usize {
        self.content.len()
    }
}

/// The read of [`read_blobs`]: each digest of `$1` looked up by the primary key, in a lateral subquery behind
/// `offset 0` that PostgreSQL plans on its own. Written as `digest = any($1)`, the generic plan a pooled connection
/// made on a nearly empty table was a sequential scan, kept until the table was analysed (never, with autovacuum
/// off): the trace folders' blob reads grew with every blob stored (5-10 ms at 3,000 blobs).
pub const READ_BLOBS_SQL: &str = "select b.digest, b.content from unnest($1::text[]) as d(digest) \
     cross join lateral (select digest, content from blobs where digest = d.digest offset 0) as b";

/// The stored content of those of `digests` that are in `blobs`, by digest (absent ones are left out).
pub async fn read_blobs<'c>(
    executor: impl PgExecutor<'c>,
    digests: &[String],
) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    if digests.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as(READ_BLOBS_SQL).bind(digests).fetch_all(executor).await.context("read blobs")?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_named_by_the_sha256_of_its_content() {
        let blob = NewBlob::new(b"abc".to_vec());
        assert_eq!(blob.digest, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(blob.size_bytes(), 3);
    }
}
