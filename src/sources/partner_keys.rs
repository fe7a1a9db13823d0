//! Verifying keys of secret-scanning partner programs (GitHub first; GitLab and deps.dev use the
//! same scheme): fetched from the platform's key URL, cached, refreshed when an unknown key id
//! appears, single-flight and rate-limited so forged ids cannot make Spillway hammer the platform.
//!
//! The signature is standard base64 of a DER ECDSA P-256 signature over SHA-256 of the raw body.
//! High-S signatures occur and verify.
//!
//! Must not import anything outside `platform`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

/// At most one refresh per this interval, however many unknown key ids arrive.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Largest key list read (GitHub's is a few KB): a longer one is abandoned while it streams.
pub const MAX_KEY_LIST: usize = 1 << 20;

#[derive(Debug, Deserialize)]
struct KeyList {
    public_keys: Vec<PublishedKey>,
}

#[derive(Debug, Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
    #[serde(default)]
    is_current: bool,
}

/// Why a signature was not accepted. `Malformed*` are the caller's fault (400); the rest are 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signature header is not base64 of a DER ECDSA signature")]
    MalformedSignature,
    #[error("unknown public key identifier")]
    UnknownKey,
    #[error("signature does not verify against the request body")]
    BadSignature,
}

struct Cache {
    keys: HashMap<String, (VerifyingKey, bool)>,
    refreshed_at: Option<Instant>,
}

/// A platform's verifying keys.
pub struct PartnerKeys {
    url: String,
    client: reqwest::Client,
    cache: RwLock<Cache>,
    refresh: Mutex<()>,
}

impl PartnerKeys {
    pub fn new(url: impl Into<String>, client: reqwest::Client) -> Self {
        PartnerKeys {
            url: url.into(),
            client,
            cache: RwLock::new(Cache {
                keys: HashMap::new(),
                refreshed_at: None,
            }),
            refresh: Mutex::new(()),
        }
    }

    /// Fetches the key list (one attempt). Errors are logged, not returned: verification then
    /// reports the key as unknown.
    async fn fetch(&self) -> anyhow::Result<HashMap<String, (VerifyingKey, bool)>> {
        let response = self
            .client
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "key endpoint answered {status}");
        let bytes = crate::platform::outbound::read_capped(response, MAX_KEY_LIST)
            .await
            .map_err(|e| anyhow::anyhow!("key endpoint: {e}"))?;
        let list: KeyList = serde_json::from_slice(&bytes)?;
        let mut keys = HashMap::new();
        for k in list.public_keys {
            match VerifyingKey::from_public_key_pem(&k.key) {
                Ok(key) => {
                    keys.insert(k.key_identifier, (key, k.is_current));
                }
                Err(e) => {
                    tracing::warn!(key_id = %k.key_identifier, error = %e, "skipping unparseable partner key")
                }
            }
        }
        Ok(keys)
    }

    /// Refreshes unless another task just did, or the last refresh was too recent.
    async fn refresh(&self, asked_at: Instant) {
        let _only_one = self.refresh.lock().await;
        if let Some(last) = self.cache.read().await.refreshed_at
            && (last >= asked_at || last.elapsed() < MIN_REFRESH_INTERVAL)
        {
            return;
        }
        let fetched = self.fetch().await;
        let mut cache = self.cache.write().await;
        cache.refreshed_at = Some(Instant::now());
        match fetched {
            Ok(keys) => cache.keys = keys,
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "cannot refresh partner keys; keeping the cached ones")
            }
        }
    }

    async fn lookup(&self, key_id: &str) -> Option<(VerifyingKey, bool)> {
        self.cache.read().await.keys.get(key_id).cloned()
    }

    /// Verifies `signature_b64` over `body` with the key `key_id`. Returns whether that key is the
    /// platform's current one.
    pub async fn verify(
        &self,
        key_id: &str,
        signature_b64: &str,
        body: &[u8],
    ) -> Result<bool, SignatureError> {
        let der = STANDARD
            .decode(signature_b64.trim())
            .map_err(|_| SignatureError::MalformedSignature)?;
        Signature::from_der(&der).map_err(|_| SignatureError::MalformedSignature)?;
        let asked_at = Instant::now();
        let (key, current) = match self.lookup(key_id).await {
            Some(found) => found,
            None => {
                self.refresh(asked_at).await;
                self.lookup(key_id)
                    .await
                    .ok_or(SignatureError::UnknownKey)?
            }
        };
        if !crate::platform::ecdsa::verify_der(&key, body, &der) {
            return Err(SignatureError::BadSignature);
        }
        Ok(current)
    }
}
