//! Index maintenance, the one place that writes index tables. Which index entries a job has is
//! a function of its record (see `docs/design.md`); these functions add and remove exactly
//! those entries, or move one entry where the record says it belongs now.

use redb::ReadableTable;

use super::codec::{
    blocked_key, blocked_key_of, count_key, decode_control, decode_job, keyed, ordered_tail,
    parse_scheduled_value, ready_key, scheduled_value, timed_key, timed_tail,
};
use super::tables::Tables;
use crate::error::{Error, Result, redb_failed};
use crate::state::{Phase, Record};

/// Removes every index entry `rec` can have. A pending job sits in exactly one of ready,
/// scheduled or blocked, depending on when it was last looked at: they are tried in that order
/// (ready is where a claimed job comes from) until one held it.
pub(crate) fn remove(t: &mut Tables<'_>, id: u64, rec: &Record) -> Result<()> {
    let q = rec.queue.as_str();
    match rec.phase() {
        // A follow-up is in no claim index while it waits for its job's run.
        Phase::Pending if rec.extra.behind.is_some() => {}
        Phase::Pending => {
            let in_ready = t
                .ready()?
                .remove(ready_key(q, rec.priority, rec.run_at, id).as_slice())
                .map_err(redb_failed)?
                .is_some();
            // The head of an unordered key holds it while it waits in ready.
            if in_ready
                && !rec.extra.ordered
                && let Some(k) = &rec.concurrency_key
            {
                remove_if_owned(t.busy()?, &keyed(q, k), id)?;
            }
            let found = in_ready
                || t.scheduled()?
                    .remove(timed_key(q, rec.run_at, id).as_slice())
                    .map_err(redb_failed)?
                    .is_some();
            if !found && let Some(k) = &rec.concurrency_key {
                t.blocked()?
                    .remove(blocked_key_of(rec, k, id).as_slice())
                    .map_err(redb_failed)?;
            }
        }
        Phase::InProgress => {
            if let Some(exp) = rec.lease_expires_at {
                t.leases()?.remove((exp, id)).map_err(redb_failed)?;
            }
            // The first job of an ordered key keeps the line until it ends ([`end_line`]). A
            // job that did not take its key's busy entry was counted as running instead.
            if let Some(k) = &rec.concurrency_key
                && !rec.extra.ordered
            {
                let key = keyed(q, k);
                if !remove_if_owned(t.busy()?, &key, id)? {
                    let n = running(t, &key)?;
                    set_running(t, &key, n.saturating_sub(1))?;
                }
            }
        }
        Phase::Retrying => {
            if let Some(next) = rec.next_attempt_at {
                t.retries()?
                    .remove(timed_key(q, next, id).as_slice())
                    .map_err(redb_failed)?;
            }
        }
        Phase::Succeeded => {
            if let Some(at) = rec.finished_at {
                t.succeeded()?.remove((at, id)).map_err(redb_failed)?;
            }
        }
        Phase::Dead => {
            if let Some(at) = rec.finished_at {
                t.dead()?.remove((at, id)).map_err(redb_failed)?;
            }
        }
    }
    if rec.phase().is_live()
        && let Some(u) = &rec.unique_key
    {
        remove_if_owned(t.unique()?, &keyed(q, u), id)?;
    }
    Ok(())
}

/// Adds the index entries of `rec` as of `now`.
pub(crate) fn insert(t: &mut Tables<'_>, id: u64, rec: &Record, now: u64) -> Result<()> {
    let q = rec.queue.as_str();
    let ckey = rec.concurrency_key.as_deref();
    match rec.phase() {
        Phase::Pending if rec.extra.behind.is_some() => {}
        Phase::Pending => place_pending(t, id, rec, now)?,
        Phase::InProgress => {
            if let Some(k) = ckey {
                let key = keyed(q, k);
                let max = if rec.extra.ordered {
                    1
                } else {
                    max_running(t, &key)?
                };
                if max > 1 {
                    // Several may run: it is counted, and the key passes on to its next job
                    // while there is room.
                    let n = running(t, &key)? + 1;
                    set_running(t, &key, n)?;
                    if n < u64::from(max) {
                        pass_key(t, &key, now)?;
                    }
                } else {
                    t.busy()?.insert(key.as_slice(), id).map_err(redb_failed)?;
                }
            }
            if let Some(exp) = rec.lease_expires_at {
                t.leases()?.insert((exp, id), ()).map_err(redb_failed)?;
            }
        }
        Phase::Retrying => {
            if let Some(next) = rec.next_attempt_at {
                t.retries()?
                    .insert(timed_key(q, next, id).as_slice(), ())
                    .map_err(redb_failed)?;
            }
        }
        Phase::Succeeded => {
            if let Some(at) = rec.finished_at {
                t.succeeded()?.insert((at, id), ()).map_err(redb_failed)?;
            }
        }
        Phase::Dead => {
            if let Some(at) = rec.finished_at {
                t.dead()?.insert((at, id), ()).map_err(redb_failed)?;
            }
        }
    }
    if rec.phase().is_live()
        && let Some(u) = &rec.unique_key
    {
        t.unique()?
            .insert(keyed(q, u).as_slice(), id)
            .map_err(redb_failed)?;
    }
    Ok(())
}

/// A heartbeat: the lease entry moves to the new expiry.
pub(crate) fn move_lease(t: &mut Tables<'_>, id: u64, old: &Record, new: &Record) -> Result<()> {
    if old.lease_expires_at != new.lease_expires_at {
        if let Some(exp) = old.lease_expires_at {
            t.leases()?.remove((exp, id)).map_err(redb_failed)?;
        }
        if let Some(exp) = new.lease_expires_at {
            t.leases()?.insert((exp, id), ()).map_err(redb_failed)?;
        }
    }
    Ok(())
}

/// Places pending job `id` (not a follow-up) in the claim indexes as of `now`.
///
/// A concurrency key has at most one job in ready: its head, which holds the key's busy entry
/// while it waits there, as the key's running job holds it while it runs. The other due jobs of
/// the key wait in blocked, where no claim looks, so that a million jobs of one key never slow
/// the claims of other keys: a due job whose key is held goes to blocked at once, unless it
/// comes before the key's waiting head in claim order, which it then replaces. The jobs of an
/// ordered key wait in blocked, in id order, whenever another job holds the line; when the line
/// is free it goes to the lowest id waiting (this job, or the first blocked one). A job that is
/// not due goes to scheduled.
fn place_pending(t: &mut Tables<'_>, id: u64, rec: &Record, now: u64) -> Result<()> {
    let Some(k) = rec.concurrency_key.as_deref() else {
        return place_free(t, id, rec, now);
    };
    let key = keyed(&rec.queue, k);
    let holder = t
        .busy()?
        .get(key.as_slice())
        .map_err(redb_failed)?
        .map(|g| g.value());
    if rec.extra.ordered {
        if holder.is_none()
            && let Some((first, _)) = first_blocked(t, &key)?
            && first < id
        {
            // The line is free and an earlier job of it waits: it goes first.
            block_at(t, id, rec, k)?;
            return pass_line(t, &key, now);
        }
        if holder.is_some_and(|h| h != id) {
            return block_at(t, id, rec, k);
        }
        t.busy()?.insert(key.as_slice(), id).map_err(redb_failed)?;
        return place_free(t, id, rec, now);
    }
    if rec.run_at > now {
        return place_free(t, id, rec, now);
    }
    match holder {
        Some(h) if h == id => {}
        Some(h) => {
            let head = waiting_head(t, h)?;
            let first = head.as_ref().is_some_and(|head| {
                claim_order(rec.priority, rec.run_at, id)
                    < claim_order(head.priority, head.run_at, h)
            });
            let Some(head) = head.filter(|_| first) else {
                return block_at(t, id, rec, k);
            };
            // It comes first: the head it replaces waits behind it.
            t.ready()?
                .remove(ready_key(&head.queue, head.priority, head.run_at, h).as_slice())
                .map_err(redb_failed)?;
            block_at(t, h, &head, k)?;
            t.busy()?.insert(key.as_slice(), id).map_err(redb_failed)?;
        }
        None => {
            // The key is free; a job already waiting for it that comes first takes it.
            if let Some((_, first)) = first_blocked(t, &key)? {
                let (priority, run_at, first_id) = ordered_tail(&first)?;
                if claim_order(priority, run_at, first_id)
                    < claim_order(rec.priority, rec.run_at, id)
                {
                    block_at(t, id, rec, k)?;
                    return pass_line(t, &key, now);
                }
            }
            t.busy()?.insert(key.as_slice(), id).map_err(redb_failed)?;
        }
    }
    place_free(t, id, rec, now)
}

/// Where a job comes in claim order: priority descending, then run_at, then id; the order of
/// the ready index's keys.
pub(crate) type ClaimOrder = (std::cmp::Reverse<i32>, u64, u64);

pub(crate) fn claim_order(priority: i32, run_at: u64, id: u64) -> ClaimOrder {
    (std::cmp::Reverse(priority), run_at, id)
}

/// The record of job `h`, the holder of a key, if it is an unordered key's head waiting in
/// ready (not running; due, or not any more if the clock went back). The first job of an
/// ordered line is never replaced: it keeps the key while it waits, in ready or scheduled.
fn waiting_head(t: &mut Tables<'_>, h: u64) -> Result<Option<Record>> {
    let rec = match t.jobs()?.get(h).map_err(redb_failed)? {
        Some(bytes) => decode_job(h, bytes.value())?,
        None => return Ok(None),
    };
    if rec.phase() != Phase::Pending || rec.extra.behind.is_some() || rec.extra.ordered {
        return Ok(None);
    }
    let in_ready = t
        .ready()?
        .get(ready_key(&rec.queue, rec.priority, rec.run_at, h).as_slice())
        .map_err(redb_failed)?
        .is_some();
    Ok(in_ready.then_some(rec))
}

fn block_at(t: &mut Tables<'_>, id: u64, rec: &Record, ckey: &str) -> Result<()> {
    t.blocked()?
        .insert(blocked_key_of(rec, ckey, id).as_slice(), ())
        .map_err(redb_failed)?;
    Ok(())
}

/// Ready if due, scheduled if not.
fn place_free(t: &mut Tables<'_>, id: u64, rec: &Record, now: u64) -> Result<()> {
    let q = rec.queue.as_str();
    let ckey = rec.concurrency_key.as_deref();
    if rec.run_at <= now {
        t.ready()?
            .insert(
                ready_key(q, rec.priority, rec.run_at, id).as_slice(),
                ckey.unwrap_or("").as_bytes(),
            )
            .map_err(redb_failed)?;
    } else {
        t.scheduled()?
            .insert(
                timed_key(q, rec.run_at, id).as_slice(),
                scheduled_value(rec.priority, ckey).as_slice(),
            )
            .map_err(redb_failed)?;
    }
    Ok(())
}

/// The first blocked entry of (queue, concurrency key) `key`: its job id and the entry's key.
fn first_blocked(t: &mut Tables<'_>, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>> {
    let mut range = t.blocked()?.range(key..).map_err(redb_failed)?;
    let Some(entry) = range.next() else {
        return Ok(None);
    };
    let (k, _) = entry.map_err(redb_failed)?;
    let k = k.value().to_vec();
    if !k.starts_with(key) {
        return Ok(None);
    }
    let (_, _, id) = ordered_tail(&k)?;
    Ok(Some((id, k)))
}

/// The key `key` is free: its first blocked job, if any, is placed again as pending (and, for
/// an ordered key, takes the line).
fn pass_line(t: &mut Tables<'_>, key: &[u8], now: u64) -> Result<()> {
    // A loop, not a recursion: after the clock went back, every blocked job of a key may be
    // ahead of now, and each goes to scheduled in turn.
    while let Some((id, bk)) = first_blocked(t, key)? {
        t.blocked()?.remove(bk.as_slice()).map_err(redb_failed)?;
        let next = match t.jobs()?.get(id).map_err(redb_failed)? {
            Some(bytes) => decode_job(id, bytes.value())?,
            None => {
                return Err(Error::Corrupt {
                    what: "blocked index".into(),
                    detail: format!("entry for job {id}, which does not exist"),
                });
            }
        };
        if next.phase() != Phase::Pending || next.extra.behind.is_some() {
            return Err(Error::Corrupt {
                what: "blocked index".into(),
                detail: format!("entry for job {id}, which is {}", next.state),
            });
        }
        if next.extra.ordered || next.run_at <= now {
            // It takes the key: first in an ordered line, or the head of an unordered key.
            t.busy()?.insert(key, id).map_err(redb_failed)?;
            return place_free(t, id, &next, now);
        }
        // Not due (the clock went back since it was blocked): it waits in scheduled, and the
        // key passes to the next.
        place_free(t, id, &next, now)?;
    }
    Ok(())
}

/// Key `key` ((queue, concurrency key)) was held back and is not any more: if no job holds
/// it, its first blocked job is placed again ([`pass_line`]).
pub(crate) fn pass_key(t: &mut Tables<'_>, key: &[u8], now: u64) -> Result<()> {
    if t.busy()?.get(key).map_err(redb_failed)?.is_some() {
        return Ok(());
    }
    pass_line(t, key, now)
}

/// The first job of an ordered key keeps the line (its busy entry) while it waits and while it
/// runs; it gives it up here, when it ends (succeeds, fails for good, is cancelled).
pub(crate) fn end_line(t: &mut Tables<'_>, id: u64, old: &Record, new: &Record) -> Result<()> {
    if old.extra.ordered
        && old.phase().is_live()
        && !new.phase().is_live()
        && let Some(k) = &old.concurrency_key
    {
        remove_if_owned(t.busy()?, &keyed(&old.queue, k), id)?;
    }
    Ok(())
}

/// When a job with a concurrency key may have given up the key (it stopped running, stopped
/// waiting to run, or, for an ordered key, ended), the first blocked job of that key (if any,
/// and if the key is free) is placed again ([`pass_line`]). This keeps the invariant: blocked
/// entries of a key exist only while the key is busy or a pending job of that key is in ready
/// or scheduled, so a blocked job is never stranded.
pub(crate) fn pass_concurrency_key(
    t: &mut Tables<'_>,
    old: &Record,
    new: &Record,
    now: u64,
) -> Result<()> {
    let Some(k) = &old.concurrency_key else {
        return Ok(());
    };
    let was_holding = match old.phase() {
        Phase::Pending | Phase::InProgress => true,
        Phase::Retrying => old.extra.ordered,
        Phase::Succeeded | Phase::Dead => false,
    };
    if !was_holding || new.phase() == Phase::InProgress {
        return Ok(());
    }
    pass_key(t, &keyed(&old.queue, k), now)
}

/// Takes unique key `key` of `queue` for new job `id`, which is not indexed yet: a duplicate
/// enqueued after it, even in the same batch, finds it.
pub(crate) fn take_unique_key(t: &mut Tables<'_>, queue: &str, key: &str, id: u64) -> Result<()> {
    t.unique()?
        .insert(keyed(queue, key).as_slice(), id)
        .map_err(redb_failed)?;
    Ok(())
}

/// Moves pending job `id` (record `rec`) out of ready, where it was its key's head, to
/// blocked: its key is held back (parked, or out of starts). The key is free again: the first
/// claim after it opens passes it on ([`pass_key`]).
pub(crate) fn set_aside(t: &mut Tables<'_>, id: u64, rec: &Record) -> Result<()> {
    let Some(k) = rec.concurrency_key.as_deref() else {
        return Ok(());
    };
    t.ready()?
        .remove(ready_key(&rec.queue, rec.priority, rec.run_at, id).as_slice())
        .map_err(redb_failed)?;
    remove_if_owned(t.busy()?, &keyed(&rec.queue, k), id)?;
    block_at(t, id, rec, k)
}

/// Moves pending job `id` (record `rec`) out of ready into scheduled: its run_at is ahead (the
/// clock went back since it was made ready). An unordered key's head gives the key up to the
/// next due job; an ordered key's first job keeps its line.
pub(crate) fn unready(t: &mut Tables<'_>, id: u64, rec: &Record, now: u64) -> Result<()> {
    let q = rec.queue.as_str();
    t.ready()?
        .remove(ready_key(q, rec.priority, rec.run_at, id).as_slice())
        .map_err(redb_failed)?;
    place_free(t, id, rec, now)?;
    if let Some(k) = rec.concurrency_key.as_deref()
        && !rec.extra.ordered
    {
        let key = keyed(q, k);
        remove_if_owned(t.busy()?, &key, id)?;
        pass_key(t, &key, now)?;
    }
    Ok(())
}

/// Moves a pending job's entry from ready (under `ready`, its key there) to blocked: another job
/// holds its concurrency key `ckey`.
pub(crate) fn block(
    t: &mut Tables<'_>,
    ready: &[u8],
    queue: &str,
    ckey: &str,
    priority: i32,
    run_at: u64,
    id: u64,
) -> Result<()> {
    t.ready()?.remove(ready).map_err(redb_failed)?;
    t.blocked()?
        .insert(
            blocked_key(queue, ckey, priority, run_at, id).as_slice(),
            (),
        )
        .map_err(redb_failed)?;
    Ok(())
}

/// Moves a pending job's entry from scheduled (`key` and `value` as stored there) to ready: its
/// run_at has come. A job with a concurrency key is placed as [`place_pending`] says: the
/// key's head, or blocked behind it.
pub(crate) fn make_ready(
    t: &mut Tables<'_>,
    queue: &str,
    key: &[u8],
    value: &[u8],
    now: u64,
) -> Result<()> {
    let (run_at, id) = timed_tail(key)?;
    let (priority, ckey) = parse_scheduled_value(value)?;
    t.scheduled()?.remove(key).map_err(redb_failed)?;
    if ckey.is_empty() {
        t.ready()?
            .insert(ready_key(queue, priority, run_at, id).as_slice(), ckey)
            .map_err(redb_failed)?;
        return Ok(());
    }
    let rec = match t.jobs()?.get(id).map_err(redb_failed)? {
        Some(bytes) => decode_job(id, bytes.value())?,
        None => {
            return Err(Error::Corrupt {
                what: "scheduled index".into(),
                detail: format!("entry for job {id}, which does not exist"),
            });
        }
    };
    place_pending(t, id, &rec, now)
}

/// Adds `delta` to the count of `queue` and phase `code`.
pub(crate) fn add_count(t: &mut Tables<'_>, queue: &str, code: u8, delta: i64) -> Result<()> {
    if delta == 0 {
        return Ok(());
    }
    let key = count_key(queue, code);
    let current = t
        .counts()?
        .get(key.as_slice())
        .map_err(redb_failed)?
        .map_or(0, |g| g.value());
    let next = current.saturating_add_signed(delta);
    t.counts()?
        .insert(key.as_slice(), next)
        .map_err(redb_failed)?;
    Ok(())
}

/// Removes `key` if `id` owns it; returns whether it did.
fn remove_if_owned(
    table: &mut redb::Table<'_, &'static [u8], u64>,
    key: &[u8],
    id: u64,
) -> Result<bool> {
    let owned = table
        .get(key)
        .map_err(redb_failed)?
        .is_some_and(|g| g.value() == id);
    if owned {
        table.remove(key).map_err(redb_failed)?;
    }
    Ok(owned)
}

/// How many jobs of plain concurrency key `key` ((queue, key)) may run at once: its control's
/// maximum, 1 by default.
fn max_running(t: &mut Tables<'_>, key: &[u8]) -> Result<u32> {
    Ok(match t.controls()?.get(key).map_err(redb_failed)? {
        Some(v) => decode_control(key, v.value())?.max_running.unwrap_or(1),
        None => 1,
    })
}

/// How many jobs of key `key` run now without its busy entry (a key with a maximum above one).
pub(crate) fn running(t: &mut Tables<'_>, key: &[u8]) -> Result<u64> {
    Ok(t.running()?
        .get(key)
        .map_err(redb_failed)?
        .map_or(0, |g| g.value()))
}

/// Key `key` may now run several at once: a job of it that runs holding its busy entry (as the
/// key's one job at a time) is counted as running instead, and the key passes on to its next
/// job.
pub(crate) fn run_several(t: &mut Tables<'_>, key: &[u8], now: u64) -> Result<()> {
    let Some(holder) = t.busy()?.get(key).map_err(redb_failed)?.map(|g| g.value()) else {
        return Ok(());
    };
    let rec = match t.jobs()?.get(holder).map_err(redb_failed)? {
        Some(bytes) => decode_job(holder, bytes.value())?,
        None => return Ok(()),
    };
    if rec.phase() != Phase::InProgress || rec.extra.ordered {
        return Ok(());
    }
    t.busy()?.remove(key).map_err(redb_failed)?;
    let n = running(t, key)?;
    set_running(t, key, n + 1)?;
    pass_line(t, key, now)
}

fn set_running(t: &mut Tables<'_>, key: &[u8], n: u64) -> Result<()> {
    if n == 0 {
        t.running()?.remove(key).map_err(redb_failed)?;
    } else {
        t.running()?.insert(key, n).map_err(redb_failed)?;
    }
    Ok(())
}

/// The queues that have ever held a job, from the counts table.
pub(crate) fn queues(counts: &impl ReadableTable<&'static [u8], u64>) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for entry in counts.iter().map_err(redb_failed)? {
        let (k, _) = entry.map_err(redb_failed)?;
        let (queue, _) = super::codec::parse_count_key(k.value())?;
        if out.last() != Some(&queue) {
            out.push(queue);
        }
    }
    Ok(out)
}
