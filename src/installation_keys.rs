//! Installations' token-signing keys, by key id (`plntr` or `kid`): inline keys from the registry
//! and JWKS fetched from each installation's `jwks_url`, cached. An unknown key id triggers one
//! refresh, single-flight per installation and at most once per [`MIN_REFRESH`], so forged key ids
//! cannot make Spillway hammer an installation.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use p256::ecdsa::VerifyingKey;

use crate::contract::Jwks;
use crate::installations::Installation;
use crate::outbound::Outbound;

/// An installation's JWKS is fetched at most this often.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Largest JWKS read: a longer one is abandoned while it streams.
pub const MAX_JWKS: usize = 1 << 20;

#[derive(Default)]
struct Entries {
    /// kid -> (installation id, key); several installations may (wrongly) publish one kid.
    by_kid: HashMap<String, Vec<(String, VerifyingKey)>>,
    /// installation id -> the registration version (`updated_at`) the cache reflects.
    synced: HashMap<String, i64>,
    /// installation id -> when its JWKS URL was last fetched (or tried), for which version.
    fetched: HashMap<String, (Instant, i64)>,
}

/// The shared key cache.
pub struct KeyCache {
    entries: Mutex<Entries>,
    /// One refresh at a time per installation.
    refreshing: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    outbound: Outbound,
}

/// What a key id resolves to.
pub struct KeyMatch {
    pub installation_id: String,
    pub key: VerifyingKey,
}

impl KeyCache {
    pub fn new(outbound: Outbound) -> KeyCache {
        KeyCache {
            entries: Mutex::default(),
            refreshing: Mutex::default(),
            outbound,
        }
    }

    /// The keys known under `kid`, without any network call.
    pub fn lookup(&self, kid: &str) -> Vec<KeyMatch> {
        let entries = self.entries.lock().expect("key cache lock");
        entries
            .by_kid
            .get(kid)
            .map(|v| {
                v.iter()
                    .map(|(id, key)| KeyMatch {
                        installation_id: id.clone(),
                        key: *key,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Replaces an installation's keys with `jwks` plus its inline keys.
    fn replace(&self, installation: &Installation, jwks: &Jwks) {
        let installation_id = installation.id.as_str();
        let mut entries = self.entries.lock().expect("key cache lock");
        for keys in entries.by_kid.values_mut() {
            keys.retain(|(id, _)| id != installation_id);
        }
        let inline = installation
            .spec
            .inline_jwks
            .iter()
            .flat_map(|j| j.keys.iter());
        for jwk in jwks.keys.iter().chain(inline) {
            let (Some(kid), Ok(key)) = (jwk.kid.as_ref(), crate::jwt::key_from_jwk(jwk)) else {
                continue;
            };
            entries
                .by_kid
                .entry(kid.clone())
                .or_default()
                .push((installation_id.to_owned(), key));
        }
        entries
            .synced
            .insert(installation_id.to_owned(), installation.updated_at);
    }

    /// Brings the cache in line with the registry (no network): inline keys of installations
    /// whose registration changed are (re)loaded, keys of changed or removed installations are
    /// dropped (a JWKS URL is fetched again on the next unknown key id).
    pub fn load_inline(&self, installations: &[Installation]) {
        {
            let mut entries = self.entries.lock().expect("key cache lock");
            let live: std::collections::HashSet<&str> =
                installations.iter().map(|i| i.id.as_str()).collect();
            for keys in entries.by_kid.values_mut() {
                keys.retain(|(id, _)| live.contains(id.as_str()));
            }
            entries.synced.retain(|id, _| live.contains(id.as_str()));
            entries.fetched.retain(|id, _| live.contains(id.as_str()));
        }
        for i in installations {
            let changed = {
                let entries = self.entries.lock().expect("key cache lock");
                entries.synced.get(&i.id) != Some(&i.updated_at)
            };
            if changed {
                // Inline keys only; a JWKS URL is fetched on the next unknown key id.
                self.replace(i, &Jwks::default());
            }
        }
    }

    /// Fetches the JWKS of each installation in `candidates` that has a `jwks_url` and was not
    /// fetched within [`MIN_REFRESH`]. Errors are logged and leave the cached keys in place.
    pub async fn refresh(&self, candidates: &[&Installation]) {
        for i in candidates {
            let Some(url) = &i.spec.jwks_url else {
                continue;
            };
            let gate = self
                .refreshing
                .lock()
                .expect("key cache lock")
                .entry(i.id.clone())
                .or_default()
                .clone();
            let _one_at_a_time = gate.lock().await;
            let recent = {
                let entries = self.entries.lock().expect("key cache lock");
                entries
                    .fetched
                    .get(&i.id)
                    .is_some_and(|(at, v)| *v == i.updated_at && at.elapsed() < MIN_REFRESH)
            };
            if recent {
                continue;
            }
            // Mark the attempt first: a failing endpoint is not retried before MIN_REFRESH either.
            self.entries
                .lock()
                .expect("key cache lock")
                .fetched
                .insert(i.id.clone(), (Instant::now(), i.updated_at));
            match self.fetch_jwks(url).await {
                Ok(jwks) => self.replace(i, &jwks),
                Err(e) => tracing::warn!(
                    installation = %i.id,
                    error = %format!("{e:#}"),
                    "cannot fetch installation JWKS"
                ),
            }
        }
    }

    /// Fetches one JWKS under the outbound policy, at most [`MAX_JWKS`] bytes.
    pub async fn fetch_jwks(&self, url: &str) -> anyhow::Result<Jwks> {
        self.outbound.policy.check("jwks_url", url)?;
        let response = self.outbound.client.get(url).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "jwks_url answered {}",
            response.status()
        );
        let bytes = crate::outbound::read_capped(response, MAX_JWKS)
            .await
            .map_err(|e| anyhow::anyhow!("jwks_url: {e}"))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}
