//! The senders' side of each protocol, written from their published code and documentation rather
//! than from Spillway's (so a test that passes means Spillway speaks *their* protocol): GitHub-style
//! partner alert signing and key lists, Standard Webhooks, Twilio and GitHub HMAC signatures, and
//! fresh tokens with valid checksums.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use sha2::Sha256;

/// A fresh GitHub classic PAT with a valid CRC32 checksum: never seen before this run.
pub fn fresh_github_token() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    let body: String = (0..30)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!(
        "ghp_{body}{}",
        spillway::scanner::validate::crc32_base62(body.as_bytes())
    )
}

/// A secret-scanning partner (GitHub, GitLab, deps.dev): signs bodies with ECDSA P-256 (DER,
/// base64) and publishes its key in GitHub's key-list format.
pub struct PartnerSigner {
    pub id: String,
    key: p256::ecdsa::SigningKey,
}

impl PartnerSigner {
    pub fn new(id: &str) -> PartnerSigner {
        PartnerSigner {
            id: id.into(),
            key: p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng),
        }
    }

    pub fn key_list(&self) -> String {
        let pem = self
            .key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        serde_json::json!({ "public_keys": [{ "key_identifier": self.id, "key": pem, "is_current": true }] }).to_string()
    }

    pub fn sign(&self, body: &[u8]) -> String {
        let sig: p256::ecdsa::Signature = self.key.sign(body);
        STANDARD.encode(sig.to_der().as_bytes())
    }

    /// Serves the key list on a free loopback port; returns its URL.
    pub async fn serve_keys(&self) -> String {
        let list = self.key_list();
        let app = axum::Router::new().route(
            "/keys",
            axum::routing::get(
                move || async move { ([("content-type", "application/json")], list) },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/keys")
    }
}

/// Standard Webhooks headers for `body`, signed now with the HMAC `key` as the official libraries
/// sign (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body`).
pub fn standard_webhooks_headers(key: &[u8], id: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", ts),
        (
            "webhook-signature",
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())),
        ),
    ]
}

/// Twilio's signature as its official validators compute it (PyPI `twilio` `RequestValidator`, npm
/// `twilio` `getExpectedTwilioSignature`): the URL, then each parameter name in sorted order with
/// each of its *distinct* values in sorted order; HMAC-SHA1 (or HMAC-SHA256 for SharedKey webhooks).
pub fn twilio_signature(key: &str, url: &str, params: &[(&str, &str)], sha256: bool) -> String {
    let mut names: Vec<&str> = params.iter().map(|(k, _)| *k).collect();
    names.sort();
    names.dedup();
    let mut text = url.to_owned();
    for name in names {
        let mut values: Vec<&str> = params
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .collect();
        values.sort();
        values.dedup();
        for v in values {
            text.push_str(name);
            text.push_str(v);
        }
    }
    if sha256 {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(text.as_bytes());
        STANDARD.encode(mac.finalize().into_bytes())
    } else {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(text.as_bytes());
        STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// GitHub's `X-Hub-Signature-256` for `body`.
pub fn github_hmac(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
