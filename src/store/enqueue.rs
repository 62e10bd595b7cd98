//! Writing work: enqueue and enqueue_batch, with unique-key coalescing.

use redb::ReadableTable;

use super::codec::{INLINE_PAYLOAD, Segment, keyed};
use super::ctx::Ctx;
use super::{index, unique};
use crate::error::{Error, Result, redb_failed};
use crate::job::{Enqueued, NewJob};
use crate::state::{Extra, Payload, Record};
use crate::types::{JobId, JobState, duration_ms};

/// The largest payload a job may carry: 4 MiB. Larger data belongs in a file the job names.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;
/// The longest queue name, in bytes.
pub const MAX_QUEUE_NAME: usize = 255;
/// The longest unique or concurrency key, in bytes.
pub const MAX_KEY: usize = 1024;

pub(crate) fn validate_queue(queue: &str) -> Result<()> {
    if queue.is_empty() {
        return Err(Error::invalid("queue name", "it is empty"));
    }
    if queue.len() > MAX_QUEUE_NAME {
        return Err(Error::invalid(
            "queue name",
            format!("{} bytes, the limit is {MAX_QUEUE_NAME}", queue.len()),
        ));
    }
    Ok(())
}

pub(crate) fn validate_key(what: &'static str, key: Option<&str>) -> Result<()> {
    match key {
        Some("") => Err(Error::invalid(what, "it is empty")),
        Some(k) if k.len() > MAX_KEY => Err(Error::invalid(
            what,
            format!("{} bytes, the limit is {MAX_KEY}", k.len()),
        )),
        _ => Ok(()),
    }
}

/// Refuses a job that could not be stored or run, before anything is written.
pub(crate) fn validate(job: &NewJob) -> Result<()> {
    validate_queue(&job.queue)?;
    if job.payload.len() > MAX_PAYLOAD {
        return Err(Error::invalid(
            "payload",
            format!(
                "{} bytes for queue {:?}, the limit is {MAX_PAYLOAD}",
                job.payload.len(),
                job.queue
            ),
        ));
    }
    if job.max_attempts == 0 {
        return Err(Error::invalid("max_attempts", "it must be at least 1"));
    }
    validate_key("unique key", job.unique_key.as_deref())?;
    validate_key("concurrency key", job.concurrency_key.as_deref())?;
    if job.ordered && job.concurrency_key.is_none() {
        return Err(Error::invalid(
            "ordered",
            "it orders the jobs of a concurrency key, and the job has none",
        ));
    }
    let coalescing = job.unique_key.is_some() && !job.strict;
    if job.latest_wins && !coalescing {
        return Err(Error::invalid(
            "latest_wins",
            "it applies to a (not strict) unique key, and the job has none",
        ));
    }
    if job.debounce.is_some() && !coalescing {
        return Err(Error::invalid(
            "debounce",
            "it applies to a (not strict) unique key, and the job has none",
        ));
    }
    Ok(())
}

/// A validated job to write, or the live job that holds its unique key.
enum Prepared {
    New(u64, Record, Option<Vec<u8>>),
    /// Strict unique key: the live job holding it.
    Duplicate(JobId),
    /// Change-safe unique key held by this job: the enqueue is folded into it or written
    /// behind it ([`fold`]).
    Held(u64, NewJob),
}

/// Allocates the id and builds the record of one validated job, and takes its unique key (so
/// that a duplicate, even in the same batch, is answered at once); or finds the live job that
/// holds the key. Writes no job: the caller stores it, alone or in a segment.
fn prepare(cx: &mut Ctx<'_>, job: NewJob, now: u64) -> Result<Prepared> {
    if let Some(u) = &job.unique_key
        && let Some(existing) =
            cx.t.unique()?
                .get(keyed(&job.queue, u).as_slice())
                .map_err(redb_failed)?
    {
        let existing = existing.value();
        return Ok(if job.strict {
            Prepared::Duplicate(JobId(existing))
        } else {
            Prepared::Held(existing, job)
        });
    }
    let (id, rec, apart) = new_record(cx, job, now, None)?;
    if let Some(u) = &rec.unique_key {
        index::take_unique_key(&mut cx.t, &rec.queue, u, id)?;
    }
    Ok(Prepared::New(id, rec, apart))
}

/// The id and record of a new job, and its payload when too large to store inline; `behind`
/// is the running job a follow-up waits for.
fn new_record(
    cx: &mut Ctx<'_>,
    job: NewJob,
    now: u64,
    behind: Option<u64>,
) -> Result<(u64, Record, Option<Vec<u8>>)> {
    let id = cx.alloc_id()?;
    let (payload, apart) = if job.payload.len() <= INLINE_PAYLOAD {
        (Payload::Inline(job.payload), None)
    } else {
        (Payload::Apart, Some(job.payload))
    };
    let mut run_at = job.run_at.resolve(crate::types::Timestamp(now)).0;
    if let Some(window) = job.debounce {
        run_at = run_at.max(now.saturating_add(duration_ms(window)));
    }
    let rec = Record {
        queue: job.queue,
        state: JobState::Pending,
        priority: job.priority,
        attempts: 0,
        max_attempts: job.max_attempts,
        run_at,
        next_attempt_at: None,
        last_error: None,
        unique_key: job.unique_key,
        concurrency_key: job.concurrency_key,
        progress: None,
        lease_token: 0,
        lease_expires_at: None,
        timeout_ms: job.timeout.map(duration_ms),
        created_at: now,
        updated_at: now,
        finished_at: None,
        manual_retries: 0,
        last_backoff_ms: None,
        payload,
        extra: Extra {
            ordered: job.ordered,
            behind,
            latest_wins: behind.is_some() && job.latest_wins,
        },
    };
    Ok((id, rec, apart))
}

/// An enqueue of a change-safe unique key that `holder` holds: folded into the holder while it
/// waits to run, or written as (or folded into) the follow-up of its run.
fn fold(cx: &mut Ctx<'_>, holder: u64, job: NewJob, now: u64) -> Result<Enqueued> {
    let request = unique::Fold {
        latest_wins: job.latest_wins,
        payload: job.payload.clone(),
        not_before: job
            .debounce
            .map(|window| now.saturating_add(duration_ms(window))),
    };
    if let Some(done) = unique::fold(cx, holder, request)? {
        return Ok(done);
    }
    // The holder runs: the enqueue becomes its follow-up, which takes the key over.
    let (id, rec, apart) = new_record(cx, job, now, Some(holder))?;
    if let Some(u) = &rec.unique_key {
        index::take_unique_key(&mut cx.t, &rec.queue, u, id)?;
    }
    cx.add_new(id, &rec, apart.as_deref())?;
    tracing::debug!(job = id, queue = %rec.queue, running = holder, "enqueued a follow-up");
    Ok(Enqueued::FollowUp {
        job: JobId(id),
        running: JobId(holder),
    })
}

/// Writes one validated job, not yet indexed, or finds the live job holding its unique key.
pub(crate) fn enqueue(cx: &mut Ctx<'_>, job: NewJob) -> Result<Enqueued> {
    let now = cx.now();
    match prepare(cx, job, now)? {
        Prepared::New(id, rec, apart) => {
            cx.add_new(id, &rec, apart.as_deref())?;
            tracing::debug!(job = id, queue = %rec.queue, "enqueued");
            Ok(Enqueued::Created(JobId(id)))
        }
        Prepared::Duplicate(id) => Ok(Enqueued::Duplicate(id)),
        Prepared::Held(holder, job) => fold(cx, holder, job, now),
    }
}

/// Writes all of `jobs` or none: every job is validated before the first is written. The new
/// jobs have consecutive ids and are stored in segments, a few entries for the whole batch.
pub(crate) fn enqueue_batch(cx: &mut Ctx<'_>, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
    jobs.iter().try_for_each(validate)?;
    let mut out = Vec::with_capacity(jobs.len());
    let mut segment = Segment::new();
    let mut created = 0usize;
    // One time for the whole batch, as for one job.
    let now = cx.now();
    let total = jobs.len();
    // Each job is encoded into its segment as it is prepared, without keeping its record.
    for (n, job) in jobs.into_iter().enumerate() {
        match prepare(cx, job, now)? {
            Prepared::New(id, rec, apart) => {
                out.push(Enqueued::Created(JobId(id)));
                cx.add_to_batch(&mut segment, id, &rec, apart.as_deref(), total - n - 1)?;
                created += 1;
            }
            Prepared::Duplicate(id) => out.push(Enqueued::Duplicate(id)),
            // A job of this batch, not yet written, waits to run: nothing of it changes.
            Prepared::Held(holder, job)
                if segment.holds(holder) && !job.latest_wins && job.debounce.is_none() =>
            {
                out.push(Enqueued::Coalesced(JobId(holder)));
            }
            Prepared::Held(holder, job) => {
                // The holder may be in the segment being built: it is written first.
                cx.write_segment(&mut segment)?;
                out.push(fold(cx, holder, job, now)?);
            }
        }
    }
    // Every job a duplicate, or none: nothing is written, nothing to commit.
    if created > 0 {
        cx.end_batch(&mut segment)?;
    }
    tracing::debug!(jobs = created, "enqueued a batch");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::enqueue_batch;
    use crate::store::work;
    use crate::{NewJob, Timestamp};

    /// A claim and a batch in one group commit: the claim found every job indexed, and the
    /// batch then folds an enqueue into a job it wrote in a segment of its own. The job must be
    /// indexed before it is rewritten, not treated as indexed because the claim said so.
    #[test]
    fn a_batch_folds_into_its_own_new_job_after_a_claim_in_the_same_transaction() {
        let (_dir, _clock, store) = crate::store::test_store();
        let out = store
            .call("a claim and a batch", |cx| {
                work::claim(cx, "other", 1, None)?;
                enqueue_batch(
                    cx,
                    vec![
                        NewJob::new("q", "1").unique_key("k"),
                        NewJob::new("side", "x"),
                        NewJob::new("q", "2")
                            .unique_key("k")
                            .latest_wins()
                            .debounce(Duration::from_secs(10)),
                    ],
                )
            })
            .unwrap();
        let id = out[0].id();
        assert_eq!(out[2], crate::Enqueued::Coalesced(id));
        assert_eq!(store.check().unwrap(), []);
        let job = store.get(id).unwrap().unwrap();
        assert_eq!(job.payload, b"2");
        assert_eq!(job.run_at, Timestamp(1_010_000));
        assert!(store.claim("q", 1).unwrap().is_empty(), "debounced");
        assert_eq!(store.check().unwrap(), []);
    }
}
