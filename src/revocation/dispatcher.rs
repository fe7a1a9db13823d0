//! The dispatcher: rounds of deciding queued candidates and claiming due findings within each
//! installation's concurrency cap and circuit breaker, a supervised task per claimed finding, and
//! the housekeeping of pulls no one acknowledged. A task that panics is caught here (as crates.io's
//! background worker does): counted, audited, its finding given back with an attempt counted (or
//! failed once attempts run out), its lease and breaker probe released. Must not make calls to
//! installations (the worker does).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Engine, decide, limits};
use crate::findings::store::{self as findings, Change, Claimed};
use crate::findings::{FindingState, Outcome, Step};
use crate::platform::audit;
use crate::platform::store::now_ms;

/// Most time between the end of a busy dispatcher round and the next one (see [`round_gap`]).
const MAX_ROUND_GAP: Duration = Duration::from_millis(25);
/// Least time between two dispatcher rounds.
const MIN_ROUND_GAP: Duration = Duration::from_millis(1);
/// Decide batches per dispatcher round, at most.
const DECIDE_BATCHES_PER_ROUND: usize = 4;
/// How often stale pull-mode findings are looked for.
const HOUSEKEEPING: Duration = Duration::from_secs(10);

/// The pause after a round that decided `decided` candidates: proportional to how full its batches
/// were. Under a burst (full batches) rounds are [`MAX_ROUND_GAP`] apart, so the burst is decided in
/// a few batched transactions rather than one round per alert competing with intake for the
/// database; a lone alert waits only [`MIN_ROUND_GAP`] (a fixed 25 ms gap made it wait 12 ms on
/// average at 100 alerts/s, most of its time to revoke).
fn round_gap(decided: usize) -> Duration {
    let share = decided.min(decide::BATCH) as u32;
    (MAX_ROUND_GAP * share / decide::BATCH as u32).max(MIN_ROUND_GAP)
}

impl Engine {
    /// Runs the dispatcher until `stop` flips.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut housekeeping = std::time::Instant::now();
        loop {
            let decided = match self.round().await {
                Ok(decided) => decided,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "revocation round failed; retrying");
                    decide::BATCH
                }
            };
            if housekeeping.elapsed() >= HOUSEKEEPING {
                housekeeping = std::time::Instant::now();
                if let Err(e) = self.expire_pulls().await {
                    tracing::warn!(error = %format!("{e:#}"), "cannot expire pulls");
                }
            }
            tokio::time::sleep(round_gap(decided)).await;
            // A round that filled every batch left more to decide: go on without waiting.
            if decided < DECIDE_BATCHES_PER_ROUND * decide::BATCH {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.tuning.poll) => {}
                    _ = stop.changed() => {}
                }
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// One round: decide queued candidates, then dispatch due findings. Returns how many
    /// candidates it decided.
    pub async fn round(self: &Arc<Self>) -> anyhow::Result<usize> {
        let all = self.read_installations(false).await?;
        // A bounded number of batches per round, so a backlog (a 100,000-token alert) cannot keep
        // the round from dispatching what was already decided; claims take the lowest priorities
        // first, so a token arriving behind that backlog is decided in the next round.
        let mut decided = 0;
        for _ in 0..DECIDE_BATCHES_PER_ROUND {
            let batch = decide::decide_batch(self).await?;
            decided += batch;
            if batch < decide::BATCH {
                break;
            }
        }
        // Pull-mode installations too: their acknowledged findings may await a notification.
        for installation in all.iter() {
            self.dispatch(installation).await?;
        }
        Ok(decided)
    }

    /// Fails loudly the pull-mode findings no one acknowledged within `max_age`.
    async fn expire_pulls(&self) -> anyhow::Result<()> {
        const REASON: &str = "not acknowledged within max_age_hours";
        let now = now_ms();
        let cutoff = now - self.tuning.max_age.as_millis() as i64;
        for (id, installation) in findings::unacknowledged_before(&self.store, cutoff).await? {
            let mut tx = self.store.begin().await?;
            if !findings::fail_pull(&mut tx, id, REASON, now).await? {
                tx.rollback().await?;
                continue;
            }
            audit::append(
                &mut tx,
                self.store.backend(),
                &format!("worker:{}", self.worker_id),
                "finding.failed",
                &format!("finding:{id}"),
                serde_json::json!({
                    "installation": installation,
                    "from": FindingState::AwaitingPull,
                    "to": FindingState::Failed,
                    "error": REASON,
                }),
            )
            .await?;
            tx.commit().await?;
            self.observer.failed(&installation, Step::Pull.as_str());
            self.observer
                .outcome(Some(&installation), FindingState::Failed.as_str());
        }
        Ok(())
    }

    /// Claims as many due findings of `installation` as it has free call slots, and starts a
    /// supervised task for each.
    async fn dispatch(
        self: &Arc<Self>,
        installation: &crate::installations::Installation,
    ) -> anyhow::Result<()> {
        let limits = self.limits.of(installation);
        let mut slots = match limits.breaker_state() {
            limits::BreakerState::Open => return Ok(()),
            limits::BreakerState::HalfOpen if limits.try_probe() => {
                1.min(limits.concurrency.available_permits())
            }
            limits::BreakerState::HalfOpen => return Ok(()),
            limits::BreakerState::Closed => limits.concurrency.available_permits(),
        };
        // An issuer's tasks wait on its driver (GitHub's batches up to 1,000 tokens), bounded by the
        // issuer's own concurrency: they do not take the process-wide call slots, which would cap
        // a batch at max_in_flight.
        let issuer = crate::installations::is_issuer(installation);
        if !issuer {
            slots = slots.min(self.in_flight.available_permits());
        }
        if slots == 0 {
            return Ok(());
        }
        let now = now_ms();
        let claimed = findings::claim(
            &self.store,
            &self.worker_id,
            &installation.id,
            slots,
            now,
            now + self.tuning.lease.as_millis() as i64,
        )
        .await?;
        if claimed.is_empty() {
            limits.release_probe();
        }
        for item in claimed {
            let global = if issuer {
                None
            } else {
                match self.in_flight.clone().try_acquire_owned() {
                    Ok(g) => Some(g),
                    // Another task took the slot meanwhile: the lease lapses and a later round
                    // runs it.
                    Err(_) => continue,
                }
            };
            let Ok(permit) = limits.concurrency.clone().try_acquire_owned() else {
                continue;
            };
            let engine = self.clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                // The finding as last committed, so a panic is answered for its current step.
                let current = Arc::new(Mutex::new(item));
                let task = tokio::spawn(engine.clone().work(current.clone()));
                if let Err(e) = task.await {
                    let message = panic_message(e);
                    let item = current.lock().expect("finding lock").clone();
                    engine.after_panic(&item, &message).await;
                }
                // A probe that ended without an answer must not block the next one.
                if limits.breaker_state() == limits::BreakerState::HalfOpen {
                    limits.release_probe();
                }
                drop((permit, global));
                engine.wake();
            });
        }
        Ok(())
    }

    /// Drives one claimed finding through as many steps as are due now.
    async fn work(self: Arc<Self>, current: Arc<Mutex<Claimed>>) {
        let mut item = current.lock().expect("finding lock").clone();
        loop {
            match self.step(&item).await {
                Ok(Some(next)) => {
                    item = next;
                    *current.lock().expect("finding lock") = item.clone();
                }
                Ok(None) => return,
                Err(e) => {
                    // Storage trouble: the lease lapses and the finding is resumed later.
                    tracing::warn!(finding = item.id, error = %format!("{e:#}"), "finding step failed");
                    return;
                }
            }
        }
    }

    /// A finding's task panicked: count it, audit it, and give the finding back now with the
    /// attempt counted (or fail it when attempts run out), so it neither waits for its lease to
    /// lapse nor panics forever.
    async fn after_panic(&self, item: &Claimed, message: &str) {
        tracing::error!(finding = item.id, state = %item.state, panic = %message, "a finding task panicked");
        self.observer.panicked(&item.installation_id);
        let now = now_ms();
        let attempts = item.attempts + 1;
        let reason = format!("worker panicked: {message}");
        let step = item.state.step().unwrap_or(Step::Notify);
        let recorded = async {
            let mut tx = self.store.begin().await?;
            let failed = attempts >= i64::from(self.tuning.max_attempts);
            if failed {
                let outcome = match item.state {
                    // Revoked already; only the notification is given up.
                    FindingState::Notifying => item.outcome.unwrap_or(Outcome::Revoked),
                    _ => Outcome::Failed(step),
                };
                let change = Change::given_up(outcome, reason.clone(), attempts);
                if !findings::advance(&mut tx, item, &self.worker_id, &change, now).await? {
                    tx.rollback().await?;
                    return anyhow::Ok(());
                }
            }
            audit::append(
                &mut tx,
                self.store.backend(),
                &format!("worker:{}", self.worker_id),
                "finding.panicked",
                &format!("finding:{}", item.id),
                serde_json::json!({
                    "installation": item.installation_id,
                    "state": item.state,
                    "attempts": attempts,
                    "error": reason,
                    "failed": failed,
                }),
            )
            .await?;
            tx.commit().await?;
            if failed {
                self.observer.failed(&item.installation_id, step.as_str());
            } else {
                let delay = limits::backoff(attempts as u32, None);
                findings::retry_at(
                    &self.store,
                    item,
                    &self.worker_id,
                    attempts,
                    now + delay.as_millis() as i64,
                    &reason,
                    now,
                )
                .await?;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = recorded {
            // The lease lapses and the finding is resumed then.
            tracing::error!(finding = item.id, error = %format!("{e:#}"), "cannot record a panicked finding task");
        }
    }
}

/// What a panicked (or cancelled) task said, for the audit log. Panic messages are Spillway's own
/// code's text, never a token (tokens are only ever held as `TokenSecret`).
fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return "task cancelled".into();
    }
    let payload = e.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".into());
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_gap_grows_with_how_full_the_batches_were() {
        assert_eq!(round_gap(0), MIN_ROUND_GAP);
        assert_eq!(round_gap(1), MIN_ROUND_GAP);
        assert!(round_gap(decide::BATCH / 2) > MIN_ROUND_GAP);
        assert!(round_gap(decide::BATCH / 2) < MAX_ROUND_GAP);
        assert_eq!(round_gap(decide::BATCH), MAX_ROUND_GAP);
        assert_eq!(round_gap(50 * decide::BATCH), MAX_ROUND_GAP);
        let gaps: Vec<Duration> = (0..=decide::BATCH).map(round_gap).collect();
        assert!(gaps.windows(2).all(|w| w[0] <= w[1]));
    }

    #[tokio::test]
    async fn a_panic_message_is_read_from_the_join_error() {
        let e = tokio::spawn(async { panic!("boom at step") })
            .await
            .unwrap_err();
        assert_eq!(panic_message(e), "boom at step");
        let e = tokio::spawn(async { std::panic::panic_any(7u8) })
            .await
            .unwrap_err();
        assert_eq!(panic_message(e), "a non-text panic");
    }
}
