//! Index maintenance, the one place that writes index tables. Which index entries a job has is
//! a function of its record (see `docs/design.md`); these functions add and remove exactly
//! those entries, or move one entry where the record says it belongs now.

use redb::ReadableTable;

use super::codec::{
    blocked_key, count_key, keyed, ordered_tail, parse_scheduled_value, ready_key, scheduled_value,
    timed_key, timed_tail,
};
use super::tables::Tables;
use crate::error::{Result, redb_failed};
use crate::state::{Phase, Record};

/// Removes every index entry `rec` can have. A pending job sits in exactly one of ready,
/// scheduled or blocked, depending on when it was last looked at: they are tried in that order
/// (ready is where a claimed job comes from) until one held it.
pub(crate) fn remove(t: &mut Tables<'_>, id: u64, rec: &Record) -> Result<()> {
    let q = rec.queue.as_str();
    match rec.phase() {
        Phase::Pending => {
            let found = t
                .ready()?
                .remove(ready_key(q, rec.priority, rec.run_at, id).as_slice())
                .map_err(redb_failed)?
                .is_some()
                || t.scheduled()?
                    .remove(timed_key(q, rec.run_at, id).as_slice())
                    .map_err(redb_failed)?
                    .is_some();
            if !found && let Some(k) = &rec.concurrency_key {
                t.blocked()?
                    .remove(blocked_key(q, k, rec.priority, rec.run_at, id).as_slice())
                    .map_err(redb_failed)?;
            }
        }
        Phase::InProgress => {
            if let Some(exp) = rec.lease_expires_at {
                t.leases()?.remove((exp, id)).map_err(redb_failed)?;
            }
            if let Some(k) = &rec.concurrency_key {
                remove_if_owned(t.busy()?, &keyed(q, k), id)?;
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
        Phase::Pending if rec.run_at <= now => {
            t.ready()?
                .insert(
                    ready_key(q, rec.priority, rec.run_at, id).as_slice(),
                    ckey.unwrap_or("").as_bytes(),
                )
                .map_err(redb_failed)?;
        }
        Phase::Pending => {
            t.scheduled()?
                .insert(
                    timed_key(q, rec.run_at, id).as_slice(),
                    scheduled_value(rec.priority, ckey).as_slice(),
                )
                .map_err(redb_failed)?;
        }
        Phase::InProgress => {
            if let Some(exp) = rec.lease_expires_at {
                t.leases()?.insert((exp, id), ()).map_err(redb_failed)?;
            }
            if let Some(k) = ckey {
                t.busy()?
                    .insert(keyed(q, k).as_slice(), id)
                    .map_err(redb_failed)?;
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

/// When a job with a concurrency key stops running or stops waiting to run, the next blocked
/// job of that key (if any, and if the key is free) moves back to ready. This keeps the
/// invariant: blocked entries of a key exist only while the key is busy or a pending job of that
/// key is in ready or scheduled, so a blocked job is never stranded.
pub(crate) fn pass_concurrency_key(t: &mut Tables<'_>, old: &Record, new: &Record) -> Result<()> {
    let Some(k) = &old.concurrency_key else {
        return Ok(());
    };
    let was_holding = matches!(old.phase(), Phase::Pending | Phase::InProgress);
    if !was_holding || new.phase() == Phase::InProgress {
        return Ok(());
    }
    let q = old.queue.as_str();
    let key = keyed(q, k);
    if t.busy()?
        .get(key.as_slice())
        .map_err(redb_failed)?
        .is_some()
    {
        return Ok(());
    }
    let first = {
        let mut range = t.blocked()?.range(key.as_slice()..).map_err(redb_failed)?;
        match range.next() {
            Some(entry) => {
                let (k, _) = entry.map_err(redb_failed)?;
                let k = k.value().to_vec();
                k.starts_with(&key).then_some(k)
            }
            None => None,
        }
    };
    if let Some(bk) = first {
        let (priority, run_at, id) = ordered_tail(&bk)?;
        t.blocked()?.remove(bk.as_slice()).map_err(redb_failed)?;
        t.ready()?
            .insert(ready_key(q, priority, run_at, id).as_slice(), k.as_bytes())
            .map_err(redb_failed)?;
    }
    Ok(())
}

/// Takes unique key `key` of `queue` for new job `id`, which is not indexed yet: a duplicate
/// enqueued after it, even in the same batch, finds it.
pub(crate) fn take_unique_key(t: &mut Tables<'_>, queue: &str, key: &str, id: u64) -> Result<()> {
    t.unique()?
        .insert(keyed(queue, key).as_slice(), id)
        .map_err(redb_failed)?;
    Ok(())
}

/// Moves a pending job's entry from ready (under `ready`, its key there) to blocked: a job of
/// its concurrency key `ckey` is in progress.
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
/// run_at has come.
pub(crate) fn make_ready(t: &mut Tables<'_>, queue: &str, key: &[u8], value: &[u8]) -> Result<()> {
    let (run_at, id) = timed_tail(key)?;
    let (priority, ckey) = parse_scheduled_value(value)?;
    t.scheduled()?.remove(key).map_err(redb_failed)?;
    t.ready()?
        .insert(ready_key(queue, priority, run_at, id).as_slice(), ckey)
        .map_err(redb_failed)?;
    Ok(())
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

fn remove_if_owned(
    table: &mut redb::Table<'_, &'static [u8], u64>,
    key: &[u8],
    id: u64,
) -> Result<()> {
    let owned = table
        .get(key)
        .map_err(redb_failed)?
        .is_some_and(|g| g.value() == id);
    if owned {
        table.remove(key).map_err(redb_failed)?;
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
