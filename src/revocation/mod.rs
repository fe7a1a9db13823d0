//! From candidate to outcome, exactly once in effect. Everything runs from durable state:
//!
//! 1. [`decide`]: each queued candidate is attributed to installations (JWT key id, hostname next
//!    to the token, or bounded fan-out by token type), verified offline where a signature allows,
//!    and becomes one *finding* per installation (unattributed ones are recorded, never dropped).
//! 2. The dispatcher claims due findings (leases; `FOR UPDATE SKIP LOCKED` on PostgreSQL, so
//!    replicas share the work) within each installation's concurrency cap and circuit breaker,
//!    and a task per finding makes the signed verify / revoke / notify calls under the
//!    installation's rate limit.
//! 3. Each state change commits with its audit entry in one transaction, fenced by the lease, so a
//!    crash anywhere resumes from the last commit; repeated calls carry the same deterministic
//!    `Idempotency-Key`, so a resumed call has no second effect.
//!
//! States: `verifying`, `revoking`, `notifying` (worker-driven), `awaiting_pull` (the installation
//! pulls); terminal: `revoked`, `already_revoked`, `unknown_token`, `inactive`, `expired`,
//! `invalid`, `unattributed`, `failed`.

pub(crate) mod calls;
pub mod decide;
pub mod limits;
pub mod pull;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use sqlx::Row as _;

use crate::installations::contract::{self, RevokeStatus, VerifyStatus};
use crate::installations::signing_keys::KeyCache;
use crate::installations::{self, Delivery, Installation};
use crate::platform::audit;
use crate::platform::config::Settings;
use crate::platform::keyring::Keys;
use crate::platform::outbound::{Outbound, Policy};
use crate::platform::store::{Store, now_ms};
use crate::scanner::TokenSecret;
use calls::Answer;
use limits::Limits;

/// Most time between the end of a busy dispatcher round and the next one (see [`round_gap`]).
const MAX_ROUND_GAP: Duration = Duration::from_millis(25);
/// Least time between two dispatcher rounds.
const MIN_ROUND_GAP: Duration = Duration::from_millis(1);

/// The pause after a round that decided `decided` candidates: proportional to how full its batches
/// were. Under a burst (full batches) rounds are [`MAX_ROUND_GAP`] apart, so the burst is decided in
/// a few batched transactions rather than one round per alert competing with intake for the
/// database; a lone alert waits only [`MIN_ROUND_GAP`] (a fixed 25 ms gap made it wait 12 ms on
/// average at 100 alerts/s, most of its time to revoke).
fn round_gap(decided: usize) -> Duration {
    let share = decided.min(decide::BATCH) as u32;
    (MAX_ROUND_GAP * share / decide::BATCH as u32).max(MIN_ROUND_GAP)
}
/// Decide batches per dispatcher round, at most.
const DECIDE_BATCHES_PER_ROUND: usize = 4;
/// How often stale pull-mode findings are looked for.
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// How stale the in-memory registry may be.
const REGISTRY_REFRESH: Duration = Duration::from_millis(500);

/// States in which a worker acts on a finding.
pub const WORKER_STATES: [&str; 3] = ["verifying", "revoking", "notifying"];

/// Tunables, from settings.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub max_in_flight: usize,
    pub max_attempts: u32,
    pub max_age: Duration,
    pub fanout_max: usize,
    pub poll: Duration,
    pub call_timeout: Duration,
    pub lease: Duration,
}

impl Tuning {
    pub fn from_settings(s: &Settings) -> Tuning {
        let call = Duration::from_millis(s.call_timeout_ms.max(1));
        Tuning {
            max_in_flight: s.max_in_flight.max(1),
            max_attempts: s.max_attempts.max(1),
            max_age: Duration::from_secs(s.max_age_hours.max(1) * 3600),
            fanout_max: s.fanout_max.max(1),
            poll: Duration::from_millis(s.work_poll_ms.max(10)),
            call_timeout: call,
            // A crashed worker's findings are resumed once its lease lapses, so it is short: a task
            // never waits while holding one (over the rate limit it gives the finding back).
            lease: (call * 3 + Duration::from_secs(2)).max(Duration::from_secs(3)),
        }
    }
}

/// Events the revocation engine reports (metrics hang off this).
pub trait Observer: Send + Sync {
    fn call(&self, _step: &'static str, _installation: &str, _outcome: &str, _elapsed: Duration) {}
    fn revoked(&self, _installation: &str, _time_to_revoke: Duration) {}
    fn failed(&self, _installation: &str, _step: &'static str) {}
    /// A finding reached a terminal state (`installation` None: unattributed).
    fn outcome(&self, _installation: Option<&str>, _outcome: &str) {}
    fn rate_limit_wait(&self, _installation: &str, _waited: Duration) {}
    /// One of this Spillway's admin keys was found in public: `revoked`, `already_revoked` or
    /// `unknown_token` (another deployment's key).
    fn admin_key_leaked(&self, _outcome: &str) {}
    /// A key id turned out to be published by more than one installation.
    fn key_conflict(&self) {}
}

/// Shared state of the deciding and revoking workers.
pub struct Engine {
    pub store: Store,
    pub keys: Arc<Keys>,
    pub outbound: Outbound,
    pub key_cache: KeyCache,
    pub limits: Limits,
    pub tuning: Tuning,
    pub observer: Arc<dyn Observer>,
    /// Identifies this replica's leases.
    pub worker_id: String,
    wake: tokio::sync::Notify,
    in_flight: Arc<tokio::sync::Semaphore>,
    installations: Mutex<Arc<Vec<Installation>>>,
    installations_read_at: Mutex<Option<std::time::Instant>>,
    /// Opened shared secrets by installation, keyed also by (newest secret time, live count) so a
    /// rotation is seen on the next round.
    secrets: Mutex<std::collections::HashMap<String, CachedSecrets>>,
}

/// (newest secret's creation time, live count, the opened secrets).
type CachedSecrets = (i64, usize, Arc<Vec<TokenSecret>>);

/// A claimed finding.
#[derive(Debug, Clone)]
struct Claimed {
    id: i64,
    installation_id: String,
    state: String,
    outcome: Option<String>,
    fingerprint: String,
    token_type: String,
    sealed_token: Option<String>,
    found_at: Option<String>,
    source: String,
    received_at: i64,
    created_at: i64,
    attempts: i64,
    decided_at: Option<i64>,
}

/// What a finding keeps sealed until its outcome: the raw token only for an installation that
/// takes raw tokens; otherwise just `sha256(token)` (`sha256:<hex>`), all its calls need.
pub fn sealed_payload(token: &TokenSecret, delivery: Delivery) -> TokenSecret {
    match delivery {
        Delivery::Raw => token.clone(),
        Delivery::Sha256 => TokenSecret::new(format!("sha256:{}", token.sha256_hex())),
    }
}

/// A finding's opened payload.
pub struct Opened {
    pub sha256: String,
    /// Present only for installations in `raw` mode.
    pub raw: Option<String>,
}

pub fn open_payload(payload: &TokenSecret) -> Opened {
    match payload.expose().strip_prefix("sha256:") {
        Some(hash) => Opened {
            sha256: hash.to_owned(),
            raw: None,
        },
        None => Opened {
            sha256: payload.sha256_hex(),
            raw: Some(payload.expose().to_owned()),
        },
    }
}

/// The sealing owner of a finding's token copy.
pub fn finding_owner(installation_id: &str, fingerprint: &str) -> String {
    format!("finding:{installation_id}:{fingerprint}")
}

impl Engine {
    pub fn new(
        store: Store,
        keys: Arc<Keys>,
        policy: Policy,
        settings: &Settings,
        observer: Arc<dyn Observer>,
    ) -> anyhow::Result<Engine> {
        let tuning = Tuning::from_settings(settings);
        let outbound = Outbound::new(policy, tuning.call_timeout)?;
        Ok(Engine {
            store,
            keys,
            key_cache: KeyCache::new(outbound.clone()),
            outbound,
            limits: Limits::new(settings.replicas),
            in_flight: Arc::new(tokio::sync::Semaphore::new(tuning.max_in_flight)),
            tuning,
            observer,
            worker_id: format!("w_{:016x}", rand::random::<u64>()),
            wake: tokio::sync::Notify::new(),
            installations: Mutex::new(Arc::new(Vec::new())),
            installations_read_at: Mutex::new(None),
            secrets: Mutex::default(),
        })
    }

    /// Tells the dispatcher that work may be due (intake calls it after each commit).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The deterministic idempotency key of `operation` on a token at an installation.
    pub fn idempotency_key(
        &self,
        operation: &str,
        installation_id: &str,
        fingerprint: &str,
    ) -> String {
        let mac = self
            .keys
            .fingerprint(&format!("{operation}\0{installation_id}\0{fingerprint}"));
        format!("spw_{operation}_{}", &mac[..32])
    }

    /// The installations as last read (refreshed by the dispatcher on each round).
    pub fn installations(&self) -> Arc<Vec<Installation>> {
        self.installations
            .lock()
            .expect("installations lock")
            .clone()
    }

    /// The installation's live shared secrets (cached until they change).
    async fn secrets_of(
        &self,
        installation: &Installation,
    ) -> anyhow::Result<Arc<Vec<TokenSecret>>> {
        let version = (installation.secret_created_at, installation.live_secrets);
        if let Some((at, n, s)) = self
            .secrets
            .lock()
            .expect("secrets lock")
            .get(&installation.id)
        {
            if (*at, *n) == version {
                return Ok(s.clone());
            }
        }
        let opened = Arc::new(
            installations::secrets(&self.store, &self.keys.sealing, &installation.id).await?,
        );
        self.secrets.lock().expect("secrets lock").insert(
            installation.id.clone(),
            (version.0, version.1, opened.clone()),
        );
        Ok(opened)
    }

    /// Reads the registry now (`force`), or when the copy in memory is older than
    /// [`REGISTRY_REFRESH`] (changes made elsewhere, by the CLI or another replica, are seen
    /// within that).
    pub(crate) async fn read_installations(
        &self,
        force: bool,
    ) -> anyhow::Result<Arc<Vec<Installation>>> {
        if !force {
            let read_at = self
                .installations_read_at
                .lock()
                .expect("installations lock");
            if read_at.is_some_and(|t| t.elapsed() < REGISTRY_REFRESH) {
                return Ok(self.installations());
            }
        }
        let all = Arc::new(installations::list(&self.store).await?);
        *self
            .installations_read_at
            .lock()
            .expect("installations lock") = Some(std::time::Instant::now());
        self.key_cache.load_inline(&all);
        *self.installations.lock().expect("installations lock") = all.clone();
        self.report_key_conflicts().await;
        Ok(all)
    }

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

    /// Records the key-id conflicts the key cache found (an audit entry and a metric each; `doctor`
    /// reads the entries). Best effort: a failure is logged and the conflicts stay reported in
    /// the log.
    pub(crate) async fn report_key_conflicts(&self) {
        for conflict in self.key_cache.take_conflicts() {
            tracing::warn!(
                kid = %conflict.kid,
                installations = ?conflict.installations,
                "a key id is published by more than one installation: no offline verdict rests on it"
            );
            self.observer.key_conflict();
            let written = async {
                let mut tx = self.store.begin().await?;
                audit::append(
                    &mut tx,
                    self.store.backend(),
                    &format!("worker:{}", self.worker_id),
                    "installation.key_conflict",
                    &format!("kid:{}", conflict.kid),
                    serde_json::json!({
                        "kid": conflict.kid,
                        "installations": conflict.installations,
                        "effect": "ambiguous: tokens under this key id are verified online",
                    }),
                )
                .await?;
                tx.commit().await?;
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = written {
                tracing::error!(error = %format!("{e:#}"), "cannot audit a key-id conflict");
            }
        }
    }

    /// Fails loudly the pull-mode findings no one acknowledged within `max_age`.
    async fn expire_pulls(&self) -> anyhow::Result<()> {
        let now = now_ms();
        let cutoff = now - self.tuning.max_age.as_millis() as i64;
        let stale = sqlx::query(
            "SELECT id, installation_id FROM findings WHERE state = 'awaiting_pull' AND created_at < $1 LIMIT 100",
        )
        .bind(cutoff)
        .fetch_all(self.store.pool())
        .await
        .context("cannot read pending pulls")?;
        for row in stale {
            let id: i64 = row.try_get("id")?;
            let installation: String = row.try_get("installation_id")?;
            let mut tx = self.store.begin().await?;
            let updated = sqlx::query(
                "UPDATE findings SET state = 'failed', outcome = 'failed_pull', sealed_token = NULL, \
                 updated_at = $1, decided_at = $1, last_error = 'not acknowledged within max_age_hours' \
                 WHERE id = $2 AND state = 'awaiting_pull'",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated != 1 {
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
                    "from": "awaiting_pull",
                    "to": "failed",
                    "error": "not acknowledged within max_age_hours",
                }),
            )
            .await?;
            tx.commit().await?;
            self.observer.failed(&installation, "pull");
            self.observer.outcome(Some(&installation), "failed");
        }
        Ok(())
    }

    /// Claims as many due findings of `installation` as it has free call slots, and starts a task
    /// for each.
    async fn dispatch(self: &Arc<Self>, installation: &Installation) -> anyhow::Result<()> {
        let limits = self.limits.of(installation);
        let mut slots = match limits.breaker_state() {
            limits::BreakerState::Open => return Ok(()),
            limits::BreakerState::HalfOpen if limits.try_probe() => {
                1.min(limits.concurrency.available_permits())
            }
            limits::BreakerState::HalfOpen => return Ok(()),
            limits::BreakerState::Closed => limits.concurrency.available_permits(),
        };
        slots = slots.min(self.in_flight.available_permits());
        if slots == 0 {
            return Ok(());
        }
        let claimed = self.claim(&installation.id, slots).await?;
        if claimed.is_empty() {
            limits.release_probe();
        }
        for item in claimed {
            let (Ok(permit), Ok(global)) = (
                limits.concurrency.clone().try_acquire_owned(),
                self.in_flight.clone().try_acquire_owned(),
            ) else {
                // Another task took the slot meanwhile: the lease lapses and a later round runs it.
                continue;
            };
            let engine = self.clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                engine.work(item).await;
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

    async fn claim(&self, installation_id: &str, limit: usize) -> anyhow::Result<Vec<Claimed>> {
        let now = now_ms();
        let lock = self.store.skip_locked();
        let sql = format!(
            "UPDATE findings SET lease_until = $1, lease_owner = $2 WHERE id IN (\
               SELECT id FROM findings WHERE installation_id = $3 \
               AND state IN ('verifying', 'revoking', 'notifying') AND next_run_at <= $4 \
               AND (lease_until IS NULL OR lease_until < $4) ORDER BY priority, next_run_at LIMIT $5 {lock}) \
             RETURNING id, installation_id, state, outcome, fingerprint, token_type, sealed_token, \
               found_at, source, received_at, created_at, attempts, decided_at"
        );
        let rows = sqlx::query(&sql)
            .bind(now + self.tuning.lease.as_millis() as i64)
            .bind(&self.worker_id)
            .bind(installation_id)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(self.store.pool())
            .await
            .context("cannot claim findings")?;
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    id: r.try_get("id")?,
                    installation_id: r.try_get("installation_id")?,
                    state: r.try_get("state")?,
                    outcome: r.try_get("outcome")?,
                    fingerprint: r.try_get("fingerprint")?,
                    token_type: r.try_get("token_type")?,
                    sealed_token: r.try_get("sealed_token")?,
                    found_at: r.try_get("found_at")?,
                    source: r.try_get("source")?,
                    received_at: r.try_get("received_at")?,
                    created_at: r.try_get("created_at")?,
                    attempts: r.try_get("attempts")?,
                    decided_at: r.try_get("decided_at")?,
                })
            })
            .collect()
    }

    /// Drives one claimed finding through as many steps as are due now.
    async fn work(&self, mut item: Claimed) {
        loop {
            match self.step(&item).await {
                Ok(Some(next)) => item = next,
                Ok(None) => return,
                Err(e) => {
                    // Storage trouble: the lease lapses and the finding is resumed later.
                    tracing::warn!(finding = item.id, error = %format!("{e:#}"), "finding step failed");
                    return;
                }
            }
        }
    }

    /// One call and its committed outcome. Returns the finding when its next step is due at once.
    async fn step(&self, item: &Claimed) -> anyhow::Result<Option<Claimed>> {
        let all = self.installations();
        let Some(installation) = all.iter().find(|i| i.id == item.installation_id) else {
            // Removed meanwhile (`installations::remove` fails its findings).
            return Ok(None);
        };
        let limits = self.limits.of(installation);
        if let Some(wait) = limits.open_for() {
            self.reschedule(item, wait).await?;
            return Ok(None);
        }
        if let Err(not_until) = limits.limiter.check() {
            // Over the installation's rate: give the finding back until the limiter has room,
            // instead of waiting while holding its lease.
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            self.observer.rate_limit_wait(&installation.id, wait);
            self.reschedule(item, wait).await?;
            return Ok(None);
        }
        let token = match &item.sealed_token {
            Some(sealed) => crate::platform::seal::open(
                &self.keys.sealing,
                &finding_owner(&item.installation_id, &item.fingerprint),
                sealed,
            )?,
            None => anyhow::bail!(
                "finding {} has no sealed token in state {}",
                item.id,
                item.state
            ),
        };
        let secrets = self.secrets_of(installation).await?;
        let started = std::time::Instant::now();
        let Opened { sha256, raw } = open_payload(&token);
        let finding_id = format!("fnd_{}", item.id);
        let transition = match item.state.as_str() {
            "verifying" => {
                let url = installation.spec.verify_url.as_deref().unwrap_or_default();
                let key = self.idempotency_key("verify", &installation.id, &item.fingerprint);
                let body = contract::VerifyRequest {
                    finding_id,
                    token_type: item.token_type.clone(),
                    token_sha256: sha256,
                    token: raw,
                };
                let answer = calls::verify(&self.outbound, url, &secrets, &key, &body).await;
                crate::platform::failpoint::hit("verify.after_call");
                self.classify("verify", installation, &limits, started, answer, |status| {
                    match status {
                        VerifyStatus::Active => {
                            Next::Continue("revoking", None, Some("true_positive"))
                        }
                        VerifyStatus::Revoked => {
                            Next::Done("already_revoked".into(), Some("true_positive"))
                        }
                        VerifyStatus::Inactive => {
                            Next::Done("inactive".into(), Some("true_positive"))
                        }
                        VerifyStatus::UnknownToken => Next::Done("unknown_token".into(), None),
                    }
                })
            }
            "revoking" => {
                let url = installation.spec.revoke_url.as_deref().unwrap_or_default();
                let key = self.idempotency_key("revoke", &installation.id, &item.fingerprint);
                let body = contract::RevokeRequest {
                    finding_id,
                    token_type: item.token_type.clone(),
                    token_sha256: sha256,
                    token: raw,
                    found_at: item.found_at.clone(),
                    source: item.source.clone(),
                    received_at: contract::rfc3339_ms(item.received_at),
                };
                crate::platform::failpoint::hit("revoke.before_call");
                let answer = calls::revoke(&self.outbound, url, &secrets, &key, &body).await;
                crate::platform::failpoint::hit("revoke.after_call");
                let notify = installation.spec.notify_url.is_some();
                self.classify("revoke", installation, &limits, started, answer, |status| {
                    match status {
                        RevokeStatus::Revoked | RevokeStatus::AlreadyRevoked if notify => {
                            Next::Continue(
                                "notifying",
                                Some(status.as_str()),
                                Some("true_positive"),
                            )
                        }
                        RevokeStatus::Revoked | RevokeStatus::AlreadyRevoked => {
                            Next::Done(status.as_str().into(), Some("true_positive"))
                        }
                        RevokeStatus::UnknownToken => Next::Done("unknown_token".into(), None),
                    }
                })
            }
            "notifying" => {
                let url = installation.spec.notify_url.as_deref().unwrap_or_default();
                let key = self.idempotency_key("notify", &installation.id, &item.fingerprint);
                let outcome = item.outcome.clone().unwrap_or_else(|| "revoked".into());
                let body = contract::Notification {
                    event: "token.revoked".into(),
                    finding_id,
                    token_type: item.token_type.clone(),
                    token_sha256: sha256,
                    found_at: item.found_at.clone(),
                    source: item.source.clone(),
                    received_at: contract::rfc3339_ms(item.received_at),
                    outcome: outcome.clone(),
                    decided_at: contract::rfc3339_ms(item.decided_at.unwrap_or_else(now_ms)),
                };
                let answer = calls::notify(&self.outbound, url, &secrets, &key, &body).await;
                crate::platform::failpoint::hit("notify.after_call");
                self.classify("notify", installation, &limits, started, answer, |()| {
                    Next::Done(outcome, None)
                })
            }
            other => anyhow::bail!("finding {} claimed in state {other}", item.id),
        };
        self.commit(item, installation, transition).await
    }

    fn classify<T>(
        &self,
        step: &'static str,
        installation: &Installation,
        limits: &limits::InstallationLimits,
        started: std::time::Instant,
        answer: Answer<T>,
        on_known: impl FnOnce(T) -> Next,
    ) -> Next {
        match answer {
            Answer::Known(v) => {
                limits.record(true);
                self.observer
                    .call(step, &installation.id, "answered", started.elapsed());
                on_known(v)
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
                self.observer
                    .call(step, &installation.id, "unknown", started.elapsed());
                Next::Retry {
                    reason,
                    retry_after,
                }
            }
            Answer::Refused { reason } => {
                // Not the installation failing: nothing was sent, so the breaker is untouched.
                self.observer
                    .call(step, &installation.id, "refused", started.elapsed());
                Next::Refused(format!("refused: {reason}"))
            }
        }
    }

    /// Puts a finding back for `wait` without counting an attempt (installation paused, breaker
    /// open, or over its rate).
    async fn reschedule(&self, item: &Claimed, wait: Duration) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE findings SET next_run_at = $1, lease_until = NULL, lease_owner = NULL \
             WHERE id = $2 AND lease_owner = $3",
        )
        .bind(now_ms() + wait.as_millis() as i64)
        .bind(item.id)
        .bind(&self.worker_id)
        .execute(self.store.pool())
        .await
        .context("cannot reschedule finding")?;
        Ok(())
    }

    /// Commits a step's outcome with its audit entry, fenced by this worker's lease.
    async fn commit(
        &self,
        item: &Claimed,
        installation: &Installation,
        next: Next,
    ) -> anyhow::Result<Option<Claimed>> {
        let now = now_ms();
        let step = step_name(&item.state);
        let (state, outcome, label, error, attempts) = match &next {
            Next::Continue(state, outcome, label) => (
                (*state).to_owned(),
                outcome.map(str::to_owned).or(item.outcome.clone()),
                *label,
                None,
                0,
            ),
            Next::Done(state, label) => (state.clone(), Some(state.clone()), *label, None, 0),
            Next::Retry { reason, .. } | Next::Refused(reason) => {
                let attempts = item.attempts + 1;
                let too_old = now - item.created_at > self.tuning.max_age.as_millis() as i64;
                if let Next::Retry { retry_after, .. } = &next
                    && attempts < i64::from(self.tuning.max_attempts)
                    && !too_old
                {
                    let delay = limits::backoff(attempts as u32, *retry_after);
                    sqlx::query(
                        "UPDATE findings SET attempts = $1, next_run_at = $2, last_error = $3, \
                         lease_until = NULL, lease_owner = NULL, updated_at = $4 \
                         WHERE id = $5 AND lease_owner = $6 AND state = $7",
                    )
                    .bind(attempts)
                    .bind(now + delay.as_millis() as i64)
                    .bind(reason)
                    .bind(now)
                    .bind(item.id)
                    .bind(&self.worker_id)
                    .bind(&item.state)
                    .execute(self.store.pool())
                    .await
                    .context("cannot schedule retry")?;
                    return Ok(None);
                }
                if item.state == "notifying" {
                    // The token is revoked; only the notification gave up. Keep the outcome.
                    let outcome = item.outcome.clone().unwrap_or_else(|| "revoked".into());
                    (
                        outcome.clone(),
                        Some(outcome),
                        None,
                        Some(format!("notification abandoned: {reason}")),
                        attempts,
                    )
                } else {
                    self.observer.failed(&installation.id, step);
                    (
                        "failed".to_owned(),
                        Some(format!("failed_{step}")),
                        None,
                        Some(reason.clone()),
                        attempts,
                    )
                }
            }
        };
        let terminal = !WORKER_STATES.contains(&state.as_str());
        // The sealed copy stays as it is while work remains, and goes at the outcome.
        let sealed = if terminal {
            None
        } else {
            item.sealed_token.clone()
        };
        let revoked_now = item.state == "revoking"
            && matches!(outcome.as_deref(), Some("revoked" | "already_revoked"));
        let mut tx = self.store.begin().await?;
        let lease_until = (!terminal).then(|| now + self.tuning.lease.as_millis() as i64);
        let updated = sqlx::query(
            "UPDATE findings SET state = $1, outcome = $2, label = COALESCE($3, label), \
             last_error = COALESCE($4, last_error), next_run_at = $5, attempts = $6, \
             sealed_token = $7, lease_until = $8, lease_owner = $9, updated_at = $10, \
             decided_at = CASE WHEN $11 = 1 THEN $10 ELSE decided_at END \
             WHERE id = $12 AND lease_owner = $13 AND state = $14",
        )
        .bind(&state)
        .bind(outcome.clone())
        .bind(label)
        .bind(error.clone())
        .bind(now)
        .bind(attempts)
        .bind(sealed.clone())
        .bind(lease_until)
        .bind((!terminal).then(|| self.worker_id.clone()))
        .bind(now)
        .bind(i64::from(revoked_now))
        .bind(item.id)
        .bind(&self.worker_id)
        .bind(&item.state)
        .execute(&mut *tx)
        .await
        .context("cannot record finding state")?
        .rows_affected();
        if updated != 1 {
            // The lease lapsed and another worker owns the finding now: it repeats this step with
            // the same idempotency key, so nothing is lost or doubled.
            tx.rollback().await?;
            return Ok(None);
        }
        let action = match state.as_str() {
            _ if error.is_some() && state != "failed" => "finding.notify_abandoned".to_owned(),
            s => format!("finding.{s}"),
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
                "to": state,
                "outcome": outcome,
                "attempts": attempts,
                "error": error,
            }),
        )
        .await?;
        tx.commit().await.context("cannot commit finding state")?;
        if revoked_now {
            let ttr = Duration::from_millis((now - item.received_at).max(0) as u64);
            self.observer.revoked(&installation.id, ttr);
        }
        if terminal {
            self.observer.outcome(Some(&installation.id), &state);
            return Ok(None);
        }
        Ok(Some(Claimed {
            state,
            outcome,
            sealed_token: sealed,
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

/// What a step's answer leads to.
enum Next {
    /// Another worker step, due now: (state, outcome, label).
    Continue(&'static str, Option<&'static str>, Option<&'static str>),
    /// A terminal state: (state, label).
    Done(String, Option<&'static str>),
    /// The answer was unknown: retry later.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The call may not be made: give up now, naming why.
    Refused(String),
}

fn step_name(state: &str) -> &'static str {
    match state {
        "verifying" => "verify",
        "revoking" => "revoke",
        _ => "notify",
    }
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
}
