//! Opening a database: the builder's options, creating a new file, reading the header, and
//! turning what redb reports about a missing, foreign or damaged file into quern's errors.

use std::hash::{BuildHasher, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{ConcurrencyMode, Database, ReadTransaction, ReadableDatabase};

use super::Store;
use super::core::{Core, Db};
use super::create::{self, Found};
use super::ctx::Config;
use super::snapshot::Snapshot;
use super::tables::{
    FORMAT_VERSION, META, META_FORMAT, META_NEXT_TOKEN, META_STORE_ID, Tables, reads_as_is,
};
use super::upgrade;
use crate::backoff::Backoff;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result, StorageError, redb_failed};

/// The default most memory redb may use to cache pages: 64 MiB.
pub const DEFAULT_CACHE_SIZE: usize = 64 * 1024 * 1024;

/// The default lease of a claim: 30 s.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// Options for opening a [`Store`]; see [`Store::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct StoreBuilder {
    create: bool,
    upgrade: bool,
    lease_ttl: Duration,
    backoff: Backoff,
    clock: Arc<dyn Clock>,
    exclusive: bool,
    verify_on_open: bool,
    cache_size: usize,
    control_channel: bool,
}

impl Default for StoreBuilder {
    fn default() -> Self {
        StoreBuilder {
            create: true,
            upgrade: true,
            lease_ttl: DEFAULT_LEASE_TTL,
            backoff: Backoff::default(),
            clock: Arc::new(SystemClock),
            exclusive: false,
            verify_on_open: true,
            cache_size: DEFAULT_CACHE_SIZE,
            control_channel: true,
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

    /// Verify the whole file when opening it: the checksum of every page of every table is
    /// checked (redb's integrity check), so that a file damaged outside quern (a bad disk, a
    /// stray write, a partial copy, a truncation) fails to open with [`Error::Corrupt`] naming
    /// it, instead of being trusted until a later read or commit trips over the damage (or
    /// allocates what a damaged length says); a refused open writes nothing. It costs one read
    /// of the whole file per open, plus, for a writable open, one durable commit (redb rebuilds
    /// its record of free pages from what it read). A read-only open verifies in memory and
    /// writes nothing; beside a live writer that commits meanwhile, it trusts the file, which
    /// that writer verified when it opened it. Default: true.
    ///
    /// With `false`, the open trusts the file: faster for a large database, but a damaged one
    /// may make redb panic (reported as [`Error::Corrupt`] by a read-only store) or exhaust
    /// memory in a later call.
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

    /// Whether a store opened for writing serves its control channel: a Unix socket beside the
    /// database, `<file>.control` ([`control::socket_path`](crate::control::socket_path)),
    /// through which the `quern` utility retries, cancels, prunes, pauses, resumes and unparks
    /// while this process holds the file (see [`crate::control`]). Only the owner of the
    /// database file may send commands (checked on each connection by its peer credentials;
    /// the socket is mode 0600). The server is one thread that holds no handle on the store:
    /// it stops, and removes the socket, when the store closes. A socket left by a killed
    /// process is replaced. When the socket cannot be made (a directory this process cannot
    /// write), the store opens without it and logs a warning. Read-only opens never serve.
    /// Unix only. Default: true.
    pub fn control_channel(mut self, serve: bool) -> Self {
        self.control_channel = serve;
        self
    }

    /// Whether [`StoreBuilder::open`] creates a missing database, and initialises one that a
    /// crash left half-created (an empty file, or one of zeros). A database is created
    /// atomically: under a temporary name beside it, synced, then moved into place, so that a
    /// crash leaves no file or a whole empty database, never a file that cannot be opened.
    /// Default: true. With `false`, such a file is an error and is left as it is (the `quern`
    /// utility opens so).
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Whether [`StoreBuilder::open`] upgrades a database of an older format to this build's.
    /// Default: true. With `false`, an older format is [`Error::UnsupportedFormat`] and quern
    /// changes nothing in it; redb's writable open has already written its own bookkeeping
    /// (the integrity check's allocator state, the header's open flag) by then. To leave an
    /// older file byte for byte as it is, look at it read-only first
    /// ([`Store::format_version`]), as the `quern` utility does.
    pub fn upgrade(mut self, upgrade: bool) -> Self {
        self.upgrade = upgrade;
        self
    }

    /// Opens the database at `path` for writing, creating it if missing (see
    /// [`StoreBuilder::create`]).
    ///
    /// # Errors
    /// [`Error::AlreadyOpen`] when another process (or another store in this one) writes it;
    /// [`Error::NotQuern`] for a redb file quern did not write; [`Error::UnsupportedFormat`]
    /// for a newer format; [`Error::Corrupt`] when the file is damaged (see
    /// [`StoreBuilder::verify_on_open`]); [`Error::Open`] when the file cannot be read as a
    /// database.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        let target = create::resolve(path).map_err(|e| io_open_error(path, e))?;
        create::tidy(&target);
        match create::inspect(&target).map_err(|e| io_open_error(path, e))? {
            Found::Missing | Found::HalfCreated if self.create => {
                if create::create(&target, |temp| self.create_new(temp))? {
                    tracing::info!(path = %path.display(), "created quern database");
                }
            }
            Found::Missing => {
                return Err(io_open_error(
                    path,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                ));
            }
            Found::HalfCreated => {
                return Err(Error::NotQuern {
                    path: path.to_path_buf(),
                });
            }
            Found::Other => {}
        }
        let mode = if self.exclusive {
            ConcurrencyMode::ExclusiveWriter
        } else {
            ConcurrencyMode::SingleWriter
        };
        let db = guarded_open(path, || {
            redb::Builder::new()
                .set_concurrency_mode(mode)
                .set_cache_size(self.cache_size)
                .set_check_integrity_on_open(self.verify_on_open)
                .open(path)
        })?;
        let (store_id, version) =
            init_header(&db, path, self.create).map_err(|e| e.in_file(path))?;
        if version != FORMAT_VERSION && !self.upgrade {
            return Err(Error::UnsupportedFormat {
                path: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let verified = self.verify_on_open;
        let serve = self.control_channel;
        let mut cfg = self.config(store_id);
        cfg.verified = verified;
        upgrade::to_current(&db, &cfg, path, version).map_err(|e| e.in_file(path))?;
        cfg.earlier_leases_below =
            next_token(&db).map_err(|e| e.doing("reading the next lease token").in_file(path))?;
        let store = Store::from_core(Core::new(path, Db::Writable(db), FORMAT_VERSION, cfg))
            .map_err(|e| Error::Open {
                path: path.to_path_buf(),
                source: StorageError::new(redb::StorageError::Io(e).into()),
            })?;
        tracing::info!(path = %path.display(), "opened quern store");
        store.control_channel(serve);
        Ok(store)
    }

    /// Opens the database at `path` read-only, alongside a live writer process. Each read sees
    /// the writer's latest commit.
    ///
    /// A file whose writer stopped without closing it (killed, crashed), with no writer live,
    /// is read as that writer left it, its claims in progress, without writing it: redb's
    /// repair of the file is run in memory. [`Store::closed_cleanly`] then says `false`. Its
    /// reads fail with [`Error::Changed`] once a writer opens the file (which repairs it);
    /// open it again then to read it beside that writer.
    ///
    /// # Errors
    /// As [`StoreBuilder::open`], and [`Error::AlreadyOpen`] when the writer locked the file
    /// exclusively; [`Error::Changed`] when a writer opened a file left unclosed while this
    /// open read it.
    pub fn open_read_only(self, path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        // A FIFO or a device would block or mislead the reads: refused before redb opens it.
        create::inspect(path).map_err(|e| io_open_error(path, e))?;
        // redb's own read-only open first: it reads beside a live writer, following its commits.
        let opened = guarded_open(path, || {
            redb::Builder::new()
                .set_concurrency_mode(ConcurrencyMode::SingleWriter)
                .set_cache_size(self.cache_size)
                .open_read_only(path)
        });
        let header = |tx: &ReadTransaction| read_header(tx, path);
        let (db, (store_id, version), verified) = match opened {
            Ok(db) => {
                // Before any read trusts a page: the header's table may be what is damaged.
                let verified = self.verify_on_open && verify(path, self.cache_size)?;
                let found = guarded_read(path, || {
                    header(&db.begin_read().map_err(|e| open_error(path, e))?)
                })?;
                (Db::ReadOnly(db), found, verified)
            }
            // The file's writer stopped without closing it, and none is live: redb reads it
            // only after a writable open's repair, which a snapshot runs in memory.
            Err(e) if needs_repair(&e) => {
                let file = std::fs::File::open(path).map_err(|e| io_open_error(path, e))?;
                tracing::warn!(
                    path = %path.display(),
                    "reading a quern database its writer did not close, as that writer left it"
                );
                let snapshot =
                    Snapshot::open(path, file, self.cache_size, self.verify_on_open, |open| {
                        guarded_open(path, open)
                    })?;
                let found = snapshot.checked(path, |db| {
                    guarded_read(path, || {
                        header(&db.begin_read().map_err(|e| open_error(path, e))?)
                    })
                })?;
                (Db::Snapshot(snapshot), found, self.verify_on_open)
            }
            Err(e) => return Err(e),
        };
        if !reads_as_is(version) {
            return Err(Error::UnsupportedFormat {
                path: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let mut cfg = self.config(store_id);
        cfg.verified = verified;
        // A read-only store has no writer thread to start: this cannot fail.
        Store::from_core(Core::new(path, db, version, cfg)).map_err(|e| Error::Open {
            path: path.to_path_buf(),
            source: StorageError::new(redb::StorageError::Io(e).into()),
        })
    }

    /// Writes a new, empty database at `temp`, and closes it.
    fn create_new(&self, temp: &Path) -> Result<()> {
        let db = guarded_open(temp, || {
            redb::Builder::new()
                .set_cache_size(self.cache_size)
                .create(temp)
        })?;
        init_header(&db, temp, true).map_err(|e| e.in_file(temp))?;
        Ok(())
    }

    /// What every write of the store reads: the options, and the store's id.
    fn config(self, store_id: u64) -> Config {
        Config {
            clock: self.clock,
            lease_ttl: self.lease_ttl,
            backoff: self.backoff,
            store_id,
            earlier_leases_below: 0,
            verified: false,
            counters: Default::default(),
        }
    }
}

/// Verifies every page's checksum of the database at `path` in memory, writing nothing (redb's
/// integrity check over a [`Snapshot`]), before a read-only open trusts its pages: a damaged
/// page could otherwise make redb read past the file or allocate what a damaged length says
/// (gigabytes). Returns whether it verified the file: `false` when a writer committed while it
/// read, which verified the file itself when it opened it.
fn verify(path: &Path, cache_size: usize) -> Result<bool> {
    let file = std::fs::File::open(path).map_err(|e| io_open_error(path, e))?;
    match Snapshot::open(path, file, cache_size, true, |open| {
        guarded_open(path, open)
    }) {
        Ok(_) => Ok(true),
        Err(Error::Changed { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`Error::Open`] for an I/O error met on `path` before redb opened it.
fn io_open_error(path: &Path, e: std::io::Error) -> Error {
    Error::Open {
        path: path.to_path_buf(),
        source: StorageError::new(redb::Error::Io(e)),
    }
}

/// Whether a read-only open failed because the file's writer stopped without closing it, and
/// no writer is live to vouch for it: redb reads such a file only after a writable open's
/// repair.
fn needs_repair(e: &Error) -> bool {
    matches!(e, Error::Open { source, .. } if matches!(source.redb(), redb::Error::RepairAborted))
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
pub(super) fn guarded_read<R>(path: &Path, read: impl FnOnce() -> Result<R>) -> Result<R> {
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
fn init_header(db: &Database, path: &Path, initialise: bool) -> Result<(u64, u64)> {
    let tx = db.begin_write().map_err(|e| open_error(path, e))?;
    let fresh = {
        let mut tables = tx.list_tables().map_err(|e| open_error(path, e))?;
        tables.next().is_none()
    };
    if fresh && !initialise {
        return Err(Error::NotQuern {
            path: path.to_path_buf(),
        });
    }
    if fresh {
        {
            let mut t = Tables::new(&tx);
            t.open_all().map_err(|e| e.doing("creating a database"))?;
            let id = random_id();
            for (k, v) in [(META_FORMAT, FORMAT_VERSION), (META_STORE_ID, id)] {
                t.meta()?.insert(k, v).map_err(|e| open_error(path, e))?;
            }
        }
        tx.commit().map_err(|e| open_error(path, e))?;
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

/// The next lease token, as committed: every lease taken before this open is below it.
fn next_token(db: &Database) -> Result<u64> {
    let tx = db.begin_read().map_err(redb_failed)?;
    super::read::meta_value(&tx, META_NEXT_TOKEN)
}

/// A random id from the standard library's randomly seeded hasher.
fn random_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SystemClock.now().0);
    h.write_u32(std::process::id());
    h.finish()
}
