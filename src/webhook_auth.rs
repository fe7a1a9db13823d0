//! Request authentication for generic listeners, exactly as each sender defines it (vectors in
//! tests): Standard Webhooks (`v1` HMAC-SHA256 and `v1a` Ed25519 over `id.timestamp.body`, 5-minute
//! tolerance, several signatures for rotation), Twilio (`X-Twilio-Signature`: HMAC-SHA1 over the URL
//! and the sorted form parameters) and GitHub's HMAC webhooks (`X-Hub-Signature-256`). Comparisons
//! are constant-time. Pure functions: no I/O, no clock (callers pass `now`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

/// Why a request was not authenticated. Messages name the header and never echo a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("header {0} is malformed")]
    Malformed(&'static str),
    #[error("webhook-timestamp is outside the 5-minute tolerance")]
    Stale,
    #[error("no signature in {0} verifies")]
    BadSignature(&'static str),
    #[error("listener secret is not usable for this protocol: {0}")]
    Secret(&'static str),
}

/// Standard Webhooks tolerance for `webhook-timestamp`, in seconds either way.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// Verifies a Standard Webhooks request. `secret` is `whsec_<base64>` (HMAC, `v1`) or
/// `whpk_<base64>` (Ed25519 public key, `v1a`).
pub fn standard_webhooks(
    secret: &str,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> Result<(), AuthError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| AuthError::Malformed("webhook-timestamp"))?;
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err(AuthError::Stale);
    }
    let mut signed = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.trim().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let (scheme, key) = if let Some(k) = secret.strip_prefix("whsec_") {
        (
            "v1",
            STANDARD
                .decode(k)
                .map_err(|_| AuthError::Secret("whsec_ secret is not base64"))?,
        )
    } else if let Some(k) = secret.strip_prefix("whpk_") {
        (
            "v1a",
            STANDARD
                .decode(k)
                .map_err(|_| AuthError::Secret("whpk_ key is not base64"))?,
        )
    } else {
        return Err(AuthError::Secret("expected whsec_ or whpk_"));
    };
    for candidate in signatures.split(' ').filter(|s| !s.is_empty()) {
        let Some((version, sig)) = candidate.split_once(',') else {
            continue;
        };
        if version != scheme || sig.is_empty() {
            continue;
        }
        let Ok(sig) = STANDARD.decode(sig) else {
            continue;
        };
        let ok = match scheme {
            "v1" => {
                let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
                mac.update(&signed);
                mac.verify_slice(&sig).is_ok()
            }
            _ => {
                let (Ok(pk), Ok(sig)) = (
                    <[u8; 32]>::try_from(key.as_slice())
                        .map_err(|_| ())
                        .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).map_err(|_| ())),
                    ed25519_dalek::Signature::from_slice(&sig),
                ) else {
                    continue;
                };
                pk.verify_strict(&signed, &sig).is_ok()
            }
        };
        if ok {
            return Ok(());
        }
    }
    Err(AuthError::BadSignature("webhook-signature"))
}

/// Equal in time independent of where the first difference is (shared secrets presented raw, e.g.
/// GitLab's revocation secret or an installation's bearer secret in pull mode).
pub fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// A new Standard Webhooks HMAC secret: `whsec_` + base64 of 32 random bytes.
pub fn generate_whsec() -> String {
    use rand::RngCore as _;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    format!("whsec_{}", STANDARD.encode(key))
}

/// The `webhook-signature` value for a message signed with every `whsec_` secret in `secrets`
/// (space-separated `v1,<base64>` entries, so a receiver that knows either secret of a rotation
/// verifies it).
pub fn sign_standard_webhooks(
    secrets: &[&str],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, AuthError> {
    let mut out = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let key = secret
            .strip_prefix("whsec_")
            .and_then(|k| STANDARD.decode(k).ok())
            .ok_or(AuthError::Secret("expected whsec_<base64>"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        out.push(format!(
            "v1,{}",
            STANDARD.encode(mac.finalize().into_bytes())
        ));
    }
    Ok(out.join(" "))
}

fn twilio_mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Hmac<Sha1> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    mac
}

/// Twilio's expected `X-Twilio-Signature` for a request to `url` with form `params`.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    STANDARD.encode(twilio_mac(auth_token, url, params).finalize().into_bytes())
}

/// Verifies `X-Twilio-Signature` in constant time.
pub fn twilio(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> Result<(), AuthError> {
    let presented = STANDARD
        .decode(header.trim())
        .map_err(|_| AuthError::Malformed("x-twilio-signature"))?;
    twilio_mac(auth_token, url, params)
        .verify_slice(&presented)
        .map_err(|_| AuthError::BadSignature("x-twilio-signature"))
}

/// Verifies GitHub's `X-Hub-Signature-256: sha256=<hex>` in constant time.
pub fn github_hmac(secret: &str, header: &str, body: &[u8]) -> Result<(), AuthError> {
    let hex_sig = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(AuthError::Malformed("x-hub-signature-256"))?;
    let presented =
        hex::decode(hex_sig).map_err(|_| AuthError::Malformed("x-hub-signature-256"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    mac.verify_slice(&presented)
        .map_err(|_| AuthError::BadSignature("x-hub-signature-256"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_from_either_rotation_secret_verify() {
        let (old, new) = (generate_whsec(), generate_whsec());
        let header = sign_standard_webhooks(&[&old, &new], "msg_1", 1_700_000_000, b"{}").unwrap();
        assert_eq!(header.split(' ').count(), 2);
        for secret in [&old, &new] {
            assert_eq!(
                standard_webhooks(secret, "msg_1", "1700000000", &header, b"{}", 1_700_000_010),
                Ok(())
            );
        }
        let other = generate_whsec();
        assert!(
            standard_webhooks(&other, "msg_1", "1700000000", &header, b"{}", 1_700_000_010)
                .is_err()
        );
        assert!(
            standard_webhooks(&old, "msg_1", "1700000000", &header, b"{ }", 1_700_000_010).is_err()
        );
        assert!(sign_standard_webhooks(&["nope"], "m", 1, b"").is_err());
    }

    #[test]
    fn github_hmac_round_trips_and_rejects_tampering() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"It's a Secret to Everybody").unwrap();
        mac.update(b"Hello, World!");
        let header = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        // GitHub's documented example digest for this secret and payload.
        assert_eq!(
            header,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert_eq!(
            github_hmac("It's a Secret to Everybody", &header, b"Hello, World!"),
            Ok(())
        );
        assert!(github_hmac("It's a Secret to Everybody", &header, b"Hello, World?").is_err());
        assert_eq!(
            github_hmac("s", "sha1=00", b"x"),
            Err(AuthError::Malformed("x-hub-signature-256"))
        );
    }
}
