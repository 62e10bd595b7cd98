//! The change watermark: a generation that every job-changing transaction bumps after its
//! commit, so that waiters (the executor's claimer) sleep until there is news.
//!
//! It lives in memory, not in the database: persisting it would add a page to every commit, and
//! only waiters in this process can be woken anyway (another process cannot write while this
//! one holds the database).

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

#[derive(Debug)]
pub(crate) struct Watermark {
    generation: Mutex<u64>,
    cond: Condvar,
    tx: watch::Sender<u64>,
}

impl Watermark {
    pub(crate) fn new() -> Self {
        Watermark {
            generation: Mutex::new(0),
            cond: Condvar::new(),
            tx: watch::Sender::new(0),
        }
    }

    pub(crate) fn get(&self) -> u64 {
        *self.generation.lock()
    }

    /// Publishes a committed change.
    pub(crate) fn bump(&self) {
        let mut g = self.generation.lock();
        *g += 1;
        self.tx.send_replace(*g);
        self.cond.notify_all();
    }

    /// Blocks until the generation passes `seen` or `timeout` runs out (a timeout too long for
    /// the clock, such as `Duration::MAX`, never does); returns the generation.
    pub(crate) fn wait_past(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now().checked_add(timeout);
        let mut g = self.generation.lock();
        while *g <= seen {
            match deadline {
                Some(deadline) => {
                    if self.cond.wait_until(&mut g, deadline).timed_out() {
                        break;
                    }
                }
                None => self.cond.wait(&mut g),
            }
        }
        *g
    }

    /// Waits until the generation passes `seen`; returns the generation.
    pub(crate) async fn changed_past(&self, seen: u64) -> u64 {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`, so the wait ends only by a change.
        match rx.wait_for(|g| *g > seen).await {
            Ok(g) => *g,
            Err(_) => self.get(),
        }
    }
}
