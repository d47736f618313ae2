//! Trace folders: `<root>/<task_id>/` with `input.json`, `log.txt`, `output.json`, `events.jsonl` and
//! `artifacts/`, projected from each executed task's stream and the content-addressed blobs its events name.
//!
//! **Why a [`Projection`]** (and not a separate runner): a trace folder is a pure function of its task's stream
//! (plus blobs, which never change once written), so `apply` can re-render the whole folder from the stream
//! whenever the task changes. Re-rendering is idempotent, which is all the runner needs from a projection that
//! writes outside its transaction: a crash between writing the files and committing the checkpoint re-applies
//! the event and writes the same bytes again. So the trace folders get the runner's checkpoint in
//! `projection_checkpoints`, its NOTIFY/poll loop, `jct projections status`, and `rebuild` (which re-renders
//! every folder from the log) for free. It has no tables (its schema is a no-op); its "rows" are files.
//!
//! To keep the work per task small, `apply` renders a folder only at the stream's latest event: when a later
//! event of the same task is already in the log, the runner will apply that one too (positions are gapless and
//! applied in order), so rendering now would be overwritten anyway. Events before the first `TaskClaimed`
//! render nothing: a task cancelled while queued never executed and has no folder. An attempt's claim renders
//! its folder only when it is over a second old; a younger one leaves it to the attempt's next event, its end or
//! its first heartbeat (`JCT_WORKER_HEARTBEAT_INTERVAL`), so a short attempt's folder is written once. Which
//! event renders a folder never changes its bytes: they are a function of the whole stream.
//!
//! **Determinism**: every byte comes from the events (including their recorded timestamps, positions and
//! hashes) and from blobs addressed by SHA-256, never from the clock or the filesystem's state. Deleting the
//! trace root and rebuilding reproduces every file byte for byte. Each file is written atomically (a temporary
//! file in the same directory, then `rename`).
//!
//! **What a folder is rendered from**: a folder needs its task's whole stream, but a batch brings only its
//! newest events. The projection keeps, for up to [`CACHED_STREAMS`] tasks at once, the stretch of each task's
//! stream its batches brought without a gap: the whole stream when it saw the task enqueued, the events from the
//! claim on when the task was enqueued before the projection started (a backlog, a restart). It renders from that
//! stretch and reads back from the log only what came before it, or the whole stream when it holds none (another
//! process applied some of its events, a batch was applied again, the cache was full). A stretch leaves the cache
//! once its folder is rendered (most tasks end within one attempt) or its task turns out never to have run
//! (cancelled while queued); a later event reads it back. Both sources give the same events, upcast alike, so the
//! folder's bytes do not depend on which was used (a test renders one log from the whole streams, from stretches
//! that begin at the claims, and from the log alone).
//!
//! **Blobs**: the events name each handler log and artifact by digest (`log_digest`, `digest`). Content up to
//! [`store::blob::MAX_INLINE_BLOB_BYTES`] is stored in the database with the events that name it (`blobs`,
//! [`store::blob`]); larger content under `<blob root>/sha256/<hex>` ([`BlobStore`]), on the disk before the
//! event is appended. Rendering reads the database first, then the blob root. The blob root defaults to
//! `<trace root>/.blobs`; it is the projection's input, like the log, so a rebuild that deletes the trace root
//! must keep it (or the blob root must live elsewhere). A missing blob renders as a one-line notice rather than
//! failing the projection.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use domain::event::{EntityKind, StreamId};
use domain::task::lifecycle::{events, format_ts};
use domain::task::run;
use futures::StreamExt as _;
use serde::Deserialize as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use store::{RecordedEvent, Upcasters};

use crate::Projection;

/// `file://` URI of a local absolute path.
pub fn file_uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    store::blob::sha256_digest(bytes)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, then `rename`. Creates the
/// parent directories.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_via_temp(path, bytes, false)
}

/// Writes `bytes` to `path` through a temporary file and `rename`; with `sync_content`, the content is flushed to
/// the disk before the rename (the directory's entry is then the caller's to flush: [`sync_dir`]).
fn write_via_temp(path: &Path, bytes: &[u8], sync_content: bool) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().ok_or_else(|| std::io::Error::other("a path without a parent"))?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let written = std::fs::File::create(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        if sync_content {
            file.sync_all()?;
        }
        Ok(())
    });
    match written.and_then(|()| std::fs::rename(&temp, path)) {
        Ok(()) => Ok(()),
        Err(error) => {
            let _ = std::fs::remove_file(&temp);
            Err(error)
        }
    }
}

/// Flushes a directory's entries (a rename into it) to the disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Content-addressed storage of handler logs and artifacts: `<root>/sha256/<hex>`, written once, never changed.
/// Every blob is on the disk (content and directory entry) once its batch's `finish` returns, so an event
/// appended after that never names content a crash could lose.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size_bytes: u64,
}

impl BlobStore {
    pub fn new(root: impl Into<PathBuf>) -> BlobStore {
        BlobStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives; `None` for a digest that is not `sha256:<64 hex>`.
    pub fn path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|byte| byte.is_ascii_hexdigit()))
            .then(|| self.root.join("sha256").join(hex.to_ascii_lowercase()))
    }

    /// A batch to store blobs through, with one flush of the directory for all of them: each content is on the
    /// disk as it is put, the directory entries once [`BlobBatch::finish`] has returned. Name none of them in an
    /// event before that.
    pub fn batch(&self) -> BlobBatch {
        BlobBatch { store: self.clone(), renamed: false }
    }

    /// The content of a blob, if it is stored.
    pub fn get(&self, digest: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(digest)?).ok()
    }
}

/// Blobs being stored by [`BlobStore::batch`].
#[must_use = "the blobs are on the disk only once `finish` has returned"]
pub struct BlobBatch {
    store: BlobStore,
    /// Whether a blob was renamed into the directory since the last flush.
    renamed: bool,
}

impl BlobBatch {
    /// Stores `bytes` (a no-op when that content is stored already); its content is on the disk when it returns.
    pub fn put(&mut self, bytes: &[u8]) -> std::io::Result<Blob> {
        let digest = sha256_digest(bytes);
        let path = self.store.path(&digest).expect("a sha256 digest");
        if !path.exists() {
            write_via_temp(&path, bytes, true)?;
            self.renamed = true;
        }
        Ok(Blob { digest, size_bytes: bytes.len() as u64 })
    }

    /// Stores the file at `source`, hashing it while copying (large artifacts never sit in memory).
    pub fn put_file(&mut self, source: &Path) -> std::io::Result<Blob> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = self.store.root.join("sha256");
        std::fs::create_dir_all(&dir)?;
        let temp = dir.join(format!(".incoming-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        let result = (|| {
            let mut input = std::fs::File::open(source)?;
            let mut output = std::fs::File::create(&temp)?;
            let mut hasher = Sha256::new();
            let mut buffer = vec![0_u8; 64 * 1024];
            let mut size_bytes = 0_u64;
            loop {
                let n = input.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
                output.write_all(&buffer[..n])?;
                size_bytes += n as u64;
            }
            output.sync_all()?;
            let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
            let path = self.store.path(&digest).expect("a sha256 digest");
            if path.exists() {
                std::fs::remove_file(&temp)?;
            } else {
                std::fs::rename(&temp, &path)?;
                self.renamed = true;
            }
            Ok(Blob { digest, size_bytes })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    /// Flushes the directory entries of the blobs put (one `fsync` of the directory, none if nothing was new).
    pub fn finish(self) -> std::io::Result<()> {
        if self.renamed {
            sync_dir(&self.store.root.join("sha256"))?;
        }
        Ok(())
    }
}

/// The trace folders under one root.
pub struct TraceProjection {
    root: PathBuf,
    blobs: BlobStore,
    /// Applied to streams read back from the log, as the runner applies them to the batches it hands over.
    upcasters: Upcasters,
    streams: std::sync::Mutex<StreamCache>,
    /// Started at the first folder written.
    writers: std::sync::OnceLock<FolderWriters>,
}

impl TraceProjection {
    pub const NAME: &'static str = "trace_folders";
    pub const VERSION: i32 = 1;

    /// Folders under `root` (absolute, so the URIs in events name it), blobs under `blob_root`.
    pub fn new(root: impl Into<PathBuf>, blob_root: impl Into<PathBuf>) -> TraceProjection {
        TraceProjection {
            root: root.into(),
            blobs: BlobStore::new(blob_root),
            upcasters: Upcasters::new(),
            streams: std::sync::Mutex::new(StreamCache::with_capacity(CACHED_STREAMS)),
            writers: std::sync::OnceLock::new(),
        }
    }

    /// The upcasters the runner applies to the events it hands over: streams read back from the log get them too.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> TraceProjection {
        self.upcasters = upcasters;
        self
    }

    /// Keeps at most `streams` task streams in memory (0: every stream is read back from the log).
    pub fn with_cached_streams(self, streams: usize) -> TraceProjection {
        *self.streams.lock().expect("not poisoned") = StreamCache::with_capacity(streams);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The folder of a task.
    pub fn folder(&self, task_id: &str) -> PathBuf {
        self.root.join(task_id)
    }
}

#[async_trait]
impl Projection for TraceProjection {
    fn name(&self) -> &'static str {
        TraceProjection::NAME
    }

    fn version(&self) -> i32 {
        TraceProjection::VERSION
    }

    fn schema(&self) -> &'static str {
        // No tables: the folders are files.
        "select 1"
    }

    fn writes_outside_the_database(&self) -> bool {
        true
    }

    /// Only task events call for a folder.
    fn entity_kinds(&self) -> Option<&'static [EntityKind]> {
        Some(&[EntityKind::Task])
    }

    /// `events.jsonl` shows each event's `before` and `after`: the streams kept from the batches need them. Without
    /// that cache a batch's events only say which folders to render, each from its stream read whole, and the
    /// batches are read without their images.
    fn folds_images(&self) -> bool {
        self.streams.lock().expect("not poisoned").capacity > 0
    }

    /// A folder is rendered from its task's whole stream: waiting for a burst of appends (a claim, then the run's
    /// end a few milliseconds later) renders it once instead of once per append.
    fn settle(&self) -> std::time::Duration {
        SETTLE
    }

    /// A folder depends on its whole stream, so a batch renders each task it touches once, at its last event.
    /// Copies the task events (all that a folder reads) for [`Projection::apply_owned_batch`], which keeps some.
    async fn apply_batch(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let task_events = events.iter().filter(|event| event.stream.kind == EntityKind::Task).cloned().collect();
        self.apply_owned_batch(conn, task_events).await
    }

    /// [`Projection::apply_batch`], moving the events it caches instead of copying them: the runner's batches.
    async fn apply_owned_batch(&self, conn: &mut PgConnection, events: Vec<RecordedEvent>) -> anyhow::Result<()> {
        // Each task's newest event here, as (stream, version): a task whose newest event is a young claim renders
        // nothing now, whatever the log holds after it (see `renders_now`), and its stream is not even read.
        let mut seen = std::collections::HashSet::new();
        let mut last: Vec<(StreamId, i32)> = Vec::new();
        for event in events.iter().rev() {
            if event.stream.kind == EntityKind::Task
                && seen.insert(&event.stream)
                && may_render(event)
                && !claimed_just_now(event)
            {
                last.push((event.stream.clone(), event.stream_version));
            }
        }
        last.reverse();
        // Streams the cache holds (taken out: rendered now, or never, as below); the rest of each, or the whole of
        // those it does not hold, in one round trip.
        let mut by_stream: HashMap<String, Vec<RecordedEvent>> = HashMap::new();
        let mut to_read: Vec<(StreamId, i32)> = Vec::new();
        {
            let mut cache = self.streams.lock().expect("not poisoned");
            for event in events.into_iter().filter(|event| event.stream.kind == EntityKind::Task) {
                cache.observe(event);
            }
            for (stream, _) in &last {
                let held = cache.take(&stream.id).unwrap_or_default();
                let first = held.first().map_or(i32::MAX, |first| first.stream_version);
                if first > 1 {
                    to_read.push((stream.clone(), first));
                }
                by_stream.insert(stream.id.clone(), held);
            }
        }
        let mut read: HashMap<String, Vec<RecordedEvent>> = HashMap::new();
        for event in store::read::read_stream_prefixes(&mut *conn, &to_read).await? {
            let event = self.upcasters.upcast(event);
            read.entry(event.stream.id.clone()).or_default().push(event);
        }
        for (task_id, mut stream) in read {
            let held = by_stream.entry(task_id).or_default();
            // The log's versions are gapless: what was read ends right before what the cache held.
            if let (Some(read_last), Some(held_first)) = (stream.last(), held.first()) {
                anyhow::ensure!(
                    read_last.stream_version + 1 == held_first.stream_version,
                    "task {}: read up to version {} for a cached stretch from version {}",
                    read_last.stream.id,
                    read_last.stream_version,
                    held_first.stream_version
                );
            }
            stream.append(held);
            *held = stream;
        }
        // A stream that does not render now is dropped: a young claim never got here, so it is a task that never
        // ran (cancelled while queued), or one whose later event in the log will render it.
        let mut to_write: Vec<(String, Vec<RecordedEvent>)> = last
            .into_iter()
            .filter_map(|(stream_id, version)| {
                let stream = by_stream.remove(&stream_id.id)?;
                renders_now(version, &stream).then_some((stream_id.id, stream))
            })
            .collect();
        let mut writing = futures::stream::FuturesUnordered::new();
        let writers = self.writers.get_or_init(FolderWriters::start);
        // The blobs of a few folders at a time (each up to a MiB), in one round trip.
        for chunk in to_write.chunks_mut(BLOB_READ_FOLDERS) {
            let digests: Vec<String> = chunk
                .iter()
                .flat_map(|(_, stream)| named_digests(stream))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let stored = Arc::new(store::blob::read_blobs(&mut *conn, &digests).await?);
            // A writer thread takes several folders at once: a hand-over per folder cost more than a small one's
            // files.
            for group in chunk.chunks_mut(chunk.len().div_ceil(PARALLEL_WRITERS)) {
                while writing.len() >= PARALLEL_WRITERS {
                    writing.next().await.expect("not empty")?;
                }
                let blobs = Blobs { stored: stored.clone(), files: self.blobs.clone() };
                let folders: Vec<(PathBuf, Vec<RecordedEvent>)> =
                    group.iter_mut().map(|(task_id, stream)| (self.folder(task_id), std::mem::take(stream))).collect();
                writing.push(writers.write(move || {
                    folders.iter().try_for_each(|(folder, stream)| write_folder(folder, stream, &blobs))
                }));
            }
        }
        while let Some(written) = writing.next().await {
            written?;
        }
        Ok(())
    }

    /// One event is a batch of one: the same streams (cached or read back), the same rule, the same writers.
    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> anyhow::Result<()> {
        self.apply_batch(conn, std::slice::from_ref(event)).await
    }
}

/// How long the background runner waits after a notification before rendering ([`Projection::settle`]).
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// How long after its claim a running attempt's folder waits for the attempt's next event (its end, or a
/// heartbeat) to render it, instead of being rendered for the claim and again a few milliseconds later for the
/// end: most attempts are short, and a folder rendered twice rewrites three files. An attempt claimed earlier is
/// rendered at once (a catch-up or rebuild of an older log).
const CLAIM_RENDER_DELAY: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// How many threads write a batch's folders at once.
const PARALLEL_WRITERS: usize = 4;

/// The nice value of the threads that write trace folders: below the rest of the process (0), so that when the
/// machine is busy the worker's claims and appends, which hold up every task behind them, run first and the folders,
/// a projection that may lag, take what is left. On 2026-12-04 `jct bench worker`'s end to end with it won 5 of 6
/// interleaved rounds against the same build without, by about 4% (1,076-1,107 against 1,025-1,059 tasks/s in one
/// set of three).
const WRITER_NICENESS: i32 = 10;

/// The threads that write trace folders ([`PARALLEL_WRITERS`] of them, at [`WRITER_NICENESS`]); they end when the
/// projection is dropped. Threads of their own rather than tokio's blocking pool: a thread's priority, once lowered,
/// cannot be raised again without privileges, and the pool's threads run other work too.
struct FolderWriters {
    jobs: flume::Sender<Box<dyn FnOnce() + Send>>,
}

impl FolderWriters {
    fn start() -> FolderWriters {
        let (jobs, queue) = flume::unbounded::<Box<dyn FnOnce() + Send>>();
        for n in 0..PARALLEL_WRITERS {
            let queue = queue.clone();
            let started = std::thread::Builder::new().name(format!("jct-trace-{n}")).spawn(move || {
                // Linux keeps a nice value per thread; where it cannot be lowered the folders are written at the
                // usual priority.
                if let Err(error) = rustix::process::setpriority_process(None, WRITER_NICENESS) {
                    tracing::debug!("trace writer at the usual priority: {error}");
                }
                while let Ok(job) = queue.recv() {
                    job();
                }
            });
            if let Err(error) = started {
                tracing::warn!("could not start a trace writer thread: {error}");
            }
        }
        FolderWriters { jobs }
    }

    /// Runs `write` on a writer thread and returns its result (an error if it panicked).
    async fn write(&self, write: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> anyhow::Result<()> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Box::new(move || {
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(write))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the trace writer panicked")));
            let _ = reply.send(written);
        });
        self.jobs.send(job).map_err(|_| anyhow::anyhow!("the trace writers have stopped"))?;
        answer.await.map_err(|_| anyhow::anyhow!("no trace writer thread is running"))?
    }
}

/// How many folders' blobs are read from the database in one round trip (each blob is at most
/// [`store::blob::MAX_INLINE_BLOB_BYTES`]).
const BLOB_READ_FOLDERS: usize = 32;

/// The blobs a folder is rendered from: those stored with the events (read for the batch), else the files of the
/// blob store.
struct Blobs {
    stored: Arc<HashMap<String, Vec<u8>>>,
    files: BlobStore,
}

impl Blobs {
    fn get(&self, digest: &str) -> Option<Vec<u8>> {
        self.stored.get(digest).cloned().or_else(|| self.files.get(digest))
    }
}

/// Every digest a stream's events name (the values of `digest` and `log_digest` members, at any depth): what
/// rendering its folder may read.
fn named_digests(stream: &[RecordedEvent]) -> BTreeSet<String> {
    fn walk(value: &Value, found: &mut BTreeSet<String>) {
        match value {
            Value::Object(members) => {
                for (key, value) in members {
                    match (key.as_str(), value) {
                        ("digest" | "log_digest", Value::String(digest)) => {
                            found.insert(digest.clone());
                        }
                        _ => walk(value, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
            _ => {}
        }
    }
    let mut found = BTreeSet::new();
    for event in stream {
        walk(&event.payload, &mut found);
    }
    found
}

/// Whether `event` may call for its task's folder: a task event after the enqueue, of a task whose id is a safe
/// folder name.
fn may_render(event: &RecordedEvent) -> bool {
    if event.stream.kind != EntityKind::Task
        || matches!(event.event_type.as_str(), events::TASK_CREATED | events::TASK_ENQUEUED)
    {
        return false;
    }
    if !is_safe_name(&event.stream.id) {
        tracing::warn!(task_id = %event.stream.id, "not a safe folder name; no trace folder");
        return false;
    }
    true
}

/// Whether `stream` (the task's whole stream, up to `version`, its newest event in a batch, at least) is to be
/// rendered now: not when a later event will render it, for a task that never ran, nor for an attempt claimed less
/// than [`CLAIM_RENDER_DELAY`] ago whose claim is still the stream's last event.
fn renders_now(version: i32, stream: &[RecordedEvent]) -> bool {
    let Some(last) = stream.last() else { return false };
    if last.stream_version > version {
        return false;
    }
    if !stream.iter().any(|event| event.event_type == events::TASK_CLAIMED) {
        return false;
    }
    !claimed_just_now(last)
}

/// Whether `event` is an attempt's claim (or its start) less than [`CLAIM_RENDER_DELAY`] old: if it is its stream's
/// last event the folder waits for the next one, and if it is not, that later event renders it.
fn claimed_just_now(event: &RecordedEvent) -> bool {
    matches!(event.event_type.as_str(), events::TASK_CLAIMED | events::RUN_STARTED)
        && chrono::Utc::now() - event.ts < CLAIM_RENDER_DELAY
}

/// How many task streams a [`TraceProjection`] keeps in memory at most (a queued task's is its first two events
/// with their images, some KiB decoded; a running one's also its claim and the handler's input): tens of MiB.
pub const CACHED_STREAMS: usize = 2_048;

/// Stretches of task streams seen in the order the batches brought them: each from the first event of its stream
/// the projection saw (its first event, when the projection saw the task enqueued; its claim, when the task was
/// enqueued before the projection started, say) up to the last, without a gap. What comes before a stretch is read
/// back from the log when the folder is rendered.
struct StreamCache {
    streams: HashMap<String, Vec<RecordedEvent>>,
    capacity: usize,
}

impl StreamCache {
    fn with_capacity(capacity: usize) -> StreamCache {
        StreamCache { streams: HashMap::new(), capacity }
    }

    /// Takes in the next event of a task stream: the next one of a stretch held extends it; anything else held
    /// (a gap or a repeat) drops the stretch; an event of a stream not held begins a stretch (while there is room).
    fn observe(&mut self, event: RecordedEvent) {
        let room = self.streams.len() < self.capacity;
        match self.streams.get_mut(&event.stream.id) {
            Some(stream) => {
                if stream.last().is_some_and(|last| last.stream_version + 1 == event.stream_version) {
                    stream.push(event);
                } else {
                    self.streams.remove(&event.stream.id);
                }
            }
            None if room => {
                self.streams.insert(event.stream.id.clone(), vec![event]);
            }
            None => {}
        }
    }

    /// The stretch of `task_id` held, taken out of the cache.
    fn take(&mut self, task_id: &str) -> Option<Vec<RecordedEvent>> {
        self.streams.remove(task_id)
    }
}

/// Renders a task's folder and writes it atomically: a folder that does not exist yet is written whole in a
/// temporary directory beside it and renamed into place (one rename, and readers see all of it or nothing); in
/// an existing folder each file that changed is replaced through a temporary file and a rename.
fn write_folder(folder: &Path, stream: &[RecordedEvent], blobs: &Blobs) -> anyhow::Result<()> {
    let files = render(stream, &|digest| blobs.get(digest));
    if !folder.exists() {
        match write_new_folder(folder, &files) {
            Ok(()) => return Ok(()),
            // Another renderer made it meanwhile: update it file by file.
            Err(error) if folder.exists() => tracing::debug!("{}: {error}", folder.display()),
            Err(error) => return Err(error).with_context(|| format!("write {}", folder.display())),
        }
    }
    for (relative, bytes) in files {
        let path = folder.join(&relative);
        // Unchanged files stay as they are (input.json and artifacts never change once written).
        let unchanged = std::fs::metadata(&path).is_ok_and(|meta| meta.len() == bytes.len() as u64)
            && std::fs::read(&path).is_ok_and(|existing| existing == bytes);
        if !unchanged {
            write_atomic(&path, &bytes).with_context(|| format!("write {}", path.display()))?;
        }
    }
    Ok(())
}

/// Writes `files` into a new temporary directory beside `folder`, then renames it to `folder` (which must not
/// exist, or be empty). The temporary directory is removed on failure.
fn write_new_folder(folder: &Path, files: &[(PathBuf, Vec<u8>)]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let parent = folder.parent().ok_or_else(|| std::io::Error::other("a folder without a parent"))?;
    let name = folder.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = parent.join(format!(".{name}.tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let written = (|| {
        // The trace root exists but for the first folder (or after someone removed it): made only then, which
        // saves every other folder a `mkdir` and a `stat`.
        if let Err(error) = std::fs::create_dir(&temp) {
            if error.kind() != std::io::ErrorKind::NotFound {
                return Err(error);
            }
            std::fs::create_dir_all(parent)?;
            std::fs::create_dir(&temp)?;
        }
        let mut made: HashSet<PathBuf> = HashSet::from([temp.clone()]);
        for (relative, bytes) in files {
            let path = temp.join(relative);
            let dir = path.parent().expect("a file in the folder");
            if !made.contains(dir) {
                std::fs::create_dir_all(dir)?;
                made.insert(dir.to_path_buf());
            }
            std::fs::write(&path, bytes)?;
        }
        std::fs::rename(&temp, folder)
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    written
}

/// Registers the projection's checkpoint (it has no tables). A checkpoint of another version starts over from
/// position 0: every folder is rendered again by the new code. (`runner::install` would do the same through a
/// shadow rebuild; this is the lighter path for a projection without tables.)
pub async fn install(pool: &sqlx::PgPool, projection: &TraceProjection) -> anyhow::Result<()> {
    sqlx::query(
        "insert into projection_checkpoints (name, version, position) values ($1, $2, 0) \
         on conflict (name) do update set version = excluded.version, position = 0, updated_at = now() \
         where projection_checkpoints.version < excluded.version",
    )
    .bind(projection.name())
    .bind(projection.version())
    .execute(pool)
    .await
    .context("register the trace_folders checkpoint")?;
    Ok(())
}

/// A task id fit to be a folder name: ASCII letters, digits, `-` and `_`.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// A relative artifact path with only normal components (no `..`, no root).
pub fn is_safe_relative_path(path: &str) -> bool {
    let path = Path::new(path);
    !path.as_os_str().is_empty() && path.components().all(|component| matches!(component, Component::Normal(_)))
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON values serialise");
    bytes.push(b'\n');
    bytes
}

/// One attempt as `output.json` shows it.
struct AttemptView {
    attempt: u32,
    run_id: String,
    worker_id: String,
    claimed_at: String,
    started_at: Option<String>,
    ended_at: Option<String>,
    outcome: &'static str,
    error: Option<String>,
    duration_s: Option<f64>,
    log_digest: Option<String>,
    artifacts: Vec<Value>,
}

impl AttemptView {
    fn to_json(&self) -> Value {
        json!({
            "attempt": self.attempt,
            "run_id": self.run_id,
            "worker_id": self.worker_id,
            "claimed_at": self.claimed_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "outcome": self.outcome,
            "error": self.error,
            "duration_s": self.duration_s,
            "log_digest": self.log_digest,
            "artifacts": self.artifacts,
        })
    }
}

/// The files of a task's trace folder from its stream: `(path relative to the folder, bytes)`. Pure: the same
/// events and blobs give the same bytes.
pub fn render(stream: &[RecordedEvent], blob: &dyn Fn(&str) -> Option<Vec<u8>>) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut log = String::new();
    let mut events_jsonl: Vec<u8> = Vec::new();
    let mut attempts: Vec<AttemptView> = Vec::new();
    let mut input = Value::Null;
    let mut task = Value::Null;
    let mut status = "pending";
    let mut outputs = Value::Null;
    let mut error: Option<String> = None;
    let mut queued_at: Option<String> = None;
    let mut completed_at: Option<String> = None;
    let mut artifact_files: Vec<(String, String)> = Vec::new();

    // An attempt's handler log (a blob named by its end event) goes before the lines of its artifacts, which
    // wait in `deferred` until then.
    let mut deferred = String::new();
    let log_blob = |log: &mut String, deferred: &mut String, digest: &Option<String>| {
        if let Some(digest) = digest {
            match blob(digest) {
                Some(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    log.push_str(&text);
                    if !text.is_empty() && !text.ends_with('\n') {
                        log.push('\n');
                    }
                }
                None => {
                    let _ = writeln!(log, "[handler log {digest} is not in the blob store]");
                }
            }
        }
        log.push_str(deferred);
        deferred.clear();
    };

    for event in stream {
        serde_json::to_writer(&mut events_jsonl, &event.as_json()).expect("an event serialises");
        events_jsonl.push(b'\n');
        if !matches!(
            event.event_type.as_str(),
            events::ARTIFACT_PRODUCED
                | events::TASK_COMPLETED
                | events::TASK_TIMED_OUT
                | events::TASK_RETRY_SCHEDULED
                | events::TASK_FAILED
                | events::TASK_RELEASED
        ) {
            log_blob(&mut log, &mut deferred, &None);
        }
        let at = format_ts(event.ts);
        let payload = &event.payload;
        let current = |attempts: &[AttemptView], number: u32| -> Option<usize> {
            attempts.iter().rposition(|view| view.attempt == number)
        };
        match event.event_type.as_str() {
            events::TASK_CREATED => {
                task = payload["task"].clone();
                let _ = writeln!(log, "[{at}] task created");
            }
            events::TASK_ENQUEUED => {
                status = "queued";
                queued_at = payload["queued_at"].as_str().map(str::to_owned);
                let _ = writeln!(log, "[{at}] task queued");
            }
            events::TASK_CLAIMED => {
                let Ok(claimed) = run::TaskClaimed::deserialize(payload) else { continue };
                status = "running";
                let _ = writeln!(
                    log,
                    "[{at}] attempt {}: claimed by {} (lease until {})",
                    claimed.attempt,
                    claimed.worker_id,
                    format_ts(claimed.lease_expires_at)
                );
                attempts.push(AttemptView {
                    attempt: claimed.attempt,
                    run_id: claimed.run_id,
                    worker_id: claimed.worker_id,
                    claimed_at: format_ts(claimed.claimed_at),
                    started_at: None,
                    ended_at: None,
                    outcome: "running",
                    error: None,
                    duration_s: None,
                    log_digest: None,
                    artifacts: Vec::new(),
                });
            }
            events::RUN_STARTED => {
                let Ok(started) = run::RunStarted::deserialize(payload) else { continue };
                let _ = writeln!(
                    log,
                    "[{at}] attempt {}: run {} started with executor {} {} (time budget {} s)",
                    started.attempt,
                    started.run_id,
                    started.executor.kind,
                    started.executor.version,
                    started.time_budget_seconds
                );
                input = started.input;
                if let Some(index) = current(&attempts, started.attempt) {
                    attempts[index].started_at = Some(format_ts(started.started_at));
                }
            }
            events::TASK_LEASE_RENEWED => {
                let Ok(renewed) = run::TaskLeaseRenewed::deserialize(payload) else { continue };
                let _ = writeln!(
                    log,
                    "[{at}] attempt {}: lease renewed until {}",
                    renewed.attempt,
                    format_ts(renewed.lease_expires_at)
                );
            }
            events::ARTIFACT_PRODUCED => {
                let Ok(artifact) = run::ArtifactProduced::deserialize(payload) else { continue };
                let _ = writeln!(
                    deferred,
                    "[{at}] attempt {}: artifact {} ({}, {} bytes)",
                    artifact.attempt, artifact.path, artifact.digest, artifact.size_bytes
                );
                if is_safe_relative_path(&artifact.path) {
                    artifact_files.push((artifact.path.clone(), artifact.digest.clone()));
                }
                if let Some(index) = current(&attempts, artifact.attempt) {
                    attempts[index].artifacts.push(json!({
                        "artifact_id": artifact.artifact_id,
                        "path": artifact.path,
                        "uri": artifact.uri,
                        "digest": artifact.digest,
                        "size_bytes": artifact.size_bytes,
                        "media_type": artifact.media_type,
                        "type": artifact.artifact_type,
                        "title": artifact.title,
                    }));
                }
            }
            events::TASK_COMPLETED => {
                let Ok(completed) = run::TaskCompleted::deserialize(payload) else { continue };
                log_blob(&mut log, &mut deferred, &completed.log_digest);
                let _ = writeln!(log, "[{at}] attempt {}: completed in {} s", completed.attempt, completed.duration_s);
                status = "completed";
                outputs = completed.outputs.clone();
                error = None;
                completed_at = Some(format_ts(completed.completed_at));
                if let Some(index) = current(&attempts, completed.attempt) {
                    let view = &mut attempts[index];
                    view.outcome = "completed";
                    view.ended_at = Some(format_ts(completed.completed_at));
                    view.duration_s = Some(completed.duration_s);
                    view.log_digest = completed.log_digest;
                }
            }
            events::TASK_TIMED_OUT => {
                let Ok(timed_out) = run::TaskTimedOut::deserialize(payload) else { continue };
                log_blob(&mut log, &mut deferred, &timed_out.log_digest);
                let _ = writeln!(
                    log,
                    "[{at}] attempt {}: timed out after {} s (time budget {} s); handler stopped",
                    timed_out.attempt, timed_out.duration_s, timed_out.time_budget_seconds
                );
                if let Some(index) = current(&attempts, timed_out.attempt) {
                    let view = &mut attempts[index];
                    view.outcome = "timed_out";
                    view.ended_at = Some(format_ts(timed_out.timed_out_at));
                    view.duration_s = Some(timed_out.duration_s);
                    view.log_digest = timed_out.log_digest;
                }
            }
            events::TASK_RETRY_SCHEDULED => {
                let Ok(retry) = run::TaskRetryScheduled::deserialize(payload) else { continue };
                let index = current(&attempts, retry.attempt);
                let timed_out = index.is_some_and(|index| attempts[index].outcome == "timed_out");
                if !timed_out {
                    log_blob(&mut log, &mut deferred, &retry.log_digest);
                }
                let _ = writeln!(
                    log,
                    "[{at}] attempt {}: failed: {}; attempt {} at {}",
                    retry.attempt,
                    retry.error,
                    retry.next_attempt,
                    format_ts(retry.retry_at)
                );
                status = "queued";
                error = Some(retry.error.clone());
                if let (Some(index), false) = (index, timed_out) {
                    let view = &mut attempts[index];
                    view.outcome = "failed";
                    view.ended_at = Some(format_ts(retry.failed_at));
                    view.duration_s = retry.duration_s;
                    view.log_digest = retry.log_digest;
                }
                if let Some(index) = index {
                    attempts[index].error = Some(retry.error);
                }
            }
            events::TASK_FAILED => {
                let Ok(failed) = run::TaskFailed::deserialize(payload) else { continue };
                let index = current(&attempts, failed.attempt);
                let ended = index.is_some_and(|index| attempts[index].outcome != "running");
                if !ended {
                    log_blob(&mut log, &mut deferred, &failed.log_digest);
                }
                let _ = writeln!(log, "[{at}] attempt {}: failed: {}; the task failed", failed.attempt, failed.error);
                status = "failed";
                error = Some(failed.error.clone());
                completed_at = Some(format_ts(failed.failed_at));
                if let (Some(index), false) = (index, ended) {
                    let view = &mut attempts[index];
                    view.outcome = "failed";
                    view.ended_at = Some(format_ts(failed.failed_at));
                    view.duration_s = failed.duration_s;
                    view.log_digest = failed.log_digest;
                }
                if let Some(index) = index {
                    attempts[index].error = Some(failed.error);
                }
            }
            events::TASK_LEASE_EXPIRED => {
                let Ok(expired) = run::TaskLeaseExpired::deserialize(payload) else { continue };
                let _ = writeln!(
                    log,
                    "[{at}] attempt {}: lease of {} expired at {} (worker presumed dead; found by {})",
                    expired.attempt,
                    expired.worker_id,
                    format_ts(expired.lease_expires_at),
                    expired.detected_by
                );
                if let Some(index) = current(&attempts, expired.attempt) {
                    let view = &mut attempts[index];
                    view.outcome = "lease_expired";
                    view.ended_at = Some(format_ts(expired.detected_at));
                }
            }
            events::TASK_RELEASED => {
                let Ok(released) = run::TaskReleased::deserialize(payload) else { continue };
                log_blob(&mut log, &mut deferred, &released.log_digest);
                let _ = writeln!(
                    log,
                    "[{at}] attempt {}: released unfinished by {}: {}",
                    released.attempt, released.worker_id, released.reason
                );
                status = "queued";
                if let Some(index) = current(&attempts, released.attempt) {
                    let view = &mut attempts[index];
                    view.outcome = "released";
                    view.ended_at = Some(format_ts(released.released_at));
                    view.duration_s = Some(released.duration_s);
                    view.log_digest = released.log_digest;
                }
            }
            events::TASK_CANCELLED => {
                let Ok(cancelled) = run::TaskCancelled::deserialize(payload) else { continue };
                let reason = cancelled.reason.as_deref().map(|reason| format!(": {reason}")).unwrap_or_default();
                let _ =
                    writeln!(log, "[{at}] task cancelled by {} {}{reason}", event.actor_kind.as_str(), event.actor_id);
                status = "cancelled";
                completed_at = Some(format_ts(cancelled.cancelled_at));
                if let Some(index) = cancelled.attempt.and_then(|attempt| current(&attempts, attempt)) {
                    let view = &mut attempts[index];
                    view.outcome = "cancelled";
                    view.ended_at = Some(format_ts(cancelled.cancelled_at));
                }
            }
            _ => {}
        }
    }

    log.push_str(&deferred);
    let last = attempts.last();
    let started_at = attempts.first().map(|first| first.claimed_at.clone());
    let output = json!({
        "task_id": stream.first().map(|event| event.stream.id.clone()),
        "trace_id": task["trace_id"],
        "status": status,
        "attempt": last.map(|view| view.attempt),
        "outputs": outputs,
        "error": error,
        "artifacts": last.map(|view| view.artifacts.clone()).unwrap_or_default(),
        "timing": {
            "queued_at": queued_at,
            "started_at": started_at,
            "completed_at": completed_at,
        },
        "attempts": attempts.iter().map(AttemptView::to_json).collect::<Vec<_>>(),
    });

    files.push((PathBuf::from("input.json"), pretty(&input)));
    files.push((PathBuf::from("log.txt"), log.into_bytes()));
    files.push((PathBuf::from("output.json"), pretty(&output)));
    files.push((PathBuf::from("events.jsonl"), events_jsonl));
    for (path, digest) in artifact_files {
        match blob(&digest) {
            Some(bytes) => files.push((Path::new("artifacts").join(path), bytes)),
            None => tracing::warn!(%digest, "artifact blob missing; not copied into the trace folder"),
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_stores_each_blob_once_and_flushes_the_directory_only_for_new_ones() {
        let root = devdb::scratch_dir("blobs-batch");
        let store = BlobStore::new(&root);
        let source = root.join("artifact.bin");
        std::fs::write(&source, b"from a file").unwrap();

        let mut batch = store.batch();
        let log = batch.put(b"the log").unwrap();
        let file = batch.put_file(&source).unwrap();
        assert!(batch.renamed, "two new blobs were renamed into the directory");
        batch.finish().unwrap();
        assert_eq!(log.digest, sha256_digest(b"the log"));
        assert_eq!(file, Blob { digest: sha256_digest(b"from a file"), size_bytes: 11 });
        assert_eq!(store.get(&log.digest).unwrap(), b"the log");
        assert_eq!(store.get(&file.digest).unwrap(), b"from a file");

        // The same content again: nothing written, nothing to flush, no temporary file left behind.
        let mut again = store.batch();
        assert_eq!(again.put(b"the log").unwrap(), log);
        assert_eq!(again.put_file(&source).unwrap(), file);
        assert!(!again.renamed);
        again.finish().unwrap();
        let names: Vec<String> = std::fs::read_dir(root.join("sha256"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().all(|name| !name.starts_with('.')), "{names:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn task_event(version: i32, event_type: &str, ts: chrono::DateTime<chrono::Utc>) -> RecordedEvent {
        RecordedEvent {
            position: i64::from(version),
            event_id: ulid::Ulid::new().to_string(),
            ts,
            stream: StreamId::new(EntityKind::Task, "01JCT0000000000000000TASK1"),
            stream_version: version,
            event_type: event_type.to_owned(),
            schema_version: 1,
            payload: json!({}),
            action: domain::event::Action::Updated,
            actor_kind: domain::event::ActorKind::System,
            actor_id: "test".into(),
            before: None,
            after: None,
            note: None,
            trace_id: None,
            correlation_id: None,
            causation_id: None,
            idempotency_key: None,
            unique_keys: Vec::new(),
            prev_hash: Vec::new(),
            hash: Vec::new(),
        }
    }

    #[test]
    fn the_stream_cache_holds_stretches_without_a_gap_and_drops_one_at_a_gap_or_a_repeat() {
        let now = chrono::Utc::now();
        let versions = |stream: Option<Vec<RecordedEvent>>| {
            stream.map(|stream| stream.iter().map(|event| event.stream_version).collect::<Vec<_>>())
        };
        let mut cache = StreamCache::with_capacity(1);
        let first = task_event(1, events::TASK_CREATED, now);
        let second = task_event(2, events::TASK_ENQUEUED, now);
        let third = task_event(3, events::TASK_CLAIMED, now);
        let fourth = task_event(4, events::RUN_STARTED, now);
        cache.observe(first.clone());
        cache.observe(second.clone());
        let mut other = task_event(1, events::TASK_CREATED, now);
        other.stream.id = "01JCT0000000000000000TASK2".into();
        cache.observe(other.clone());
        assert!(cache.take(&other.stream.id).is_none(), "no room for a second stream");
        cache.observe(third.clone());
        assert_eq!(versions(cache.take(&first.stream.id)), Some(vec![1, 2, 3]), "seen whole, in order");
        assert!(cache.take(&first.stream.id).is_none(), "taken out");

        // A stream first seen after its start: the stretch from there (the rest is read back from the log).
        cache.observe(third.clone());
        cache.observe(fourth.clone());
        assert_eq!(versions(cache.take(&first.stream.id)), Some(vec![3, 4]), "from its claim");

        cache.observe(first.clone());
        cache.observe(third.clone());
        assert!(cache.take(&first.stream.id).is_none(), "a gap drops the stretch");
        cache.observe(first.clone());
        cache.observe(second.clone());
        cache.observe(second.clone());
        assert!(cache.take(&first.stream.id).is_none(), "a repeat drops the stretch");
        cache.observe(third.clone());
        assert_eq!(versions(cache.take(&first.stream.id)), Some(vec![3]), "the next event begins another");
        let mut none = StreamCache::with_capacity(0);
        none.observe(first.clone());
        assert!(none.take(&first.stream.id).is_none(), "a cache of no streams holds none");
    }

    #[test]
    fn a_young_claim_leaves_its_folder_to_the_attempts_next_event_and_an_old_one_renders_it() {
        let now = chrono::Utc::now();
        let stream = |claimed_at| {
            vec![
                task_event(1, events::TASK_CREATED, claimed_at),
                task_event(2, events::TASK_ENQUEUED, claimed_at),
                task_event(3, events::TASK_CLAIMED, claimed_at),
                task_event(4, events::RUN_STARTED, claimed_at),
            ]
        };
        let young = stream(now);
        assert!(!renders_now(young[3].stream_version, &young), "claimed just now: wait for the next event");
        let mut ended = young.clone();
        ended.push(task_event(5, events::TASK_COMPLETED, now));
        assert!(renders_now(ended[4].stream_version, &ended), "the end renders it");
        assert!(!renders_now(ended[3].stream_version, &ended), "a later event will");
        let old = stream(now - chrono::TimeDelta::seconds(2));
        assert!(renders_now(old[3].stream_version, &old), "claimed two seconds ago: rendered at once");
        let queued = old[..2].to_vec();
        assert!(!renders_now(queued[1].stream_version, &queued), "never claimed: no folder");
    }
}
