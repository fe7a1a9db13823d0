//! The worker step: one claimed finding, one signed call (verify, revoke or notify) under the
//! installation's limits, its answer classified into the finding's next state, and that state
//! committed with its audit entry, fenced by the lease. Every state it moves to is a
//! [`FindingState`]; the findings store refuses a move the lifecycle does not allow. Must not
//! claim findings or spawn tasks (the dispatcher does).

use std::time::Duration;

use anyhow::Context as _;

use super::calls::{self, Answer};
use super::{Engine, limits};
use crate::findings::store::{self as findings, Change, Claimed};
use crate::findings::{FindingState, Label, Outcome, Payload, Step, payload};
use crate::installations::Installation;
use crate::installations::contract::{self, RevokeStatus, VerifyStatus};
use crate::platform::audit;
use crate::platform::store::now_ms;

/// What a step's answer leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// Another worker step, due now, with the outcome so far (the revoke's, for the notification).
    Continue(FindingState, Option<Outcome>, Option<Label>),
    /// A terminal outcome.
    Done(Outcome),
    /// The answer was unknown: retry later.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The call may not be made (or the worker could not make it): give up now, naming why.
    Refused(String),
}

/// The next state after a verify answer.
fn after_verify(status: VerifyStatus) -> Next {
    match status {
        VerifyStatus::Active => {
            Next::Continue(FindingState::Revoking, None, Some(Label::TruePositive))
        }
        VerifyStatus::Revoked => Next::Done(Outcome::AlreadyRevoked),
        VerifyStatus::Inactive => Next::Done(Outcome::Inactive),
        VerifyStatus::UnknownToken => Next::Done(Outcome::UnknownToken),
    }
}

/// The next state after a revoke answer (notify next if the installation wants notifications).
fn after_revoke(status: RevokeStatus, notifies: bool) -> Next {
    let outcome = match status {
        RevokeStatus::Revoked => Outcome::Revoked,
        RevokeStatus::AlreadyRevoked => Outcome::AlreadyRevoked,
        RevokeStatus::UnknownToken => return Next::Done(Outcome::UnknownToken),
    };
    if notifies {
        Next::Continue(FindingState::Notifying, Some(outcome), outcome.label())
    } else {
        Next::Done(outcome)
    }
}

impl Engine {
    /// One call and its committed outcome. Returns the finding when its next step is due at once.
    pub(super) async fn step(&self, item: &Claimed) -> anyhow::Result<Option<Claimed>> {
        let all = self.installations();
        let Some(installation) = all.iter().find(|i| i.id == item.installation_id) else {
            // Removed meanwhile (removal fails its findings).
            return Ok(None);
        };
        let limits = self.limits.of(installation);
        if let Some(wait) = limits.open_for() {
            self.give_back(item, wait).await?;
            return Ok(None);
        }
        if let Err(not_until) = limits.limiter.check() {
            // Over the installation's rate: give the finding back until the limiter has room,
            // instead of waiting while holding its lease.
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            self.observer.rate_limit_wait(&installation.id, wait);
            self.give_back(item, wait).await?;
            return Ok(None);
        }
        let Some(sealed) = &item.sealed_token else {
            anyhow::bail!(
                "finding {} has no sealed token in state {}",
                item.id,
                item.state
            );
        };
        let payload = Payload::open(
            &self.keys.sealing,
            &payload::owner(&item.installation_id, &item.fingerprint),
            sealed,
        )?;
        if crate::installations::is_issuer(installation) {
            let next = match item.state.step() {
                Some(Step::Verify) => self.issuer_verify(installation, &limits, &payload).await,
                _ => self.issuer_step(installation, &limits, &payload).await,
            };
            return self.commit(item, installation, next).await;
        }
        let secrets = self.secrets_of(installation).await?;
        let started = std::time::Instant::now();
        let finding_id = format!("fnd_{}", item.id);
        let step = item
            .state
            .step()
            .filter(|s| *s != Step::Pull)
            .ok_or_else(|| {
                anyhow::anyhow!("finding {} claimed in state {}", item.id, item.state)
            })?;
        let key = self.idempotency_key(step.as_str(), &installation.id, &item.fingerprint);
        let next = match step {
            Step::Verify => {
                let url = installation.spec.verify_url.as_deref().unwrap_or_default();
                let body = contract::VerifyRequest {
                    finding_id,
                    token_type: item.token_type.clone(),
                    token_sha256: payload.sha256_hex(),
                    token: payload.raw().cloned(),
                };
                crate::platform::failpoint::hit("verify.before_call");
                let answer = calls::verify(&self.outbound, url, &secrets, &key, &body).await;
                crate::platform::failpoint::hit("verify.after_call");
                self.classify(step, installation, &limits, started, answer)
                    .map_known(after_verify)
            }
            Step::Revoke => {
                let url = installation.spec.revoke_url.as_deref().unwrap_or_default();
                let body = contract::RevokeRequest {
                    finding_id,
                    token_type: item.token_type.clone(),
                    token_sha256: payload.sha256_hex(),
                    token: payload.raw().cloned(),
                    found_at: item.found_at.clone(),
                    source: item.source.clone(),
                    received_at: contract::rfc3339_ms(item.received_at),
                };
                crate::platform::failpoint::hit("revoke.before_call");
                let answer = calls::revoke(&self.outbound, url, &secrets, &key, &body).await;
                crate::platform::failpoint::hit("revoke.after_call");
                let notifies = installation.spec.notify_url.is_some();
                self.classify(step, installation, &limits, started, answer)
                    .map_known(|status| after_revoke(status, notifies))
            }
            Step::Notify | Step::Pull => {
                let url = installation.spec.notify_url.as_deref().unwrap_or_default();
                let outcome = item.outcome.unwrap_or(Outcome::Revoked);
                let body = contract::Notification {
                    event: "token.revoked".into(),
                    finding_id,
                    token_type: item.token_type.clone(),
                    token_sha256: payload.sha256_hex(),
                    found_at: item.found_at.clone(),
                    source: item.source.clone(),
                    received_at: contract::rfc3339_ms(item.received_at),
                    outcome: outcome.as_str().to_owned(),
                    decided_at: contract::rfc3339_ms(item.decided_at.unwrap_or_else(now_ms)),
                };
                crate::platform::failpoint::hit("notify.before_call");
                let answer = calls::notify(&self.outbound, url, &secrets, &key, &body).await;
                crate::platform::failpoint::hit("notify.after_call");
                self.classify(step, installation, &limits, started, answer)
                    .map_known(|()| Next::Done(outcome))
            }
        };
        self.commit(item, installation, next).await
    }

    /// An issuer's liveness check: its "who am I" call, read as an installation's verify answer
    /// would be. Live goes on to the revoke; dead ends the finding `unknown_token` (its audit
    /// entry written with the state) without a revoke call; anything else is retried like an
    /// unknown verify answer.
    async fn issuer_verify(
        &self,
        installation: &Installation,
        limits: &limits::InstallationLimits,
        payload: &Payload,
    ) -> Next {
        use crate::issuers::self_revoke::Liveness;
        let Some(token) = payload.raw() else {
            return Next::Refused("no raw token to send to the issuer".into());
        };
        let started = std::time::Instant::now();
        crate::platform::failpoint::hit("verify.before_call");
        let answer = match self.issuers.whoami(&installation.id, token).await {
            Some(Liveness::Live) => Answer::Known(VerifyStatus::Active),
            // As for a revoke's "gone": the issuer does not know the token, which may be live
            // elsewhere.
            Some(Liveness::Dead) => Answer::Known(VerifyStatus::UnknownToken),
            Some(Liveness::Unknown {
                reason,
                retry_after,
            }) => Answer::Unknown {
                reason,
                retry_after,
            },
            Some(Liveness::Refused { reason }) => Answer::Refused { reason },
            // No "who am I" call (the issuer changed since the finding was decided): nothing to
            // check, so on to the revoke, which reads the issuer's own answer.
            None => return Next::Continue(FindingState::Revoking, None, None),
        };
        crate::platform::failpoint::hit("verify.after_call");
        self.classify(Step::Verify, installation, limits, started, answer)
            .map_known(after_verify)
    }

    /// An issuer's finding: the issuer's driver revokes the token (GitHub's API batches it with
    /// others); its answer moves the finding as a contract revoke's would. Issuers get no
    /// notification call.
    async fn issuer_step(
        &self,
        installation: &Installation,
        limits: &limits::InstallationLimits,
        payload: &Payload,
    ) -> Next {
        let Some(token) = payload.raw() else {
            return Next::Refused("no raw token to send to the issuer".into());
        };
        let started = std::time::Instant::now();
        crate::platform::failpoint::hit("revoke.before_call");
        let answer = match self.issuers.revoke(&installation.id, token).await {
            Some(crate::issuers::Outcome::Accepted) => Answer::Known(RevokeStatus::Revoked),
            // "Not a valid token here" is no proof it was revoked: the same answer comes for a
            // token of another org, region or self-hosted instance (recorded as unknown to the
            // issuer, with no label). Unless this host said the token was live: a finding of an
            // issuer with a "who am I" call reaches the revoke only after a live answer, so it
            // has been revoked since (by us before a crash, or by its owner).
            Some(crate::issuers::Outcome::Gone) if installation.spec.verify_url.is_some() => {
                Answer::Known(RevokeStatus::AlreadyRevoked)
            }
            Some(crate::issuers::Outcome::Gone) => Answer::Known(RevokeStatus::UnknownToken),
            Some(crate::issuers::Outcome::RetryLater {
                reason,
                retry_after,
            }) => Answer::Unknown {
                reason,
                retry_after,
            },
            Some(crate::issuers::Outcome::Refused { reason }) => Answer::Refused { reason },
            None => Answer::Refused {
                reason: format!("{} is not enabled", installation.id),
            },
        };
        crate::platform::failpoint::hit("revoke.after_call");
        self.classify(Step::Revoke, installation, limits, started, answer)
            .map_known(|status| after_revoke(status, false))
    }

    /// Records the answer with the installation's breaker and the metrics.
    fn classify<T>(
        &self,
        step: Step,
        installation: &Installation,
        limits: &limits::InstallationLimits,
        started: std::time::Instant,
        answer: Answer<T>,
    ) -> Classified<T> {
        let (outcome, classified) = match answer {
            Answer::Known(v) => {
                limits.record(true);
                ("answered", Classified::Known(v))
            }
            Answer::Unknown {
                reason,
                retry_after,
            } => {
                // An installation that says when to come back is not failing, but is paused:
                // no call to it until then, for any finding.
                match retry_after {
                    Some(wait) => limits.pause(wait),
                    None => limits.record(false),
                }
                (
                    "unknown",
                    Classified::Other(Next::Retry {
                        reason,
                        retry_after,
                    }),
                )
            }
            // Not the installation failing: nothing was sent, so the breaker is untouched.
            Answer::Refused { reason } => (
                "refused",
                Classified::Other(Next::Refused(format!("refused: {reason}"))),
            ),
        };
        self.observer
            .call(step.as_str(), &installation.id, outcome, started.elapsed());
        classified
    }

    /// Puts a finding back for `wait` without counting an attempt.
    pub(super) async fn give_back(&self, item: &Claimed, wait: Duration) -> anyhow::Result<()> {
        findings::give_back(
            &self.store,
            item,
            &self.worker_id,
            now_ms() + wait.as_millis() as i64,
        )
        .await
    }

    /// Commits a step's outcome with its audit entry, fenced by this worker's lease. Returns the
    /// finding when its next step is due at once.
    pub(super) async fn commit(
        &self,
        item: &Claimed,
        installation: &Installation,
        next: Next,
    ) -> anyhow::Result<Option<Claimed>> {
        let now = now_ms();
        let step = item.state.step().unwrap_or(Step::Notify);
        let change = match &next {
            Next::Continue(to, outcome, label) => Change {
                to: *to,
                outcome: outcome.or(item.outcome),
                label: *label,
                error: None,
                attempts: 0,
                sealed_token: item.sealed_token.clone(),
                lease_until: Some(now + self.tuning.lease.as_millis() as i64),
                decided: item.state == FindingState::Revoking,
            },
            Next::Done(outcome) => Change {
                to: FindingState::ending(*outcome),
                outcome: Some(*outcome),
                label: outcome.label(),
                error: None,
                attempts: 0,
                sealed_token: None,
                lease_until: None,
                decided: item.state == FindingState::Revoking,
            },
            Next::Retry { reason, .. } | Next::Refused(reason) => {
                let attempts = item.attempts + 1;
                let too_old = now - item.created_at > self.tuning.max_age.as_millis() as i64;
                if let Next::Retry { retry_after, .. } = &next
                    && attempts < i64::from(self.tuning.max_attempts)
                    && !too_old
                {
                    let delay = limits::backoff(attempts as u32, *retry_after);
                    findings::retry_at(
                        &self.store,
                        item,
                        &self.worker_id,
                        attempts,
                        now + delay.as_millis() as i64,
                        reason,
                        now,
                    )
                    .await?;
                    return Ok(None);
                }
                if item.state == FindingState::Notifying {
                    // The token is revoked; only the notification gave up. Keep the outcome.
                    let outcome = item.outcome.unwrap_or(Outcome::Revoked);
                    Change::given_up(
                        outcome,
                        format!("notification abandoned: {reason}"),
                        attempts,
                    )
                } else {
                    self.observer.failed(&installation.id, step.as_str());
                    Change::given_up(Outcome::Failed(step), reason.clone(), attempts)
                }
            }
        };
        // Revoked by this step: the outcome is what the revoke said.
        let revoked_now = change.decided
            && matches!(
                change.outcome,
                Some(Outcome::Revoked | Outcome::AlreadyRevoked)
            );
        let change = Change {
            decided: revoked_now,
            ..change
        };
        let mut tx = self.store.begin().await?;
        if !findings::advance(&mut tx, item, &self.worker_id, &change, now).await? {
            // The lease lapsed and another worker owns the finding now: it repeats this step with
            // the same idempotency key, so nothing is lost or doubled.
            tx.rollback().await?;
            return Ok(None);
        }
        let abandoned = change.error.is_some() && change.to != FindingState::Failed;
        let action = if abandoned {
            "finding.notify_abandoned".to_owned()
        } else {
            format!("finding.{}", change.to)
        };
        audit::append(
            &mut tx,
            self.store.backend(),
            &format!("worker:{}", self.worker_id),
            &action,
            &format!("finding:{}", item.id),
            serde_json::json!({
                "installation": item.installation_id,
                "from": item.state,
                "to": change.to,
                "outcome": change.outcome.map(Outcome::as_str),
                "attempts": change.attempts,
                "error": change.error,
            }),
        )
        .await?;
        tx.commit().await.context("cannot commit finding state")?;
        if revoked_now {
            let ttr = Duration::from_millis((now - item.received_at).max(0) as u64);
            self.observer.revoked(&installation.id, ttr);
        }
        if change.to.is_terminal() {
            self.observer
                .outcome(Some(&installation.id), change.to.as_str());
            return Ok(None);
        }
        Ok(Some(Claimed {
            state: change.to,
            outcome: change.outcome,
            sealed_token: change.sealed_token,
            attempts: 0,
            decided_at: if revoked_now {
                Some(now)
            } else {
                item.decided_at
            },
            ..item.clone()
        }))
    }
}

/// A classified answer: known (to be mapped by the step), or already a [`Next`].
pub(super) enum Classified<T> {
    Known(T),
    Other(Next),
}

impl<T> Classified<T> {
    fn map_known(self, f: impl FnOnce(T) -> Next) -> Next {
        match self {
            Classified::Known(v) => f(v),
            Classified::Other(next) => next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::lifecycle::allowed;

    #[test]
    fn every_answer_leads_to_an_allowed_state() {
        for status in [
            VerifyStatus::Active,
            VerifyStatus::Revoked,
            VerifyStatus::Inactive,
            VerifyStatus::UnknownToken,
        ] {
            let to = match after_verify(status) {
                Next::Continue(to, _, _) => to,
                Next::Done(outcome) => FindingState::ending(outcome),
                other => panic!("{other:?}"),
            };
            assert!(allowed(FindingState::Verifying, to), "{status:?} -> {to}");
        }
        for notifies in [true, false] {
            for status in [
                RevokeStatus::Revoked,
                RevokeStatus::AlreadyRevoked,
                RevokeStatus::UnknownToken,
            ] {
                let to = match after_revoke(status, notifies) {
                    Next::Continue(to, outcome, _) => {
                        assert!(matches!(
                            outcome,
                            Some(Outcome::Revoked | Outcome::AlreadyRevoked)
                        ));
                        to
                    }
                    Next::Done(outcome) => FindingState::ending(outcome),
                    other => panic!("{other:?}"),
                };
                assert!(allowed(FindingState::Revoking, to), "{status:?} -> {to}");
                assert!(
                    notifies == (to == FindingState::Notifying)
                        || status == RevokeStatus::UnknownToken
                );
            }
        }
        assert_eq!(
            after_verify(VerifyStatus::Active),
            Next::Continue(FindingState::Revoking, None, Some(Label::TruePositive))
        );
    }
}
