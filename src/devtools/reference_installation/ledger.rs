//! What the reference installation knows and did: the tokens it issued (by sha256, never the raw
//! token), the answer it gave to each revoke `Idempotency-Key`, what it revoked, the notifications
//! it received, and the counters `/stats` reports. Pure bookkeeping: no I/O, no clock (callers
//! pass the time), so the idempotency rules are tested directly.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::installations::contract::{Notification, RevokeResponse, RevokeStatus, VerifyStatus};

/// `/stats`: every counter since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub tokens_issued: u64,
    /// Calls received on each contract URL, whatever became of them (429 and 401 included).
    pub verify_calls: u64,
    pub revoke_calls: u64,
    pub notify_calls: u64,
    /// Tokens this installation revoked (each at most once).
    pub revocations: u64,
    /// Revoke calls for an already revoked token under a new `Idempotency-Key`: the caller
    /// failed to deduplicate (a correct caller repeats its key).
    pub duplicate_effects: u64,
    /// Notify calls repeating an `Idempotency-Key` already recorded.
    pub duplicate_notifications: u64,
    pub rate_limit_exceeded: u64,
    /// Contract calls refused 401 (missing, stale or wrong Standard Webhooks signature).
    pub bad_signatures: u64,
    /// Calls answered with an injected 5xx, 403 or HTML page (no effect).
    pub injected_failures: u64,
    /// Calls made to hang before answering.
    pub injected_timeouts: u64,
    /// Distinct notifications recorded.
    pub notifications: u64,
    /// Revoke calls reusing an `Idempotency-Key` for a different token (answered 422).
    pub idempotency_conflicts: u64,
}

/// One token this installation issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// Unix seconds after which the installation considers the token inactive.
    pub inactive_after: i64,
    pub revoked: bool,
}

/// One revocation, as `/revocations` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub token_sha256: String,
    pub idempotency_key: String,
    pub at_ms: i64,
}

/// A revoke call repeated an `Idempotency-Key` first used for another token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key was already used to revoke a different token_sha256")]
pub struct KeyConflict;

#[derive(Debug, Default)]
pub struct Ledger {
    tokens: HashMap<String, IssuedToken>,
    /// Idempotency-Key -> (token_sha256, the answer given).
    revoke_answers: HashMap<String, (String, RevokeResponse)>,
    notified: HashSet<String>,
    revocations: Vec<Revocation>,
    notifications: Vec<Notification>,
    pub stats: Stats,
}

impl Ledger {
    pub fn issue(&mut self, token_sha256: String, inactive_after: i64) {
        self.stats.tokens_issued += 1;
        self.tokens.insert(
            token_sha256,
            IssuedToken {
                inactive_after,
                revoked: false,
            },
        );
    }

    /// What the installation says of a token at `now` (unix seconds).
    pub fn verify(&self, token_sha256: &str, now: i64) -> VerifyStatus {
        match self.tokens.get(token_sha256) {
            None => VerifyStatus::UnknownToken,
            Some(t) if t.revoked => VerifyStatus::Revoked,
            Some(t) if now >= t.inactive_after => VerifyStatus::Inactive,
            Some(_) => VerifyStatus::Active,
        }
    }

    /// Revokes under `key`: a key seen before gets its first answer again and changes nothing.
    pub fn revoke(
        &mut self,
        key: &str,
        token_sha256: &str,
        at_ms: i64,
    ) -> Result<RevokeResponse, KeyConflict> {
        if let Some((sha, answer)) = self.revoke_answers.get(key) {
            if sha != token_sha256 {
                self.stats.idempotency_conflicts += 1;
                return Err(KeyConflict);
            }
            return Ok(answer.clone());
        }
        let status = match self.tokens.get_mut(token_sha256) {
            None => RevokeStatus::UnknownToken,
            Some(t) if t.revoked => {
                self.stats.duplicate_effects += 1;
                RevokeStatus::AlreadyRevoked
            }
            Some(t) => {
                t.revoked = true;
                self.stats.revocations += 1;
                self.revocations.push(Revocation {
                    token_sha256: token_sha256.to_owned(),
                    idempotency_key: key.to_owned(),
                    at_ms,
                });
                RevokeStatus::Revoked
            }
        };
        let answer = RevokeResponse { status };
        self.revoke_answers
            .insert(key.to_owned(), (token_sha256.to_owned(), answer.clone()));
        Ok(answer)
    }

    /// Records a notification once per `key`; false (and counted) for a repeat.
    pub fn notify(&mut self, key: &str, notification: Notification) -> bool {
        if !self.notified.insert(key.to_owned()) {
            self.stats.duplicate_notifications += 1;
            return false;
        }
        self.stats.notifications += 1;
        self.notifications.push(notification);
        true
    }

    pub fn revocations(&self) -> &[Revocation] {
        &self.revocations
    }

    pub fn notifications(&self) -> &[Notification] {
        &self.notifications
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(r: Result<RevokeResponse, KeyConflict>) -> RevokeStatus {
        r.unwrap().status
    }

    #[test]
    fn tokens_are_active_until_revoked_or_past_their_ttl() {
        let mut ledger = Ledger::default();
        ledger.issue("a".into(), 100);
        assert_eq!(ledger.verify("a", 99), VerifyStatus::Active);
        assert_eq!(ledger.verify("a", 100), VerifyStatus::Inactive);
        assert_eq!(ledger.verify("b", 0), VerifyStatus::UnknownToken);
        ledger.revoke("k", "a", 5).unwrap();
        assert_eq!(ledger.verify("a", 0), VerifyStatus::Revoked);
    }

    #[test]
    fn a_repeated_key_repeats_its_answer_and_a_new_key_is_a_duplicate_effect() {
        let mut ledger = Ledger::default();
        ledger.issue("a".into(), i64::MAX);
        assert_eq!(status(ledger.revoke("k1", "a", 5)), RevokeStatus::Revoked);
        assert_eq!(status(ledger.revoke("k1", "a", 6)), RevokeStatus::Revoked);
        assert_eq!(ledger.stats.duplicate_effects, 0);
        assert_eq!(
            status(ledger.revoke("k2", "a", 7)),
            RevokeStatus::AlreadyRevoked
        );
        assert_eq!(
            status(ledger.revoke("k2", "a", 8)),
            RevokeStatus::AlreadyRevoked
        );
        assert_eq!(ledger.stats.duplicate_effects, 1);
        assert_eq!(ledger.stats.revocations, 1);
        assert_eq!(
            ledger.revocations(),
            [Revocation {
                token_sha256: "a".into(),
                idempotency_key: "k1".into(),
                at_ms: 5
            }]
        );
        assert_eq!(
            status(ledger.revoke("k3", "zz", 9)),
            RevokeStatus::UnknownToken
        );
        assert_eq!(ledger.revoke("k3", "a", 9), Err(KeyConflict));
        assert_eq!(ledger.stats.idempotency_conflicts, 1);
    }

    #[test]
    fn notifications_are_recorded_once_per_key() {
        let mut ledger = Ledger::default();
        let n = Notification {
            event: "token.revoked".into(),
            finding_id: "f".into(),
            token_type: "foundry".into(),
            token_sha256: "a".into(),
            found_at: None,
            source: "github".into(),
            received_at: "2025-01-01T00:00:00.000Z".into(),
            outcome: "revoked".into(),
            decided_at: "2025-01-01T00:00:01.000Z".into(),
        };
        assert!(ledger.notify("k", n.clone()));
        assert!(!ledger.notify("k", n.clone()));
        assert_eq!(ledger.notifications(), [n]);
        assert_eq!(ledger.stats.notifications, 1);
        assert_eq!(ledger.stats.duplicate_notifications, 1);
    }
}
