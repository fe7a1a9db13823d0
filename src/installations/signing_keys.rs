//! Installations' token-signing keys, by key id (`plntr` or `kid`): inline keys from the registry
//! and JWKS fetched from each installation's `jwks_url`, cached. An unknown key id triggers one
//! refresh, single-flight per installation and at most once per [`MIN_REFRESH`], so forged key ids
//! cannot make Spillway hammer an installation.
//!
//! A key id has one owner. When two installations publish the same id (registration refuses it for
//! inline keys; a JWKS can still serve anything), the id is *ambiguous*: [`KeyCache::lookup`] gives
//! no owner, so no offline verdict is drawn from it and its tokens take the online path, and the
//! conflict is reported once ([`KeyCache::take_conflicts`]: audit entry, metric, `doctor`). Keys
//! fetched from a JWKS count only while fresh ([`FRESH_FOR`]); stale ones are fetched again first.
//! An attacker who registers an installation reusing another's key id therefore can no longer make
//! a genuine token look forged and be dropped.
//!
//! In memory (fetches go through `platform::outbound`): must not import storage or HTTP servers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use p256::ecdsa::VerifyingKey;

use crate::installations::Installation;
use crate::installations::contract::Jwks;
use crate::platform::outbound::Outbound;

/// An installation's JWKS is fetched at most this often.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Keys fetched from a JWKS back an offline verdict for this long after the fetch.
pub const FRESH_FOR: Duration = Duration::from_secs(3600);
/// Largest JWKS read: a longer one is abandoned while it streams.
pub const MAX_JWKS: usize = 1 << 20;

/// One installation's keys under one key id.
#[derive(Clone)]
struct Claim {
    installation_id: String,
    keys: Vec<VerifyingKey>,
    /// When they were fetched from the JWKS URL; `None` for inline keys (the registry is current).
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct Entries {
    /// kid -> the installations publishing it (more than one: ambiguous).
    by_kid: HashMap<String, Vec<Claim>>,
    /// installation id -> the registration version (`updated_at`) the cache reflects.
    synced: HashMap<String, i64>,
    /// installation id -> when its JWKS URL was last fetched (or tried), for which version.
    fetched: HashMap<String, (Instant, i64)>,
    /// Conflicts seen and not yet taken by [`KeyCache::take_conflicts`], and all ever reported.
    pending: Vec<KeyConflict>,
    reported: HashSet<(String, BTreeSet<String>)>,
}

/// A key id published by more than one installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConflict {
    pub kid: String,
    pub installations: BTreeSet<String>,
}

/// The shared key cache.
pub struct KeyCache {
    entries: Mutex<Entries>,
    /// One refresh at a time per installation.
    refreshing: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    outbound: Outbound,
}

/// What a key id resolves to.
#[derive(Debug, Clone)]
pub enum KeyLookup {
    /// Nobody publishes it.
    Unknown,
    /// One installation does.
    Owned {
        installation_id: String,
        keys: Vec<VerifyingKey>,
        /// Inline, or fetched within [`FRESH_FOR`]: an offline verdict may rest on them.
        fresh: bool,
    },
    /// Several do: no verdict rests on it.
    Ambiguous { installations: BTreeSet<String> },
}

impl KeyLookup {
    /// The owner's keys, if an offline verdict may rest on them.
    pub fn fresh_owner(&self) -> Option<(&str, &[VerifyingKey])> {
        match self {
            KeyLookup::Owned {
                installation_id,
                keys,
                fresh: true,
            } => Some((installation_id, keys)),
            _ => None,
        }
    }
}

impl KeyCache {
    pub fn new(outbound: Outbound) -> KeyCache {
        KeyCache {
            entries: Mutex::default(),
            refreshing: Mutex::default(),
            outbound,
        }
    }

    /// What `kid` resolves to now, without any network call.
    pub fn lookup(&self, kid: &str) -> KeyLookup {
        self.lookup_at(kid, Instant::now())
    }

    /// [`KeyCache::lookup`] as of `now`.
    fn lookup_at(&self, kid: &str, now: Instant) -> KeyLookup {
        let entries = self.entries.lock().expect("key cache lock");
        match entries.by_kid.get(kid).map(Vec::as_slice) {
            None | Some([]) => KeyLookup::Unknown,
            Some([claim]) => KeyLookup::Owned {
                installation_id: claim.installation_id.clone(),
                keys: claim.keys.clone(),
                fresh: claim
                    .fetched_at
                    .is_none_or(|at| now.saturating_duration_since(at) < FRESH_FOR),
            },
            Some(claims) => KeyLookup::Ambiguous {
                installations: claims.iter().map(|c| c.installation_id.clone()).collect(),
            },
        }
    }

    /// Conflicts found since the last call (each reported once per set of installations).
    pub fn take_conflicts(&self) -> Vec<KeyConflict> {
        std::mem::take(&mut self.entries.lock().expect("key cache lock").pending)
    }

    /// Replaces an installation's keys with `jwks` (fetched now, if any) plus its inline keys.
    fn replace(&self, installation: &Installation, jwks: Option<&Jwks>) {
        let installation_id = installation.id.as_str();
        let mut entries = self.entries.lock().expect("key cache lock");
        for claims in entries.by_kid.values_mut() {
            claims.retain(|c| c.installation_id != installation_id);
        }
        entries.by_kid.retain(|_, claims| !claims.is_empty());
        let mut mine: HashMap<String, Claim> = HashMap::new();
        let inline = installation
            .spec
            .inline_jwks
            .iter()
            .flat_map(|j| j.keys.iter().map(|k| (k, None)));
        let fetched = jwks
            .into_iter()
            .flat_map(|j| j.keys.iter().map(|k| (k, Some(Instant::now()))));
        for (jwk, fetched_at) in fetched.chain(inline) {
            let (Some(kid), Ok(key)) = (jwk.kid.as_ref(), crate::platform::jwt::key_from_jwk(jwk))
            else {
                continue;
            };
            let claim = mine.entry(kid.clone()).or_insert_with(|| Claim {
                installation_id: installation_id.to_owned(),
                keys: Vec::new(),
                fetched_at,
            });
            claim.keys.push(key);
            if fetched_at.is_none() {
                claim.fetched_at = None; // inline keys are always current
            }
        }
        for (kid, claim) in mine {
            let claims = entries.by_kid.entry(kid.clone()).or_default();
            claims.push(claim);
            if claims.len() > 1 {
                let installations: BTreeSet<String> =
                    claims.iter().map(|c| c.installation_id.clone()).collect();
                if entries
                    .reported
                    .insert((kid.clone(), installations.clone()))
                {
                    entries.pending.push(KeyConflict { kid, installations });
                }
            }
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
            for claims in entries.by_kid.values_mut() {
                claims.retain(|c| live.contains(c.installation_id.as_str()));
            }
            entries.by_kid.retain(|_, claims| !claims.is_empty());
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
                self.replace(i, None);
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
                Ok(jwks) => self.replace(i, Some(&jwks)),
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
        let bytes = crate::platform::outbound::read_capped(response, MAX_JWKS)
            .await
            .map_err(|e| anyhow::anyhow!("jwks_url: {e}"))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str) -> (p256::ecdsa::SigningKey, crate::installations::contract::Jwk) {
        let signing = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let jwk = crate::platform::jwt::jwk_of(signing.verifying_key(), kid);
        (signing, jwk)
    }

    fn installation(id: &str, inline: Vec<crate::installations::contract::Jwk>) -> Installation {
        let mut spec: crate::installations::Spec = serde_json::from_value(serde_json::json!({
            "name": id,
            "token_types": ["palantir_jwt"],
            "revoke_url": "https://example.com/revoke",
        }))
        .unwrap();
        spec.inline_jwks = Some(Jwks { keys: inline });
        Installation {
            id: id.into(),
            spec,
            created_at: 1,
            updated_at: 1,
            secret_created_at: 1,
            live_secrets: 1,
        }
    }

    fn cache() -> KeyCache {
        KeyCache::new(Outbound::new(Default::default(), Duration::from_secs(1)).unwrap())
    }

    #[test]
    fn a_key_id_claimed_twice_has_no_owner_and_is_reported_once() {
        let cache = cache();
        let (_, a) = key("shared");
        let (_, b) = key("shared");
        let (_, c) = key("mine");
        let first = installation("inst_a", vec![a, c]);
        cache.load_inline(std::slice::from_ref(&first));
        assert!(matches!(
            cache.lookup("shared").fresh_owner(),
            Some(("inst_a", [_]))
        ));
        let second = installation("inst_b", vec![b]);
        cache.load_inline(&[first.clone(), second.clone()]);
        match cache.lookup("shared") {
            KeyLookup::Ambiguous { installations } => {
                assert_eq!(installations, ["inst_a".into(), "inst_b".into()].into())
            }
            other => panic!("{other:?}"),
        }
        assert!(cache.lookup("shared").fresh_owner().is_none());
        assert!(
            cache.lookup("mine").fresh_owner().is_some(),
            "others unaffected"
        );
        assert!(matches!(cache.lookup("nobody"), KeyLookup::Unknown));
        let conflicts = cache.take_conflicts();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].kid, "shared");
        // Seen again (another registry sync): not reported again.
        cache.load_inline(&[
            first.clone(),
            Installation {
                updated_at: 2,
                ..second
            },
        ]);
        assert!(cache.take_conflicts().is_empty());
        // The second claimant goes: the first owns it again.
        cache.load_inline(&[first]);
        assert!(matches!(
            cache.lookup("shared").fresh_owner(),
            Some(("inst_a", _))
        ));
    }

    #[test]
    fn fetched_keys_back_a_verdict_only_while_fresh() {
        let cache = cache();
        let (_, jwk) = key("fetched");
        let owner = installation("inst_a", Vec::new());
        cache.replace(&owner, Some(&Jwks { keys: vec![jwk] }));
        assert!(cache.lookup("fetched").fresh_owner().is_some());
        let later = Instant::now() + FRESH_FOR + Duration::from_secs(1);
        match cache.lookup_at("fetched", later) {
            KeyLookup::Owned { fresh, .. } => assert!(!fresh),
            other => panic!("{other:?}"),
        }
        assert!(cache.lookup_at("fetched", later).fresh_owner().is_none());
    }
}
