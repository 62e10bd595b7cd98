//! Record and key encoding.
//!
//! A record is a version byte followed by its postcard encoding. Index keys are byte strings
//! built so that byte order is the order a scan wants: big-endian integers, a length-prefixed
//! queue name first, priority inverted so that higher sorts first.

use crate::error::{Error, Result};
use crate::state::{Payload, Record};

/// The tag of a stored job whose payload is kept apart (in the payloads table): the record's
/// postcard encoding follows. Every job of format 1 is stored so.
pub(crate) const TAG_APART: u8 = 1;
/// The tag of a stored job that carries its payload: the record's encoding behind its
/// big-endian `u32` length, then the payload.
pub(crate) const TAG_INLINE: u8 = 2;

/// The largest payload stored inline, in the job's own value. Larger payloads are written once
/// to the payloads table, so that transitions do not copy them.
pub(crate) const INLINE_PAYLOAD: usize = 1024;

fn writing(detail: impl ToString) -> Error {
    Error::Corrupt {
        what: "record being written".into(),
        detail: detail.to_string(),
    }
}

/// Encodes a job as stored in the jobs table: its record, and its payload if inline.
pub(crate) fn encode_job(rec: &Record) -> Result<Vec<u8>> {
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
    let room = 96 + rec.queue.len() + strings + inline.map_or(0, <[u8]>::len);
    let mut out = Vec::with_capacity(room);
    match inline {
        None => {
            out.push(TAG_APART);
            postcard::to_extend(rec, out).map_err(writing)
        }
        Some(payload) => {
            out.push(TAG_INLINE);
            out.extend_from_slice(&[0; 4]);
            let mut out = postcard::to_extend(rec, out).map_err(writing)?;
            let len = u32::try_from(out.len() - 5).map_err(|_| writing("longer than 4 GiB"))?;
            out[1..5].copy_from_slice(&len.to_be_bytes());
            out.extend_from_slice(payload);
            Ok(out)
        }
    }
}

/// Decodes a stored job; an inline payload comes back in [`Record::payload`].
pub(crate) fn decode_job(id: u64, bytes: &[u8]) -> Result<Record> {
    let corrupt = |detail: String| Error::Corrupt {
        what: format!("record of job {id}"),
        detail,
    };
    let (record, payload) = match bytes.split_first() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::JobState;

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
