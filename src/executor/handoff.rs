//! The executor's end of the hand-off at commit (`store/handoff.rs`): a commit that enqueues
//! jobs for this queue claims as many as there are idle workers and puts them in the channel
//! as soon as it is durable, without waiting for the claimer's next cycle. Jobs claimed ahead
//! of the workers stay the claimer's business.
//!
//! Room in the channel is counted and reserved when a claim is applied and released after the
//! hand-over, by the claimer and by this taker alike, so that together they never claim more
//! than there is room for: a claimed job always has a place to go.

use std::sync::{Arc, Weak};

use crossbeam_channel::TrySendError;

use super::metrics::Counters;
use super::{JobSender, Shared};
use crate::job::Claimed;
use crate::store::Taker;

pub(crate) struct Handoff {
    /// Weak: the store holds its takers, and the executor holds the store.
    pub shared: Weak<Shared>,
    pub queue: Arc<str>,
    pub tx: JobSender,
}

impl Taker for Handoff {
    fn queue(&self) -> &str {
        &self.queue
    }

    fn reserve(&self) -> usize {
        // Only for idle workers: jobs claimed ahead of them are the claimer's business.
        self.shared
            .upgrade()
            .map_or(0, |shared| shared.reserve_for(0, &self.tx))
    }

    fn deliver(&self, reserved: usize, jobs: Vec<Claimed>) {
        let Some(shared) = self.shared.upgrade() else {
            // The executor is gone: the jobs' leases expire and they are recovered.
            return;
        };
        Counters::add(&shared.counters.claimed, jobs.len() as u64);
        for job in jobs {
            match self.tx.try_send(job) {
                Ok(()) => shared.job_ready.notify_one(),
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                    shared.give_back(job);
                }
            }
        }
        shared.release_room(reserved);
    }
}
