//! Record and key encoding.
//!
//! A record is a version byte followed by its postcard encoding. Index keys are byte strings
//! built so that byte order is the order a scan wants: big-endian integers, a length-prefixed
//! queue name first, priority inverted so that higher sorts first.

use serde::{Deserialize, Serialize};

use redb::ReadableTable;

use crate::error::{Error, Result, redb_failed};
use crate::state::{Extra, Payload, Record};
use crate::types::JobState;

/// The tag of a stored job whose payload is kept apart (in the payloads table): the record's
/// postcard encoding follows. Every job of format 1 is stored so.
pub(crate) const TAG_APART: u8 = 1;
/// The tag of a stored job that carries its payload: the record's encoding behind its
/// big-endian `u32` length, then the payload.
pub(crate) const TAG_INLINE: u8 = 2;

/// The tag of a segment (from format 3): the new jobs of one `enqueue_batch`, of consecutive ids,
/// stored as one entry of the segments table keyed by the first id. A big-endian `u32` count
/// (at least 2) follows, then each job as the jobs table stores it (tag 1, 2, 4 or 5), behind its
/// big-endian `u32` length. One entry instead of one per job is what lets a batch enqueue
/// outrun redb's own per-row inserts. The claim that indexes new jobs moves a segment's jobs
/// into the jobs table and deletes the segment.
pub(crate) const TAG_SEGMENT: u8 = 3;

/// A segment takes no more jobs once its bytes reach this: about 3,000 jobs with small
/// payloads. With the job that crosses it (at most about 1 KiB more), a segment stays inside a
/// 64 KiB page: redb gives a value a power-of-two page, so a segment just over 64 KiB would
/// take 128 KiB and double the file of a batch backlog.
pub(crate) const SEGMENT_BYTES: usize = 60 * 1024;

/// The tag of a job stored in its short form (format 4), with its payload inline: a
/// [`ShortRecord`], then the payload to the end of the value. A job is stored so while every
/// field that the short form leaves out has the value it has at enqueue (see
/// [`ShortRecord::of`]): a new job's value is about 25 bytes shorter than in the long form, and
/// a single enqueue's durable commit writes that much less (docs/performance.md has the
/// figures), as a backlog of new jobs takes that much less space.
pub(crate) const TAG_SHORT: u8 = 4;
/// The tag of a job stored in its short form with its payload apart: a [`ShortRecord`] alone.
pub(crate) const TAG_SHORT_APART: u8 = 5;
/// The tag of a job with format 5's fields (an [`Extra`] that is not all defaults): the
/// postcard encoding of its `Extra`, then the job as any other tag stores it. Only jobs that
/// use an ordered key or wait as a follow-up carry it, so every other job is stored as format
/// 4 stored it.
pub(crate) const TAG_EXTRA: u8 = 6;

/// The fields of a job that the short form keeps; every other field is as [`Record`] has it at
/// enqueue. `run_at` is kept as its distance from `created_at`, a single byte for a job due at
/// once.
#[derive(Serialize, Deserialize)]
struct ShortRecord<'a> {
    queue: &'a str,
    priority: i32,
    max_attempts: u32,
    created_at: u64,
    run_after: i64,
    timeout_ms: Option<u64>,
    unique_key: Option<&'a str>,
    concurrency_key: Option<&'a str>,
}

impl<'a> ShortRecord<'a> {
    /// The short form of `rec`, if it has one: every field it leaves out has its enqueue value,
    /// so that [`ShortRecord::record`] gives `rec` back whole.
    fn of(rec: &'a Record) -> Option<ShortRecord<'a>> {
        let Record {
            queue,
            state,
            priority,
            attempts,
            max_attempts,
            run_at,
            next_attempt_at,
            last_error,
            unique_key,
            concurrency_key,
            progress,
            lease_token,
            lease_expires_at,
            timeout_ms,
            created_at,
            updated_at,
            finished_at,
            manual_retries,
            last_backoff_ms,
            payload: _,
            extra: _,
        } = rec;
        let as_enqueued = *state == JobState::Pending
            && *attempts == 0
            && next_attempt_at.is_none()
            && last_error.is_none()
            && progress.is_none()
            && *lease_token == 0
            && lease_expires_at.is_none()
            && updated_at == created_at
            && finished_at.is_none()
            && *manual_retries == 0
            && last_backoff_ms.is_none();
        let run_after = i64::try_from(i128::from(*run_at) - i128::from(*created_at)).ok()?;
        as_enqueued.then(|| ShortRecord {
            queue,
            priority: *priority,
            max_attempts: *max_attempts,
            created_at: *created_at,
            run_after,
            timeout_ms: *timeout_ms,
            unique_key: unique_key.as_deref(),
            concurrency_key: concurrency_key.as_deref(),
        })
    }

    /// The whole record, with `payload`; `None` if `run_at` would fall outside the clock.
    fn record(&self, payload: Payload) -> Option<Record> {
        let run_at =
            u64::try_from(i128::from(self.created_at) + i128::from(self.run_after)).ok()?;
        Some(Record {
            queue: self.queue.to_owned(),
            state: JobState::Pending,
            priority: self.priority,
            attempts: 0,
            max_attempts: self.max_attempts,
            run_at,
            next_attempt_at: None,
            last_error: None,
            unique_key: self.unique_key.map(str::to_owned),
            concurrency_key: self.concurrency_key.map(str::to_owned),
            progress: None,
            lease_token: 0,
            lease_expires_at: None,
            timeout_ms: self.timeout_ms,
            created_at: self.created_at,
            updated_at: self.created_at,
            finished_at: None,
            manual_retries: 0,
            last_backoff_ms: None,
            payload,
            extra: Extra::default(),
        })
    }
}

/// The largest payload stored inline, in the job's own value. Larger payloads are written once
/// to the payloads table, so that transitions do not copy them.
pub(crate) const INLINE_PAYLOAD: usize = 1024;

fn writing(detail: impl ToString) -> Error {
    Error::Corrupt {
        what: "record being written".into(),
        detail: detail.to_string(),
    }
}

/// Encodes a job as stored in the jobs table: its record, in the short form when it has one,
/// and its payload if inline.
pub(crate) fn encode_job(rec: &Record) -> Result<Vec<u8>> {
    encode_job_onto(rec, Vec::new())
}

/// Appends the encoding of a job (see [`encode_job`]) to `out`.
fn encode_job_onto(rec: &Record, mut out: Vec<u8>) -> Result<Vec<u8>> {
    // Room for the fixed fields and the strings, so that encoding does not grow the buffer.
    let strings = [
        &rec.last_error,
        &rec.unique_key,
        &rec.concurrency_key,
        &rec.progress,
    ]
    .into_iter()
    .flatten()
    .map(String::len)
    .sum::<usize>();
    let inline = match &rec.payload {
        Payload::Inline(p) => Some(p.as_slice()),
        Payload::Apart => None,
    };
    out.reserve(96 + rec.queue.len() + strings + inline.map_or(0, <[u8]>::len));
    if rec.extra != Extra::default() {
        out.push(TAG_EXTRA);
        out = postcard::to_extend(&rec.extra, out).map_err(writing)?;
    }
    if let Some(short) = ShortRecord::of(rec) {
        out.push(if inline.is_some() {
            TAG_SHORT
        } else {
            TAG_SHORT_APART
        });
        let mut out = postcard::to_extend(&short, out).map_err(writing)?;
        out.extend_from_slice(inline.unwrap_or_default());
        return Ok(out);
    }
    let start = out.len();
    match inline {
        None => {
            out.push(TAG_APART);
            postcard::to_extend(rec, out).map_err(writing)
        }
        Some(payload) => {
            out.push(TAG_INLINE);
            out.extend_from_slice(&[0; 4]);
            let mut out = postcard::to_extend(rec, out).map_err(writing)?;
            let len =
                u32::try_from(out.len() - start - 5).map_err(|_| writing("longer than 4 GiB"))?;
            out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
            out.extend_from_slice(payload);
            Ok(out)
        }
    }
}

/// A segment being written: jobs of consecutive ids from `first`.
pub(crate) struct Segment {
    first: u64,
    count: u32,
    bytes: Vec<u8>,
}

/// The segment header: the tag and the count.
const SEGMENT_HEADER: usize = 5;

/// What a written segment is stored as.
pub(crate) enum Stored {
    /// One job: stored alone, in the jobs table.
    Single(u64, Vec<u8>),
    /// Two jobs or more, in the segments table under the first id.
    Segment(u64, Vec<u8>),
}

impl Segment {
    pub(crate) fn new() -> Segment {
        Segment {
            first: 0,
            count: 0,
            bytes: Vec::new(),
        }
    }

    /// Whether job `id` can join: the segment is empty, or `id` is the next id and the segment
    /// is not full.
    pub(crate) fn takes(&self, id: u64) -> bool {
        self.count == 0
            || (self.first + u64::from(self.count) == id && self.bytes.len() < SEGMENT_BYTES)
    }

    /// Whether job `id` is in this segment (not yet written).
    pub(crate) fn holds(&self, id: u64) -> bool {
        self.count > 0 && id >= self.first && id - self.first < u64::from(self.count)
    }

    /// Adds job `id`, which [`Segment::takes`] must have admitted; `more` jobs are likely to
    /// follow it, for sizing the buffer once.
    pub(crate) fn push(&mut self, id: u64, rec: &Record, more: usize) -> Result<()> {
        if self.count == 0 {
            self.first = id;
            self.bytes.clear();
            self.bytes.extend_from_slice(&[TAG_SEGMENT, 0, 0, 0, 0]);
        }
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        self.bytes = encode_job_onto(rec, std::mem::take(&mut self.bytes))?;
        let len =
            u32::try_from(self.bytes.len() - at - 4).map_err(|_| writing("longer than 4 GiB"))?;
        self.bytes[at..at + 4].copy_from_slice(&len.to_be_bytes());
        self.count += 1;
        self.bytes[1..SEGMENT_HEADER].copy_from_slice(&self.count.to_be_bytes());
        if self.count == 1 {
            // Room for as many more jobs of this size as the segment will take.
            let each = self.bytes.len() - SEGMENT_HEADER;
            let jobs = more.min(SEGMENT_BYTES / each);
            self.bytes.reserve(jobs * each);
        }
        Ok(())
    }

    /// What to store, leaving the segment empty; `None` when it is empty.
    pub(crate) fn take(&mut self) -> Option<Stored> {
        let count = std::mem::take(&mut self.count);
        let bytes = std::mem::take(&mut self.bytes);
        match count {
            0 => None,
            1 => Some(Stored::Single(
                self.first,
                bytes[SEGMENT_HEADER + 4..].to_vec(),
            )),
            _ => Some(Stored::Segment(self.first, bytes)),
        }
    }
}

/// How many ids the segment stored under `key` covers.
pub(crate) fn segment_span(key: u64, bytes: &[u8]) -> Result<u64> {
    segment_body(key, bytes).map(|(count, _)| u64::from(count))
}

/// A segment's count, checked, and the jobs after it.
fn segment_body(key: u64, bytes: &[u8]) -> Result<(u32, &[u8])> {
    let body = match bytes.split_first() {
        Some((&TAG_SEGMENT, body)) => body,
        Some((tag, _)) => return Err(segment_corrupt(key, format!("unknown segment tag {tag}"))),
        None => return Err(segment_corrupt(key, "empty".into())),
    };
    let (count, jobs) = body
        .split_first_chunk::<4>()
        .ok_or_else(|| segment_corrupt(key, "shorter than its header".into()))?;
    let count = u32::from_be_bytes(*count);
    if count < 2 {
        return Err(segment_corrupt(key, format!("a count of {count}")));
    }
    if key.checked_add(u64::from(count)).is_none() {
        return Err(segment_corrupt(key, "ids past the last id".into()));
    }
    Ok((count, jobs))
}

fn segment_corrupt(key: u64, detail: String) -> Error {
    Error::Corrupt {
        what: format!("segment of jobs from {key}"),
        detail,
    }
}

/// The jobs of the segment stored under `key`, as (id, stored job) in id order.
pub(crate) fn segment_jobs(key: u64, bytes: &[u8]) -> Result<SegmentJobs<'_>> {
    let (left, rest) = segment_body(key, bytes)?;
    Ok(SegmentJobs {
        key,
        next: key,
        left,
        rest,
    })
}

/// See [`segment_jobs`].
pub(crate) struct SegmentJobs<'a> {
    key: u64,
    next: u64,
    left: u32,
    rest: &'a [u8],
}

impl<'a> Iterator for SegmentJobs<'a> {
    type Item = Result<(u64, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            if !self.rest.is_empty() {
                let detail = format!("{} trailing bytes", self.rest.len());
                self.rest = &[];
                return Some(Err(segment_corrupt(self.key, detail)));
            }
            return None;
        }
        self.left -= 1;
        let id = self.next;
        self.next += 1;
        let job = self
            .rest
            .split_first_chunk::<4>()
            .and_then(|(len, rest)| rest.split_at_checked(u32::from_be_bytes(*len) as usize));
        match job {
            Some((job, rest)) => {
                self.rest = rest;
                Some(Ok((id, job)))
            }
            None => {
                self.left = 0;
                self.rest = &[];
                Some(Err(segment_corrupt(
                    self.key,
                    format!("job {id} runs past its end"),
                )))
            }
        }
    }
}

/// Decodes every job of the segment stored under `key`.
pub(crate) fn decode_segment(key: u64, bytes: &[u8]) -> Result<Vec<(u64, Record)>> {
    segment_jobs(key, bytes)?
        .map(|job| {
            let (id, bytes) = job?;
            Ok((id, decode_job(id, bytes)?))
        })
        .collect()
}

/// Decodes a stored job; an inline payload comes back in [`Record::payload`].
pub(crate) fn decode_job(id: u64, bytes: &[u8]) -> Result<Record> {
    let corrupt = |detail: String| Error::Corrupt {
        what: format!("record of job {id}"),
        detail,
    };
    if let Some((&TAG_EXTRA, body)) = bytes.split_first() {
        let (extra, rest) =
            postcard::take_from_bytes::<Extra>(body).map_err(|e| corrupt(e.to_string()))?;
        if rest.first() == Some(&TAG_EXTRA) || extra == Extra::default() {
            return Err(corrupt("a malformed format 5 header".into()));
        }
        let mut rec = decode_job(id, rest)?;
        rec.extra = extra;
        return Ok(rec);
    }
    let (record, payload) = match bytes.split_first() {
        Some((&(TAG_SHORT | TAG_SHORT_APART), body)) => {
            let (short, rest) = postcard::take_from_bytes::<ShortRecord<'_>>(body)
                .map_err(|e| corrupt(e.to_string()))?;
            let payload = if bytes[0] == TAG_SHORT {
                Payload::Inline(rest.to_vec())
            } else if rest.is_empty() {
                Payload::Apart
            } else {
                return Err(corrupt(format!("{} trailing bytes", rest.len())));
            };
            return short
                .record(payload)
                .ok_or_else(|| corrupt("run_at outside the clock".into()));
        }
        Some((&TAG_APART, body)) => (body, None),
        Some((&TAG_INLINE, body)) => {
            let short = || corrupt("shorter than its length prefix".into());
            let (len, rest) = body.split_at_checked(4).ok_or_else(short)?;
            let len = u32::from_be_bytes(len.try_into().map_err(|_| short())?) as usize;
            let (record, payload) = rest.split_at_checked(len).ok_or_else(short)?;
            (record, Some(payload))
        }
        Some((v, _)) => return Err(corrupt(format!("unknown record version {v}"))),
        None => return Err(corrupt("empty record".into())),
    };
    let (mut rec, rest) =
        postcard::take_from_bytes::<Record>(record).map_err(|e| corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", rest.len())));
    }
    if let Some(p) = payload {
        rec.payload = Payload::Inline(p.to_vec());
    }
    Ok(rec)
}

/// Decodes an inbox entry of format 1 (the record's encoding behind its `u32` length, then the
/// payload), met only when a format 1 database is upgraded. The payload comes back inline.
pub(crate) fn decode_v1_inbox(id: u64, bytes: &[u8]) -> Result<Record> {
    let short = || Error::Corrupt {
        what: format!("inbox entry of job {id}"),
        detail: "shorter than its length prefix".into(),
    };
    let (len, rest) = bytes.split_at_checked(4).ok_or_else(short)?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| short())?) as usize;
    let (record, payload) = rest.split_at_checked(len).ok_or_else(short)?;
    let mut rec = decode_job(id, record)?;
    if rec.payload != Payload::Apart {
        return Err(Error::Corrupt {
            what: format!("inbox entry of job {id}"),
            detail: "its record has an inline payload".into(),
        });
    }
    rec.payload = Payload::Inline(payload.to_vec());
    Ok(rec)
}

/// Appends `s` with a one-byte length (queue names are at most 255 bytes).
fn push_queue(out: &mut Vec<u8>, queue: &str) {
    let len = u8::try_from(queue.len()).unwrap_or(u8::MAX);
    out.push(len);
    out.extend_from_slice(&queue.as_bytes()[..usize::from(len)]);
}

/// Appends `s` with a two-byte length (keys are at most 1,024 bytes).
fn push_key(out: &mut Vec<u8>, key: &str) {
    let len = u16::try_from(key.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&key.as_bytes()[..usize::from(len)]);
}

/// Priority mapped so that byte order is descending priority.
fn priority_desc(priority: i32) -> [u8; 4] {
    (!((priority as u32) ^ 0x8000_0000)).to_be_bytes()
}

fn priority_from_desc(bytes: [u8; 4]) -> i32 {
    (!u32::from_be_bytes(bytes) ^ 0x8000_0000) as i32
}

/// The prefix shared by all keys of one queue.
pub(crate) fn queue_prefix(queue: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(queue.len() + 21);
    push_queue(&mut out, queue);
    out
}

/// `prefix` followed by a big-endian `u64`: the bound of a time range within a queue.
pub(crate) fn prefix_then(prefix: &[u8], t: u64) -> Vec<u8> {
    let mut out = prefix.to_vec();
    out.extend_from_slice(&t.to_be_bytes());
    out
}

pub(crate) fn ready_key(queue: &str, priority: i32, run_at: u64, id: u64) -> Vec<u8> {
    let mut out = queue_prefix(queue);
    out.extend_from_slice(&priority_desc(priority));
    out.extend_from_slice(&run_at.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// The (priority, run_at, id) at the end of a ready or blocked key.
pub(crate) fn ordered_tail(key: &[u8]) -> Result<(i32, u64, u64)> {
    let tail = key
        .len()
        .checked_sub(20)
        .map(|at| &key[at..])
        .ok_or_else(|| bad_key("ready"))?;
    let (p, rest) = tail.split_at(4);
    let (r, i) = rest.split_at(8);
    Ok((
        priority_from_desc(p.try_into().map_err(|_| bad_key("ready"))?),
        be_u64(r)?,
        be_u64(i)?,
    ))
}

/// `prefix | run_at | id`: the shape of scheduled and retry keys.
pub(crate) fn timed_key(queue: &str, at: u64, id: u64) -> Vec<u8> {
    let mut out = queue_prefix(queue);
    out.extend_from_slice(&at.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// The (time, id) at the end of a scheduled or retry key.
pub(crate) fn timed_tail(key: &[u8]) -> Result<(u64, u64)> {
    let at = key.len().checked_sub(16).ok_or_else(|| bad_key("timed"))?;
    Ok((be_u64(&key[at..at + 8])?, be_u64(&key[at + 8..])?))
}

/// The value of a scheduled entry: priority, then the concurrency key's bytes.
pub(crate) fn scheduled_value(priority: i32, concurrency_key: Option<&str>) -> Vec<u8> {
    let mut out = priority.to_be_bytes().to_vec();
    out.extend_from_slice(concurrency_key.unwrap_or("").as_bytes());
    out
}

pub(crate) fn parse_scheduled_value(v: &[u8]) -> Result<(i32, &[u8])> {
    if v.len() < 4 {
        return Err(bad_key("scheduled value"));
    }
    let (p, k) = v.split_at(4);
    let p: [u8; 4] = p.try_into().map_err(|_| bad_key("scheduled value"))?;
    Ok((i32::from_be_bytes(p), k))
}

/// `prefix | key`: the shape of busy, unique and the start of blocked keys.
pub(crate) fn keyed(queue: &str, key: &str) -> Vec<u8> {
    let mut out = queue_prefix(queue);
    push_key(&mut out, key);
    out
}

pub(crate) fn blocked_key(queue: &str, ckey: &str, priority: i32, run_at: u64, id: u64) -> Vec<u8> {
    let mut out = keyed(queue, ckey);
    out.extend_from_slice(&priority_desc(priority));
    out.extend_from_slice(&run_at.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// Decodes the control stored under `key` in the controls table.
pub(crate) fn decode_control(key: &[u8], bytes: &[u8]) -> Result<crate::limits::Control> {
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt {
        what: format!("control {:?}", String::from_utf8_lossy(key)),
        detail: e.to_string(),
    })
}

/// The blocked key of pending job `id`, of concurrency key `ckey`: in (priority, run_at, id)
/// order, or for an ordered key in id order alone (ahead of the key's unordered jobs, if any).
pub(crate) fn blocked_key_of(rec: &Record, ckey: &str, id: u64) -> Vec<u8> {
    if rec.extra.ordered {
        blocked_key(&rec.queue, ckey, i32::MAX, 0, id)
    } else {
        blocked_key(&rec.queue, ckey, rec.priority, rec.run_at, id)
    }
}

pub(crate) fn count_key(queue: &str, phase: u8) -> Vec<u8> {
    let mut out = queue_prefix(queue);
    out.push(phase);
    out
}

/// The queue name and phase code of a count key.
pub(crate) fn parse_count_key(key: &[u8]) -> Result<(String, u8)> {
    let (&len, rest) = key.split_first().ok_or_else(|| bad_key("count"))?;
    let len = usize::from(len);
    if rest.len() != len + 1 {
        return Err(bad_key("count"));
    }
    let queue = std::str::from_utf8(&rest[..len]).map_err(|_| bad_key("count"))?;
    Ok((queue.to_owned(), rest[len]))
}

fn be_u64(b: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = b.try_into().map_err(|_| bad_key("integer"))?;
    Ok(u64::from_be_bytes(arr))
}

fn bad_key(what: &str) -> Error {
    Error::Corrupt {
        what: format!("{what} index key"),
        detail: "malformed".into(),
    }
}

/// The record of job `id` from the segment that holds it, if any, in a write or a read
/// transaction.
pub(crate) fn job_in_segments(
    segments: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> Result<Option<Record>> {
    let Some(entry) = segments.range(..=id).map_err(redb_failed)?.next_back() else {
        return Ok(None);
    };
    let (key, guard) = entry.map_err(redb_failed)?;
    for job in segment_jobs(key.value(), guard.value())? {
        let (at, job) = job?;
        if at == id {
            return decode_job(id, job).map(Some);
        }
    }
    Ok(None)
}

/// The bytes of a payload kept apart, in a write or a read transaction (none if missing, which
/// `Store::check` reports).
pub(crate) fn payload_bytes(
    payloads: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> std::result::Result<Vec<u8>, redb::StorageError> {
    Ok(payloads
        .get(id)?
        .map(|g| g.value().to_vec())
        .unwrap_or_default())
}

/// Decoders of on-disk bytes, for the fuzzer and its corpus replay. Not part of the API.
#[doc(hidden)]
pub mod decode {
    use crate::error::Result;

    /// Decodes `bytes` as a stored job (its record, and its payload if inline) and as a
    /// segment of them.
    pub fn record(bytes: &[u8]) -> Result<()> {
        let job = super::decode_job(0, bytes).map(drop);
        let segment = super::decode_segment(0, bytes).map(drop);
        job.or(segment)
    }

    /// Decodes `bytes` as an inbox entry of format 1.
    pub fn inbox(bytes: &[u8]) -> Result<()> {
        super::decode_v1_inbox(0, bytes).map(drop)
    }

    /// Parses `bytes` as each kind of index key and value.
    pub fn keys(bytes: &[u8]) -> Result<()> {
        let tail = super::ordered_tail(bytes).map(drop);
        let timed = super::timed_tail(bytes).map(drop);
        let count = super::parse_count_key(bytes).map(drop);
        let value = super::parse_scheduled_value(bytes).map(drop);
        tail.and(timed).and(count).and(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            queue: "uploads".into(),
            state: JobState::Failed,
            priority: -3,
            attempts: 2,
            max_attempts: 25,
            run_at: 5,
            next_attempt_at: Some(99),
            last_error: Some("boom".into()),
            unique_key: Some("u".into()),
            concurrency_key: Some("c".into()),
            progress: Some("1/2".into()),
            lease_token: 8,
            lease_expires_at: None,
            timeout_ms: Some(1_000),
            created_at: 1,
            updated_at: 2,
            finished_at: None,
            manual_retries: 1,
            last_backoff_ms: Some(30_000),
            payload: Payload::Apart,
            extra: Extra::default(),
        }
    }

    fn inline(payload: &[u8]) -> Record {
        Record {
            payload: Payload::Inline(payload.to_vec()),
            ..record()
        }
    }

    #[test]
    fn jobs_round_trip_with_the_payload_apart_or_inline() {
        for r in [record(), inline(b""), inline(b"payload")] {
            assert_eq!(decode_job(1, &encode_job(&r).unwrap()).unwrap(), r);
        }
    }

    #[test]
    fn format_5_fields_round_trip_ahead_of_any_form_and_only_when_set() {
        let extra = Extra {
            ordered: true,
            behind: Some(7),
            latest_wins: true,
        };
        for r in [
            record(),
            inline(b"payload"),
            enqueued(Payload::Apart),
            enqueued(Payload::Inline(b"x".to_vec())),
        ] {
            let plain = encode_job(&r).unwrap();
            assert_ne!(plain[0], TAG_EXTRA);
            let r = Record {
                extra: extra.clone(),
                ..r
            };
            let bytes = encode_job(&r).unwrap();
            assert_eq!(bytes[0], TAG_EXTRA);
            assert_eq!(decode_job(1, &bytes).unwrap(), r);
        }
        // A header of defaults, or one header behind another, is damage.
        let mut doubled = vec![TAG_EXTRA];
        doubled.extend(postcard::to_stdvec(&extra).unwrap());
        doubled.extend(encode_job(&Record { extra, ..record() }).unwrap());
        assert!(decode_job(1, &doubled).is_err());
        let mut empty = vec![TAG_EXTRA];
        empty.extend(postcard::to_stdvec(&Extra::default()).unwrap());
        empty.extend(encode_job(&record()).unwrap());
        assert!(decode_job(1, &empty).is_err());
    }

    /// A job as enqueued, with its payload where `payload` says.
    fn enqueued(payload: Payload) -> Record {
        Record {
            state: JobState::Pending,
            attempts: 0,
            run_at: 1_700_000_000_000,
            next_attempt_at: None,
            last_error: None,
            progress: None,
            lease_token: 0,
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_000_000,
            manual_retries: 0,
            last_backoff_ms: None,
            payload,
            ..record()
        }
    }

    #[test]
    fn a_job_as_enqueued_is_stored_short_and_round_trips() {
        let small = |r: Record| Record {
            unique_key: None,
            concurrency_key: None,
            timeout_ms: None,
            queue: "q".into(),
            ..r
        };
        for (r, tag) in [
            (enqueued(Payload::Inline(b"payload".to_vec())), TAG_SHORT),
            (enqueued(Payload::Inline(Vec::new())), TAG_SHORT),
            (enqueued(Payload::Apart), TAG_SHORT_APART),
            // Due before it was made (an absolute time in the past), or far after.
            (
                Record {
                    run_at: 0,
                    ..enqueued(Payload::Apart)
                },
                TAG_SHORT_APART,
            ),
            (
                Record {
                    run_at: u64::MAX / 2,
                    ..enqueued(Payload::Apart)
                },
                TAG_SHORT_APART,
            ),
            (small(enqueued(Payload::Inline(b"x".to_vec()))), TAG_SHORT),
        ] {
            let bytes = encode_job(&r).unwrap();
            assert_eq!(bytes[0], tag);
            assert_eq!(decode_job(1, &bytes).unwrap(), r);
        }
        // What a single enqueue of payload "x" to queue "q" writes: as short as redb's own
        // 16-byte yardstick.
        let bytes = encode_job(&small(enqueued(Payload::Inline(b"x".to_vec())))).unwrap();
        assert_eq!(bytes.len(), 16);
    }

    #[test]
    fn a_job_that_changed_since_enqueue_is_stored_long_and_round_trips() {
        let base = enqueued(Payload::Inline(b"p".to_vec()));
        let changed = [
            Record {
                state: JobState::InProgress,
                ..base.clone()
            },
            Record {
                attempts: 1,
                ..base.clone()
            },
            Record {
                next_attempt_at: Some(1),
                ..base.clone()
            },
            Record {
                last_error: Some("e".into()),
                ..base.clone()
            },
            Record {
                progress: Some("p".into()),
                ..base.clone()
            },
            Record {
                lease_token: 1,
                ..base.clone()
            },
            Record {
                lease_expires_at: Some(1),
                ..base.clone()
            },
            Record {
                updated_at: base.created_at + 1,
                ..base.clone()
            },
            Record {
                finished_at: Some(1),
                ..base.clone()
            },
            Record {
                manual_retries: 1,
                ..base.clone()
            },
            Record {
                last_backoff_ms: Some(1),
                ..base.clone()
            },
            // A distance from created_at too large for the short form.
            Record {
                run_at: u64::MAX,
                created_at: 0,
                updated_at: 0,
                ..base.clone()
            },
        ];
        for r in changed {
            let bytes = encode_job(&r).unwrap();
            assert_eq!(bytes[0], TAG_INLINE, "{r:?}");
            assert_eq!(decode_job(1, &bytes).unwrap(), r);
        }
    }

    #[test]
    fn truncated_short_records_and_a_short_apart_record_with_a_payload_are_errors() {
        let bytes = encode_job(&enqueued(Payload::Apart)).unwrap();
        for cut in 1..bytes.len() {
            assert!(decode_job(1, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(7);
        assert!(decode_job(1, &trailing).is_err());
        // A distance that puts run_at before the clock's start.
        let mut before_zero = vec![TAG_SHORT_APART];
        let short = ShortRecord {
            queue: "q",
            priority: 0,
            max_attempts: 1,
            created_at: 5,
            run_after: -6,
            timeout_ms: None,
            unique_key: None,
            concurrency_key: None,
        };
        before_zero = postcard::to_extend(&short, before_zero).unwrap();
        assert!(decode_job(1, &before_zero).is_err());
    }

    #[test]
    fn unknown_version_empty_and_truncated_records_are_errors() {
        for r in [record(), inline(b"payload")] {
            let bytes = encode_job(&r).unwrap();
            let mut wrong = bytes.clone();
            wrong[0] = 9;
            assert!(decode_job(1, &wrong).is_err());
            assert!(decode_job(1, &[]).is_err());
            let record_end = match r.payload {
                Payload::Apart => bytes.len(),
                Payload::Inline(_) => bytes.len() - b"payload".len(),
            };
            for cut in 1..record_end {
                assert!(decode_job(1, &bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    /// What a segment of `recs` from id 10 is stored as.
    fn segment_of(recs: &[Record]) -> Stored {
        let mut segment = Segment::new();
        for (id, r) in (10..).zip(recs) {
            assert!(segment.takes(id));
            segment.push(id, r, 0).unwrap();
        }
        segment.take().unwrap()
    }

    fn stored_segment(recs: &[Record]) -> (u64, Vec<u8>) {
        match segment_of(recs) {
            Stored::Segment(key, bytes) => (key, bytes),
            Stored::Single(..) => panic!("a segment of {} jobs stored single", recs.len()),
        }
    }

    #[test]
    fn segments_round_trip_their_jobs_with_consecutive_ids() {
        let recs = [record(), inline(b""), inline(b"payload")];
        let (key, bytes) = stored_segment(&recs);
        assert_eq!(
            (key, bytes[0], segment_span(key, &bytes).unwrap()),
            (10, TAG_SEGMENT, 3)
        );
        let expected: Vec<(u64, Record)> = (10..).zip(recs).collect();
        assert_eq!(decode_segment(key, &bytes).unwrap(), expected);
    }

    #[test]
    fn a_segment_of_one_job_is_stored_as_that_job() {
        match segment_of(&[inline(b"x")]) {
            Stored::Single(id, bytes) => {
                assert_eq!(id, 10);
                assert_eq!(bytes, encode_job(&inline(b"x")).unwrap());
            }
            Stored::Segment(..) => panic!("one job stored as a segment"),
        }
    }

    #[test]
    fn a_segment_takes_only_the_next_id_and_no_more_than_its_limit() {
        let mut segment = Segment::new();
        segment.push(1, &record(), 0).unwrap();
        assert!(!segment.takes(3));
        let mut next = 2;
        while segment.takes(next) {
            segment.push(next, &record(), 0).unwrap();
            next += 1;
        }
        let Some(Stored::Segment(first, bytes)) = segment.take() else {
            panic!("a full segment");
        };
        assert_eq!((first, segment_span(first, &bytes).unwrap()), (1, next - 1));
        assert!(bytes.len() >= SEGMENT_BYTES && bytes.len() < SEGMENT_BYTES + 100);
        assert!(segment.take().is_none());
    }

    #[test]
    fn truncated_miscounted_nested_and_untagged_segments_are_errors() {
        let (key, bytes) = stored_segment(&[record(), inline(b"payload")]);
        for cut in 0..bytes.len() {
            assert!(decode_segment(key, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_segment(key, &trailing).is_err());
        for count in [0u32, 1, 3] {
            let mut wrong = bytes.clone();
            wrong[1..5].copy_from_slice(&count.to_be_bytes());
            assert!(decode_segment(key, &wrong).is_err(), "count {count}");
        }
        // A single job is not a segment, nor is a segment a single job.
        assert!(decode_segment(key, &encode_job(&record()).unwrap()).is_err());
        assert!(decode_job(key, &bytes).is_err());
        // A segment inside a segment.
        let mut nested = vec![TAG_SEGMENT, 0, 0, 0, 2];
        for _ in 0..2 {
            nested.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            nested.extend_from_slice(&bytes);
        }
        assert!(decode_segment(1, &nested).is_err());
        // Ids past the last id.
        assert!(segment_span(u64::MAX - 1, &bytes).is_err());
    }

    #[test]
    fn format_1_inbox_entries_decode_with_their_payload_inline() {
        let record = encode_job(&record()).unwrap();
        let mut entry = u32::try_from(record.len()).unwrap().to_be_bytes().to_vec();
        entry.extend_from_slice(&record);
        entry.extend_from_slice(b"payload");
        assert_eq!(decode_v1_inbox(1, &entry).unwrap(), inline(b"payload"));
        for cut in 0..4 + record.len() {
            assert!(decode_v1_inbox(1, &entry[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn ready_keys_sort_by_priority_desc_then_run_at_then_id() {
        let mut keys = [
            ready_key("q", 0, 5, 1),
            ready_key("q", 5, 9, 2),
            ready_key("q", -5, 1, 3),
            ready_key("q", 5, 1, 4),
            ready_key("q", 0, 5, 0),
            ready_key("q", i32::MAX, 7, 5),
            ready_key("q", i32::MIN, 0, 6),
        ];
        keys.sort();
        let ids: Vec<u64> = keys.iter().map(|k| ordered_tail(k).unwrap().2).collect();
        assert_eq!(ids, vec![5, 4, 2, 0, 1, 3, 6]);
    }

    #[test]
    fn ordered_tail_round_trips_priorities() {
        for p in [i32::MIN, -1, 0, 1, i32::MAX] {
            assert_eq!(ordered_tail(&ready_key("q", p, 3, 4)).unwrap(), (p, 3, 4));
        }
    }

    #[test]
    fn queue_prefixes_never_overlap() {
        // "a" must not be a prefix-range neighbour of "ab": the length byte separates them.
        assert!(!timed_key("ab", 0, 0).starts_with(&queue_prefix("a")));
    }

    #[test]
    fn timed_and_count_keys_round_trip() {
        assert_eq!(timed_tail(&timed_key("q", 10, 11)).unwrap(), (10, 11));
        assert_eq!(
            parse_count_key(&count_key("q", 3)).unwrap(),
            ("q".into(), 3)
        );
        let v = scheduled_value(-7, Some("k"));
        assert_eq!(parse_scheduled_value(&v).unwrap(), (-7, &b"k"[..]));
    }
}
