//! Per-installation limits, per replica: a GCRA rate limiter (governor) kept under the declared
//! rate, a concurrency cap, and a circuit breaker that stops calls to an installation that keeps
//! failing and lets one probe through after a cooldown.
//!
//! In memory only: must not import storage or HTTP.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use crate::installations::Installation;

/// Spillway stays under this share of an installation's declared rate, and uses half its burst, so
/// network jitter never makes the installation see more than it declared.
pub const RATE_MARGIN: f64 = 0.9;
/// The breaker looks at an installation's last `BREAKER_WINDOW` answers and opens when at least
/// `BREAKER_THRESHOLD` of them failed: an installation failing half its calls is flaky, not down,
/// and retries with backoff serve it better than a pause (a run of consecutive failures would trip
/// a breaker there every few hundred calls).
pub const BREAKER_WINDOW: usize = 20;
pub const BREAKER_THRESHOLD: usize = 18;
const BREAKER_MIN_COOLDOWN: Duration = Duration::from_secs(1);
const BREAKER_MAX_COOLDOWN: Duration = Duration::from_secs(30);
/// A probe with no answer after this long no longer blocks the next.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Breaker state, for metrics and claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Breaker {
    /// The last answers, newest last: true = failed.
    recent: std::collections::VecDeque<bool>,
    open_until: Option<Instant>,
    cooldown: Duration,
    /// Set by a `Retry-After`: no calls until then, breaker untouched.
    paused_until: Option<Instant>,
    /// A half-open probe call is out (since when): no other call until it answers, or until it
    /// is clearly lost (a probe that was never sent or whose task ended without an answer).
    probe_out: Option<Instant>,
}

/// One installation's limits.
pub struct InstallationLimits {
    pub limiter: DefaultDirectRateLimiter,
    pub concurrency: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
    version: i64,
}

impl InstallationLimits {
    /// `replicas`: how many Spillway replicas share the installation's quota.
    fn new(installation: &Installation, replicas: u32) -> Self {
        let replicas = replicas.max(1);
        let rate = (installation.spec.rate_per_sec * RATE_MARGIN / f64::from(replicas)).max(0.001);
        let burst =
            NonZeroU32::new((installation.spec.burst / 2 / replicas).max(1)).expect("at least 1");
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))
            .expect("a positive period")
            .allow_burst(burst);
        InstallationLimits {
            limiter: RateLimiter::direct(quota),
            concurrency: Arc::new(Semaphore::new(
                (installation.spec.concurrency / replicas).max(1) as usize,
            )),
            breaker: Mutex::new(Breaker {
                recent: std::collections::VecDeque::with_capacity(BREAKER_WINDOW),
                open_until: None,
                cooldown: BREAKER_MIN_COOLDOWN,
                paused_until: None,
                probe_out: None,
            }),
            version: installation.updated_at,
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        let b = self.breaker.lock().expect("breaker lock");
        let now = Instant::now();
        if b.paused_until.is_some_and(|t| now < t) {
            return BreakerState::Open;
        }
        match b.open_until {
            None => BreakerState::Closed,
            Some(t) if now < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// How long until calls may go out again, when the breaker is open or calls are paused.
    pub fn open_for(&self) -> Option<Duration> {
        let b = self.breaker.lock().expect("breaker lock");
        let now = Instant::now();
        [b.open_until, b.paused_until]
            .into_iter()
            .flatten()
            .filter_map(|t| t.checked_duration_since(now))
            .max()
    }

    /// In the half-open state, admits one probe call at a time.
    pub fn try_probe(&self) -> bool {
        let mut b = self.breaker.lock().expect("breaker lock");
        if b.probe_out.is_some_and(|t| t.elapsed() < PROBE_TIMEOUT) {
            return false;
        }
        b.probe_out = Some(Instant::now());
        true
    }

    /// Lets the next probe go: the last one ended without an answer (nothing was due, or its
    /// task gave the finding back before calling).
    pub fn release_probe(&self) {
        self.breaker.lock().expect("breaker lock").probe_out = None;
    }

    /// Pauses calls for `wait` (the installation answered with `Retry-After`), without counting a
    /// failure or lengthening the breaker's cooldown.
    pub fn pause(&self, wait: Duration) {
        let mut b = self.breaker.lock().expect("breaker lock");
        let until = Instant::now() + wait;
        if b.paused_until.is_none_or(|t| t < until) {
            b.paused_until = Some(until);
        }
    }

    /// Records a call's result: a success closes the breaker; `BREAKER_THRESHOLD` failures among
    /// the last `BREAKER_WINDOW` answers (or a failed half-open probe) open it, for twice as long
    /// each time.
    pub fn record(&self, success: bool) {
        let mut b = self.breaker.lock().expect("breaker lock");
        b.probe_out = None;
        if b.recent.len() == BREAKER_WINDOW {
            b.recent.pop_front();
        }
        b.recent.push_back(!success);
        if success {
            if b.open_until.is_some() {
                b.recent.clear();
            }
            b.open_until = None;
            b.cooldown = BREAKER_MIN_COOLDOWN;
            return;
        }
        let now = Instant::now();
        if b.open_until.is_some_and(|t| now < t) {
            // A call started before the breaker opened: it says nothing new.
            return;
        }
        let probing = b.open_until.is_some();
        let failures = b.recent.iter().filter(|f| **f).count();
        if probing || failures >= BREAKER_THRESHOLD {
            let cooldown = b.cooldown;
            b.open_until = Some(now + cooldown);
            b.cooldown = (cooldown * 2).min(BREAKER_MAX_COOLDOWN);
            tracing::warn!(
                cooldown_ms = cooldown.as_millis() as u64,
                "circuit breaker opened for an installation"
            );
        }
    }
}

/// Limits of every installation this replica calls.
#[derive(Default)]
pub struct Limits {
    map: Mutex<HashMap<String, Arc<InstallationLimits>>>,
    replicas: u32,
}

impl Limits {
    pub fn new(replicas: u32) -> Limits {
        Limits {
            map: Mutex::default(),
            replicas,
        }
    }

    /// The limits of `installation`, rebuilt when its registration changed.
    pub fn of(&self, installation: &Installation) -> Arc<InstallationLimits> {
        let mut map = self.map.lock().expect("limits lock");
        match map.get(&installation.id) {
            Some(l) if l.version == installation.updated_at => l.clone(),
            _ => {
                let l = Arc::new(InstallationLimits::new(installation, self.replicas));
                map.insert(installation.id.clone(), l.clone());
                l
            }
        }
    }

    /// Each installation's breaker state.
    pub fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        let map = self.map.lock().expect("limits lock");
        map.iter()
            .map(|(id, l)| (id.clone(), l.breaker_state()))
            .collect()
    }
}

/// Full-jitter exponential backoff: uniform in [0, min(60 s, 100 ms * 2^attempt)], but never sooner
/// than the installation's `Retry-After`.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(60);
    let ceiling = BASE.saturating_mul(1u32 << attempt.min(20)).min(CAP);
    let jitter = ceiling.mul_f64(rand::random::<f64>());
    retry_after.map_or(jitter, |r| r.max(jitter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_honours_retry_after() {
        for attempt in 0..30 {
            let d = backoff(attempt, None);
            assert!(d <= Duration::from_secs(60), "{attempt}: {d:?}");
        }
        assert!(backoff(0, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
        // Jitter spreads retries: 50 draws are not all equal.
        let draws: std::collections::BTreeSet<u128> =
            (0..50).map(|_| backoff(6, None).as_micros()).collect();
        assert!(draws.len() > 10);
    }
}

#[cfg(test)]
mod breaker_tests {
    use super::*;

    fn limits() -> InstallationLimits {
        let spec: crate::installations::Spec = serde_json::from_value(serde_json::json!({
            "name": "x", "token_types": ["t"], "revoke_url": "https://x.example/r"
        }))
        .unwrap();
        InstallationLimits::new(
            &Installation {
                id: "ins_1".into(),
                spec,
                created_at: 0,
                updated_at: 0,
                secret_created_at: 0,
                live_secrets: 1,
            },
            1,
        )
    }

    #[test]
    fn the_breaker_opens_when_most_recent_calls_fail_and_a_success_closes_it() {
        let l = limits();
        // Flaky (every other call fails): never opens.
        for i in 0..200 {
            l.record(i % 2 == 0);
        }
        assert_eq!(l.breaker_state(), BreakerState::Closed);
        // Down: opens once the window is mostly failures.
        for _ in 0..BREAKER_WINDOW {
            l.record(true);
        }
        for _ in 0..BREAKER_THRESHOLD - 1 {
            l.record(false);
        }
        assert_eq!(l.breaker_state(), BreakerState::Closed);
        l.record(false);
        assert_eq!(l.breaker_state(), BreakerState::Open);
        assert!(l.open_for().unwrap() <= BREAKER_MIN_COOLDOWN);
        // Calls already in flight that fail now do not extend the pause.
        for _ in 0..5 {
            l.record(false);
        }
        assert!(l.open_for().unwrap() <= BREAKER_MIN_COOLDOWN);
        l.record(true);
        assert_eq!(l.breaker_state(), BreakerState::Closed);
        l.record(false);
        assert_eq!(
            l.breaker_state(),
            BreakerState::Closed,
            "the window starts afresh"
        );
    }
}
