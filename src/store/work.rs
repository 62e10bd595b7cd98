//! Working a job: claim (Pending -> InProgress) and the calls a lease holder makes
//! (heartbeat, set_progress, complete, fail, discard, snooze). Each is fenced by the lease token.

use std::time::Duration;

use redb::ReadableTable;

use super::codec::{keyed, ordered_tail, prefix_then, queue_prefix};
use super::controls::{self, Gate};
use super::ctx::Ctx;
use super::index::{self, ClaimOrder, claim_order};
use crate::error::{Error, Result, redb_failed};
use crate::job::{Claimed, Lease};
use crate::state::{self, Record, Refusal};
use crate::types::{JobId, JobState, duration_ms};

/// How many ready entries claim reads at a time.
const SCAN_CHUNK: usize = 64;

/// What a claim transaction did.
pub(crate) enum ClaimStep {
    /// The jobs it claimed.
    Claimed(Vec<Claimed>),
    /// More new jobs were waiting to be indexed than one transaction indexes: it indexed some
    /// and claimed nothing, since a job it has not read yet may come first. Claim again, in
    /// another transaction, with `through`: the jobs enqueued before the first try are the
    /// ones that must be indexed first, so that enqueues meanwhile cannot hold the claim off.
    Indexing {
        /// The highest job id when the claim was first tried.
        through: u64,
    },
}

/// Claims up to `n` due pending jobs of `queue` in (priority desc, run_at asc, id asc) order,
/// skipping jobs whose concurrency key is busy; or, behind a long backlog of new jobs, indexes
/// part of it (see [`ClaimStep::Indexing`]). `through` is the bound an earlier try returned.
///
/// Candidates come from two places, merged in that order: the ready index, and the new jobs
/// (not yet indexed) of this queue that are due and have no concurrency key. A new job that is
/// claimed goes straight to in progress; the others are indexed as usual.
pub(crate) fn claim(
    cx: &mut Ctx<'_>,
    queue: &str,
    n: usize,
    through: Option<u64>,
) -> Result<ClaimStep> {
    let now = cx.now();
    // A first try drains everything; its bound is read only when it falls short, so that a
    // claim with no backlog reads no id counter.
    let (mut fresh, complete) = cx.drain_new(through.unwrap_or(u64::MAX), |r| {
        r.queue == queue
            && r.run_at <= now
            && r.concurrency_key.is_none()
            && r.extra.behind.is_none()
    })?;
    if !complete {
        for (id, rec) in fresh {
            cx.index_new(id, &rec)?;
        }
        let through = match through {
            Some(through) => through,
            None => cx.last_id()?,
        };
        return Ok(ClaimStep::Indexing { through });
    }
    // Paused, parked or rate-limited queues and keys hold jobs back here, in this transaction.
    let mut gate = Gate::open(cx, queue, now)?;
    let n = n.min(gate.queue_allowance());
    if n == 0 {
        for (id, rec) in fresh {
            cx.index_new(id, &rec)?;
        }
        gate.finish(cx)?;
        return Ok(ClaimStep::Claimed(Vec::new()));
    }
    // Sorted in claim order, the order of their ready keys; claimed from the back.
    fresh.sort_by_key(|(id, r)| std::cmp::Reverse(claim_order(r.priority, r.run_at, *id)));
    let prefix = queue_prefix(queue);
    make_due_scheduled_ready(cx, queue, &prefix, now)?;

    let mut out = Vec::with_capacity(n.min(1024));
    let mut from = prefix.clone();
    'scan: while out.len() < n {
        let chunk = read_ready(cx, &prefix, &from)?;
        let Some((last, _)) = chunk.last() else {
            break;
        };
        from = last.clone();
        from.push(0);
        let exhausted = chunk.len() < SCAN_CHUNK;
        for (key, ckey) in chunk {
            let (priority, run_at, id) = ordered_tail(&key)?;
            let order = claim_order(priority, run_at, id);
            claim_fresh_before(cx, &mut fresh, Some(order), n, now, &mut out, &mut gate)?;
            if out.len() == n {
                break 'scan;
            }
            if run_at > now {
                // The clock went back since this job was made ready. Without a key it waits in
                // place; a key's head goes back to scheduled and gives the key to the next.
                if !ckey.is_empty() {
                    let rec = load_ready(cx, id)?;
                    index::unready(&mut cx.t, id, &rec, now)?;
                    cx.touch();
                    // The job that took the key may be ahead in ready, past this chunk's
                    // read: read on from here.
                    from = key;
                    from.push(0);
                    continue 'scan;
                }
                continue;
            }
            if !ckey.is_empty() {
                let ckey = String::from_utf8_lossy(&ckey).into_owned();
                // Held by another job: running, or its key's head (or first in line).
                if cx
                    .t
                    .busy()?
                    .get(keyed(queue, &ckey).as_slice())
                    .map_err(redb_failed)?
                    .is_some_and(|holder| holder.value() != id)
                {
                    index::block(&mut cx.t, &key, queue, &ckey, priority, run_at, id)?;
                    cx.touch();
                    continue;
                }
                // Parked or out of starts: moved aside until the key opens again.
                if !gate.key_allows(cx, &ckey)? {
                    let rec = load_ready(cx, id)?;
                    index::set_aside(&mut cx.t, id, &rec)?;
                    cx.touch();
                    continue;
                }
                gate.started(Some(&ckey));
            } else {
                gate.started(None);
            }
            let old = load_ready(cx, id)?;
            out.push(claim_one(cx, id, Some(&old), old.clone(), now)?);
            // Its key may run several: the next job of the key just took its place in ready,
            // perhaps past this chunk's read. Read on from here.
            if !ckey.is_empty() && gate.runs_several(&String::from_utf8_lossy(&ckey)) {
                from = key;
                from.push(0);
                continue 'scan;
            }
        }
        if exhausted {
            break;
        }
    }
    claim_fresh_before(cx, &mut fresh, None, n, now, &mut out, &mut gate)?;
    // What was not claimed is indexed like any other new job.
    for (id, rec) in fresh {
        cx.index_new(id, &rec)?;
    }
    gate.finish(cx)?;
    Ok(ClaimStep::Claimed(out))
}

/// The record of job `id`, which the ready index has an entry for.
fn load_ready(cx: &mut Ctx<'_>, id: u64) -> Result<Record> {
    cx.load(id)?.ok_or_else(|| Error::Corrupt {
        what: "ready index".into(),
        detail: format!("entry for job {id}, which does not exist"),
    })
}

/// Claims new jobs that come before the ready entry at `next` in claim order (all
/// of them when `None`), while fewer than `n` are claimed.
fn claim_fresh_before(
    cx: &mut Ctx<'_>,
    fresh: &mut Vec<(u64, Record)>,
    next: Option<ClaimOrder>,
    n: usize,
    now: u64,
    out: &mut Vec<Claimed>,
    gate: &mut Gate,
) -> Result<()> {
    while out.len() < n {
        let Some((id, rec)) = fresh.last() else {
            return Ok(());
        };
        if next.is_some_and(|k| claim_order(rec.priority, rec.run_at, *id) > k) {
            return Ok(());
        }
        let Some((id, rec)) = fresh.pop() else {
            return Ok(());
        };
        // A new job was never indexed: it is written in progress directly.
        gate.started(None);
        out.push(claim_one(cx, id, None, rec, now)?);
    }
    Ok(())
}

/// Moves the scheduled jobs of a queue that are now due into ready. Each job moves once.
fn make_due_scheduled_ready(cx: &mut Ctx<'_>, queue: &str, prefix: &[u8], now: u64) -> Result<()> {
    let hi = prefix_then(&prefix_then(prefix, now), u64::MAX);
    let due: Vec<(Vec<u8>, Vec<u8>)> =
        cx.t.scheduled()?
            .range(prefix..=hi.as_slice())
            .map_err(redb_failed)?
            .map(|e| e.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
            .collect::<Result<_, _>>()
            .map_err(redb_failed)?;
    for (key, value) in due {
        index::make_ready(&mut cx.t, queue, &key, &value, now)?;
        cx.touch();
    }
    Ok(())
}

fn read_ready(cx: &mut Ctx<'_>, prefix: &[u8], from: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut chunk = Vec::with_capacity(SCAN_CHUNK);
    for entry in cx.t.ready()?.range(from..).map_err(redb_failed)? {
        let (k, v) = entry.map_err(redb_failed)?;
        if !k.value().starts_with(prefix) || chunk.len() == SCAN_CHUNK {
            break;
        }
        chunk.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(chunk)
}

/// Claims job `id`: `rec` is its pending record, indexed as `old` (or `None` for a new job that
/// was never indexed).
fn claim_one(
    cx: &mut Ctx<'_>,
    id: u64,
    old: Option<&Record>,
    mut rec: Record,
    now: u64,
) -> Result<Claimed> {
    if rec.state != JobState::Pending {
        // Data from disk: an index that disagrees with its record is damage to report.
        return Err(Error::Corrupt {
            what: "ready index".into(),
            detail: format!("entry for job {id}, which is {}", rec.state),
        });
    }
    let token = cx.alloc_token()?;
    state::claim(&mut rec, now, cx.cfg.lease_ttl, token);
    cx.put(id, old, &rec)?;
    tracing::debug!(job = id, queue = %rec.queue, attempt = rec.attempts, "claimed");
    let payload = cx.payload(id, std::mem::take(&mut rec.payload))?;
    Ok(Claimed {
        job: rec.into_job(JobId(id), payload),
        lease: Lease {
            job: JobId(id),
            token,
            store: cx.cfg.store_id,
        },
    })
}

/// Applies `transition` to the job of `lease` if it is still in progress under that lease.
fn fenced(
    cx: &mut Ctx<'_>,
    lease: &Lease,
    transition: impl FnOnce(&mut Record, u64) -> Result<(), Refusal>,
) -> Result<Record> {
    if lease.store != cx.cfg.store_id {
        return Err(Error::ForeignLease { job: lease.job });
    }
    let id = lease.job.0;
    let lost = Error::LeaseLost { job: lease.job };
    let old = cx.load(id)?.ok_or_else(|| lost.clone())?;
    let mut rec = old.clone();
    transition(&mut rec, cx.now()).map_err(|_| lost)?;
    cx.put(id, Some(&old), &rec)?;
    Ok(rec)
}

pub(crate) fn heartbeat(cx: &mut Ctx<'_>, lease: &Lease) -> Result<()> {
    let ttl = cx.cfg.lease_ttl;
    fenced(cx, lease, |r, now| {
        state::heartbeat(r, lease.token, now, ttl)
    })
    .map(drop)
}

pub(crate) fn set_progress(cx: &mut Ctx<'_>, lease: &Lease, progress: &str) -> Result<()> {
    fenced(cx, lease, |r, now| {
        state::set_progress(r, lease.token, now, progress)
    })
    .map(drop)
}

pub(crate) fn complete(cx: &mut Ctx<'_>, lease: &Lease) -> Result<()> {
    let rec = fenced(cx, lease, |r, now| state::complete(r, lease.token, now))?;
    tracing::debug!(job = %lease.job, queue = %rec.queue, attempt = rec.attempts, "succeeded");
    Ok(())
}

pub(crate) fn fail(cx: &mut Ctx<'_>, lease: &Lease, error: &str) -> Result<()> {
    let backoff = cx.cfg.backoff;
    let rec = fenced(cx, lease, |r, now| {
        let seed = jitter_seed(lease.job.0, r);
        state::fail(r, lease.token, now, error, &backoff, seed)
    })?;
    tracing::debug!(
        job = %lease.job, queue = %rec.queue, attempt = rec.attempts,
        retry_at = ?rec.next_attempt_at, "failed"
    );
    Ok(())
}

pub(crate) fn discard(cx: &mut Ctx<'_>, lease: &Lease, error: &str) -> Result<()> {
    let rec = fenced(cx, lease, |r, now| {
        state::discard(r, lease.token, now, error)
    })?;
    tracing::debug!(job = %lease.job, queue = %rec.queue, attempt = rec.attempts, "discarded");
    Ok(())
}

pub(crate) fn snooze(cx: &mut Ctx<'_>, lease: &Lease, delay: Duration) -> Result<()> {
    let rec = fenced(cx, lease, |r, now| {
        state::snooze(r, lease.token, now, now.saturating_add(duration_ms(delay)))
    })?;
    tracing::debug!(job = %lease.job, queue = %rec.queue, run_at = rec.run_at, "snoozed");
    Ok(())
}

/// What a handler parks when the remote holds it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkScope {
    /// The job's concurrency key (an account, an endpoint): no job of the key starts until
    /// the park ends; jobs of other keys go on.
    Key,
    /// The job's whole queue.
    Queue,
}

/// Parks the job's key or queue until `now + duration` with `reason`, and snoozes the job to
/// then, its attempt given back. A job without a concurrency key asked to park its key is only
/// snoozed, with a warning.
pub(crate) fn park(
    cx: &mut Ctx<'_>,
    lease: &Lease,
    scope: ParkScope,
    duration: Duration,
    reason: &str,
) -> Result<()> {
    let rec = fenced(cx, lease, |r, now| {
        state::snooze(
            r,
            lease.token,
            now,
            now.saturating_add(duration_ms(duration)),
        )
    })?;
    let until = rec.run_at;
    let key = match scope {
        ParkScope::Queue => None,
        ParkScope::Key => match rec.concurrency_key.as_deref() {
            Some(k) => Some(k),
            None => {
                tracing::warn!(
                    job = %lease.job, queue = %rec.queue,
                    "the handler parked its concurrency key, but the job has none: only the job is snoozed"
                );
                return Ok(());
            }
        },
    };
    if until > cx.now() {
        controls::update(cx, &rec.queue, key, |c| c.park(until, reason))?;
    }
    tracing::info!(
        job = %lease.job, queue = %rec.queue, key = ?key, until, reason,
        "parked by its handler"
    );
    Ok(())
}

/// The jitter source of a failure: the job and where it is in its attempt chains, so that jobs
/// failing together spread out and a replayed history gives the same schedule.
pub(crate) fn jitter_seed(id: u64, rec: &Record) -> u64 {
    id.rotate_left(32) ^ u64::from(rec.attempts) ^ (u64::from(rec.manual_retries) << 20)
}
