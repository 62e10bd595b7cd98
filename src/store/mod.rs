//! The durable store: the only module that touches redb.
//!
//! Layout: `tables` (every table and the format version), `codec` (record and key encoding),
//! `ctx` (one write transaction's view), `index` (index maintenance), `writer` (group commit),
//! and one file per family of operations: `enqueue`, `work` (claim and lease-holder calls),
//! `housekeeping`, `read`.

mod codec;
mod ctx;
mod cycle;
mod enqueue;
mod handoff;
mod housekeeping;
mod index;
mod read;
mod tables;
mod verify;
mod watermark;
mod work;
mod writer;

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use redb::{ConcurrencyMode, Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase};

pub(crate) use cycle::Cycle;

/// Decoders of on-disk bytes, for the fuzzer and its corpus replay. Not part of the API.
#[doc(hidden)]
pub mod decode {
    use crate::error::Result;

    /// Decodes `bytes` as a stored job (its record, and its payload if inline) and as a
    /// segment of them.
    pub fn record(bytes: &[u8]) -> Result<()> {
        let job = super::codec::decode_job(0, bytes).map(drop);
        let segment = super::codec::decode_segment(0, bytes).map(drop);
        job.or(segment)
    }

    /// Decodes `bytes` as an inbox entry of format 1.
    pub fn inbox(bytes: &[u8]) -> Result<()> {
        super::codec::decode_v1_inbox(0, bytes).map(drop)
    }

    /// Parses `bytes` as each kind of index key and value.
    pub fn keys(bytes: &[u8]) -> Result<()> {
        let tail = super::codec::ordered_tail(bytes).map(drop);
        let timed = super::codec::timed_tail(bytes).map(drop);
        let count = super::codec::parse_count_key(bytes).map(drop);
        let value = super::codec::parse_scheduled_value(bytes).map(drop);
        tail.and(timed).and(count).and(value)
    }
}
pub use enqueue::{MAX_KEY, MAX_PAYLOAD, MAX_QUEUE_NAME};
pub(crate) use enqueue::{validate, validate_queue};
pub use read::{Filter, QueueStats, Stats};
pub use verify::Problem;

use self::codec::{INLINE_PAYLOAD, decode_v1_inbox};
use self::ctx::{Config, Ctx};
use self::handoff::Takers;
pub(crate) use self::handoff::{Room, Taker, TakerId};
use self::tables::{
    FORMAT_VERSION, META, META_FORMAT, META_STORE_ID, SEGMENTS, V1_INBOX, reads_as_is,
};
use self::watermark::Watermark;
use self::writer::{Request, Writer};
use crate::backoff::Backoff;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result, StorageError};
use crate::job::{Claimed, Enqueued, Job, Lease, NewJob};
use crate::types::{JobId, Timestamp};
use crate::state::Payload;

thread_local! {
    /// Set while this thread runs a [`Store::write`] closure, whose transaction holds the
    /// database's write lock: another write from the same thread would wait for it forever.
    static IN_WRITE: Cell<bool> = const { Cell::new(false) };
}

/// Refuses a write from a thread that runs a [`Store::write`] closure: it would wait forever
/// for the write lock that its own transaction holds.
fn outside_write() -> Result<()> {
    if IN_WRITE.with(Cell::get) {
        return Err(Error::invalid(
            "call",
            "a writing method of the store was called inside Store::write; use its WriteTx",
        ));
    }
    Ok(())
}

/// Marks this thread as running a [`Store::write`] closure until dropped, also when the
/// closure panics (and the panic is caught), so that the thread can write again afterwards.
struct InsideWrite;

impl InsideWrite {
    fn enter() -> InsideWrite {
        IN_WRITE.with(|w| w.set(true));
        InsideWrite
    }
}

impl Drop for InsideWrite {
    fn drop(&mut self) {
        IN_WRITE.with(|w| w.set(false));
    }
}

/// The default most memory redb may use to cache pages: 64 MiB.
pub const DEFAULT_CACHE_SIZE: usize = 64 * 1024 * 1024;

/// The default lease of a claim: 30 s.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// A quern database: durable queues of jobs in one redb file.
///
/// `Store` is cheap to clone (an `Arc` inside) and `Send + Sync`. Every call that changes jobs
/// is one write transaction, committed durably before the call returns; calls from many threads
/// at once share commits (group commit). The database file is closed when the last clone is
/// dropped.
///
/// Writing methods return [`Error::Poisoned`] once a commit has failed with an I/O error: the
/// store refuses writes until it is reopened, so that nothing is built on a half-written state.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order matters: the writer thread is joined before the database is dropped.
    writer: Option<Writer>,
    db: Db,
    path: PathBuf,
    cfg: Arc<Config>,
    watermark: Arc<Watermark>,
    poisoned: Arc<AtomicBool>,
    takers: Arc<Takers>,
}

enum Db {
    Writable(Arc<Database>),
    ReadOnly(ReadOnlyDatabase),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("read_only", &self.is_read_only())
            .finish_non_exhaustive()
    }
}

/// How long finished jobs are kept; see [`Store::apply_retention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Succeeded jobs are deleted this long after they finished. Default: 24 h.
    pub succeeded: Duration,
    /// Jobs that failed for good are deleted this long after they finished. Default: 7 days.
    pub failed: Duration,
    /// At most this many failed-for-good jobs are kept (the oldest go first). Default: 100,000.
    pub max_failed: Option<u64>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            succeeded: Duration::from_secs(24 * 3600),
            failed: Duration::from_secs(7 * 24 * 3600),
            max_failed: Some(100_000),
        }
    }
}

/// When [`Store::prune`] cuts: an age, or a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoff {
    /// Jobs that finished longer ago than this, by the store's clock.
    Age(Duration),
    /// Jobs that finished before this time.
    Before(Timestamp),
}

impl From<Duration> for Cutoff {
    fn from(d: Duration) -> Self {
        Cutoff::Age(d)
    }
}

impl From<Timestamp> for Cutoff {
    fn from(t: Timestamp) -> Self {
        Cutoff::Before(t)
    }
}

/// Options for opening a [`Store`]; see [`Store::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct StoreBuilder {
    lease_ttl: Duration,
    backoff: Backoff,
    clock: Arc<dyn Clock>,
    exclusive: bool,
    verify_on_open: bool,
    cache_size: usize,
}

impl Default for StoreBuilder {
    fn default() -> Self {
        StoreBuilder {
            lease_ttl: DEFAULT_LEASE_TTL,
            backoff: Backoff::default(),
            clock: Arc::new(SystemClock),
            exclusive: false,
            verify_on_open: true,
            cache_size: DEFAULT_CACHE_SIZE,
        }
    }
}

impl StoreBuilder {
    /// How long a claim holds its job before it can be recovered, unless heartbeats extend it.
    /// Default: 30 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// The retry schedule of failed attempts. Default: 30 s doubling to a 10 min cap, equal
    /// jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The clock every time is read from. Default: [`SystemClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Lock the whole file, so that no other process may even read it while this store is open.
    /// Default: false: read-only processes (the `quern` utility, [`Store::open_read_only`]) may
    /// follow the writer's commits live.
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Verify the whole file when opening it for writing: the checksum of every page of every
    /// table is checked (redb's integrity check), so that a file damaged outside quern (a bad
    /// disk, a stray write, a partial copy) fails to open with [`Error::Corrupt`] naming it,
    /// instead of being trusted until a later read or commit trips over the damage; a refused
    /// open writes nothing. It costs one read of the whole file per open, plus one durable
    /// commit (redb rebuilds its record of free pages from what it read). Default: true.
    ///
    /// With `false`, the open trusts the file: faster for a large database, but a damaged one
    /// may make redb panic in a later call. Read-only opens are never verified (redb cannot
    /// verify without writing); their reads report damage they meet as [`Error::Corrupt`].
    pub fn verify_on_open(mut self, verify: bool) -> Self {
        self.verify_on_open = verify;
        self
    }

    /// The most memory redb may use to cache the file's pages, in bytes. quern's hot pages
    /// (the heads of the ready and lease indexes, the newest jobs) are few, so a cache far
    /// smaller than the file loses little, and memory stays flat however deep the queue.
    /// Default: 64 MiB.
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.cache_size = bytes;
        self
    }

    /// Opens the database at `path` for writing, creating it if missing.
    ///
    /// # Errors
    /// [`Error::AlreadyOpen`] when another process (or another store in this one) writes it;
    /// [`Error::NotQuern`] for a redb file quern did not write; [`Error::UnsupportedFormat`]
    /// for a newer format; [`Error::Corrupt`] when the file is damaged (see
    /// [`StoreBuilder::verify_on_open`]); [`Error::Open`] when the file cannot be read as a
    /// database.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let mode = if self.exclusive {
            ConcurrencyMode::ExclusiveWriter
        } else {
            ConcurrencyMode::SingleWriter
        };
        let db = guarded_open(&path, || {
            redb::Builder::new()
                .set_concurrency_mode(mode)
                .set_cache_size(self.cache_size)
                .set_check_integrity_on_open(self.verify_on_open)
                .create(&path)
        })?;
        let (store_id, version) = init_header(&db, &path).map_err(|e| e.in_file(&path))?;
        let cfg = Arc::new(Config {
            clock: self.clock,
            lease_ttl: self.lease_ttl,
            backoff: self.backoff,
            store_id,
            counters: Default::default(),
        });
        match version {
            1 => upgrade_v1(&db, &cfg, &path),
            FORMAT_VERSION => Ok(()),
            older => upgrade_version(&db, &path, older),
        }
        .map_err(|e| e.in_file(&path))?;
        let db = Arc::new(db);
        let watermark = Arc::new(Watermark::new());
        let poisoned = Arc::new(AtomicBool::new(false));
        let takers = Arc::new(Takers::default());
        let writer = Writer::spawn(
            path.as_path().into(),
            db.clone(),
            cfg.clone(),
            watermark.clone(),
            poisoned.clone(),
            takers.clone(),
        )
        .map_err(|e| Error::Open {
            path: path.clone(),
            source: StorageError::new(redb::StorageError::Io(e).into()),
        })?;
        tracing::info!(path = %path.display(), "opened quern store");
        Ok(Store {
            inner: Arc::new(Inner {
                writer: Some(writer),
                db: Db::Writable(db),
                path,
                cfg,
                watermark,
                poisoned,
                takers,
            }),
        })
    }

    /// Opens the database at `path` read-only, alongside a live writer process. Each read sees
    /// the writer's latest commit.
    ///
    /// # Errors
    /// As [`StoreBuilder::open`], and [`Error::AlreadyOpen`] when the writer locked the file
    /// exclusively.
    pub fn open_read_only(self, path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let db = guarded_open(&path, || {
            redb::Builder::new()
                .set_concurrency_mode(ConcurrencyMode::SingleWriter)
                .set_cache_size(self.cache_size)
                .open_read_only(&path)
        })?;
        let (store_id, version) = guarded_read(&path, || {
            let tx = db.begin_read().map_err(|e| open_error(&path, e))?;
            read_header(&tx, &path)
        })?;
        if !reads_as_is(version) {
            return Err(Error::UnsupportedFormat {
                path,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let cfg = Arc::new(Config {
            clock: self.clock,
            lease_ttl: self.lease_ttl,
            backoff: self.backoff,
            store_id,
            counters: Default::default(),
        });
        Ok(Store {
            inner: Arc::new(Inner {
                writer: None,
                db: Db::ReadOnly(db),
                path,
                cfg,
                watermark: Arc::new(Watermark::new()),
                poisoned: Arc::new(AtomicBool::new(false)),
                takers: Arc::default(),
            }),
        })
    }
}

/// Runs a redb open, turning its errors, and a panic on a damaged file, into quern errors.
fn guarded_open<D>(
    path: &Path,
    open: impl FnOnce() -> std::result::Result<D, redb::DatabaseError>,
) -> Result<D> {
    match catch_unwind(AssertUnwindSafe(open)) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(
            redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch,
        )) => Err(Error::AlreadyOpen {
            path: path.to_path_buf(),
        }),
        Ok(Err(e)) => Err(open_error(path, e)),
        Err(_) => Err(unreadable(path)),
    }
}

/// An error of opening `path`: [`Error::Corrupt`] naming the file when redb found it damaged
/// (its header, or a page failing the integrity check), [`Error::Open`] otherwise.
fn open_error(path: &Path, e: impl Into<redb::Error>) -> Error {
    match e.into() {
        redb::Error::Corrupted(detail) => corrupt_file(path, &detail),
        e => Error::Open {
            path: path.to_path_buf(),
            source: StorageError::new(e),
        },
    }
}

/// [`Error::Corrupt`] naming the database file, with redb's account of the damage.
fn corrupt_file(path: &Path, detail: &str) -> Error {
    // redb's messages are sentences ("Invalid magic number"); quern's errors are lowercase.
    let mut chars = detail.trim_end_matches('.').chars();
    let detail = match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "damaged".into(),
    };
    Error::Corrupt {
        what: format!("database file {}", path.display()),
        detail,
    }
}

/// Runs a read of a read-only database, turning a panic of redb into [`Error::Corrupt`]
/// naming the file.
///
/// Why only read-only databases: redb verifies a file only when it opens it for writing (its
/// integrity check rebuilds and commits its allocator state), and trusts it otherwise, so a
/// read of a damaged page may panic inside redb (an index out of a page's bounds, say). A
/// writable store verified every page at open (`StoreBuilder::verify_on_open`), so its reads
/// are not guarded: a panic there would be a bug to see, not damage to report.
fn guarded_read<R>(path: &Path, read: impl FnOnce() -> Result<R>) -> Result<R> {
    catch_unwind(AssertUnwindSafe(read)).unwrap_or_else(|_| Err(unreadable(path)))
}

/// [`Error::Corrupt`] for a file redb panicked on: damage it did not check for.
fn unreadable(path: &Path) -> Error {
    Error::Corrupt {
        what: format!("database file {}", path.display()),
        detail: "the storage engine could not read it".into(),
    }
}

/// Checks the header of a writable database, writing it (and every table) into a new one.
/// Returns the store id and the format version, which is this build's or format 1 (to be
/// upgraded).
fn init_header(db: &Database, path: &Path) -> Result<(u64, u64)> {
    let tx = db.begin_write().map_err(|e| open_error(path, e))?;
    let fresh = {
        let mut tables = tx.list_tables().map_err(|e| open_error(path, e))?;
        tables.next().is_none()
    };
    if fresh {
        {
            let mut t = ctx::Tables::new(&tx);
            t.open_all()?;
            let id = random_id();
            for (k, v) in [(META_FORMAT, FORMAT_VERSION), (META_STORE_ID, id)] {
                t.meta()?.insert(k, v).map_err(|e| open_error(path, e))?;
            }
        }
        tx.commit().map_err(|e| open_error(path, e))?;
        tracing::info!(path = %path.display(), "created quern database");
    } else {
        drop(tx);
    }
    let rtx = db.begin_read().map_err(|e| open_error(path, e))?;
    read_header(&rtx, path)
}

/// Returns the store id and the format version: this build's, or format 1 or 2, which a
/// writable open upgrades.
fn read_header(tx: &ReadTransaction, path: &Path) -> Result<(u64, u64)> {
    let not_quern = || Error::NotQuern {
        path: path.to_path_buf(),
    };
    let meta = match tx.open_table(META) {
        Ok(m) => m,
        Err(
            redb::TableError::TableDoesNotExist(_) | redb::TableError::TableTypeMismatch { .. },
        ) => {
            return Err(not_quern());
        }
        Err(e) => return Err(open_error(path, e)),
    };
    let get = |k: &str| -> Result<Option<u64>> {
        Ok(meta
            .get(k)
            .map_err(|e| open_error(path, e))?
            .map(|g| g.value()))
    };
    let version = get(META_FORMAT)?.ok_or_else(not_quern)?;
    if !reads_as_is(version) && version != 1 {
        return Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok((get(META_STORE_ID)?.ok_or_else(not_quern)?, version))
}

/// Upgrades a format 1 database in one transaction: the jobs of its inbox become indexed
/// jobs, stored as this build stores them; the jobs it had indexed are readable as they are.
fn upgrade_v1(db: &Database, cfg: &Config, path: &Path) -> Result<()> {
    let fail = |e: redb::Error| Error::storage("upgrading a format 1 database", e);
    let tx = db.begin_write().map_err(|e| fail(e.into()))?;
    {
        let mut cx = Ctx::begin(&tx, cfg)?;
        let mut inbox = tx.open_table(V1_INBOX).map_err(|e| fail(e.into()))?;
        while let Some((k, v)) = inbox.pop_first().map_err(|e| fail(e.into()))? {
            let id = k.value();
            let mut rec = decode_v1_inbox(id, v.value())?;
            if let Payload::Inline(p) = &rec.payload
                && p.len() > INLINE_PAYLOAD
            {
                cx.t.payloads()?.insert(id, p.as_slice()).map_err(ctx::w)?;
                rec.payload = Payload::Apart;
            }
            cx.put(id, None, &rec)?;
        }
        drop(inbox);
        cx.set_all_indexed()?;
        cx.t.meta()?
            .insert(META_FORMAT, FORMAT_VERSION)
            .map_err(ctx::w)?;
        cx.finish()?;
    }
    tx.delete_table(V1_INBOX).map_err(|e| fail(e.into()))?;
    tx.commit().map_err(|e| fail(e.into()))?;
    tracing::info!(path = %path.display(), "upgraded quern database from format 1 to {FORMAT_VERSION}");
    Ok(())
}

/// Upgrades a format 2 or 3 database, which this build reads as it is: only the version
/// changes, and a format 2 file gets the segments table it lacks.
fn upgrade_version(db: &Database, path: &Path, from: u64) -> Result<()> {
    let context = if from == 2 {
        "upgrading a format 2 database"
    } else {
        "upgrading a format 3 database"
    };
    let fail = |e: redb::Error| Error::storage(context, e);
    let tx = db.begin_write().map_err(|e| fail(e.into()))?;
    {
        let mut meta = tx.open_table(META).map_err(|e| fail(e.into()))?;
        meta.insert(META_FORMAT, FORMAT_VERSION)
            .map_err(|e| fail(e.into()))?;
        tx.open_table(SEGMENTS).map_err(|e| fail(e.into()))?;
    }
    tx.commit().map_err(|e| fail(e.into()))?;
    tracing::info!(path = %path.display(), "upgraded quern database from format {from} to {FORMAT_VERSION}");
    Ok(())
}

/// A random id from the standard library's randomly seeded hasher.
fn random_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SystemClock.now().0);
    h.write_u32(std::process::id());
    h.finish()
}

impl Store {
    /// Opens the database at `path` for writing with default options, creating it if missing.
    ///
    /// # Errors
    /// See [`StoreBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        StoreBuilder::default().open(path)
    }

    /// Options for opening a store.
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }

    /// Opens the database at `path` read-only, alongside a live writer process.
    ///
    /// # Errors
    /// See [`StoreBuilder::open_read_only`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store> {
        StoreBuilder::default().open_read_only(path)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether this store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        matches!(self.inner.db, Db::ReadOnly(_))
    }

    /// The current time by the store's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.cfg.clock.now()
    }

    /// The default lease of a claim.
    pub fn lease_ttl(&self) -> Duration {
        self.inner.cfg.lease_ttl
    }

    /// Runs `op` in the writer's next group commit and waits for the commit.
    fn call<R: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Ctx<'_>) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        // A oneshot parks the caller at once; a channel's receive spins and yields first, which
        // on two cores took the CPU of the callers coming back from the last commit.
        let (tx, rx) = oneshot::channel();
        let writer = self.writer()?;
        writer.send_or_commit(Box::new(Request::new(op, move |r| {
            // The caller waits on `rx` until this is sent.
            let _ = tx.send(r);
        })))?;
        rx.recv().unwrap_or(Err(Error::Closed))
    }

    /// Runs `op` in the writer's next group commit, without blocking; the future resolves after
    /// the commit.
    pub(crate) async fn call_async<R: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Ctx<'_>) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        self.writer()?.send(Box::new(Request::new(op, move |r| {
            let _ = tx.send(r);
        })))?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    fn writer(&self) -> Result<&Writer> {
        let writer = self.inner.writer.as_ref().ok_or(Error::ReadOnly)?;
        outside_write()?;
        if self.inner.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned {
                path: self.inner.path.clone(),
            });
        }
        Ok(writer)
    }

    /// Runs `f` in a read transaction. On a read-only store, a panic of redb on a damaged file
    /// is [`Error::Corrupt`] (see [`guarded_read`]); `f` must not run user code that may panic.
    fn read<R>(&self, f: impl FnOnce(&ReadTransaction) -> Result<R>) -> Result<R> {
        let begin = |e| Error::storage("beginning a read transaction", e);
        let path = &self.inner.path;
        match &self.inner.db {
            Db::Writable(db) => db.begin_read().map_err(begin).and_then(|tx| f(&tx)),
            Db::ReadOnly(db) => guarded_read(path, || f(&db.begin_read().map_err(begin)?)),
        }
        .map_err(|e| e.in_file(path))
    }

    /// Enqueues one job, durably.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty or over-long queue name, a payload over
    /// [`MAX_PAYLOAD`], `max_attempts` of 0 or an empty or over-long key; [`Error::ReadOnly`];
    /// storage errors.
    pub fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        enqueue::validate(&job)?;
        self.call(move |cx| enqueue::enqueue(cx, job))
    }

    /// Enqueues many jobs in one transaction: all are written or none. Outcomes are in input
    /// order; a job whose unique key is held (also by an earlier job of the same batch) is a
    /// [`Enqueued::Duplicate`].
    ///
    /// # Errors
    /// As [`Store::enqueue`], for any job of the batch; then nothing is written.
    pub fn enqueue_batch(&self, jobs: impl IntoIterator<Item = NewJob>) -> Result<Vec<Enqueued>> {
        let jobs: Vec<NewJob> = jobs.into_iter().collect();
        jobs.iter().try_for_each(enqueue::validate)?;
        self.call(move |cx| enqueue::enqueue_batch(cx, jobs))
    }

    /// Claims up to `n` due pending jobs of `queue`: priority descending, then `run_at`, then
    /// id; a job whose concurrency key is in progress is skipped. Each claimed job is in
    /// progress with its attempt counted and a fresh lease, all in one transaction.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad queue name; [`Error::ReadOnly`]; storage errors.
    pub fn claim(&self, queue: &str, n: usize) -> Result<Vec<Claimed>> {
        enqueue::validate_queue(queue)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        // Behind a backlog of new jobs longer than one transaction indexes, each try indexes
        // part of it, committed, until the claim can see every job enqueued before it.
        let mut through = None;
        loop {
            let queue = queue.to_owned();
            match self.call(move |cx| work::claim(cx, &queue, n, through))? {
                work::ClaimStep::Claimed(jobs) => return Ok(jobs),
                work::ClaimStep::Indexing { through: bound } => through = Some(bound),
            }
        }
    }

    /// Extends the lease to now + the lease TTL.
    ///
    /// A lease that expired but whose job was not yet recovered can still be extended: the job
    /// was not given to anyone else.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the job is no longer in progress under this lease;
    /// [`Error::ForeignLease`]; storage errors.
    pub fn heartbeat(&self, lease: &Lease) -> Result<()> {
        let lease = lease_ref(lease);
        self.call(move |cx| work::heartbeat(cx, &lease))
    }

    /// Records progress text (cut to 4 KiB), visible in [`Store::get`] while the job runs.
    ///
    /// # Errors
    /// As [`Store::heartbeat`].
    pub fn set_progress(&self, lease: &Lease, progress: impl Into<String>) -> Result<()> {
        let lease = lease_ref(lease);
        let progress = progress.into();
        self.call(move |cx| work::set_progress(cx, &lease, &progress))
    }

    /// InProgress -> Succeeded.
    ///
    /// # Errors
    /// As [`Store::heartbeat`].
    pub fn complete(&self, lease: Lease) -> Result<()> {
        self.call(move |cx| work::complete(cx, &lease))
    }

    /// InProgress -> Failed: the next attempt is scheduled at now + backoff(attempts), or, when
    /// the attempts are spent, the job fails for good. The error is kept (cut to 4 KiB).
    ///
    /// # Errors
    /// As [`Store::heartbeat`].
    pub fn fail(&self, lease: Lease, error: impl Into<String>) -> Result<()> {
        let error = error.into();
        self.call(move |cx| work::fail(cx, &lease, &error))
    }

    /// InProgress -> Failed for good, whatever attempts remain.
    ///
    /// # Errors
    /// As [`Store::heartbeat`].
    pub fn discard(&self, lease: Lease, error: impl Into<String>) -> Result<()> {
        let error = error.into();
        self.call(move |cx| work::discard(cx, &lease, &error))
    }

    /// InProgress -> Pending at now + `delay`, with the attempt given back: a dependency that is
    /// not ready is not a failure.
    ///
    /// # Errors
    /// As [`Store::heartbeat`].
    pub fn snooze(&self, lease: Lease, delay: Duration) -> Result<()> {
        self.call(move |cx| work::snooze(cx, &lease, delay))
    }

    /// Failed jobs whose retry is due -> Pending. Returns how many moved.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; storage errors.
    pub fn promote_due(&self) -> Result<u64> {
        self.call(housekeeping::promote_due)
    }

    /// In-progress jobs whose lease expired (their worker died or hung) -> a failed attempt
    /// with the error "lease expired", retried with backoff or failed for good as
    /// [`Store::fail`] would. Their old leases are lost. Returns how many.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; storage errors.
    pub fn recover_expired(&self) -> Result<u64> {
        self.call(housekeeping::recover_expired)
    }

    /// Manual retry of a failed job (retry scheduled or terminal): Pending now, attempts back
    /// to 0, `manual_retries` up by one.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidState`] unless the job failed;
    /// [`Error::UniqueConflict`] when another live job took its unique key meanwhile.
    pub fn retry(&self, id: JobId) -> Result<()> {
        self.call(move |cx| housekeeping::retry(cx, id))
    }

    /// Pending, in-progress or retry-scheduled -> Failed for good with the error "cancelled".
    /// A worker running a cancelled job loses its lease.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidState`] for a job already finished.
    pub fn cancel(&self, id: JobId) -> Result<()> {
        // Behind a long backlog of new jobs, each try indexes part of it, committed.
        while !self.call(move |cx| housekeeping::cancel(cx, id))? {}
        Ok(())
    }

    /// Deletes succeeded and terminally failed jobs that finished before the cut: an age
    /// (`Duration`) or a time (`Timestamp`). Returns how many. A long history is deleted in
    /// transactions of at most 10,000 jobs each, so that memory stays flat and other writes
    /// commit between them.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; storage errors.
    pub fn prune(&self, older_than: impl Into<Cutoff>) -> Result<u64> {
        let cut = match older_than.into() {
            Cutoff::Age(d) => self.now().before(d),
            Cutoff::Before(t) => t,
        };
        self.prune_in_chunks(cut, cut, None)
    }

    /// Prunes in transactions of at most [`housekeeping::PRUNE_CHUNK`] jobs until none is left.
    fn prune_in_chunks(
        &self,
        succeeded: Timestamp,
        failed: Timestamp,
        max_failed: Option<u64>,
    ) -> Result<u64> {
        let chunk = housekeeping::PRUNE_CHUNK;
        let mut total = 0;
        loop {
            let n =
                self.call(move |cx| housekeeping::prune(cx, succeeded, failed, max_failed, chunk))?;
            total += n;
            if n < chunk as u64 {
                return Ok(total);
            }
        }
    }

    /// Deletes finished jobs by a retention policy: succeeded and failed jobs by their own
    /// ages, and the oldest failures beyond a cap. Returns how many. Executors call this
    /// periodically.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; storage errors.
    pub fn apply_retention(&self, retention: &Retention) -> Result<u64> {
        let now = self.now();
        let succeeded = now.before(retention.succeeded);
        let failed = now.before(retention.failed);
        let max = retention.max_failed;
        self.prune_in_chunks(succeeded, failed, max)
    }

    /// The job with this id, if it exists.
    ///
    /// # Errors
    /// Storage errors; [`Error::Corrupt`] for an undecodable record.
    pub fn get(&self, id: JobId) -> Result<Option<Job>> {
        self.read(|tx| read::get(tx, id))
    }

    /// The jobs the filter admits, in id order.
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn list(&self, filter: &Filter) -> Result<Vec<Job>> {
        let mut out = Vec::new();
        self.read(|tx| {
            read::scan(tx, filter, |job| {
                out.push(job);
                true
            })
        })?;
        Ok(out)
    }

    /// Calls `each` with every job the filter admits, in id order, from one consistent
    /// snapshot, without holding them all in memory; stops when `each` returns false.
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn for_each(&self, filter: &Filter, mut each: impl FnMut(Job) -> bool) -> Result<()> {
        // A panic of `each` is the caller's, not damage (which a read-only store's guard would
        // report): it stops the scan and goes on once the read is over.
        let mut panicked = None;
        let result = self.read(|tx| {
            read::scan(tx, filter, |job| {
                catch_unwind(AssertUnwindSafe(|| each(job))).unwrap_or_else(|p| {
                    panicked = Some(p);
                    false
                })
            })
        });
        if let Some(p) = panicked {
            std::panic::resume_unwind(p);
        }
        result
    }

    /// Counts per queue and state, the oldest due pending job, the next retry.
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn stats(&self) -> Result<Stats> {
        let now = self.now();
        self.read(|tx| read::stats(tx, now))
    }

    /// The change watermark: a number that every change to jobs committed through this store
    /// increases. It lives in memory: it starts at 0 when the store opens.
    pub fn generation(&self) -> u64 {
        self.inner.watermark.get()
    }

    /// Blocks until a change to jobs past generation `seen` is committed by this process, or
    /// `timeout` passes. Returns the generation.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) -> u64 {
        self.inner.watermark.wait_past(seen, timeout)
    }

    /// Resolves when a change to jobs past generation `seen` is committed by this process.
    /// Returns the generation.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future loses nothing.
    pub async fn changed(&self, seen: u64) -> u64 {
        self.inner.watermark.changed_past(seen).await
    }

    /// Runs `f` in one write transaction with the user's own tables: enqueue jobs and write
    /// your data together, so that neither exists without the other (the outbox pattern). The
    /// transaction commits durably if `f` returns `Ok`, and is rolled back if it returns `Err`.
    ///
    /// ```
    /// use quern::redb::TableDefinition;
    /// use quern::{NewJob, Store};
    ///
    /// const FILES: TableDefinition<&str, u64> = TableDefinition::new("files");
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("sync.redb"))?;
    /// store.write(|tx| {
    ///     tx.open_table(FILES)?.insert("a.txt", 42)?;
    ///     tx.enqueue(NewJob::new("uploads", "a.txt"))?;
    ///     Ok::<_, quern::Error>(())
    /// })?;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `f`'s error; [`Error::ReadOnly`], [`Error::Poisoned`] and storage errors, converted.
    /// An enqueue in `f` that failed with a storage or corruption error may have been written
    /// in part: then nothing is committed, even if `f` went on to return `Ok`, and that error
    /// is returned.
    pub fn write<R, E: From<Error>>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E> {
        let (Db::Writable(db), Some(writer)) = (&self.inner.db, &self.inner.writer) else {
            return Err(Error::ReadOnly.into());
        };
        outside_write()?;
        // Begins after any commit under way, and sees whether it failed: a transaction must not
        // start from the counters of one that did not commit (see `ctx::Counters`).
        let _commits = writer.hold_commits();
        if self.inner.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned {
                path: self.inner.path.clone(),
            }
            .into());
        }
        let path = self.inner.path.as_path();
        let tx = db
            .begin_write()
            .map_err(|e| Error::storage("beginning a write transaction", e).in_file(path))?;
        let (value, changed) = {
            let mut wtx = WriteTx {
                cx: Ctx::begin(&tx, &self.inner.cfg).map_err(|e| e.in_file(path))?,
                tx: &tx,
                path,
                broken: None,
            };
            let value = {
                let _inside = InsideWrite::enter();
                f(&mut wtx)
            }?;
            // An enqueue that failed midway may have written part of itself: even if `f`
            // went on, the transaction is not committed.
            if let Some(e) = wtx.broken {
                return Err(e.into());
            }
            (value, wtx.cx.finish().map_err(|e| e.in_file(path))?)
        };
        if let Err(e) = tx.commit() {
            self.inner.poisoned.store(true, Ordering::Release);
            return Err(Error::storage("committing a write transaction", e)
                .in_file(path)
                .into());
        }
        if changed {
            self.inner.watermark.bump();
        }
        Ok(value)
    }
}

/// How a lease holder settles its job; what the executor hands the writer.
#[derive(Debug)]
pub(crate) enum Settle {
    Complete,
    Fail(String),
    Discard(String),
    Snooze(Duration),
}

impl Settle {
    fn apply(self, cx: &mut Ctx<'_>, lease: &Lease) -> Result<()> {
        match self {
            Settle::Complete => work::complete(cx, lease),
            Settle::Fail(e) => work::fail(cx, lease, &e),
            Settle::Discard(e) => work::discard(cx, lease, &e),
            Settle::Snooze(d) => work::snooze(cx, lease, d),
        }
    }
}

/// The executor's side of the store: the same operations, awaited without blocking a runtime
/// thread (they always go through the writer thread's group commit).
impl Store {
    /// A claim cycle claiming as many jobs as `room` grants when the cycle is applied; returns
    /// the cycle and that grant. Once the cycle is applied, `held` says how many of them stay
    /// reserved: the caller releases those once they are in its channel, or when the commit
    /// failed.
    pub(crate) async fn claim_cycle(
        &self,
        queue: Arc<str>,
        room: Arc<dyn Room>,
        held: Arc<AtomicUsize>,
        periodic: Arc<[crate::periodic::Periodic]>,
        through: Option<u64>,
    ) -> Result<(Cycle, usize)> {
        self.call_async(move |cx| {
            let n = room.reserve();
            let cycle = cycle::claim_cycle(cx, &queue, n, &periodic, through);
            let kept = cycle.as_ref().map_or(0, |c| c.claimed.len());
            room.release(n - kept);
            held.store(kept, Ordering::SeqCst);
            cycle.map(|c| (c, n))
        })
        .await
    }

    /// Hands a settle to the writer and returns at once; `then` runs after its commit.
    pub(crate) fn settle_then(
        &self,
        lease: Lease,
        how: Settle,
        then: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        self.writer()?.send(Box::new(Request::new(
            move |cx: &mut Ctx<'_>| how.apply(cx, &lease),
            then,
        )))
    }

    /// Registers an executor to take jobs claimed at the commit of their enqueue.
    pub(crate) fn add_taker(&self, taker: Arc<dyn Taker>) -> TakerId {
        self.inner.takers.add(taker)
    }

    /// Removes a taker; once this returns, no commit delivers to it.
    pub(crate) fn remove_taker(&self, id: TakerId) {
        self.inner.takers.remove(id);
    }

    pub(crate) async fn heartbeat_async(&self, lease: &Lease) -> Result<()> {
        let lease = lease_ref(lease);
        self.call_async(move |cx| work::heartbeat(cx, &lease)).await
    }

    pub(crate) async fn set_progress_async(&self, lease: &Lease, progress: String) -> Result<()> {
        let lease = lease_ref(lease);
        self.call_async(move |cx| work::set_progress(cx, &lease, &progress))
            .await
    }
}

/// A copy of a lease for an operation that only borrows it.
pub(crate) fn lease_ref(lease: &Lease) -> Lease {
    Lease {
        job: lease.job,
        token: lease.token,
        store: lease.store,
    }
}

/// A write transaction shared by quern and the user's own tables; see [`Store::write`].
pub struct WriteTx<'a> {
    cx: Ctx<'a>,
    tx: &'a redb::WriteTransaction,
    /// The database file, named in storage errors.
    path: &'a Path,
    /// The first error that left quern's part of the transaction half-written.
    broken: Option<Error>,
}

impl<'a> WriteTx<'a> {
    /// Enqueues a job in this transaction.
    ///
    /// # Errors
    /// As [`Store::enqueue`].
    pub fn enqueue(&mut self, job: NewJob) -> Result<Enqueued> {
        enqueue::validate(&job)?;
        let result = enqueue::enqueue(&mut self.cx, job);
        self.note(result)
    }

    /// Enqueues many jobs in this transaction.
    ///
    /// # Errors
    /// As [`Store::enqueue_batch`].
    pub fn enqueue_batch(
        &mut self,
        jobs: impl IntoIterator<Item = NewJob>,
    ) -> Result<Vec<Enqueued>> {
        let result = enqueue::enqueue_batch(&mut self.cx, jobs.into_iter().collect());
        self.note(result)
    }

    /// Remembers an error after which quern's tables may be half-written, so that
    /// [`Store::write`] refuses to commit whatever the closure does next.
    fn note<T>(&mut self, result: Result<T>) -> Result<T> {
        let result = result.map_err(|e| e.in_file(self.path));
        if let Err(e) = &result
            && e.aborts_batch()
            && self.broken.is_none()
        {
            self.broken = Some(e.clone());
        }
        result
    }

    /// Opens one of the user's tables in this transaction. quern's own tables are named
    /// `quern_*`; leave them alone.
    ///
    /// # Errors
    /// redb's table errors, converted.
    pub fn open_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        definition: redb::TableDefinition<K, V>,
    ) -> Result<redb::Table<'a, K, V>> {
        self.tx
            .open_table(definition)
            .map_err(|e| Error::from(e).in_file(self.path))
    }

    /// The underlying redb transaction, for anything else (multimap tables, ...).
    pub fn transaction(&self) -> &'a redb::WriteTransaction {
        self.tx
    }
}
