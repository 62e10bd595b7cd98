//! What only the executor calls: claim cycles that reserve room in its channel, settles handed
//! to the writer without waiting, the hand-off registration, and the lease holder's calls
//! awaited without blocking a runtime thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::ctx::Ctx;
use super::handoff::{Room, Taker, TakerId};
use super::writer::Request;
use super::{Cycle, Store, cycle, work};
use crate::error::{Error, Result};
use crate::job::Lease;

/// How a lease holder settles its job; what the executor hands the writer.
#[derive(Debug)]
pub(crate) enum Settle {
    Complete,
    Fail(String),
    Discard(String),
    Snooze(Duration),
    Park(work::ParkScope, Duration, String),
}

impl Settle {
    /// What the settle does, for its errors.
    fn doing(&self) -> &'static str {
        match self {
            Settle::Complete => "completing a job",
            Settle::Fail(_) => "failing a job",
            Settle::Discard(_) => "discarding a job",
            Settle::Snooze(_) => "snoozing a job",
            Settle::Park(..) => "parking a job's key or queue",
        }
    }

    fn apply(self, cx: &mut Ctx<'_>, lease: &Lease) -> Result<()> {
        match self {
            Settle::Complete => work::complete(cx, lease),
            Settle::Fail(e) => work::fail(cx, lease, &e),
            Settle::Discard(e) => work::discard(cx, lease, &e),
            Settle::Snooze(d) => work::snooze(cx, lease, d),
            Settle::Park(scope, d, reason) => work::park(cx, lease, scope, d, &reason),
        }
    }
}

/// The executor's side of the store: the same operations, awaited without blocking a runtime
/// thread (they always go through the writer thread's group commit).
impl Store {
    /// A claim cycle claiming as many jobs as `room` grants when the cycle is applied; returns
    /// the cycle and that grant. Once the cycle is applied, `held` says how many of them stay
    /// reserved: the caller releases those once they are in its channel, or when the commit
    /// failed.
    pub(crate) async fn claim_cycle(
        &self,
        queue: Arc<str>,
        room: Arc<dyn Room>,
        held: Arc<AtomicUsize>,
        periodic: Arc<[crate::periodic::Periodic]>,
        through: Option<u64>,
        abandoned: bool,
    ) -> Result<(Cycle, usize)> {
        self.call_async("running a claim cycle", move |cx| {
            let n = room.reserve();
            let cycle = cycle::claim_cycle(cx, &queue, n, &periodic, through, abandoned);
            let kept = cycle.as_ref().map_or(0, |c| c.claimed.len());
            room.release(n - kept);
            held.store(kept, Ordering::SeqCst);
            cycle.map(|c| (c, n))
        })
        .await
    }

    /// Hands a settle to the writer and returns at once; `then` runs after its commit.
    pub(crate) fn settle_then(
        &self,
        lease: Lease,
        how: Settle,
        then: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        self.writer()?.send(Box::new(Request::new(
            how.doing(),
            move |cx: &mut Ctx<'_>| how.apply(cx, &lease),
            then,
        )))
    }

    /// Registers an executor to take jobs claimed at the commit of their enqueue.
    pub(crate) fn add_taker(&self, taker: Arc<dyn Taker>) -> TakerId {
        self.inner.core.takers.add(taker)
    }

    /// Removes a taker; once this returns, no commit delivers to it.
    pub(crate) fn remove_taker(&self, id: TakerId) {
        self.inner.core.takers.remove(id);
    }

    pub(crate) async fn heartbeat_async(&self, lease: &Lease) -> Result<()> {
        let lease = lease.duplicate();
        self.call_async("extending a lease", move |cx| work::heartbeat(cx, &lease))
            .await
    }

    pub(crate) async fn set_progress_async(&self, lease: &Lease, progress: String) -> Result<()> {
        let lease = lease.duplicate();
        self.call_async("recording progress", move |cx| {
            work::set_progress(cx, &lease, &progress)
        })
        .await
    }

    /// Runs `op` in the writer's next group commit, without blocking; the future resolves after
    /// the commit. `doing` names the operation in its storage errors.
    async fn call_async<R: Send + 'static>(
        &self,
        doing: &'static str,
        op: impl FnOnce(&mut Ctx<'_>) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        self.writer()?
            .send(Box::new(Request::new(doing, op, move |r| {
                let _ = tx.send(r);
            })))?;
        rx.await.unwrap_or(Err(Error::Closed))
    }
}
