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

/// A Standard Webhooks verifying key, parsed from a listener secret in any form the official
/// libraries (PyPI/npm `standardwebhooks`) accept: `whsec_` + base64 or the bare base64, padded or
/// not (an HMAC key, `v1`), and `whpk_` + base64 of an Ed25519 public key (`v1a`).
pub enum StandardWebhooksKey {
    Hmac(Vec<u8>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl StandardWebhooksKey {
    /// The key, or why `secret` cannot be one (named so `listener create` can say it).
    pub fn parse(secret: &str) -> Result<Self, AuthError> {
        if let Some(k) = secret.strip_prefix("whpk_") {
            let bytes =
                decode_base64_lenient(k).ok_or(AuthError::Secret("whpk_ key is not base64"))?;
            let bytes = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                AuthError::Secret("whpk_ key must be 32 bytes (Ed25519 public key)")
            })?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map_err(|_| AuthError::Secret("whpk_ key is not an Ed25519 public key"))?;
            return Ok(StandardWebhooksKey::Ed25519(key));
        }
        let k = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = decode_base64_lenient(k).ok_or(AuthError::Secret(
            "expected whsec_ followed by base64 (or the bare base64 of the key)",
        ))?;
        if key.is_empty() {
            return Err(AuthError::Secret("the webhook secret is empty"));
        }
        Ok(StandardWebhooksKey::Hmac(key))
    }

    fn scheme(&self) -> &'static str {
        match self {
            StandardWebhooksKey::Hmac(_) => "v1",
            StandardWebhooksKey::Ed25519(_) => "v1a",
        }
    }

    fn verifies(&self, signed: &[u8], signature: &[u8]) -> bool {
        match self {
            StandardWebhooksKey::Hmac(key) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
                mac.update(signed);
                mac.verify_slice(signature).is_ok()
            }
            StandardWebhooksKey::Ed25519(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify_strict(signed, &sig).is_ok()),
        }
    }
}

/// Standard base64 with or without its padding (the Python library pads before decoding).
fn decode_base64_lenient(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    let trimmed = text.trim_end_matches('=');
    STANDARD_NO_PAD.decode(trimmed).ok()
}

/// Verifies a Standard Webhooks request. `secret` is any form [`StandardWebhooksKey::parse`] takes.
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
    let key = StandardWebhooksKey::parse(secret)?;
    let mut signed = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(ts.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    for candidate in signatures.split(' ').filter(|s| !s.is_empty()) {
        let Some((version, sig)) = candidate.split_once(',') else {
            continue;
        };
        if version != key.scheme() || sig.is_empty() {
            continue;
        }
        let Ok(sig) = STANDARD.decode(sig) else {
            continue;
        };
        if key.verifies(&signed, &sig) {
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

/// The hash a Twilio signature uses: HMAC-SHA1 with the account's auth token (the default), or what
/// `X-Twilio-Webhooks-Signature-Settings: key=...,algorithm=HMAC_SHA256` names for webhooks signed
/// with a SharedKey secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwilioAlgorithm {
    HmacSha1,
    HmacSha256,
}

impl TwilioAlgorithm {
    /// The algorithm a `X-Twilio-Webhooks-Signature-Settings` value names (absent: HMAC-SHA1), as
    /// the official validators read it.
    pub fn from_settings(header: Option<&str>) -> Result<Self, AuthError> {
        let named = header.unwrap_or("").split(',').find_map(|part| {
            let (name, value) = part.split_once('=')?;
            (name.trim() == "algorithm" && !value.trim().is_empty()).then(|| value.trim())
        });
        match named.map(str::to_ascii_uppercase).as_deref() {
            None | Some("HMAC_SHA1") => Ok(TwilioAlgorithm::HmacSha1),
            Some("HMAC_SHA256") => Ok(TwilioAlgorithm::HmacSha256),
            Some(_) => Err(AuthError::Malformed("x-twilio-webhooks-signature-settings")),
        }
    }
}

/// The string Twilio signs: the URL, then for each parameter name in sorted order each of its
/// distinct values in sorted order, name and value concatenated.
fn twilio_signed_text(url: &str, params: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut text = url.as_bytes().to_vec();
    for (k, v) in sorted {
        text.extend_from_slice(k.as_bytes());
        text.extend_from_slice(v.as_bytes());
    }
    text
}

fn twilio_digest(algorithm: TwilioAlgorithm, key: &str, text: &[u8]) -> Vec<u8> {
    match algorithm {
        TwilioAlgorithm::HmacSha1 => {
            let mut mac = Hmac::<Sha1>::new_from_slice(key.as_bytes()).expect("any key length");
            mac.update(text);
            mac.finalize().into_bytes().to_vec()
        }
        TwilioAlgorithm::HmacSha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
            mac.update(text);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

/// Twilio's expected `X-Twilio-Signature` (HMAC-SHA1) for a request to `url` with form `params`.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    STANDARD.encode(twilio_digest(
        TwilioAlgorithm::HmacSha1,
        auth_token,
        &twilio_signed_text(url, params),
    ))
}

/// The URL as Twilio may have signed it: as given, without its port, and with the scheme's
/// default port (the official validators try each, since Twilio's back ends differ).
fn twilio_url_forms(url: &str) -> Vec<String> {
    let mut forms = vec![url.to_owned()];
    let Some(scheme_end) = url.find("://") else {
        return forms;
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host_port = &authority[host_start..];
    // A colon starts the port only after an IPv6 literal's closing bracket.
    let after_bracket = host_port.rfind(']').map_or(0, |i| i + 1);
    let head = &url[..authority_start + host_start];
    let rest = &url[authority_end..];
    match host_port[after_bracket..].find(':') {
        Some(colon) => forms.push(format!(
            "{head}{}{rest}",
            &host_port[..after_bracket + colon]
        )),
        None => {
            let port = if url[..scheme_end].eq_ignore_ascii_case("https") {
                443
            } else {
                80
            };
            forms.push(format!("{head}{host_port}:{port}{rest}"));
        }
    }
    forms
}

/// Verifies `X-Twilio-Signature` in constant time, as the official validators do: over the URL with
/// and without its port; form `params` with repeated identical values counted once; for a JSON
/// body, `params` empty and the URL's `bodySHA256` parameter matching the body.
pub fn twilio(
    secret: &str,
    algorithm: TwilioAlgorithm,
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> Result<(), AuthError> {
    let presented = STANDARD
        .decode(header.trim())
        .map_err(|_| AuthError::Malformed("x-twilio-signature"))?;
    let mut ok = false;
    for form in twilio_url_forms(url) {
        let expected = twilio_digest(algorithm, secret, &twilio_signed_text(&form, params));
        ok |= constant_time_eq(&expected, &presented);
    }
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadSignature("x-twilio-signature"))
    }
}

/// The `bodySHA256` query parameter of a Twilio URL, if any (JSON-body webhooks).
pub fn twilio_body_sha256(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "bodySHA256")
        .map(|(_, v)| v.into_owned())
}

/// Verifies that `body` hashes to the hex `expected` (Twilio's `bodySHA256`), in constant time.
pub fn twilio_body(expected: &str, body: &[u8]) -> Result<(), AuthError> {
    let actual = hex::encode(Sha256::digest(body));
    if constant_time_eq(
        actual.as_bytes(),
        expected.trim().to_ascii_lowercase().as_bytes(),
    ) {
        Ok(())
    } else {
        Err(AuthError::BadSignature("bodySHA256"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
