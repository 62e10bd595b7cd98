//! The write context: the tables of one write transaction, the counters it allocates from, and
//! the one way a record is written (record, indexes and counts together).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableTable, Table, WriteTransaction};

use super::codec::{decode_inbox, decode_record, encode_record};
use super::index;
use super::tables::{
    BLOCKED, BUSY, COUNTS, DEAD, INBOX, JOBS, LEASES, META, META_NEXT_ID, META_NEXT_TOKEN,
    PAYLOADS, PERIODIC, READY, RETRIES, SCHEDULED, SUCCEEDED, UNIQUE,
};
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::state::{Phase, Record};

/// What every write needs to know about its store.
#[derive(Debug)]
pub(crate) struct Config {
    pub clock: Arc<dyn Clock>,
    pub lease_ttl: Duration,
    pub backoff: Backoff,
    pub store_id: u64,
}

/// Wraps a redb failure met while writing.
pub(crate) fn w(e: impl Into<redb::Error>) -> Error {
    Error::storage("writing jobs", e)
}

/// Declares [`Tables`]: every quern table of one write transaction, each opened the first time
/// an operation asks for it. A transaction pays for the tables it touches: opening all fifteen
/// costs a single enqueue's commit about 7% (measured beside a raw redb commit).
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
                        None => self.tx.open_table($def).map_err(w)?,
                    };
                    Ok(self.$name.insert(table))
                }
            )*
        }
    };
}

tables! {
    meta: META => &'static str, u64;
    inbox: INBOX => u64, &'static [u8];
    jobs: JOBS => u64, &'static [u8];
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
}

impl Tables<'_> {
    fn meta_value(&mut self, key: &str) -> Result<u64> {
        Ok(self.meta()?.get(key).map_err(w)?.map_or(0, |g| g.value()))
    }
}

/// One past the last id of an id-keyed table, or 0 when it is empty.
fn after_last(table: &Table<'_, u64, &'static [u8]>) -> Result<u64> {
    Ok(table.last().map_err(w)?.map_or(0, |(k, _)| k.value() + 1))
}

/// The most inbox entries indexed by one transaction, so that a long backlog of enqueues is
/// indexed over several commits rather than in one huge one.
const DRAIN_LIMIT: usize = 20_000;

/// One write transaction's view of the store, shared by every operation of a group commit.
pub(crate) struct Ctx<'t> {
    pub t: Tables<'t>,
    pub cfg: &'t Config,
    /// Read when first needed: most transactions allocate neither.
    next_id: Option<u64>,
    next_token: Option<u64>,
    deleted: bool,
    changed: bool,
    /// Whether the inbox may hold entries (unknown at the start of a transaction).
    inbox_maybe: bool,
    /// Count changes not yet written: (queue, phase code) -> delta. Written once per
    /// transaction rather than twice per transition.
    count_deltas: HashMap<(String, u8), i64>,
}

impl<'t> Ctx<'t> {
    pub(crate) fn begin(tx: &'t WriteTransaction, cfg: &'t Config) -> Result<Self> {
        Ok(Ctx {
            t: Tables::new(tx),
            cfg,
            next_id: None,
            next_token: None,
            deleted: false,
            changed: false,
            inbox_maybe: true,
            count_deltas: HashMap::new(),
        })
    }

    /// Writes back the counters that must persist. Returns whether any job changed.
    ///
    /// The next id needs writing only when jobs were deleted (the highest id may be among them);
    /// otherwise it is derived from the tables, which keeps an enqueue to one table.
    pub(crate) fn finish(mut self) -> Result<bool> {
        self.flush_counts()?;
        // Read only when a token was allocated, so written only then.
        if let Some(token) = self.next_token {
            self.t.meta()?.insert(META_NEXT_TOKEN, token).map_err(w)?;
        }
        if self.deleted
            && let Some(id) = self.next_id
        {
            self.t.meta()?.insert(META_NEXT_ID, id).map_err(w)?;
        }
        Ok(self.changed)
    }

    /// The store's time, in milliseconds.
    pub(crate) fn now(&self) -> u64 {
        self.cfg.clock.now().0
    }

    /// The next job id: one past the highest id in the jobs and inbox tables, or the floor
    /// written when jobs were deleted, whichever is higher.
    fn next_id(&mut self) -> Result<u64> {
        if let Some(id) = self.next_id {
            return Ok(id);
        }
        let id = self
            .t
            .meta_value(META_NEXT_ID)?
            .max(after_last(self.t.jobs()?)?)
            .max(after_last(self.t.inbox()?)?)
            .max(1);
        Ok(*self.next_id.insert(id))
    }

    pub(crate) fn alloc_id(&mut self) -> Result<u64> {
        let id = self.next_id()?;
        self.next_id = Some(id + 1);
        Ok(id)
    }

    pub(crate) fn alloc_token(&mut self) -> Result<u64> {
        let token = match self.next_token {
            Some(token) => token,
            None => self.t.meta_value(META_NEXT_TOKEN)?.max(1),
        };
        self.next_token = Some(token + 1);
        Ok(token)
    }

    /// Marks the transaction as having changed jobs (for index moves that rewrite no record).
    pub(crate) fn touch(&mut self) {
        self.changed = true;
    }

    /// Writes a new job to the inbox: the whole cost of an enqueue.
    pub(crate) fn push_inbox(&mut self, id: u64, entry: &[u8]) -> Result<()> {
        self.t.inbox()?.insert(id, entry).map_err(w)?;
        self.inbox_maybe = true;
        self.changed = true;
        Ok(())
    }

    /// Indexes the inbox in id order, up to a bound per transaction, except the entries `keep`
    /// selects: those are taken out of the inbox with their payloads stored, and returned
    /// instead of indexed, and the caller must [`Ctx::put`] each (a claim writes them in
    /// progress at once, saving their trip through the ready index). A claim calls this first,
    /// so that it sees every enqueued job.
    pub(crate) fn drain_inbox(
        &mut self,
        keep: impl Fn(&Record) -> bool,
    ) -> Result<Vec<(u64, Record)>> {
        let mut kept = Vec::new();
        if !self.inbox_maybe {
            return Ok(kept);
        }
        let mut moved = 0;
        while moved < DRAIN_LIMIT {
            let batch: Vec<(u64, Vec<u8>)> = self
                .t
                .inbox()?
                .iter()
                .map_err(w)?
                .take(256)
                .map(|e| e.map(|(k, v)| (k.value(), v.value().to_vec())))
                .collect::<Result<_, _>>()
                .map_err(w)?;
            if batch.is_empty() {
                self.inbox_maybe = false;
                break;
            }
            for (id, bytes) in batch {
                let rec = self.unbox(id, &bytes)?;
                if keep(&rec) {
                    self.changed = true;
                    kept.push((id, rec));
                } else {
                    self.put(id, None, &rec)?;
                }
                moved += 1;
            }
        }
        Ok(kept)
    }

    /// Takes one inbox entry out of the inbox, storing its payload; returns its record, which
    /// the caller must [`Ctx::put`].
    fn unbox(&mut self, id: u64, bytes: &[u8]) -> Result<Record> {
        let (rec, payload) = decode_inbox(id, bytes)?;
        self.t.payloads()?.insert(id, payload).map_err(w)?;
        self.t.inbox()?.remove(id).map_err(w)?;
        Ok(rec)
    }

    /// The record of job `id`, indexing it first if it is still in the inbox.
    pub(crate) fn load_indexed(&mut self, id: u64) -> Result<Option<Record>> {
        if let Some(rec) = self.load(id)? {
            return Ok(Some(rec));
        }
        let entry = self
            .t
            .inbox()?
            .get(id)
            .map_err(w)?
            .map(|g| g.value().to_vec());
        entry
            .map(|bytes| {
                let rec = self.unbox(id, &bytes)?;
                self.put(id, None, &rec)?;
                Ok(rec)
            })
            .transpose()
    }

    pub(crate) fn load(&mut self, id: u64) -> Result<Option<Record>> {
        match self.t.jobs()?.get(id).map_err(w)? {
            Some(bytes) => decode_record(id, bytes.value()).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn payload(&mut self, id: u64) -> Result<Vec<u8>> {
        Ok(self
            .t
            .payloads()?
            .get(id)
            .map_err(w)?
            .map(|g| g.value().to_vec())
            .unwrap_or_default())
    }

    /// Writes `new` as job `id`, which was `old` (`None` for a new job): the record, its index
    /// entries and the per-queue counts change together.
    pub(crate) fn put(&mut self, id: u64, old: Option<&Record>, new: &Record) -> Result<()> {
        let now = self.now();
        let bytes = encode_record(new)?;
        self.t.jobs()?.insert(id, bytes.as_slice()).map_err(w)?;
        match old {
            // A heartbeat moves only the lease entry.
            Some(old) if old.phase() == Phase::InProgress && new.phase() == Phase::InProgress => {
                index::move_lease(&mut self.t, id, old, new)?;
            }
            Some(old) => {
                index::remove(&mut self.t, id, old)?;
                index::insert(&mut self.t, id, new, now)?;
                index::pass_concurrency_key(&mut self.t, old, new)?;
                self.count(old, -1);
                self.count(new, 1);
            }
            None => {
                index::insert(&mut self.t, id, new, now)?;
                self.count(new, 1);
            }
        }
        self.changed = true;
        Ok(())
    }

    fn count(&mut self, rec: &Record, delta: i64) {
        *self
            .count_deltas
            .entry((rec.queue.clone(), rec.phase().code()))
            .or_default() += delta;
    }

    /// Writes the pending count changes, so that the counts table is exact.
    pub(crate) fn flush_counts(&mut self) -> Result<()> {
        for ((queue, code), delta) in std::mem::take(&mut self.count_deltas) {
            index::add_count(&mut self.t, &queue, code, delta)?;
        }
        Ok(())
    }

    /// The queues that ever held a job.
    pub(crate) fn queues(&mut self) -> Result<Vec<String>> {
        self.flush_counts()?;
        index::queues(self.t.counts()?)
    }

    /// Deletes job `id` and everything that points to it.
    pub(crate) fn delete(&mut self, id: u64, old: &Record) -> Result<()> {
        // The floor under the next id is read before the job with the highest id may go.
        self.next_id()?;
        index::remove(&mut self.t, id, old)?;
        self.count(old, -1);
        self.t.jobs()?.remove(id).map_err(w)?;
        self.t.payloads()?.remove(id).map_err(w)?;
        self.deleted = true;
        self.changed = true;
        Ok(())
    }
}
