//! Dispatch: the channel between the claims and the workers, and the one owner of the count that
//! keeps every claim within the room there is.
//!
//! Jobs reach the channel from two places, the claimer's cycles and the hand-off at the commit of
//! an enqueue (`handoff.rs`), and leave it to the workers. The promise: a job is claimed only
//! when it has a place to go, so none is claimed that would wait in memory with nowhere to go
//! while it could have stayed pending on disk (queue-full recovery). Three counts make that
//! promise, and only this file touches them:
//!
//! - `reserved`: room held for jobs being claimed. A claim reserves its room when it is applied
//!   in the writer's transaction ([`Dispatch::reserve`]), so claims applied before it are in the
//!   channel or reserved by then, and releases it once its jobs are in the channel
//!   ([`Dispatch::hand_over`]) or when the claim failed ([`Dispatch::release`]).
//! - the channel's length: jobs claimed and waiting for a worker.
//! - `busy`: workers holding a job, from before they take it off the channel until it is settled
//!   ([`Dispatch::next_job`], [`Dispatch::job_done`]).
//!
//! Why a job on its way is always counted at least once, so that room is never granted twice:
//! a sender puts its jobs in the channel before it releases their room, and a worker counts
//! itself busy before it takes a job. So [`Dispatch::reserve`] reads the reservation first, then
//! the channel, then the busy workers: a job that moves while it reads moves from a count read
//! earlier to one read later, never the other way; and it reads all three again if the
//! reservation changed meanwhile (a compare-and-swap on it). Every count is `SeqCst`, so these
//! reads and writes are in one order that every thread agrees on.
//!
//! Wake-ups: `job_ready` wakes an idle worker when a job is put in the channel; `room` wakes the
//! claimer when a job leaves the channel or a worker goes idle, so it can claim for the room.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::job::Claimed;
use crate::store::Room;

/// The channel to the workers and the counts that bound the claims feeding it.
pub(crate) struct Dispatch {
    tx: Sender<Claimed>,
    rx: Receiver<Claimed>,
    concurrency: usize,
    capacity: usize,
    /// Workers holding a job, from before they take it off the channel until it is settled.
    busy: AtomicUsize,
    /// Room in the channel held for jobs being claimed, by the claimer or a hand-off.
    reserved: AtomicUsize,
    /// A job was put in the channel.
    job_ready: Notify,
    /// A job was taken from the channel, or a worker became idle.
    room: Notify,
    /// Once cancelled, nothing more is reserved and idle workers stop.
    stop: CancellationToken,
}

impl Dispatch {
    /// A channel of `capacity` jobs for `concurrency` workers, stopped by `stop`.
    pub(crate) fn new(concurrency: usize, capacity: usize, stop: CancellationToken) -> Dispatch {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        Dispatch {
            tx,
            rx,
            concurrency,
            capacity,
            busy: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            job_ready: Notify::new(),
            room: Notify::new(),
            stop,
        }
    }

    /// Reserves room for a claim for the idle workers and `ahead` more jobs, beyond the jobs in
    /// the channel and the room already reserved, at most the channel's capacity; returns for
    /// how many. Nothing once stopping. See the module's doc for why the counts are read in
    /// this order.
    pub(crate) fn reserve(&self, ahead: usize) -> usize {
        if self.stop.is_cancelled() {
            return 0;
        }
        loop {
            let reserved = self.reserved.load(SeqCst);
            let len = self.tx.len();
            let idle = self.concurrency.saturating_sub(self.busy.load(SeqCst));
            let target = idle.saturating_add(ahead).min(self.capacity);
            let n = target.saturating_sub(len).saturating_sub(reserved);
            if n == 0 {
                return 0;
            }
            if self
                .reserved
                .compare_exchange(reserved, reserved + n, SeqCst, SeqCst)
                .is_ok()
            {
                return n;
            }
        }
    }

    /// Releases `n` jobs' worth of room reserved by [`Dispatch::reserve`] and not used.
    pub(crate) fn release(&self, n: usize) {
        self.reserved.fetch_sub(n, SeqCst);
    }

    /// Puts claimed jobs in the channel, waking a worker for each, then releases the `reserved`
    /// room they were claimed for. A job that does not fit after all (it cannot happen while
    /// claims keep within their reservations) goes to `give_back`.
    pub(crate) fn hand_over(
        &self,
        jobs: Vec<Claimed>,
        reserved: usize,
        mut give_back: impl FnMut(Claimed),
    ) {
        for job in jobs {
            match self.tx.try_send(job) {
                Ok(()) => self.job_ready.notify_one(),
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => give_back(job),
            }
        }
        self.release(reserved);
    }

    /// A worker's next job: waits until one is in the channel. The worker counts as busy from
    /// before it looks, so that no claim counts it idle while its job is neither in the channel
    /// nor counted busy. `None` once stopping.
    pub(crate) async fn next_job(&self) -> Option<Claimed> {
        loop {
            if self.stop.is_cancelled() {
                return None;
            }
            // Listening before the channel is looked at, so that a job sent after the look
            // wakes this worker. Only while idle: a waiter kept through a run would take the
            // wake-up meant for an idle worker (tokio wakes the oldest waiter), and that worker
            // would sleep until the run ended. Dropped with a wake-up in it, it passes it on.
            let ready = self.job_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            self.busy.fetch_add(1, SeqCst);
            match self.rx.try_recv() {
                Ok(claimed) => {
                    // Room is made in the channel.
                    self.room.notify_one();
                    return Some(claimed);
                }
                // Never disconnected: this owns the sending end too.
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    self.busy.fetch_sub(1, SeqCst);
                    // A claim that looked in the moment this worker counted busy skipped it.
                    self.room.notify_one();
                    tokio::select! {
                        () = ready => {}
                        () = self.stop.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// A worker is done with the job [`Dispatch::next_job`] gave it: idle again. Wakes the
    /// claimer, which may have held back a job for it (not every run ends in a commit that
    /// would wake it: a lost lease writes nothing).
    pub(crate) fn job_done(&self) {
        self.busy.fetch_sub(1, SeqCst);
        self.room.notify_one();
    }

    /// Resolves when room may have been made: a job left the channel or a worker went idle.
    pub(crate) async fn room_made(&self) {
        self.room.notified().await;
    }

    /// Takes a job still waiting in the channel, if any: at shutdown, to give it back.
    pub(crate) fn take_waiting(&self) -> Option<Claimed> {
        self.rx.try_recv().ok()
    }

    /// Whether no job is in the channel, held by a worker, or being claimed for it.
    pub(crate) fn is_empty(&self) -> bool {
        self.reserved.load(SeqCst) == 0 && self.tx.is_empty() && self.busy.load(SeqCst) == 0
    }

    /// How many claimed jobs wait in the channel.
    pub(crate) fn waiting(&self) -> usize {
        self.rx.len()
    }
}

/// The room of one claim cycle: for each idle worker, plus `ahead` jobs (see
/// [`Dispatch::reserve`]). Counted when the claim is applied, in the writer's transaction.
pub(crate) struct ClaimRoom {
    pub dispatch: Arc<Dispatch>,
    pub ahead: usize,
}

impl Room for ClaimRoom {
    fn reserve(&self) -> usize {
        self.dispatch.reserve(self.ahead)
    }

    fn release(&self, n: usize) {
        self.dispatch.release(n);
    }
}
