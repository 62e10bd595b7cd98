//! How long a failed job waits before its next attempt: a pure function of the attempt number
//! and a jitter source, so the schedule is unit-testable and reproducible.

use std::time::Duration;

/// How the delay is spread around its exponential value, so that jobs that failed together do
/// not all retry at the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly the exponential value.
    None,
    /// Uniform between zero and the exponential value ("full jitter").
    Full,
    /// Uniform between half the exponential value and all of it: spread, yet never much sooner
    /// than asked. The default.
    #[default]
    Equal,
    /// Uniform between the initial delay and three times the previous delay, capped
    /// ("decorrelated jitter"); grows without a fixed factor.
    Decorrelated,
}

/// A retry schedule: exponential growth from `initial` by `factor`, capped at `max`, with
/// [`Jitter`].
///
/// ```
/// use std::time::Duration;
/// use quern::{Backoff, Jitter};
///
/// let b = Backoff::exponential(Duration::from_secs(30), 2.0, Duration::from_secs(600))
///     .jitter(Jitter::None);
/// assert_eq!(b.delay(1, None, 0), Duration::from_secs(30));
/// assert_eq!(b.delay(3, None, 0), Duration::from_secs(120));
/// assert_eq!(b.delay(20, None, 0), Duration::from_secs(600));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    factor: f64,
    max: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    /// 30 s, doubling, capped at 10 min, equal jitter.
    fn default() -> Self {
        Backoff::exponential(Duration::from_secs(30), 2.0, Duration::from_secs(600))
    }
}

impl Backoff {
    /// `initial` after the first failed attempt, multiplied by `factor` after each further one,
    /// never more than `max`. A factor below 1 is taken as 1. Jitter: [`Jitter::Equal`].
    pub fn exponential(initial: Duration, factor: f64, max: Duration) -> Self {
        let factor = if factor.is_finite() && factor >= 1.0 {
            factor
        } else {
            1.0
        };
        Backoff {
            initial,
            factor,
            max: max.max(initial),
            jitter: Jitter::default(),
        }
    }

    /// The same delay after every failed attempt, without jitter.
    pub fn fixed(delay: Duration) -> Self {
        Backoff::exponential(delay, 1.0, delay).jitter(Jitter::None)
    }

    /// Sets the jitter. Default: [`Jitter::Equal`].
    #[must_use]
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay before the attempt after failed attempt number `attempt` (1-based).
    ///
    /// `previous` is the delay chosen after the attempt before (used by
    /// [`Jitter::Decorrelated`]); `seed` is the jitter source: the same seed gives the same delay.
    pub fn delay(&self, attempt: u32, previous: Option<Duration>, seed: u64) -> Duration {
        let exp = self.exponential_value(attempt);
        let unit = unit_interval(seed);
        let delay = match self.jitter {
            Jitter::None => exp,
            Jitter::Full => exp.mul_f64(unit),
            Jitter::Equal => exp / 2 + (exp / 2).mul_f64(unit),
            Jitter::Decorrelated => {
                let prev = previous.unwrap_or(self.initial);
                let high = prev.saturating_mul(3).max(self.initial);
                self.initial
                    .saturating_add((high - self.initial).mul_f64(unit))
            }
        };
        delay.min(self.max)
    }

    fn exponential_value(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1_000);
        let scale = self
            .factor
            .powi(i32::try_from(exponent).unwrap_or(i32::MAX));
        let secs = self.initial.as_secs_f64() * scale;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

/// A well-mixed number in [0, 1) from `seed` (splitmix64's finalizer).
fn unit_interval(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // The top 53 bits make an exact f64 fraction.
    #[allow(clippy::cast_precision_loss)]
    let f = (z >> 11) as f64 / (1u64 << 53) as f64;
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn default_schedule_doubles_from_thirty_seconds_to_the_ten_minute_cap() {
        let b = Backoff::default().jitter(Jitter::None);
        let got: Vec<u64> = (1..=7).map(|a| b.delay(a, None, 7).as_secs()).collect();
        assert_eq!(got, vec![30, 60, 120, 240, 480, 600, 600]);
    }

    #[test]
    fn equal_jitter_stays_between_half_and_all_of_the_exponential_value() {
        let b = Backoff::default();
        for seed in 0..1_000 {
            let d = b.delay(2, None, seed);
            assert!(d >= secs(30) && d <= secs(60), "seed {seed}: {d:?}");
        }
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let b = Backoff::default().jitter(Jitter::Full);
        let ds: Vec<Duration> = (0..1_000).map(|s| b.delay(3, None, s)).collect();
        assert!(ds.iter().all(|d| *d <= secs(120)));
        assert!(ds.iter().any(|d| *d < secs(20)));
        assert!(ds.iter().any(|d| *d > secs(100)));
    }

    #[test]
    fn decorrelated_jitter_stays_between_initial_and_three_times_previous_under_cap() {
        let b = Backoff::default().jitter(Jitter::Decorrelated);
        for seed in 0..1_000 {
            let d = b.delay(5, Some(secs(100)), seed);
            assert!(d >= secs(30) && d <= secs(300), "seed {seed}: {d:?}");
            assert!(b.delay(9, Some(secs(500)), seed) <= secs(600));
        }
    }

    #[test]
    fn same_seed_gives_same_delay() {
        let b = Backoff::default();
        assert_eq!(b.delay(4, None, 99), b.delay(4, None, 99));
    }

    #[test]
    fn huge_attempt_numbers_saturate_at_the_cap() {
        let b = Backoff::default().jitter(Jitter::None);
        assert_eq!(b.delay(u32::MAX, None, 0), secs(600));
    }

    #[test]
    fn fixed_backoff_never_changes() {
        let b = Backoff::fixed(secs(5));
        assert!((1..10).all(|a| b.delay(a, None, a.into()) == secs(5)));
    }
}
