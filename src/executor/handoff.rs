//! The executor's end of the hand-off at commit (`store/handoff.rs`): a commit that enqueues
//! jobs for this queue claims as many as there are idle workers and puts them in the channel
//! as soon as it is durable, without waiting for the claimer's next cycle. Jobs claimed ahead
//! of the workers stay the claimer's business.
//!
//! Room in the channel is reserved and released through `dispatch.rs`, by the claimer and by
//! this taker alike, so that together they never claim more than there is room for.

use std::sync::{Arc, Weak};

use super::Shared;
use super::metrics::Counters;
use crate::job::Claimed;
use crate::store::Taker;

pub(crate) struct Handoff {
    /// Weak: the store holds its takers, and the executor holds the store.
    pub shared: Weak<Shared>,
    pub queue: Arc<str>,
}

impl Taker for Handoff {
    fn queue(&self) -> &str {
        &self.queue
    }

    fn reserve(&self) -> usize {
        // Only for idle workers: jobs claimed ahead of them are the claimer's business.
        self.shared
            .upgrade()
            .map_or(0, |shared| shared.dispatch.reserve(0))
    }

    fn deliver(&self, reserved: usize, jobs: Vec<Claimed>) {
        let Some(shared) = self.shared.upgrade() else {
            // The executor is gone: the jobs' leases expire and they are recovered.
            return;
        };
        Counters::add(&shared.counters.claimed, jobs.len() as u64);
        shared
            .dispatch
            .hand_over(jobs, reserved, |job| shared.give_back(job));
    }
}
