//! Remote backpressure, as plain data and pure functions: what holds a queue or a concurrency
//! key back from starting jobs (a pause, a park until a time, a rate limit), and the rate
//! window's accounting. No I/O: the store keeps one [`Control`] per queue and per key that has
//! any, and consults and updates it inside the claim's own transaction.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::duration_ms;

/// At most `starts` jobs started per `period`, counted in fixed windows: a window opens at the
/// first start after the last one closed and lasts one period.
///
/// ```
/// use std::time::Duration;
/// use quern::RateLimit;
///
/// let limit = RateLimit::new(10, Duration::from_secs(1))?;
/// assert_eq!(limit.starts(), 10);
/// assert!(RateLimit::new(0, Duration::from_secs(1)).is_err());
/// # Ok::<_, quern::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    starts: u32,
    period_ms: u64,
}

impl RateLimit {
    /// At most `starts` starts per `period`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `starts` is 0 (use a pause to start nothing) or `period` is
    /// under a millisecond.
    pub fn new(starts: u32, period: Duration) -> Result<RateLimit> {
        if starts == 0 {
            return Err(Error::invalid(
                "rate limit starts",
                "it is 0; pause the queue or park the key to start nothing",
            ));
        }
        let period_ms = duration_ms(period);
        if period_ms == 0 {
            return Err(Error::invalid(
                "rate limit period",
                "it is under a millisecond",
            ));
        }
        Ok(RateLimit { starts, period_ms })
    }

    /// Starts allowed per period.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The period.
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }
}

/// What holds back one queue (no key) or one concurrency key of a queue, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Control {
    /// A queue only: nothing starts until it is resumed.
    pub paused: bool,
    /// Nothing starts before this time.
    pub parked_until: Option<u64>,
    /// Why it was parked (the handler's message).
    pub reason: Option<String>,
    pub limit: Option<RateLimit>,
    /// The current rate window: when it opened, and how many started in it.
    pub window: Option<(u64, u32)>,
    /// A key only: jobs of the key were moved aside (blocked) while it was held back; at this
    /// time the key is passed on, so that they run again.
    pub wake_at: Option<u64>,
    /// A plain (unordered) key only: how many of its jobs may run at once, when more than one.
    pub max_running: Option<u32>,
}

impl Control {
    /// Parks it until `until` with `reason`: a later time extends a park, an earlier one does
    /// not shorten it.
    pub(crate) fn park(&mut self, until: u64, reason: &str) {
        self.parked_until = Some(self.parked_until.map_or(until, |t| t.max(until)));
        self.reason = Some(crate::state::truncate(reason));
    }

    /// Whether it holds nothing back and keeps no state: then it is not stored.
    pub(crate) fn is_empty(&self) -> bool {
        *self == Control::default()
    }

    /// How many jobs may start at `now`; `u32::MAX` when nothing limits it.
    pub(crate) fn allowance(&self, now: u64) -> u32 {
        if self.paused || self.parked_until.is_some_and(|t| t > now) {
            return 0;
        }
        let Some(limit) = self.limit else {
            return u32::MAX;
        };
        match self.window {
            Some((opened, started)) if now < opened.saturating_add(limit.period_ms) => {
                limit.starts.saturating_sub(started)
            }
            _ => limit.starts,
        }
    }

    /// When what holds it back at `now` ends, if it ends by itself (a pause does not).
    pub(crate) fn opens_at(&self, now: u64) -> Option<u64> {
        if self.paused {
            return None;
        }
        let parked = self.parked_until.filter(|&t| t > now);
        let window = match (self.limit, self.window) {
            (Some(limit), Some((opened, started)))
                if started >= limit.starts && now < opened.saturating_add(limit.period_ms) =>
            {
                Some(opened.saturating_add(limit.period_ms))
            }
            _ => None,
        };
        parked.into_iter().chain(window).max()
    }

    /// Counts `n` starts at `now` against the rate window. Call only for as many as
    /// [`Control::allowance`] allowed.
    pub(crate) fn started(&mut self, now: u64, n: u32) {
        let Some(limit) = self.limit else {
            return;
        };
        self.window = match self.window {
            Some((opened, started)) if now < opened.saturating_add(limit.period_ms) => {
                Some((opened, started.saturating_add(n)))
            }
            _ => Some((now, n)),
        };
    }

    /// Forgets what no longer holds anything back at `now`: a park that ended, a rate window
    /// that closed. Returns whether anything changed.
    pub(crate) fn expire(&mut self, now: u64) -> bool {
        let before = self.clone();
        if self.parked_until.is_some_and(|t| t <= now) {
            self.parked_until = None;
            self.reason = None;
        }
        if let (Some(limit), Some((opened, _))) = (self.limit, self.window)
            && now >= opened.saturating_add(limit.period_ms)
        {
            self.window = None;
        }
        if self.limit.is_none() {
            self.window = None;
        }
        *self != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(starts: u32, ms: u64) -> Control {
        Control {
            limit: Some(RateLimit::new(starts, Duration::from_millis(ms)).unwrap()),
            ..Control::default()
        }
    }

    #[test]
    fn a_window_allows_its_starts_then_opens_again_after_its_period() {
        let mut c = limited(3, 1_000);
        assert_eq!(c.allowance(10_000), 3);
        c.started(10_000, 2);
        assert_eq!(c.allowance(10_500), 1);
        c.started(10_500, 1);
        assert_eq!(c.allowance(10_999), 0);
        assert_eq!(c.opens_at(10_999), Some(11_000));
        assert_eq!(c.allowance(11_000), 3);
        c.started(11_200, 1);
        assert_eq!(
            c.window,
            Some((11_200, 1)),
            "a new window opens at its first start"
        );
    }

    #[test]
    fn a_park_holds_everything_until_its_time_and_a_pause_until_resumed() {
        let mut c = Control {
            parked_until: Some(5_000),
            reason: Some("429".into()),
            ..Control::default()
        };
        assert_eq!((c.allowance(4_999), c.opens_at(4_999)), (0, Some(5_000)));
        assert!(c.expire(5_000));
        assert!(c.is_empty());
        assert_eq!(c.allowance(5_000), u32::MAX);
        let paused = Control {
            paused: true,
            ..Control::default()
        };
        assert_eq!((paused.allowance(0), paused.opens_at(0)), (0, None));
    }

    #[test]
    fn bad_limits_are_refused() {
        assert!(RateLimit::new(0, Duration::from_secs(1)).is_err());
        assert!(RateLimit::new(1, Duration::from_micros(999)).is_err());
    }
}
