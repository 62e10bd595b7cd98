//! The write context: the tables of one write transaction, the counters it allocates from, and
//! the one way a record is written (record, indexes and counts together).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use redb::{ReadableTable, Table, WriteTransaction};

use super::codec::{
    INLINE_PAYLOAD, Segment, Stored, decode_job, encode_job, job_in_segments, payload_bytes,
    segment_jobs, segment_span,
};
use super::index;
use super::tables::{META_INDEXED, META_NEXT_ID, META_NEXT_TOKEN, Tables};

mod follow_up;
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::error::{Result, redb_failed};
use crate::state::{Payload, Phase, Record};

/// What every write needs to know about its store.
#[derive(Debug)]
pub(crate) struct Config {
    pub clock: Arc<dyn Clock>,
    pub lease_ttl: Duration,
    pub backoff: Backoff,
    pub store_id: u64,
    /// Leases with a lower token were taken by an earlier open of the database, whose process
    /// is gone: the next token when this writable open began (0 for a read-only store).
    pub earlier_leases_below: u64,
    /// Every page's checksum was verified when the store was opened (see
    /// `StoreBuilder::verify_on_open`).
    pub verified: bool,
    /// The counters as the last write transaction left them, when known (see [`Counters`]).
    pub counters: Mutex<Option<Counters>>,
}

/// The store's counters as a write transaction knows them: each read from the meta table (or
/// the jobs table) when first needed, or handed on by the transaction before.
///
/// A transaction takes them at [`Ctx::begin`] and hands them on at the end of a successful
/// [`Ctx::finish`], while it still holds redb's write lock, so the next transaction starts from
/// them without reading: a single enqueue's commit does not walk the meta table's B-tree. A
/// transaction that aborts hands nothing on, and the next one reads the tables.
/// One whose changes are not committed after all (nothing changed) may hand on ids or tokens it
/// allocated and did not use: they are skipped, never given twice. Only one process writes a
/// database, so nothing else moves them; within it, every write transaction begins under the
/// writer's commit lock, after the last one committed or, failing, poisoned the store.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    next_id: Option<u64>,
    next_token: Option<u64>,
    /// The first job not yet indexed ([`META_INDEXED`]).
    indexed_below: Option<u64>,
}

/// One past the last id of the jobs table, or 0 when it is empty.
fn after_last(table: &Table<'_, u64, &'static [u8]>) -> Result<u64> {
    Ok(table
        .last()
        .map_err(redb_failed)?
        .map_or(0, |(k, _)| k.value() + 1))
}

/// The most new jobs indexed by one claim, so that a long backlog of enqueues is indexed over
/// several commits rather than in one huge one.
const DRAIN_LIMIT: usize = 20_000;

/// A job read to be changed ([`Ctx::load_indexed`]).
#[expect(
    clippy::large_enum_variant,
    reason = "a return value, matched at once; boxing would allocate per call"
)]
pub(crate) enum Loaded {
    /// Its record, if the job exists.
    Job(Option<Record>),
    /// Behind more new jobs than one transaction indexes: some were indexed, not yet it.
    Behind,
}

/// One write transaction's view of the store, shared by every operation of a group commit.
pub(crate) struct Ctx<'t> {
    pub t: Tables<'t>,
    pub cfg: &'t Config,
    /// Read when first needed, unless the transaction before handed them on.
    counters: Counters,
    /// Whether a token was allocated, so that [`META_NEXT_TOKEN`] must be written.
    token_moved: bool,
    /// Whether the first job not yet indexed moved.
    indexed_moved: bool,
    /// Whether [`META_NEXT_ID`] must be written: jobs were deleted, or written in segments.
    floor_moved: bool,
    changed: bool,
    /// Whether there may be jobs not yet indexed (unknown at the start of a transaction).
    unindexed_maybe: bool,
    /// The queues this transaction wrote new jobs to, for the hand-off at commit.
    new_queues: Vec<String>,
    /// Count changes not yet written: (queue, phase code, delta). Written once per
    /// transaction rather than twice per transition. A transaction touches a few queues and
    /// phases, so a list beats a map (no hashing, no key copied per transition).
    count_deltas: Vec<(String, u8, i64)>,
}

impl<'t> Ctx<'t> {
    pub(crate) fn begin(tx: &'t WriteTransaction, cfg: &'t Config) -> Self {
        Ctx {
            t: Tables::new(tx),
            cfg,
            counters: cfg.counters.lock().take().unwrap_or_default(),
            token_moved: false,
            indexed_moved: false,
            floor_moved: false,
            changed: false,
            unindexed_maybe: true,
            new_queues: Vec::new(),
            count_deltas: Vec::new(),
        }
    }

    /// Writes back the counters that must persist, and hands them on to the next transaction
    /// (see [`Counters`]): the caller commits next, or drops a transaction that changed
    /// nothing. Returns whether any job changed.
    ///
    /// The next id needs writing only when jobs were deleted (the highest id may be among them)
    /// or written in segments (which the next id does not read); otherwise it is derived from
    /// the jobs table, which keeps an enqueue to one table.
    pub(crate) fn finish(mut self) -> Result<bool> {
        self.flush_counts()?;
        let c = self.counters;
        if self.token_moved
            && let Some(token) = c.next_token
        {
            self.t
                .meta()?
                .insert(META_NEXT_TOKEN, token)
                .map_err(redb_failed)?;
        }
        if self.indexed_moved
            && let Some(mark) = c.indexed_below
        {
            self.t
                .meta()?
                .insert(META_INDEXED, mark)
                .map_err(redb_failed)?;
        }
        if self.floor_moved
            && let Some(id) = c.next_id
        {
            self.t
                .meta()?
                .insert(META_NEXT_ID, id)
                .map_err(redb_failed)?;
        }
        *self.cfg.counters.lock() = Some(c);
        Ok(self.changed)
    }

    /// The store's time, in milliseconds.
    pub(crate) fn now(&self) -> u64 {
        self.cfg.clock.now().0
    }

    /// The next job id: one past the highest id in the jobs table, or the floor written when
    /// jobs were deleted or written in segments, whichever is higher.
    fn next_id(&mut self) -> Result<u64> {
        if let Some(id) = self.counters.next_id {
            return Ok(id);
        }
        let id = self
            .t
            .meta_value(META_NEXT_ID)?
            .max(after_last(self.t.jobs()?)?)
            .max(1);
        Ok(*self.counters.next_id.insert(id))
    }

    pub(crate) fn alloc_id(&mut self) -> Result<u64> {
        let id = self.next_id()?;
        self.counters.next_id = Some(id + 1);
        Ok(id)
    }

    pub(crate) fn alloc_token(&mut self) -> Result<u64> {
        let token = match self.counters.next_token {
            Some(token) => token,
            None => self.t.meta_value(META_NEXT_TOKEN)?.max(1),
        };
        self.counters.next_token = Some(token + 1);
        self.token_moved = true;
        Ok(token)
    }

    /// Marks the transaction as having changed jobs (for index moves that rewrite no record).
    pub(crate) fn touch(&mut self) {
        self.changed = true;
    }

    /// Writes a new job, not yet indexed: the whole cost of an enqueue. `apart` is its payload
    /// when too large to store inline.
    pub(crate) fn add_new(&mut self, id: u64, rec: &Record, apart: Option<&[u8]>) -> Result<()> {
        if let Some(payload) = apart {
            self.t
                .payloads()?
                .insert(id, payload)
                .map_err(redb_failed)?;
        }
        self.t
            .jobs()?
            .insert(id, encode_job(rec)?.as_slice())
            .map_err(redb_failed)?;
        self.unindexed_maybe = true;
        self.changed = true;
        if !self.new_queues.contains(&rec.queue) {
            self.new_queues.push(rec.queue.clone());
        }
        Ok(())
    }

    /// Adds a new job of a batch, not yet indexed, to `segment`, which is written (one entry
    /// of the segments table for many jobs) when it is full or the next job's id does not
    /// follow; with its payload when too large to store inline. `more` jobs are likely to
    /// follow. [`Ctx::end_batch`] writes the last segment.
    pub(crate) fn add_to_batch(
        &mut self,
        segment: &mut Segment,
        id: u64,
        rec: &Record,
        apart: Option<&[u8]>,
        more: usize,
    ) -> Result<()> {
        if let Some(payload) = apart {
            self.t
                .payloads()?
                .insert(id, payload)
                .map_err(redb_failed)?;
        }
        if !segment.takes(id) {
            self.write_segment(segment)?;
        }
        segment.push(id, rec, more)?;
        if !self.new_queues.contains(&rec.queue) {
            self.new_queues.push(rec.queue.clone());
        }
        Ok(())
    }

    /// Ends a batch that added at least one job: writes its last segment.
    pub(crate) fn end_batch(&mut self, segment: &mut Segment) -> Result<()> {
        self.write_segment(segment)?;
        // A batch whose every job went out in earlier segments still moved the next id.
        self.floor_moved = true;
        self.unindexed_maybe = true;
        self.changed = true;
        Ok(())
    }

    /// Writes `segment` as it is, if it holds a job, and leaves it empty for the jobs after.
    /// From then on its jobs are new jobs of the store like any other: an operation later in
    /// this transaction (even of the same batch) that must index them does, whatever an
    /// earlier one (a claim of the same group commit) found.
    pub(crate) fn write_segment(&mut self, segment: &mut Segment) -> Result<()> {
        match segment.take() {
            Some(Stored::Single(id, bytes)) => {
                self.t
                    .jobs()?
                    .insert(id, bytes.as_slice())
                    .map_err(redb_failed)?;
            }
            Some(Stored::Segment(first, bytes)) => {
                self.t
                    .segments()?
                    .insert(first, bytes.as_slice())
                    .map_err(redb_failed)?;
            }
            None => return Ok(()),
        }
        // The jobs' ids came from `alloc_id`; the next id does not read the segments table, so
        // the floor written at `finish` must cover them.
        self.floor_moved = true;
        self.unindexed_maybe = true;
        self.changed = true;
        Ok(())
    }

    /// The queues new jobs were written to since the last call.
    pub(crate) fn take_new_queues(&mut self) -> Vec<String> {
        std::mem::take(&mut self.new_queues)
    }

    fn indexed_below(&mut self) -> Result<u64> {
        match self.counters.indexed_below {
            Some(mark) => Ok(mark),
            None => Ok(*self
                .counters
                .indexed_below
                .insert(self.t.meta_value(META_INDEXED)?)),
        }
    }

    /// Marks every job below `mark` as indexed. Only ever past jobs that exist, so that the
    /// mark never passes the next id.
    fn set_indexed_below(&mut self, mark: u64) {
        if self.counters.indexed_below.is_none_or(|m| m < mark) {
            self.counters.indexed_below = Some(mark);
            self.indexed_moved = true;
        }
    }

    /// Marks every job as indexed. Only for a transaction that indexed them all itself.
    pub(crate) fn set_all_indexed(&mut self) -> Result<()> {
        let next = self.next_id()?;
        self.set_indexed_below(next);
        Ok(())
    }

    /// The jobs not yet indexed from id `from` up to `through` (and to the end of a segment
    /// that `through` falls in), in id order, at least `limit` of them if there are as many:
    /// the single jobs of the jobs table and the jobs of whole segments, merged. The jobs of
    /// the segments read move to the jobs table, one entry each, as the rest of the store
    /// expects indexed jobs to be stored, and the segments go.
    fn read_new(&mut self, from: u64, through: u64, limit: usize) -> Result<Vec<(u64, Record)>> {
        let mut singles = Vec::new();
        for entry in self
            .t
            .jobs()?
            .range(from..=through)
            .map_err(redb_failed)?
            .take(limit)
        {
            let (k, v) = entry.map_err(redb_failed)?;
            singles.push((k.value(), decode_job(k.value(), v.value())?));
        }
        // Past the last single read, when more may follow: the bound of this read.
        let mut bound = match singles.last() {
            Some(&(last, _)) if singles.len() == limit => last + 1,
            _ => u64::MAX,
        };
        let mut segments = Vec::new();
        let mut in_segments = 0;
        for entry in self
            .t
            .segments()?
            .range(from..=through)
            .map_err(redb_failed)?
        {
            let (k, v) = entry.map_err(redb_failed)?;
            if in_segments >= limit || k.value() >= bound {
                // No single job lies inside a segment, so whole segments end at the bound.
                bound = bound.min(k.value());
                break;
            }
            in_segments += segment_span(k.value(), v.value())? as usize;
            segments.push((k.value(), v.value().to_vec()));
        }
        let mut out: Vec<(u64, Record)> =
            singles.into_iter().filter(|(id, _)| *id < bound).collect();
        for (key, bytes) in &segments {
            self.t.segments()?.remove(key).map_err(redb_failed)?;
            for job in segment_jobs(*key, bytes)? {
                let (id, job) = job?;
                self.t.jobs()?.insert(id, job).map_err(redb_failed)?;
                out.push((id, decode_job(id, job)?));
            }
        }
        if !segments.is_empty() {
            out.sort_unstable_by_key(|(id, _)| *id);
        }
        Ok(out)
    }

    /// Indexes the new jobs up to id `through` in id order, up to a bound per transaction,
    /// except the ones `keep` selects: those are returned instead, and the caller must
    /// [`Ctx::put`] (as a new job) or [`Ctx::index_new`] each; a claim writes them in progress
    /// at once, saving their trip through the ready index. Also returns whether every new job
    /// up to `through` is now indexed (or returned): false when the bound stopped it, and a
    /// claim must then not claim yet (see [`crate::store::work::claim`]).
    pub(crate) fn drain_new(
        &mut self,
        through: u64,
        keep: impl Fn(&Record) -> bool,
    ) -> Result<(Vec<(u64, Record)>, bool)> {
        if !self.unindexed_maybe {
            return Ok((Vec::new(), true));
        }
        let (kept, exhausted) = self.drain_through(through, DRAIN_LIMIT, keep)?;
        // Drained to the end: all indexed, without reading the id counter (the common case).
        let all_indexed =
            (exhausted && through == u64::MAX) || self.indexed_below()? >= self.next_id()?;
        if all_indexed {
            self.unindexed_maybe = false;
        }
        Ok((
            kept,
            exhausted || all_indexed || self.indexed_below()? > through,
        ))
    }

    /// The highest job id given so far (0 when none was).
    pub(crate) fn last_id(&mut self) -> Result<u64> {
        Ok(self.next_id()?.saturating_sub(1))
    }

    /// Indexes the new jobs up to id `through`, at least `limit` of them if there are as many
    /// (whole chunks), in id order, moving the mark past them; returns the ones `keep` selects
    /// instead (see [`Ctx::drain_new`]), and whether none up to `through` is left.
    fn drain_through(
        &mut self,
        through: u64,
        limit: usize,
        keep: impl Fn(&Record) -> bool,
    ) -> Result<(Vec<(u64, Record)>, bool)> {
        let mut kept = Vec::new();
        let mut moved = 0;
        while moved < limit {
            let from = self.indexed_below()?;
            let batch = self.read_new(from, through, 256)?;
            let Some(&(last, _)) = batch.last() else {
                return Ok((kept, true));
            };
            moved += batch.len();
            for (id, rec) in batch {
                if keep(&rec) {
                    self.changed = true;
                    kept.push((id, rec));
                } else {
                    self.index_new(id, &rec)?;
                }
            }
            self.set_indexed_below(last + 1);
        }
        Ok((kept, false))
    }

    /// Makes sure job `id` is indexed if it exists: indexes every new job up to it, however
    /// many (a write that must change a job not yet indexed: rare, and then a new job of the
    /// same key a moment old).
    pub(crate) fn index_through(&mut self, id: u64) -> Result<()> {
        if self.unindexed_maybe && id >= self.indexed_below()? {
            self.drain_through(id, usize::MAX, |_| false)?;
        }
        Ok(())
    }

    /// Indexes a new job, as stored at enqueue.
    pub(crate) fn index_new(&mut self, id: u64, rec: &Record) -> Result<()> {
        let now = self.now();
        index::insert(&mut self.t, id, rec, now)?;
        self.count(rec, 1);
        self.changed = true;
        Ok(())
    }

    /// The record of job `id`, indexing the new jobs up to it first if it is not yet indexed,
    /// as many as one transaction indexes: [`Loaded::Behind`] when they stop short of it, and
    /// the caller must try again in another transaction.
    pub(crate) fn load_indexed(&mut self, id: u64) -> Result<Loaded> {
        if id > self.last_id()? {
            return Ok(Loaded::Job(None));
        }
        if self.unindexed_maybe
            && id >= self.indexed_below()?
            && !self.drain_through(id, DRAIN_LIMIT, |_| false)?.1
            && self.indexed_below()? <= id
        {
            return Ok(Loaded::Behind);
        }
        self.load(id).map(Loaded::Job)
    }

    pub(crate) fn load(&mut self, id: u64) -> Result<Option<Record>> {
        let single = match self.t.jobs()?.get(id).map_err(redb_failed)? {
            Some(bytes) => Some(decode_job(id, bytes.value())?),
            None => None,
        };
        match single {
            Some(rec) => Ok(Some(rec)),
            // A new job of a batch may still be in its segment.
            None => job_in_segments(self.t.segments()?, id),
        }
    }

    /// The bytes of job `id`'s payload, kept as `payload` says.
    pub(crate) fn payload(&mut self, id: u64, payload: Payload) -> Result<Vec<u8>> {
        match payload {
            Payload::Inline(p) => Ok(p),
            Payload::Apart => payload_bytes(self.t.payloads()?, id).map_err(redb_failed),
        }
    }

    /// Writes `new` as job `id`, which was `old` (`None` for a new job): the record, its index
    /// entries and the per-queue counts change together.
    pub(crate) fn put(&mut self, id: u64, old: Option<&Record>, new: &Record) -> Result<()> {
        let now = self.now();
        let bytes = encode_job(new)?;
        self.t
            .jobs()?
            .insert(id, bytes.as_slice())
            .map_err(redb_failed)?;
        match old {
            // A heartbeat moves only the lease entry.
            Some(old) if old.phase() == Phase::InProgress && new.phase() == Phase::InProgress => {
                index::move_lease(&mut self.t, id, old, new)?;
            }
            Some(old) => {
                // A run that ends may have a follow-up waiting behind it (see `unique`), found
                // before the new record takes the unique key back.
                let follower = if old.phase() == Phase::InProgress {
                    self.follower(id, old)?
                } else {
                    None
                };
                index::remove(&mut self.t, id, old)?;
                index::insert(&mut self.t, id, new, now)?;
                index::end_line(&mut self.t, id, old, new)?;
                self.count(old, -1);
                self.count(new, 1);
                self.changed = true;
                // A run that ended for good releases its follow-up before the concurrency key
                // passes on, so that the follow-up takes its place in an ordered line by its id.
                let follower = match follower {
                    Some(follow) if !new.phase().is_live() => {
                        self.after_run(id, new, follow)?;
                        None
                    }
                    follower => follower,
                };
                index::pass_concurrency_key(&mut self.t, old, new, now)?;
                if let Some(follow) = follower {
                    self.after_run(id, new, follow)?;
                }
                if old.extra.behind.is_some() && !new.phase().is_live() {
                    self.hand_back(old)?;
                }
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
        let code = rec.phase().code();
        match self
            .count_deltas
            .iter_mut()
            .find(|(q, c, _)| *c == code && *q == rec.queue)
        {
            Some((_, _, d)) => *d += delta,
            None => self.count_deltas.push((rec.queue.clone(), code, delta)),
        }
    }

    /// Writes the pending count changes, so that the counts table is exact.
    pub(crate) fn flush_counts(&mut self) -> Result<()> {
        for (queue, code, delta) in std::mem::take(&mut self.count_deltas) {
            index::add_count(&mut self.t, &queue, code, delta)?;
        }
        Ok(())
    }

    /// The queues that ever held a job.
    pub(crate) fn queues(&mut self) -> Result<Vec<String>> {
        self.flush_counts()?;
        index::queues(self.t.counts()?)
    }

    /// Replaces the payload of job `id` (record `rec`, written by the caller), inline or apart as
    /// its size says.
    pub(crate) fn set_payload(&mut self, id: u64, rec: &mut Record, bytes: Vec<u8>) -> Result<()> {
        if bytes.len() <= INLINE_PAYLOAD {
            if rec.payload == Payload::Apart {
                self.t.payloads()?.remove(id).map_err(redb_failed)?;
            }
            rec.payload = Payload::Inline(bytes);
        } else {
            self.t
                .payloads()?
                .insert(id, bytes.as_slice())
                .map_err(redb_failed)?;
            rec.payload = Payload::Apart;
        }
        Ok(())
    }

    /// Deletes job `id` and everything that points to it.
    pub(crate) fn delete(&mut self, id: u64, old: &Record) -> Result<()> {
        // The floor under the next id is read before the job with the highest id may go.
        self.next_id()?;
        index::remove(&mut self.t, id, old)?;
        self.count(old, -1);
        self.t.jobs()?.remove(id).map_err(redb_failed)?;
        if old.payload == Payload::Apart {
            self.t.payloads()?.remove(id).map_err(redb_failed)?;
        }
        self.floor_moved = true;
        self.changed = true;
        Ok(())
    }
}
