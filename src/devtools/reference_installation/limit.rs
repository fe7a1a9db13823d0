//! The reference installation's declared rate limit: governor's GCRA with `rate` calls a second
//! on average and `burst` at once. A refused call learns how long to wait, which becomes its
//! `Retry-After`. Generic over the clock so tests can move time by hand.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Why a rate limit cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("--rate-limit must be a positive number of calls per second (at least one a day)")]
    Rate,
    #[error("--burst must be at least 1")]
    Burst,
}

/// One shared limit for every caller.
pub struct Limit<C: Clock = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl Limit<DefaultClock> {
    pub fn new(rate_per_sec: f64, burst: u32) -> Result<Self, RateError> {
        Limit::with_clock(rate_per_sec, burst, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limit<C> {
    pub fn with_clock(rate_per_sec: f64, burst: u32, clock: C) -> Result<Self, RateError> {
        if !(rate_per_sec.is_finite() && rate_per_sec >= 1.0 / 86_400.0) {
            return Err(RateError::Rate);
        }
        let burst = NonZeroU32::new(burst).ok_or(RateError::Burst)?;
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate_per_sec))
            .ok_or(RateError::Rate)?
            .allow_burst(burst);
        Ok(Limit {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        })
    }

    /// Admits a call now, or says how long until one would be admitted.
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// `Retry-After` in whole seconds: the wait rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn a_burst_passes_at_once_then_calls_are_spaced_by_the_rate() {
        let clock = FakeRelativeClock::default();
        let limit = Limit::with_clock(2.0, 3, clock.clone()).unwrap();
        for _ in 0..3 {
            assert_eq!(limit.check(), Ok(()));
        }
        assert_eq!(limit.check(), Err(Duration::from_millis(500)));
        // Half a second later one more call fits, and only one.
        clock.advance(Duration::from_millis(500));
        assert_eq!(limit.check(), Ok(()));
        assert_eq!(limit.check(), Err(Duration::from_millis(500)));
        // A long pause refills the bucket to the burst, no further.
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(limit.check(), Ok(()));
        }
        assert!(limit.check().is_err());
    }

    #[test]
    fn bad_settings_and_retry_after_rounding() {
        assert_eq!(Limit::new(0.0, 1).err(), Some(RateError::Rate));
        assert_eq!(Limit::new(f64::NAN, 1).err(), Some(RateError::Rate));
        assert_eq!(Limit::new(1.0, 0).err(), Some(RateError::Burst));
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
