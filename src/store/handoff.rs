//! Hand-off at commit: a commit that writes new jobs for a queue whose executor has idle
//! workers claims them in the same transaction and hands them over once it is durable. The
//! job then starts one commit after its enqueue instead of two (the enqueue's, then the
//! claimer's), and with one thread hand-off instead of four.
//!
//! An executor registers a [`Taker`] for its queue. The writer asks each taker of a queue that
//! got new jobs how many it would take ([`Taker::reserve`]), claims up to that many in the
//! transaction, and after the commit calls [`Taker::deliver`] with what it claimed (nothing if
//! the commit failed: the claim was rolled back with it). Claims are the store's ordinary
//! claims: priority order, concurrency keys, attempts counted, leases taken; a job that the
//! taker cannot use after all goes back as any claimed job does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{RwLock, RwLockReadGuard};

use super::ctx::Ctx;
use super::work;
use crate::error::{Error, Result};
use crate::job::Claimed;

/// Room for claimed jobs (an executor's channel), reserved when a claim is applied, in commit
/// order, so that the claims of the claimer and of hand-offs together never exceed it: how
/// much room there is is decided then, not when the claim was asked for.
pub(crate) trait Room: Send + Sync {
    /// Reserves room for the claim being applied now; returns for how many jobs.
    fn reserve(&self) -> usize;
    /// Releases `n` jobs' worth of reserved room: they are in the channel, or were not claimed.
    fn release(&self, n: usize);
}

/// Takes jobs claimed at commit: an executor with idle workers.
pub(crate) trait Taker: Send + Sync {
    /// The queue it runs.
    fn queue(&self) -> &str;
    /// How many jobs it would take now. The room is reserved until [`Taker::deliver`].
    fn reserve(&self) -> usize;
    /// The jobs claimed for a reservation of `reserved` (fewer, or none if the commit failed),
    /// after the commit. Releases the reservation. Must not block on the store.
    fn deliver(&self, reserved: usize, jobs: Vec<Claimed>);
}

/// A registered taker.
struct Entry {
    id: u64,
    taker: Arc<dyn Taker>,
    /// Set when a claim for it failed: no more hand-offs to it (its claimer takes over).
    broken: AtomicBool,
}

type List = Vec<Entry>;

/// The takers of a store.
#[derive(Default)]
pub(crate) struct Takers {
    list: RwLock<List>,
    next: AtomicU64,
}

/// A registration, to remove it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TakerId(u64);

impl Takers {
    pub(crate) fn add(&self, taker: Arc<dyn Taker>) -> TakerId {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.list.write().push(Entry {
            id,
            taker,
            broken: AtomicBool::new(false),
        });
        TakerId(id)
    }

    /// Removes a taker. Waits for a commit that is claiming for it to deliver, so that once
    /// this returns the taker gets nothing more.
    pub(crate) fn remove(&self, id: TakerId) {
        self.list.write().retain(|e| e.id != id.0);
    }
}

/// The claims one transaction made for takers, delivered when its fate is known. Holds the
/// takers' list, so that a taker being removed waits for its delivery.
pub(crate) struct Pending<'a> {
    _list: Option<RwLockReadGuard<'a, List>>,
    claims: Vec<(Arc<dyn Taker>, usize, Vec<Claimed>)>,
}

impl Pending<'_> {
    /// Hands the claims over: after a successful commit, or with nothing after a failed one.
    pub(crate) fn deliver(self, committed: bool) {
        for (taker, reserved, jobs) in self.claims {
            taker.deliver(reserved, if committed { jobs } else { Vec::new() });
        }
    }
}

/// Claims, in `cx`'s transaction, jobs for the takers of the queues that got new jobs in it.
///
/// A claim that fails (a storage error, a corrupt record in the queue) aborts the transaction,
/// so that the operations of the batch fail with it, once: the taker is then marked broken and
/// gets no more hand-offs, so later enqueues commit as they would without it, and its
/// executor's claimer meets (and reports) the same failure on its own. The reservations are
/// released either way.
pub(crate) fn claim_for_takers<'a>(
    takers: &'a Takers,
    cx: &mut Ctx<'_>,
) -> (Pending<'a>, Option<Error>) {
    let mut pending = Pending {
        _list: None,
        claims: Vec::new(),
    };
    let queues = cx.take_new_queues();
    if queues.is_empty() {
        return (pending, None);
    }
    let list = takers.list.read();
    let mut abort = None;
    for entry in list.iter() {
        let taker = &entry.taker;
        if abort.is_some()
            || entry.broken.load(Ordering::Relaxed)
            || !queues.iter().any(|q| q == taker.queue())
        {
            continue;
        }
        let n = taker.reserve();
        if n == 0 {
            continue;
        }
        // Behind a backlog too long to index in this commit, nothing is handed off: the
        // executor's claimer works through it.
        let claimed: Result<Vec<Claimed>> = work::claim(cx, taker.queue(), n, None)
            .map(|step| match step {
                work::ClaimStep::Claimed(jobs) => jobs,
                work::ClaimStep::Indexing { .. } => Vec::new(),
            })
            .map_err(|e| e.doing("claiming jobs for an idle executor"));
        match claimed {
            Ok(jobs) => pending.claims.push((taker.clone(), n, jobs)),
            Err(e) => {
                tracing::error!(
                    queue = taker.queue(), error = %e,
                    "a claim at commit failed: no more hand-offs to this executor"
                );
                entry.broken.store(true, Ordering::Relaxed);
                pending.claims.push((taker.clone(), n, Vec::new()));
                abort = Some(e);
            }
        }
    }
    pending._list = Some(list);
    (pending, abort)
}
