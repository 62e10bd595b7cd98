//! Housekeeping and operator calls: promote due retries, recover expired leases and the jobs
//! of a stopped process, manual retry,
//! cancel, prune. Each reads only the index range it acts on.

use std::time::Duration;

use redb::ReadableTable;

use super::codec::{count_key, keyed, prefix_then, queue_prefix, timed_tail};
use super::ctx::{Ctx, Loaded};
use super::work::jitter_seed;
use crate::backoff::Backoff;
use crate::error::{Error, Result, redb_failed};
use crate::state::{self, Phase, Refusal};
use crate::types::{JobId, JobState, Timestamp};

/// How long finished jobs are kept; see [`Store::apply_retention`](crate::Store::apply_retention).
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

/// When [`Store::prune`](crate::Store::prune) cuts: an age, or a point in time.
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

/// Failed jobs whose retry is due -> Pending. Returns how many moved.
pub(crate) fn promote_due(cx: &mut Ctx<'_>) -> Result<u64> {
    let now = cx.now();
    let mut moved = 0;
    for queue in cx.queues()? {
        let prefix = queue_prefix(&queue);
        let hi = prefix_then(&prefix_then(&prefix, now), u64::MAX);
        let due: Vec<u64> =
            cx.t.retries()?
                .range(prefix.as_slice()..=hi.as_slice())
                .map_err(redb_failed)?
                .map(|e| {
                    let (k, _) = e.map_err(redb_failed)?;
                    timed_tail(k.value()).map(|(_, id)| id)
                })
                .collect::<Result<_>>()?;
        for id in due {
            let old = cx.load(id)?.ok_or_else(|| dangling("retries", id))?;
            let mut rec = old.clone();
            state::promote(&mut rec, now).map_err(|_| Error::Corrupt {
                what: "retries index".into(),
                detail: format!("entry for job {id}, which is {}", old.state),
            })?;
            cx.put(id, Some(&old), &rec)?;
            moved += 1;
        }
    }
    if moved > 0 {
        tracing::debug!(jobs = moved, "promoted due retries");
    }
    Ok(moved)
}

/// In-progress jobs whose lease expired -> a failed attempt ("lease expired"). Returns how many.
pub(crate) fn recover_expired(cx: &mut Ctx<'_>) -> Result<u64> {
    let now = cx.now();
    let expired: Vec<u64> =
        cx.t.leases()?
            .range(..=(now, u64::MAX))
            .map_err(redb_failed)?
            .map(|e| e.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()
            .map_err(redb_failed)?;
    let recovered = recover_each(cx, &expired, state::recover)?;
    if recovered > 0 {
        tracing::warn!(jobs = recovered, "recovered jobs whose leases expired");
    }
    Ok(recovered)
}

/// In-progress jobs claimed by an earlier open of the database, whose process is gone: due now
/// with their attempt counted, or with backoff when their last attempt ended so too
/// ([`state::abandon`]). The leases of this open are never touched. Returns how many.
pub(crate) fn recover_abandoned(cx: &mut Ctx<'_>) -> Result<u64> {
    let below = cx.cfg.earlier_leases_below;
    let mut abandoned = Vec::new();
    let running: Vec<u64> =
        cx.t.leases()?
            .iter()
            .map_err(redb_failed)?
            .map(|e| e.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()
            .map_err(redb_failed)?;
    for id in running {
        let rec = cx.load(id)?.ok_or_else(|| dangling("leases", id))?;
        if rec.lease_token < below {
            abandoned.push(id);
        }
    }
    let recovered = recover_each(cx, &abandoned, state::abandon)?;
    if recovered > 0 {
        tracing::warn!(
            jobs = recovered,
            "recovered jobs whose process stopped while they ran"
        );
    }
    Ok(recovered)
}

/// Applies `recover` to each in-progress job of `ids` (read from the leases index).
fn recover_each(
    cx: &mut Ctx<'_>,
    ids: &[u64],
    recover: fn(&mut state::Record, u64, &Backoff, u64),
) -> Result<u64> {
    let now = cx.now();
    let backoff = cx.cfg.backoff;
    for &id in ids {
        let old = cx.load(id)?.ok_or_else(|| dangling("leases", id))?;
        if old.state != JobState::InProgress {
            // Data from disk: an index that disagrees with its record is damage to report.
            return Err(Error::Corrupt {
                what: "leases index".into(),
                detail: format!("entry for job {id}, which is {}", old.state),
            });
        }
        let mut rec = old.clone();
        recover(&mut rec, now, &backoff, jitter_seed(id, &old));
        cx.put(id, Some(&old), &rec)?;
        tracing::debug!(
            job = id, queue = %rec.queue, attempt = rec.attempts, error = rec.last_error.as_deref(),
            "recovered job"
        );
    }
    Ok(ids.len() as u64)
}

/// A failed job -> Pending now, with a fresh attempt chain.
pub(crate) fn retry(cx: &mut Ctx<'_>, id: JobId) -> Result<()> {
    let now = cx.now();
    // A job not yet indexed is pending, which a retry refuses: no need to index it first.
    let old = cx.load(id.0)?.ok_or(Error::NotFound { job: id })?;
    let mut rec = old.clone();
    state::retry(&mut rec, now).map_err(|r| refused(id.0, &old, r))?;
    if rec.extra.ordered {
        // It takes its place in its line by id, behind the job holding the line, which may be
        // a new job: every job is indexed first (a manual step, rare enough to pay for it).
        let last = cx.last_id()?;
        cx.index_through(last)?;
    }
    if let Some(u) = &rec.unique_key {
        let holder =
            cx.t.unique()?
                .get(keyed(&rec.queue, u).as_slice())
                .map_err(redb_failed)?;
        if let Some(existing) = holder.map(|g| g.value()).filter(|&h| h != id.0) {
            return Err(Error::UniqueConflict {
                job: id,
                existing: JobId(existing),
            });
        }
    }
    cx.put(id.0, Some(&old), &rec)?;
    tracing::info!(job = %id, queue = %rec.queue, "retried by hand");
    Ok(())
}

/// A live job -> Failed for good, "cancelled". Returns false, having changed nothing but
/// the indexing of new jobs, when the job is behind more new jobs than one transaction
/// indexes: cancel it again in another transaction.
pub(crate) fn cancel(cx: &mut Ctx<'_>, id: JobId) -> Result<bool> {
    let now = cx.now();
    let old = match cx.load_indexed(id.0)? {
        Loaded::Job(job) => job.ok_or(Error::NotFound { job: id })?,
        Loaded::Behind => return Ok(false),
    };
    let mut rec = old.clone();
    state::cancel(&mut rec, now).map_err(|r| refused(id.0, &old, r))?;
    cx.put(id.0, Some(&old), &rec)?;
    tracing::info!(job = %id, queue = %rec.queue, "cancelled");
    Ok(true)
}

/// The most jobs one prune transaction deletes. A prune of a long history runs as many small
/// transactions, so that its memory stays flat and the operations waiting for the writer
/// (claims, settles, enqueues) commit between them, each waiting at most one chunk: a
/// thousand deletes take a millisecond or two, against ten times that for ten thousand, which
/// showed as stalls of job starts while a minute's history was pruned.
pub(crate) const PRUNE_CHUNK: usize = 250;

/// Deletes succeeded jobs that finished before `succeeded_before`, terminally failed jobs that
/// finished before `failed_before`, and then the oldest terminal failures beyond `max_failed`:
/// at most `limit` of them, oldest first within each kind. Returns how many; fewer than `limit`
/// means none is left to delete.
pub(crate) fn prune(
    cx: &mut Ctx<'_>,
    succeeded_before: Timestamp,
    failed_before: Timestamp,
    max_failed: Option<u64>,
    limit: usize,
) -> Result<u64> {
    let mut doomed = finished_before(cx.t.succeeded()?, succeeded_before, limit)?;
    let room = limit - doomed.len();
    let old_failures = finished_before(cx.t.dead()?, failed_before, room)?;
    let failed_left = dead_count(cx)?.saturating_sub(old_failures.len() as u64);
    let excess = max_failed.map_or(0, |max| failed_left.saturating_sub(max));
    let excess = usize::try_from(excess).unwrap_or(usize::MAX);
    doomed.extend(finished_before(
        cx.t.dead()?,
        Timestamp(u64::MAX),
        old_failures.len().saturating_add(excess).min(room),
    )?);
    for &id in &doomed {
        let rec = cx.load(id)?.ok_or_else(|| dangling("finished", id))?;
        cx.delete(id, &rec)?;
    }
    if !doomed.is_empty() {
        tracing::info!(jobs = doomed.len(), "pruned finished jobs");
    }
    Ok(doomed.len() as u64)
}

/// Up to `limit` ids of a finished index, oldest first, that finished before `cut`.
fn finished_before(
    table: &redb::Table<'_, (u64, u64), ()>,
    cut: Timestamp,
    limit: usize,
) -> Result<Vec<u64>> {
    table
        .range(..(cut.0, 0))
        .map_err(redb_failed)?
        .take(limit)
        .map(|e| e.map(|(k, _)| k.value().1).map_err(redb_failed))
        .collect()
}

fn dead_count(cx: &mut Ctx<'_>) -> Result<u64> {
    let mut total = 0;
    for queue in cx.queues()? {
        let key = count_key(&queue, Phase::Dead.code());
        total +=
            cx.t.counts()?
                .get(key.as_slice())
                .map_err(redb_failed)?
                .map_or(0, |g| g.value());
    }
    Ok(total)
}

fn refused(id: u64, rec: &state::Record, r: Refusal) -> Error {
    match r {
        Refusal::LeaseLost => Error::LeaseLost { job: JobId(id) },
        Refusal::InvalidState(operation) => Error::InvalidState {
            job: JobId(id),
            state: rec.state,
            operation,
        },
    }
}

fn dangling(index: &str, id: u64) -> Error {
    Error::Corrupt {
        what: format!("{index} index"),
        detail: format!("entry for job {id}, which does not exist"),
    }
}
