//! Every table of a quern database, the format version, and [`Tables`], the handles of one
//! write transaction on them. `docs/design.md` describes each table and the invariants that tie
//! the indexes to the job records.

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::error::{Result, redb_failed};

/// The on-disk format this build reads and writes. A change to any table or record layout bumps
/// it and adds a fixture under `tests/fixtures/`.
pub const FORMAT_VERSION: u64 = 6;
/// Format 5 differs from format 6 only in not having the controls table ([`CONTROLS`]): this
/// build reads it as it is (no queue or key is held back), and a writable open adds the table
/// and moves its version on, so that a build that knows only format 5 refuses the file rather
/// than ignores its pauses, parks and limits.
pub(crate) const FORMAT_5: u64 = 5;
/// Format 4 differs from format 5 only in not knowing the fields a job carries behind
/// `codec::TAG_EXTRA` (ordered concurrency keys, follow-ups of unique keys), which format 4 never
/// wrote: this build reads it as it is, and a writable open moves its version on.
pub(crate) const FORMAT_4: u64 = 4;
/// Format 3 differs from format 4 only in not knowing the short form of a job's record
/// (`codec::TAG_SHORT`), which format 4 writes for every job as enqueued: this build reads it
/// as it is, and a writable open moves its version on.
pub(crate) const FORMAT_3: u64 = 3;
/// Format 2 is format 3 without the segments table ([`SEGMENTS`]): this build reads it as it
/// is, and a writable open adds the table and moves its version on.
pub(crate) const FORMAT_2: u64 = 2;

/// Whether this build reads a file of format `version` as it is (format 1 must be upgraded).
pub(crate) fn reads_as_is(version: u64) -> bool {
    matches!(
        version,
        FORMAT_VERSION | FORMAT_5 | FORMAT_4 | FORMAT_3 | FORMAT_2
    )
}

/// Header and counters: [`META_FORMAT`], [`META_STORE_ID`], [`META_NEXT_ID`],
/// [`META_NEXT_TOKEN`], [`META_INDEXED`].
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("quern_meta");
pub(crate) const META_FORMAT: &str = "format_version";
/// A random id given to the database when it is created; leases carry it.
pub(crate) const META_STORE_ID: &str = "store_id";
/// A floor under the next job id, written when the job with the highest id may be deleted
/// (prune) and when jobs are written in segments, so that ids are never reused; otherwise the
/// next id is one past the highest id in the jobs table.
pub(crate) const META_NEXT_ID: &str = "next_id";
pub(crate) const META_NEXT_TOKEN: &str = "next_token";
/// Every job below this id is indexed; the jobs from it on are pending jobs not yet indexed
/// (absent: 0). An enqueue writes only its job (one B-tree leaf), which is what lets a single
/// durable enqueue cost about one raw commit; the next claim, retry, cancel or housekeeping call
/// indexes the new jobs in id order and moves this mark past them.
pub(crate) const META_INDEXED: &str = "indexed_below";

/// Format 1 only: jobs enqueued but not yet indexed, id -> record and payload. Opening a format
/// 1 database for writing moves them into [`JOBS`], indexed.
pub(crate) const V1_INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("quern_inbox");
/// id -> stored job: the encoded [`Record`](crate::state::Record), and its payload when that is
/// small (see `codec::encode_job`).
pub(crate) const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("quern_jobs");
/// first id -> segment (from format 3): new jobs of consecutive ids written by one `enqueue_batch`
/// (see `codec::TAG_SEGMENT`), all at or above [`META_INDEXED`]. A table of their own, so that
/// the jobs table never holds a value larger than a page: redb rebuilds a leaf at the size it
/// had for every insert into it, and the claim that moves a segment's jobs inserts them.
pub(crate) const SEGMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("quern_segments");
/// id -> payload bytes of the jobs whose payload is too large to store inline, written once at
/// enqueue.
pub(crate) const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("quern_payloads");
/// Pending and due when last looked at: (queue, priority desc, run_at, id) -> concurrency key.
pub(crate) const READY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("quern_ready");
/// Pending and not yet due when written: (queue, run_at, id) -> (priority, concurrency key).
pub(crate) const SCHEDULED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("quern_scheduled");
/// Pending, due, but its concurrency key was busy when claim reached it:
/// (queue, concurrency key, priority desc, run_at, id).
pub(crate) const BLOCKED: TableDefinition<&[u8], ()> = TableDefinition::new("quern_blocked");
/// (queue, concurrency key) -> id of the in-progress job holding it.
pub(crate) const BUSY: TableDefinition<&[u8], u64> = TableDefinition::new("quern_busy");
/// (queue, unique key) -> id of the live job holding it.
pub(crate) const UNIQUE: TableDefinition<&[u8], u64> = TableDefinition::new("quern_unique");
/// Failed with a retry scheduled: (queue, next_attempt_at, id).
pub(crate) const RETRIES: TableDefinition<&[u8], ()> = TableDefinition::new("quern_retries");
/// In progress: (lease_expires_at, id).
pub(crate) const LEASES: TableDefinition<(u64, u64), ()> = TableDefinition::new("quern_leases");
/// Succeeded: (finished_at, id).
pub(crate) const SUCCEEDED: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("quern_succeeded");
/// Failed for good: (finished_at, id).
pub(crate) const DEAD: TableDefinition<(u64, u64), ()> = TableDefinition::new("quern_dead");
/// Periodic schedule name -> the last slot it fired for.
pub(crate) const PERIODIC: TableDefinition<&str, u64> = TableDefinition::new("quern_periodic");
/// (queue, concurrency key, or "" for the queue itself) -> its control (format 6): a pause, a
/// park, a rate limit and its window (`limits::Control`, postcard).
pub(crate) const CONTROLS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("quern_controls");
/// (queue, concurrency key) -> how many jobs of a key with a maximum above one run now (format
/// 6): such jobs do not take the key's busy entry, which stays with the key's waiting head.
pub(crate) const RUNNING: TableDefinition<&[u8], u64> = TableDefinition::new("quern_running");
/// (queue, phase) -> number of jobs.
pub(crate) const COUNTS: TableDefinition<&[u8], u64> = TableDefinition::new("quern_counts");

/// Declares [`Tables`]: every quern table of one write transaction, each opened the first time
/// an operation asks for it, so that a transaction pays only for the tables it touches: an
/// enqueue opens one, not fifteen.
macro_rules! tables {
    ($($name:ident: $def:ident => $key:ty, $value:ty;)*) => {
        pub(crate) struct Tables<'t> {
            tx: &'t WriteTransaction,
            $($name: Option<Table<'t, $key, $value>>,)*
        }

        impl<'t> Tables<'t> {
            pub(crate) fn new(tx: &'t WriteTransaction) -> Self {
                Tables { tx, $($name: None,)* }
            }

            /// Opens every table: a new database gets them all, so readers find them.
            pub(crate) fn open_all(&mut self) -> Result<()> {
                $(self.$name()?;)*
                Ok(())
            }

            $(
                #[doc = concat!("The `", stringify!($def), "` table, opened on first use.")]
                pub(crate) fn $name(&mut self) -> Result<&mut Table<'t, $key, $value>> {
                    let table = match self.$name.take() {
                        Some(table) => table,
                        None => self.tx.open_table($def).map_err(redb_failed)?,
                    };
                    Ok(self.$name.insert(table))
                }
            )*
        }
    };
}

tables! {
    meta: META => &'static str, u64;
    jobs: JOBS => u64, &'static [u8];
    segments: SEGMENTS => u64, &'static [u8];
    payloads: PAYLOADS => u64, &'static [u8];
    ready: READY => &'static [u8], &'static [u8];
    scheduled: SCHEDULED => &'static [u8], &'static [u8];
    blocked: BLOCKED => &'static [u8], ();
    busy: BUSY => &'static [u8], u64;
    unique: UNIQUE => &'static [u8], u64;
    retries: RETRIES => &'static [u8], ();
    leases: LEASES => (u64, u64), ();
    succeeded: SUCCEEDED => (u64, u64), ();
    dead: DEAD => (u64, u64), ();
    counts: COUNTS => &'static [u8], u64;
    periodic: PERIODIC => &'static str, u64;
    controls: CONTROLS => &'static [u8], &'static [u8];
    running: RUNNING => &'static [u8], u64;
}

impl Tables<'_> {
    /// A counter of the meta table; 0 when it was never written.
    pub(crate) fn meta_value(&mut self, key: &str) -> Result<u64> {
        Ok(self
            .meta()?
            .get(key)
            .map_err(redb_failed)?
            .map_or(0, |g| g.value()))
    }
}
