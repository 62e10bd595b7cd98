//! Writing work: enqueue and enqueue_batch, with unique-key coalescing.

use redb::ReadableTable;

use super::codec::{INLINE_PAYLOAD, Segment, keyed};
use super::ctx::Ctx;
use super::index;
use crate::error::{Error, Result, redb_failed};
use crate::job::{Enqueued, NewJob};
use crate::state::{Payload, Record};
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

fn validate_key(what: &'static str, key: Option<&str>) -> Result<()> {
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
    Ok(())
}

/// A validated job to write, or the live job that holds its unique key.
#[expect(
    clippy::large_enum_variant,
    reason = "a return value, moved once; boxing would allocate per job"
)]
enum Prepared {
    New(u64, Record, Option<Vec<u8>>),
    Duplicate(JobId),
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
        return Ok(Prepared::Duplicate(JobId(existing.value())));
    }
    let id = cx.alloc_id()?;
    let (payload, apart) = if job.payload.len() <= INLINE_PAYLOAD {
        (Payload::Inline(job.payload), None)
    } else {
        (Payload::Apart, Some(job.payload))
    };
    let rec = Record {
        queue: job.queue,
        state: JobState::Pending,
        priority: job.priority,
        attempts: 0,
        max_attempts: job.max_attempts,
        run_at: job.run_at.resolve(crate::types::Timestamp(now)).0,
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
    };
    if let Some(u) = &rec.unique_key {
        index::take_unique_key(&mut cx.t, &rec.queue, u, id)?;
    }
    Ok(Prepared::New(id, rec, apart))
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
        }
    }
    // Every job a duplicate, or none: nothing is written, nothing to commit.
    if created > 0 {
        cx.end_batch(&mut segment)?;
    }
    tracing::debug!(jobs = created, "enqueued a batch");
    Ok(out)
}
