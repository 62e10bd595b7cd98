//! The executor's claim cycle: one transaction that recovers expired leases (and, the first
//! time, the jobs of a stopped process), promotes due
//! retries, fires periodic schedules, claims what fits in the dispatch channel, and says when
//! the next piece of work comes due, so the claimer can sleep until then.

use redb::ReadableTable;

use super::codec::queue_prefix;
use super::ctx::Ctx;
use super::read::first_time;
use super::{controls, enqueue, housekeeping, work};
use crate::error::{Result, redb_failed};
use crate::job::{Claimed, Enqueued, RunAt};
use crate::periodic::Periodic;
use crate::types::Timestamp;

/// What a claim cycle did.
pub(crate) struct Cycle {
    pub claimed: Vec<Claimed>,
    /// Set when the cycle indexed part of a backlog of new jobs instead of claiming: the
    /// bound to run the next cycle with, at once (see [`work::ClaimStep::Indexing`]).
    pub indexing: Option<u64>,
    /// The earliest time something becomes due: a scheduled job of the queue, a retry, a lease
    /// expiry, or a periodic slot.
    pub next_due: Option<Timestamp>,
    /// The earliest time a job of the queue becomes due: a scheduled job, a retry, or the end
    /// of a park or rate window holding the queue back. Not periodic slots, nor other queues'
    /// retries and leases: what an executor waiting to be idle waits for.
    pub next_work: Option<Timestamp>,
}

/// `through` is the bound the previous cycle returned in [`Cycle::indexing`], if any. An
/// executor's first cycle also recovers the jobs an earlier, stopped process left in progress
/// (`abandoned`), so that they are claimed in the same transaction.
pub(crate) fn claim_cycle(
    cx: &mut Ctx<'_>,
    queue: &str,
    room: usize,
    periodic: &[Periodic],
    through: Option<u64>,
    abandoned: bool,
) -> Result<Cycle> {
    if abandoned {
        housekeeping::recover_abandoned(cx)?;
    }
    housekeeping::recover_expired(cx)?;
    housekeeping::promote_due(cx)?;
    let next_slot = fire_periodic(cx, periodic)?;
    let (claimed, indexing) = if room > 0 {
        match work::claim(cx, queue, room, through)? {
            work::ClaimStep::Claimed(jobs) => (jobs, None),
            work::ClaimStep::Indexing { through } => (Vec::new(), Some(through)),
        }
    } else {
        // Nothing to claim, but new jobs are indexed all the same, so that stats need not read
        // a backlog and the next due time sees every job.
        cx.drain_new(u64::MAX, |_| false)?;
        (Vec::new(), None)
    };
    let now = cx.now();
    let scheduled = next_scheduled(cx, queue)?;
    let opens = controls::next_open(cx, queue, now)?.map(Timestamp);
    let retry = first_time(cx.t.retries()?, &queue_prefix(queue), 0)?.map(Timestamp);
    let next_work = [scheduled, retry, opens].into_iter().flatten().min();
    let next_due = [next_work, next_retry(cx)?, next_expiry(cx)?, next_slot]
        .into_iter()
        .flatten()
        .min();
    Ok(Cycle {
        claimed,
        indexing,
        next_due,
        next_work,
    })
}

/// Enqueues the job of every schedule whose current slot has not fired. Returns when the next
/// slot of any schedule starts.
fn fire_periodic(cx: &mut Ctx<'_>, schedules: &[Periodic]) -> Result<Option<Timestamp>> {
    let now = Timestamp(cx.now());
    let mut next = None::<Timestamp>;
    for p in schedules {
        let slot = p.slot(now);
        let fired =
            cx.t.periodic()?
                .get(p.name.as_str())
                .map_err(redb_failed)?
                .map(|g| g.value());
        if fired.is_none_or(|f| f < slot) {
            let mut job = p.job.clone();
            job.run_at = RunAt::At(p.slot_start(slot));
            // A slot fires once: while the previous slot's job lives, this one waits (strict
            // unique key) rather than follow it.
            job.strict = true;
            job.latest_wins = false;
            job.debounce = None;
            enqueue::validate(&job)?;
            match enqueue::enqueue(cx, job)? {
                Enqueued::Created(id) => {
                    cx.t.periodic()?
                        .insert(p.name.as_str(), slot)
                        .map_err(redb_failed)?;
                    tracing::debug!(schedule = %p.name, slot, job = %id, "periodic job enqueued");
                }
                // The previous slot's job is still live: this slot fires when it finishes (its
                // settlement wakes the claimer), unless the slot is over by then.
                Enqueued::Duplicate(id)
                | Enqueued::Coalesced(id)
                | Enqueued::FollowUp { job: id, .. } => {
                    tracing::trace!(schedule = %p.name, slot, live = %id, "periodic slot waits");
                }
            }
        }
        let start = p.slot_start(slot.saturating_add(1));
        next = Some(next.map_or(start, |n| n.min(start)));
    }
    Ok(next)
}

/// The first scheduled job of `queue` that is not due yet. Due ones are there only when this
/// cycle had no room to claim (a claim makes them ready): they wait for room, which wakes the
/// claimer, and must not make it wake at once, again and again.
fn next_scheduled(cx: &mut Ctx<'_>, queue: &str) -> Result<Option<Timestamp>> {
    let from = cx.now().saturating_add(1);
    Ok(first_time(cx.t.scheduled()?, &queue_prefix(queue), from)?.map(Timestamp))
}

fn next_retry(cx: &mut Ctx<'_>) -> Result<Option<Timestamp>> {
    let mut next = None::<u64>;
    for queue in cx.queues()? {
        if let Some(t) = first_time(cx.t.retries()?, &queue_prefix(&queue), 0)? {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
    }
    Ok(next.map(Timestamp))
}

fn next_expiry(cx: &mut Ctx<'_>) -> Result<Option<Timestamp>> {
    Ok(cx
        .t
        .leases()?
        .first()
        .map_err(redb_failed)?
        .map(|(k, _)| Timestamp(k.value().0)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::claim_cycle;
    use crate::{NewJob, Timestamp};

    #[test]
    fn a_due_scheduled_job_waiting_for_room_does_not_make_the_next_cycle_due_at_once() {
        let (_dir, clock, store) = crate::store::test_store();
        store
            .enqueue(NewJob::new("q", "soon").delay(Duration::from_secs(10)))
            .unwrap();
        store
            .enqueue(NewJob::new("q", "later").delay(Duration::from_secs(60)))
            .unwrap();
        // Indexed as scheduled by a cycle with room; nothing is due yet.
        let first = store
            .call("running a claim cycle", |cx| {
                claim_cycle(cx, "q", 1, &[], None, false)
            })
            .unwrap();
        assert!(first.claimed.is_empty());
        assert_eq!(first.next_due, Some(Timestamp(1_010_000)));
        // The first comes due while every worker is busy: no room, so it stays scheduled.
        clock.advance(Duration::from_secs(20));
        let busy = store
            .call("running a claim cycle", |cx| {
                claim_cycle(cx, "q", 0, &[], None, false)
            })
            .unwrap();
        assert!(busy.claimed.is_empty());
        assert_eq!(busy.next_due, Some(Timestamp(1_060_000)));
    }

    #[test]
    fn a_key_whose_wake_time_came_does_not_make_a_cycle_without_room_due_at_once() {
        let (_dir, clock, store) = crate::store::test_store();
        store
            .enqueue(NewJob::new("q", "x").concurrency_key("a"))
            .unwrap();
        store
            .park("q", Some("a"), Timestamp(1_010_000), "429")
            .unwrap();
        // A claim sets the key's job aside; the key wakes at the park's end.
        assert!(store.claim("q", 1).unwrap().is_empty());
        let cycle = |room| {
            store
                .call("running a claim cycle", move |cx| {
                    claim_cycle(cx, "q", room, &[], None, false)
                })
                .unwrap()
        };
        assert_eq!(cycle(0).next_due, Some(Timestamp(1_010_000)));
        // Past it, with every worker busy: the next claim with room passes the key, and freed
        // room wakes the claimer; the wake time is not due again and again meanwhile.
        clock.advance(Duration::from_secs(20));
        assert_eq!(cycle(0).next_due, None);
        assert_eq!(cycle(1).claimed.len(), 1);
        assert_eq!(store.check().unwrap(), []);
    }
}
