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
//! The states and the moves between them are `findings::lifecycle`; this module holds what the
//! dispatcher ([`dispatcher`]), the worker step ([`worker`]) and the decisions ([`decide`],
//! [`attribute`]) share: the [`Engine`] (tuning, limits, the installation registry and their
//! secrets as last read, the JWKS cache). Must not import HTTP or write SQL itself (the findings
//! and intake stores do).

pub mod attribute;
pub(crate) mod calls;
pub mod decide;
mod dispatcher;
pub mod issuers;
pub mod limits;
pub mod pull;
mod worker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::installations::signing_keys::KeyCache;
use crate::installations::{self, Installation};
use crate::platform::audit;
use crate::platform::config::Settings;
use crate::platform::keyring::Keys;
use crate::platform::outbound::{Outbound, Policy};
use crate::platform::store::Store;
use crate::scanner::TokenSecret;
use limits::Limits;

/// How stale the in-memory registry may be.
const REGISTRY_REFRESH: Duration = Duration::from_millis(500);

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
    /// A finding's task panicked (caught by the dispatcher).
    fn panicked(&self, _installation: &str) {}
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
    pub(super) wake: tokio::sync::Notify,
    pub(super) in_flight: Arc<tokio::sync::Semaphore>,
    installations: Mutex<Arc<Vec<Installation>>>,
    installations_read_at: Mutex<Option<std::time::Instant>>,
    /// Opened shared secrets by installation, keyed also by (newest secret time, live count) so a
    /// rotation is seen on the next round.
    secrets: Mutex<std::collections::HashMap<String, CachedSecrets>>,
    /// Issuers the settings enable, scheduled like installations (`issuer:NAME`).
    pub(super) issuers: issuers::Issuers,
}

/// (newest secret's creation time, live count, the opened secrets).
type CachedSecrets = (i64, usize, Arc<Vec<TokenSecret>>);

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
        let issuers = issuers::Issuers::from_settings(settings, &outbound)?;
        Ok(Engine {
            issuers,
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
            && (*at, *n) == version
        {
            return Ok(s.clone());
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
        let mut listed = installations::list(&self.store).await?;
        listed.extend(self.issuers.installations().cloned());
        let all = Arc::new(listed);
        *self
            .installations_read_at
            .lock()
            .expect("installations lock") = Some(std::time::Instant::now());
        self.key_cache.load_inline(&all);
        *self.installations.lock().expect("installations lock") = all.clone();
        self.report_key_conflicts().await;
        Ok(all)
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
}
