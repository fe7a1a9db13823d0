//! The reference installation's declared rate limit, enforced as GCRA (the generic cell rate
//! algorithm, a token bucket kept as one "theoretical arrival time"): `rate` calls a second on
//! average, `burst` of them at once. A refused call learns exactly how long to wait, which becomes
//! its `Retry-After`. No I/O; callers pass the clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a rate limit cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("--rate-limit must be a positive number of calls per second (at least one a day)")]
    Rate,
    #[error("--burst must be at least 1")]
    Burst,
}

/// One shared limit for every caller.
#[derive(Debug)]
pub struct Gcra {
    /// Time one call "costs": 1 / rate.
    interval: Duration,
    /// How far ahead of now the theoretical arrival time may run: interval × (burst − 1).
    tolerance: Duration,
    /// When the bucket is next empty; `None` until the first call.
    tat: Mutex<Option<Instant>>,
}

impl Gcra {
    pub fn new(rate_per_sec: f64, burst: u32) -> Result<Gcra, RateError> {
        if !(rate_per_sec.is_finite() && rate_per_sec >= 1.0 / 86_400.0) {
            return Err(RateError::Rate);
        }
        if burst == 0 {
            return Err(RateError::Burst);
        }
        let interval = Duration::from_secs_f64(1.0 / rate_per_sec);
        Ok(Gcra {
            interval,
            tolerance: interval.checked_mul(burst - 1).unwrap_or(Duration::MAX),
            tat: Mutex::new(None),
        })
    }

    /// Admits a call arriving at `now`, or says how long until one would be admitted.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        let mut tat = self
            .tat
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let start = tat.map_or(now, |t| t.max(now));
        let ahead = start - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        *tat = Some(start + self.interval);
        Ok(())
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

    #[test]
    fn a_burst_passes_at_once_then_calls_are_spaced_by_the_rate() {
        let limit = Gcra::new(2.0, 3).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limit.check(t0), Ok(()));
        }
        assert_eq!(limit.check(t0), Err(Duration::from_millis(500)));
        // Half a second later one more call fits, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(limit.check(t1), Ok(()));
        assert_eq!(limit.check(t1), Err(Duration::from_millis(500)));
        // A long pause refills the bucket to the burst, no further.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limit.check(t2), Ok(()));
        }
        assert!(limit.check(t2).is_err());
    }

    #[test]
    fn a_refused_call_has_no_effect_on_the_bucket() {
        let limit = Gcra::new(1.0, 1).unwrap();
        let t0 = Instant::now();
        assert_eq!(limit.check(t0), Ok(()));
        for _ in 0..100 {
            assert!(limit.check(t0).is_err());
        }
        assert_eq!(limit.check(t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn bad_settings_and_retry_after_rounding() {
        assert_eq!(Gcra::new(0.0, 1).unwrap_err(), RateError::Rate);
        assert_eq!(Gcra::new(f64::NAN, 1).unwrap_err(), RateError::Rate);
        assert_eq!(Gcra::new(f64::INFINITY, 1).unwrap_err(), RateError::Rate);
        assert_eq!(Gcra::new(1.0, 0).unwrap_err(), RateError::Burst);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
