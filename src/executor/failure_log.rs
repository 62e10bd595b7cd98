//! Logging of failures that does not flood: the first failure in a window at warn, the rest at
//! debug, and at the end of a window an info summary of how many there were.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::types::JobId;

/// The length of a logging window.
const WINDOW: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub(crate) struct FailureLog {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    in_window: u64,
    window_start: Instant,
}

impl Default for FailureLog {
    fn default() -> Self {
        FailureLog {
            state: Mutex::new(State {
                in_window: 0,
                window_start: Instant::now(),
            }),
        }
    }
}

impl FailureLog {
    pub(crate) fn failure(&self, queue: &str, job: JobId, attempt: u32, error: &str) {
        let mut s = self.state.lock();
        if s.window_start.elapsed() >= WINDOW {
            if s.in_window > 1 {
                tracing::info!(
                    queue,
                    failures = s.in_window,
                    window_secs = WINDOW.as_secs(),
                    "job failures in the last window"
                );
            }
            s.in_window = 0;
            s.window_start = Instant::now();
        }
        s.in_window += 1;
        if s.in_window == 1 {
            tracing::warn!(
                queue, job = %job, attempt, error,
                "job failed (more failures in the next {} s are logged at debug and counted)",
                WINDOW.as_secs()
            );
        } else {
            tracing::debug!(queue, job = %job, attempt, error, "job failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_failure_of_a_window_is_counted_as_first() {
        let log = FailureLog::default();
        for i in 0..10 {
            log.failure("q", JobId(i), 1, "boom");
        }
        assert_eq!(log.state.lock().in_window, 10);
    }
}
