//! Group commit. One thread owns the write side of the database: it takes every operation
//! waiting in its channel (up to [`MAX_BATCH`]), applies them in order in one write transaction,
//! commits once, and only then answers each caller. A lone caller pays one commit; many callers
//! at once share commits.
//!
//! An operation refused for its own reasons (a lost lease, bad input) writes nothing, by the
//! discipline of every operation (check, then write), so its neighbours commit as usual. An
//! operation that breaks the transaction (a storage failure, a corrupt record) aborts it: the
//! operations applied before it get its error, the ones after it run in a fresh transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::core::Core;
use super::ctx::Ctx;
use super::handoff;
use crate::error::{Error, Result};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, MutexGuard};

/// The most operations committed in one transaction.
const MAX_BATCH: usize = 512;

/// The longest a commit waits for the callers of the previous one to come back: far below a
/// commit's own time (a few hundred microseconds), so that a wait for callers who are not
/// coming costs little beside the commit it may fill. Longer waits lost more than they gained
/// (docs/performance.md, "Enqueue from 16 threads").
const GATHER_WAIT: Duration = Duration::from_micros(50);

/// An operation in the writer's channel, with the number of batches the writer had finished
/// when it was sent: one sent before the last batch finished waited through it (see [`gather`]).
struct Queued {
    op: Box<dyn Op>,
    sent_after: u64,
}

/// An operation waiting for the writer.
pub(crate) trait Op: Send {
    /// Applies the operation and keeps its result to answer with; returns the error that must
    /// abort the transaction, if any.
    fn apply(&mut self, cx: &mut Ctx<'_>) -> Option<Error>;
    /// Answers the caller once the fate of its transaction is known: with the kept result if
    /// the transaction committed (or had nothing to commit), else with the transaction's error,
    /// labelled with what this operation was doing unless the error says already (a failed
    /// commit). An operation never applied is answered with `commit`'s error.
    fn answer(self: Box<Self>, commit: Result<(), &Error>);
    /// What the operation does, as its storage errors say ("claiming jobs").
    fn doing(&self) -> &'static str;
}

/// An operation, its result once applied, and what to do with the result: one allocation per
/// operation, the box the channel carries.
pub(crate) struct Request<F, R, T> {
    /// What the operation does, named in its storage errors ("claiming jobs").
    doing: &'static str,
    op: Option<F>,
    result: Option<Result<R>>,
    reply: T,
}

impl<F, R, T> Request<F, R, T> {
    /// Runs `op` in a write transaction, then `reply` with its result once committed.
    pub(crate) fn new(doing: &'static str, op: F, reply: T) -> Self {
        Request {
            doing,
            op: Some(op),
            result: None,
            reply,
        }
    }
}

impl<F, R, T> Op for Request<F, R, T>
where
    F: FnOnce(&mut Ctx<'_>) -> Result<R> + Send,
    R: Send,
    T: FnOnce(Result<R>) + Send,
{
    fn apply(&mut self, cx: &mut Ctx<'_>) -> Option<Error> {
        let result = (self.op.take()?)(cx);
        let abort = match &result {
            Err(e) if e.aborts_batch() => Some(e.clone()),
            _ => None,
        };
        self.result = Some(result);
        abort
    }

    fn answer(self: Box<Self>, commit: Result<(), &Error>) {
        let Request {
            doing,
            result,
            reply,
            ..
        } = *self;
        reply(
            match (commit, result) {
                (Ok(()), Some(result)) => result,
                // Not applied, yet its transaction committed: never the case (see
                // `commit_batch`).
                (Ok(()), None) => Err(Error::Closed),
                (Err(e), _) => Err(e.clone()),
            }
            .map_err(|e| e.doing(doing)),
        );
    }

    fn doing(&self) -> &'static str {
        self.doing
    }
}

/// What the writer thread and direct committers share.
pub(crate) struct Shared {
    /// The open database, shared with the store's handles.
    core: Arc<Core>,
    /// Held while a batch is applied and committed, by the writer thread or by a caller
    /// committing its own operation directly, and by `Store::write` (see
    /// [`Writer::hold_commits`]).
    commit: Mutex<()>,
    /// The size of the last batch: how many callers were active.
    last_batch: AtomicUsize,
    /// How many batches have finished: counted before their callers are answered.
    finished: AtomicU64,
    /// How many operations were sent to the channel (for tests of group commit).
    sent: AtomicU64,
}

/// The writer thread and the channel to it. Dropping it lets the thread finish what is queued,
/// then joins it, so the database file is closed when the last store handle goes.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    tx: Option<Sender<Queued>>,
    rx: Receiver<Queued>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(crate) fn spawn(core: Arc<Core>) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared {
            core,
            commit: Mutex::new(()),
            last_batch: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        });
        let (tx, rx) = crossbeam_channel::unbounded::<Queued>();
        let thread_shared = shared.clone();
        let thread_rx = rx.clone();
        let thread = std::thread::Builder::new()
            .name("quern-writer".into())
            .spawn(move || run(&thread_rx, &thread_shared))?;
        Ok(Writer {
            shared,
            tx: Some(tx),
            rx,
            thread: Some(thread),
        })
    }

    /// How many operations were sent to the channel since the store opened.
    pub(crate) fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// How many batches have finished (committed, rolled back or refused).
    pub(crate) fn batches(&self) -> u64 {
        self.shared.finished.load(Ordering::Acquire)
    }

    /// Holds off the group commits (the writer thread's and callers' own) until the guard
    /// drops: for a write transaction begun outside them (`Store::write`), so that every write
    /// transaction of the store begins after the last one committed, or poisoned the store.
    pub(crate) fn hold_commits(&self) -> MutexGuard<'_, ()> {
        self.shared.commit.lock()
    }

    /// Queues `op` for the writer thread's next group commit.
    pub(crate) fn send(&self, op: Box<dyn Op>) -> Result<()> {
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        match &self.tx {
            Some(tx) => tx
                .send(Queued {
                    op,
                    sent_after: self.shared.finished.load(Ordering::Acquire),
                })
                .map_err(|_| Error::Closed),
            None => Err(Error::Closed),
        }
    }

    /// Commits `op` on the calling thread when no commit is under way, together with whatever
    /// other callers queued meanwhile: a lone caller pays one commit and no thread hand-off.
    /// When a commit is under way, queues `op` for the next batch (the writer thread's, or the
    /// next caller's who finds the lock free).
    pub(crate) fn send_or_commit(&self, op: Box<dyn Op>) -> Result<()> {
        if self.tx.is_none() {
            return Err(Error::Closed);
        }
        let Some(_guard) = self.shared.commit.try_lock() else {
            return self.send(op);
        };
        let mut batch = Vec::with_capacity(1 + self.rx.len());
        batch.push(op);
        gather(&mut batch, 0, &self.rx, &self.shared);
        commit_batch(batch, &self.shared);
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            // The last store handle can go on the writer thread itself (a reply callback that
            // owned one): that thread cannot join itself, and ends on its own once it finds the
            // channel closed, closing the database as it drops its share of it.
            if thread.thread().id() == std::thread::current().id() {
                return;
            }
            // A panic in the writer was already reported to its callers as a closed store.
            let _ = thread.join();
        }
    }
}

fn run(rx: &Receiver<Queued>, shared: &Shared) {
    while let Ok(first) = rx.recv() {
        let _guard = shared.commit.lock();
        let mut batch = Vec::with_capacity(16);
        let waited = usize::from(first.sent_after < shared.finished.load(Ordering::Acquire));
        batch.push(first.op);
        gather(&mut batch, waited, rx, shared);
        commit_batch(batch, shared);
    }
}

/// Adds what waits in the channel to `batch`, up to [`MAX_BATCH`]; then, if callers of the
/// previous commit are likely to be back in a moment, waits briefly for them. `waited` says how
/// many operations already in `batch` waited through the previous batch.
///
/// Without the wait, N callers that each wait for their commit split into two groups that take
/// turns (one commits while the other queues), so commits carry N/2 operations. The active
/// callers are those of the previous batch, who come back once answered, and those whose
/// operations waited through it, sent before it finished; gathering up to that many (for at
/// most [`GATHER_WAIT`]) makes one group of N. An operation sent after the previous batch
/// finished is its caller come back, already counted. A lone caller estimates one, itself,
/// and never waits.
fn gather(batch: &mut Vec<Box<dyn Op>>, waited: usize, rx: &Receiver<Queued>, shared: &Shared) {
    let finished = shared.finished.load(Ordering::Acquire);
    let mut waited = waited;
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(q) => {
                waited += usize::from(q.sent_after < finished);
                batch.push(q.op);
            }
            Err(_) => break,
        }
    }
    let previous = shared.last_batch.load(Ordering::Relaxed);
    let active = (previous + waited).clamp(1, MAX_BATCH);
    if batch.len() < active {
        let deadline = Instant::now() + GATHER_WAIT;
        while batch.len() < active {
            match rx.recv_deadline(deadline) {
                Ok(q) => batch.push(q.op),
                Err(_) => break,
            }
        }
    }
    shared.last_batch.store(batch.len(), Ordering::Relaxed);
}

/// Applies `batch` in one write transaction, claims for the executors waiting on the queues it
/// wrote new jobs to, and commits. The caller holds the commit lock.
fn commit_batch(batch: Vec<Box<dyn Op>>, shared: &Shared) {
    let Core {
        path,
        cfg,
        watermark,
        poisoned,
        takers,
        ..
    } = &*shared.core;
    // Counted before any caller is answered: what a caller sends once answered is its caller
    // come back (see `gather`).
    let finish = || shared.finished.fetch_add(1, Ordering::AcqRel);
    if poisoned.load(Ordering::Acquire) {
        finish();
        let e = Error::Poisoned {
            path: path.to_path_buf(),
        };
        batch.into_iter().for_each(|op| op.answer(Err(&e)));
        return;
    }
    let Some(db) = shared.core.writable() else {
        // A writer is spawned for writable stores only.
        finish();
        batch
            .into_iter()
            .for_each(|op| op.answer(Err(&Error::ReadOnly)));
        return;
    };
    let tx = match db.begin_write() {
        Ok(tx) => tx,
        Err(e) => {
            finish();
            let e = Error::storage("beginning a write transaction", e).in_file(path);
            batch.into_iter().for_each(|op| op.answer(Err(&e)));
            return;
        }
    };
    let mut applied = Vec::with_capacity(batch.len());
    let mut ops = batch.into_iter();
    let mut abort = None;
    let mut changed = false;
    let mut handoff = None;
    // What the operation that aborted the transaction was doing, for the log.
    let mut failed = "";
    {
        let mut cx = Ctx::begin(&tx, cfg);
        for mut op in ops.by_ref() {
            let fatal = op.apply(&mut cx);
            if let Some(e) = fatal {
                // Each caller of the batch is answered with this error, labelled with what
                // its own operation was doing; the log says which operation it was.
                failed = op.doing();
                abort = Some(e);
                applied.push(op);
                break;
            }
            applied.push(op);
        }
        if abort.is_none() {
            let (pending, fatal) = handoff::claim_for_takers(takers, &mut cx);
            handoff = Some(pending);
            abort = fatal;
        }
        if abort.is_none() {
            match cx.finish() {
                Ok(c) => changed = c,
                Err(e) => abort = Some(e.doing("committing a write transaction")),
            }
        }
    }
    // Only a commit makes the hand-off's claims real.
    let deliver = |committed: bool| {
        if let Some(pending) = handoff {
            pending.deliver(committed);
        }
    };
    if let Some(e) = abort {
        finish();
        let e = e.in_file(path);
        drop(tx);
        deliver(false);
        tracing::error!(error = %e.clone().doing(failed), "write transaction aborted");
        applied.into_iter().for_each(|op| op.answer(Err(&e)));
        let rest: Vec<_> = ops.collect();
        if !rest.is_empty() {
            commit_batch(rest, shared);
        }
        return;
    }
    if !changed {
        // Nothing was written: no commit, no fsync (and no new job to hand off).
        finish();
        drop(tx);
        deliver(false);
        applied.into_iter().for_each(|op| op.answer(Ok(())));
        return;
    }
    let committed = tx.commit();
    finish();
    match committed {
        Ok(()) => {
            deliver(true);
            watermark.bump();
            applied.into_iter().for_each(|op| op.answer(Ok(())));
        }
        Err(e) => {
            deliver(false);
            poisoned.store(true, Ordering::Release);
            let e = Error::storage("committing a write transaction", e).in_file(path);
            tracing::error!(error = %e, "commit failed; the store refuses writes until reopened");
            applied.into_iter().for_each(|op| op.answer(Err(&e)));
        }
    }
}
