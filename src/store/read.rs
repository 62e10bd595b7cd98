//! Reading: get, list and stats, each in one read transaction (a consistent snapshot that never
//! blocks the writer).

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable};

use super::codec::{
    decode_job, decode_segment, job_in_segments, ordered_tail, parse_count_key, payload_bytes,
    queue_prefix, segment_jobs, segment_span, timed_tail,
};
use super::tables::{
    BLOCKED, COUNTS, JOBS, LEASES, META, META_INDEXED, META_NEXT_ID, PAYLOADS, READY, RETRIES,
    SCHEDULED, SEGMENTS,
};
use crate::error::{Error, Result, redb_failed};
use crate::job::Job;
use crate::state::{Payload, Phase, Record};
use crate::types::{JobId, JobState, Timestamp};

/// Which jobs [`Store::list`](crate::Store::list) returns.
///
/// ```
/// use quern::{Filter, JobState};
/// let f = Filter::default().queue("uploads").state(JobState::Failed).limit(100);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub(crate) queue: Option<String>,
    pub(crate) state: Option<JobState>,
    pub(crate) limit: Option<usize>,
    pub(crate) after: Option<JobId>,
}

impl Filter {
    /// Only jobs of this queue. Default: every queue.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Only jobs in this state. Default: every state.
    #[must_use]
    pub fn state(mut self, state: JobState) -> Self {
        self.state = Some(state);
        self
    }

    /// At most this many jobs. Default: no limit.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only jobs with an id greater than `id`: the cursor of a paged listing. Default: from the
    /// first job.
    #[must_use]
    pub fn after(mut self, id: JobId) -> Self {
        self.after = Some(id);
        self
    }

    fn admits(&self, job_queue: &str, state: JobState) -> bool {
        self.queue.as_deref().is_none_or(|q| q == job_queue)
            && self.state.is_none_or(|s| s == state)
    }
}

/// Counts and times of one queue, from [`Store::stats`](crate::Store::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Pending jobs, due or not.
    pub pending: u64,
    /// Jobs in progress.
    pub in_progress: u64,
    /// Jobs that succeeded (until pruned).
    pub succeeded: u64,
    /// Failed jobs with a retry scheduled.
    pub retrying: u64,
    /// Jobs that failed for good (until pruned).
    pub failed: u64,
    /// The `run_at` of the oldest pending job that is due: how long the queue has kept work
    /// waiting.
    pub oldest_due_pending: Option<Timestamp>,
    /// The earliest scheduled retry.
    pub next_retry_at: Option<Timestamp>,
    /// The earliest `run_at` of a pending job that is not yet due.
    pub next_scheduled_at: Option<Timestamp>,
}

impl QueueStats {
    /// Jobs in the queue, in every state.
    pub fn total(&self) -> u64 {
        self.pending + self.in_progress + self.succeeded + self.retrying + self.failed
    }
}

/// What [`Store::stats`](crate::Store::stats) returns: one entry per queue, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Per queue, in name order.
    pub queues: Vec<QueueStats>,
    /// The earliest lease expiry of any in-progress job.
    pub next_lease_expiry: Option<Timestamp>,
    /// When the stats were read, by the store's clock.
    pub at: Timestamp,
}

impl Stats {
    /// The stats of one queue, if it ever held a job.
    pub fn queue(&self, name: &str) -> Option<&QueueStats> {
        self.queues.iter().find(|q| q.queue == name)
    }
}

/// The segments table, or `None` for a format 2 file opened read-only, which has none.
pub(crate) fn segments(tx: &ReadTransaction) -> Result<Option<ReadOnlyTable<u64, &'static [u8]>>> {
    match tx.open_table(SEGMENTS) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(redb_failed(e)),
    }
}

pub(crate) fn get(tx: &ReadTransaction, id: JobId) -> Result<Option<Job>> {
    let jobs = tx.open_table(JOBS).map_err(redb_failed)?;
    let single = match jobs.get(id.0).map_err(redb_failed)? {
        Some(bytes) => Some(decode_job(id.0, bytes.value())?),
        None => None,
    };
    let rec = match (single, segments(tx)?) {
        (Some(rec), _) => rec,
        (None, Some(segments)) => match job_in_segments(&segments, id.0)? {
            Some(rec) => rec,
            None => return Ok(None),
        },
        (None, None) => return Ok(None),
    };
    let payloads = tx.open_table(PAYLOADS).map_err(redb_failed)?;
    Ok(Some(into_job(&payloads, id.0, rec)?))
}

/// The job of a stored record, with its payload read from wherever it is kept.
fn into_job(
    payloads: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
    mut rec: Record,
) -> Result<Job> {
    let payload = match std::mem::take(&mut rec.payload) {
        Payload::Inline(p) => p,
        Payload::Apart => payload_bytes(payloads, id).map_err(redb_failed)?,
    };
    Ok(rec.into_job(JobId(id), payload))
}

/// Calls `each` with every job the filter admits, in id order, until it returns false.
pub(crate) fn scan(
    tx: &ReadTransaction,
    filter: &Filter,
    mut each: impl FnMut(Job) -> bool,
) -> Result<()> {
    let jobs = tx.open_table(JOBS).map_err(redb_failed)?;
    let payloads = tx.open_table(PAYLOADS).map_err(redb_failed)?;
    let segments = segments(tx)?;
    let from = filter.after.map_or(0, |a| a.0.saturating_add(1));
    let mut singles = jobs.range(from..).map_err(redb_failed)?.map(|entry| {
        let (k, v) = entry.map_err(redb_failed)?;
        Ok::<_, Error>((k.value(), v.value().to_vec()))
    });
    let mut batched = batched_from(segments.as_ref(), from)?;
    // The two streams merged in id order. A stream's next job is read only when the listing
    // goes on, and decoded only when it is the next job: damage past the page is not met.
    let (mut single, mut batch) = (None, None);
    let mut taken = 0;
    while filter.limit.is_none_or(|l| taken < l) {
        if single.is_none() {
            single = singles.next().transpose()?;
        }
        if batch.is_none() {
            batch = batched.next().transpose()?;
        }
        let next = match (&single, &batch) {
            (Some((a, _)), Some((b, _))) if b < a => batch.take(),
            (Some(_), _) => single.take(),
            (None, _) => batch.take(),
        };
        let Some((id, bytes)) = next else {
            break;
        };
        let rec = decode_job(id, &bytes)?;
        if !filter.admits(&rec.queue, rec.state) {
            continue;
        }
        taken += 1;
        if !each(into_job(&payloads, id, rec)?) {
            break;
        }
    }
    Ok(())
}

/// Stored jobs (id, bytes as `quern_jobs` stores them), in id order.
type Jobs<'t> = Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + 't>;

/// The jobs of the segments from job `from` on, in id order, not yet decoded.
fn batched_from<'t>(
    segments: Option<&'t ReadOnlyTable<u64, &'static [u8]>>,
    from: u64,
) -> Result<Jobs<'t>> {
    let Some(table) = segments else {
        return Ok(Box::new(std::iter::empty()));
    };
    // A segment that holds job `from` starts before it.
    let start = match table.range(..from).map_err(redb_failed)?.next_back() {
        Some(entry) => {
            let (k, v) = entry.map_err(redb_failed)?;
            let key = k.value();
            if key.saturating_add(segment_span(key, v.value())?) > from {
                key
            } else {
                from
            }
        }
        None => from,
    };
    let range = table.range(start..).map_err(redb_failed)?;
    Ok(Box::new(range.flat_map(move |entry| {
        let jobs = entry.map_err(redb_failed).and_then(|(k, v)| {
            segment_jobs(k.value(), v.value())?
                .filter(|job| !matches!(job, Ok((id, _)) if *id < from))
                .map(|job| job.map(|(id, bytes)| (id, bytes.to_vec())))
                .collect::<Result<Vec<_>>>()
        });
        match jobs {
            Ok(jobs) => jobs.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        }
    })))
}

pub(crate) fn stats(tx: &ReadTransaction, now: Timestamp) -> Result<Stats> {
    let counts = tx.open_table(COUNTS).map_err(redb_failed)?;
    let mut queues: Vec<QueueStats> = Vec::new();
    for entry in counts.iter().map_err(redb_failed)? {
        let (k, v) = entry.map_err(redb_failed)?;
        let (queue, code) = parse_count_key(k.value())?;
        if queues.last().is_none_or(|q| q.queue != queue) {
            queues.push(QueueStats {
                queue,
                ..QueueStats::default()
            });
        }
        let Some(q) = queues.last_mut() else {
            continue;
        };
        let n = v.value();
        match Phase::ALL.into_iter().find(|p| p.code() == code) {
            Some(Phase::Pending) => q.pending = n,
            Some(Phase::InProgress) => q.in_progress = n,
            Some(Phase::Succeeded) => q.succeeded = n,
            Some(Phase::Retrying) => q.retrying = n,
            Some(Phase::Dead) => q.failed = n,
            None => {
                return Err(Error::Corrupt {
                    what: "counts table".into(),
                    detail: format!("unknown state code {code}"),
                });
            }
        }
    }
    count_new(tx, &mut queues, now)?;
    let ready = tx.open_table(READY).map_err(redb_failed)?;
    let blocked = tx.open_table(BLOCKED).map_err(redb_failed)?;
    let scheduled = tx.open_table(SCHEDULED).map_err(redb_failed)?;
    let retries = tx.open_table(RETRIES).map_err(redb_failed)?;
    for q in &mut queues {
        let prefix = queue_prefix(&q.queue);
        // Scheduled jobs come due without a write: they move to ready at the next claim, so
        // the due ones are still here, first.
        let due_scheduled = first_time(&scheduled, &prefix, 0)?.filter(|t| *t <= now.0);
        // Blocked jobs are pending and due too, waiting for their concurrency key.
        let due_blocked = oldest_ordered(&blocked, &prefix)?.filter(|t| *t <= now.0);
        q.oldest_due_pending = oldest_ordered(&ready, &prefix)?
            .into_iter()
            .chain(due_scheduled)
            .chain(due_blocked)
            .map(Timestamp)
            .chain(q.oldest_due_pending)
            .min();
        q.next_scheduled_at = first_time(&scheduled, &prefix, now.0.saturating_add(1))?
            .map(Timestamp)
            .into_iter()
            .chain(q.next_scheduled_at)
            .min();
        q.next_retry_at = first_time(&retries, &prefix, 0)?.map(Timestamp);
    }
    let leases = tx.open_table(LEASES).map_err(redb_failed)?;
    let next_lease_expiry = leases
        .first()
        .map_err(redb_failed)?
        .map(|(k, _)| Timestamp(k.value().0));
    Ok(Stats {
        queues,
        next_lease_expiry,
        at: now,
    })
}

/// A counter of the meta table, 0 if none was written.
pub(crate) fn meta_value(tx: &ReadTransaction, key: &str) -> Result<u64> {
    let meta = tx.open_table(META).map_err(redb_failed)?;
    Ok(meta.get(key).map_err(redb_failed)?.map_or(0, |g| g.value()))
}

/// The floor under the next job id ([`META_NEXT_ID`]), 0 if none was written.
pub(crate) fn next_id_floor(tx: &ReadTransaction) -> Result<u64> {
    meta_value(tx, META_NEXT_ID)
}

/// The first job not yet indexed: the jobs from it on are new and pending.
pub(crate) fn indexed_below(tx: &ReadTransaction) -> Result<u64> {
    meta_value(tx, META_INDEXED)
}

/// Adds the new jobs (pending, not yet indexed) to the counts and times. They are the backlog
/// of enqueues since the last claim, usually few.
fn count_new(tx: &ReadTransaction, queues: &mut Vec<QueueStats>, now: Timestamp) -> Result<()> {
    let jobs = tx.open_table(JOBS).map_err(redb_failed)?;
    let mark = indexed_below(tx)?;
    if let Some(segments) = segments(tx)? {
        for entry in segments.range(mark..).map_err(redb_failed)? {
            let (k, v) = entry.map_err(redb_failed)?;
            for (_, rec) in decode_segment(k.value(), v.value())? {
                count_new_job(queues, &rec, now);
            }
        }
    }
    for entry in jobs.range(mark..).map_err(redb_failed)? {
        let (k, v) = entry.map_err(redb_failed)?;
        count_new_job(queues, &decode_job(k.value(), v.value())?, now);
    }
    Ok(())
}

/// Adds one new job to its queue's counts and times.
fn count_new_job(queues: &mut Vec<QueueStats>, rec: &Record, now: Timestamp) {
    let q = match queues.iter().position(|q| q.queue == rec.queue) {
        Some(i) => &mut queues[i],
        None => {
            let at = queues.partition_point(|q| q.queue < rec.queue);
            queues.insert(
                at,
                QueueStats {
                    queue: rec.queue.clone(),
                    ..QueueStats::default()
                },
            );
            &mut queues[at]
        }
    };
    q.pending += 1;
    let run_at = Timestamp(rec.run_at);
    if run_at <= now {
        q.oldest_due_pending = Some(q.oldest_due_pending.map_or(run_at, |o| o.min(run_at)));
    } else {
        q.next_scheduled_at = Some(q.next_scheduled_at.map_or(run_at, |o| o.min(run_at)));
    }
}

/// The first time at or after `from` in a `(queue, time, id)` index, within `prefix`.
pub(crate) fn first_time<V: redb::Value + 'static>(
    table: &impl ReadableTable<&'static [u8], V>,
    prefix: &[u8],
    from: u64,
) -> Result<Option<u64>> {
    let mut start = prefix.to_vec();
    start.extend_from_slice(&from.to_be_bytes());
    let mut range = table.range(start.as_slice()..).map_err(redb_failed)?;
    match range.next() {
        Some(entry) => {
            let (k, _) = entry.map_err(redb_failed)?;
            if k.value().starts_with(prefix) {
                timed_tail(k.value()).map(|(t, _)| Some(t))
            } else {
                Ok(None)
            }
        }
        None => Ok(None),
    }
}

/// The least `run_at` among the entries within `prefix` of an index ordered by (group,
/// priority, run_at, id), the group being empty (ready) or a concurrency key (blocked): a
/// skip-scan that reads the first entry of each group and priority level, so its cost is the
/// number of those, not of jobs.
fn oldest_ordered<V: redb::Value + 'static>(
    index: &impl ReadableTable<&'static [u8], V>,
    prefix: &[u8],
) -> Result<Option<u64>> {
    let mut oldest: Option<u64> = None;
    let mut from = prefix.to_vec();
    loop {
        let next = {
            let mut range = index.range(from.as_slice()..).map_err(redb_failed)?;
            match range.next() {
                Some(entry) => {
                    let (k, _) = entry.map_err(redb_failed)?;
                    let k = k.value();
                    k.starts_with(prefix).then(|| k.to_vec())
                }
                None => None,
            }
        };
        let Some(key) = next else {
            return Ok(oldest);
        };
        let (_, run_at, _) = ordered_tail(&key)?;
        oldest = Some(oldest.map_or(run_at, |o| o.min(run_at)));
        // Skip to the next priority level: past every key sharing this group and priority.
        from = key[..key.len() - 16].to_vec();
        if !increment(&mut from) {
            return Ok(oldest);
        }
    }
}

/// The next byte string of the same length in byte order; false when there is none.
fn increment(bytes: &mut [u8]) -> bool {
    for b in bytes.iter_mut().rev() {
        if *b == u8::MAX {
            *b = 0;
        } else {
            *b += 1;
            return true;
        }
    }
    false
}
