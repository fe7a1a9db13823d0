//! Offline validators: checks that run on a candidate secret without asking anyone.
//!
//! A checksum or a signature structure lets Spillway label a candidate on its own: a GitHub classic
//! token whose CRC32 does not match was never issued, and a Foundry JWT whose header does not decode is
//! not a Foundry token. Validators run only on candidates (after the regex matched), never on the
//! whole buffer. This module owns no I/O.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

/// One offline check a rule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Validator {
    /// GitHub style: last 6 characters are base62(crc32) of the body between the prefix (up to the
    /// last `_`) and the checksum.
    #[serde(rename = "crc32-base62")]
    Crc32Base62,
    /// GitLab routable tokens: last 7 characters are base36(crc32) of everything before them.
    #[serde(rename = "crc32-base36")]
    Crc32Base36,
    /// Three base64url parts whose header and payload are JSON objects with the rule's fields.
    #[serde(rename = "jwt")]
    Jwt,
}

/// What the JWT validator requires, and how it names the token's subtype.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// Header fields that must have exactly these string values (e.g. `alg = "ES256"`).
    #[serde(default)]
    pub header_equals: std::collections::BTreeMap<String, String>,
    /// Header fields that must be present (e.g. Foundry's `plntr` key id).
    #[serde(default)]
    pub header_fields: Vec<String>,
    /// Payload fields that must be present.
    #[serde(default)]
    pub payload_fields: Vec<String>,
    /// Subtype reported when the payload carries `exp` (Foundry: a session token).
    pub exp_present_subtype: Option<String>,
    /// Subtype reported when it does not (Foundry: a user-generated token).
    pub exp_absent_subtype: Option<String>,
}

/// Facts read from a JWT that passed validation; nothing here is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtFacts {
    /// The key id the token names: the header's `kid`, or Foundry's `plntr`.
    pub key_id: Option<String>,
    /// `exp` claim (seconds since the epoch), when present.
    pub expires_at: Option<i64>,
    /// The subtype from [`JwtSpec`], e.g. `session` or `user-generated`.
    pub subtype: Option<String>,
}

/// Why a candidate failed a validator. Messages never contain the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("checksum does not match")]
    Checksum,
    #[error("too short to carry a checksum")]
    TooShort,
    #[error("not a JWT: expected three base64url parts")]
    JwtShape,
    #[error("JWT header or payload is not base64url-encoded JSON")]
    JwtEncoding,
    #[error("JWT header or payload lacks a required field")]
    JwtFields,
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BASE36: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// `n` in the given alphabet, left-padded with the alphabet's zero to `width` characters.
fn encode_padded(mut n: u32, alphabet: &[u8], width: usize) -> Vec<u8> {
    let base = alphabet.len() as u32;
    let mut out = vec![alphabet[0]; width];
    let mut i = width;
    while n > 0 && i > 0 {
        i -= 1;
        out[i] = alphabet[(n % base) as usize];
        n /= base;
    }
    out
}

/// The 6-character GitHub-style checksum of `body`.
pub fn crc32_base62(body: &[u8]) -> String {
    String::from_utf8(encode_padded(crc32fast::hash(body), BASE62, 6)).expect("ASCII alphabet")
}

/// The 7-character GitLab-style checksum of `body`.
pub fn crc32_base36(body: &[u8]) -> String {
    String::from_utf8(encode_padded(crc32fast::hash(body), BASE36, 7)).expect("ASCII alphabet")
}

pub fn check_crc32_base62(secret: &[u8]) -> Result<(), Invalid> {
    let body_start = secret.iter().rposition(|&b| b == b'_').map_or(0, |i| i + 1);
    if secret.len() < body_start + 7 {
        return Err(Invalid::TooShort);
    }
    let (body, sum) = secret[body_start..].split_at(secret.len() - body_start - 6);
    if crc32_base62(body).as_bytes() == sum {
        Ok(())
    } else {
        Err(Invalid::Checksum)
    }
}

pub fn check_crc32_base36(secret: &[u8]) -> Result<(), Invalid> {
    if secret.len() < 8 {
        return Err(Invalid::TooShort);
    }
    let (body, sum) = secret.split_at(secret.len() - 7);
    if crc32_base36(body).as_bytes() == sum {
        Ok(())
    } else {
        Err(Invalid::Checksum)
    }
}

fn decode_json_object(part: &[u8]) -> Result<Map<String, Value>, Invalid> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Invalid::JwtEncoding)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Invalid::JwtEncoding),
    }
}

/// Checks a JWT's structure against `spec` and returns what it says about itself. The signature is
/// not checked here: that needs the issuing installation's key.
pub fn check_jwt(secret: &[u8], spec: &JwtSpec) -> Result<JwtFacts, Invalid> {
    let mut parts = secret.split(|&b| b == b'.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Invalid::JwtShape);
    };
    if signature.is_empty() || URL_SAFE_NO_PAD.decode(signature).is_err() {
        return Err(Invalid::JwtEncoding);
    }
    let header = decode_json_object(header)?;
    let payload = decode_json_object(payload)?;
    let header_ok = spec
        .header_equals
        .iter()
        .all(|(k, v)| header.get(k).and_then(Value::as_str) == Some(v.as_str()))
        && spec.header_fields.iter().all(|k| header.contains_key(k));
    if !header_ok || !spec.payload_fields.iter().all(|k| payload.contains_key(k)) {
        return Err(Invalid::JwtFields);
    }
    let key_id = ["kid", "plntr"]
        .iter()
        .find_map(|k| header.get(*k).and_then(Value::as_str))
        .map(str::to_owned);
    let expires_at = payload.get("exp").and_then(Value::as_i64);
    let subtype = match payload.contains_key("exp") {
        true => spec.exp_present_subtype.clone(),
        false => spec.exp_absent_subtype.clone(),
    };
    Ok(JwtFacts {
        key_id,
        expires_at,
        subtype,
    })
}

/// Shannon entropy of `bytes` in bits per byte.
pub fn shannon_entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 / n)
        .map(|p| -p * p.log2())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_published_vectors_check_out() {
        assert_eq!(
            check_crc32_base62(b"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"),
            Ok(())
        );
        assert_eq!(
            check_crc32_base62(b"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"),
            Ok(())
        );
        assert_eq!(
            check_crc32_base62(b"ghp_zQWBuTSOoRi4A9spHcVY5ncnsDkxkJ0mLq18"),
            Err(Invalid::Checksum)
        );
        assert_eq!(
            check_crc32_base62(b"gho_16C7e42F292c6912E7710c838347Ae178B4a"),
            Err(Invalid::Checksum)
        );
    }

    #[test]
    fn base36_checksum_covers_everything_before_it() {
        let body = "glpat-abcdefghijklmnopqrstuvwxyz0123.01";
        let token = format!("{body}{}", crc32_base36(body.as_bytes()));
        assert_eq!(check_crc32_base36(token.as_bytes()), Ok(()));
        let mut tampered = token.into_bytes();
        tampered[8] = b'X';
        assert_eq!(check_crc32_base36(&tampered), Err(Invalid::Checksum));
    }

    #[test]
    fn padding_uses_the_alphabet_zero() {
        assert_eq!(
            String::from_utf8(encode_padded(61, BASE62, 6)).unwrap(),
            "00000z"
        );
        assert_eq!(
            String::from_utf8(encode_padded(0, BASE36, 7)).unwrap(),
            "0000000"
        );
    }

    #[test]
    fn jwt_subtype_follows_exp() {
        let spec = JwtSpec {
            header_equals: [("alg".to_owned(), "ES256".to_owned())].into(),
            header_fields: vec!["plntr".into()],
            payload_fields: vec!["sub".into()],
            exp_present_subtype: Some("session".into()),
            exp_absent_subtype: Some("user-generated".into()),
        };
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let header = enc(r#"{"plntr":"AAAAAAAAAAAAAAAAAAAAAA==","alg":"ES256"}"#);
        let sig = enc("0123456789012345678901234567890123456789012345678901234567890123");
        let session = format!("{header}.{}.{sig}", enc(r#"{"sub":"u","exp":1700000000}"#));
        let facts = check_jwt(session.as_bytes(), &spec).unwrap();
        assert_eq!(facts.subtype.as_deref(), Some("session"));
        assert_eq!(facts.expires_at, Some(1_700_000_000));
        assert_eq!(facts.key_id.as_deref(), Some("AAAAAAAAAAAAAAAAAAAAAA=="));
        let user = format!(
            "{header}.{}.{sig}",
            enc(r#"{"sub":"u","jti":"j","org":"o"}"#)
        );
        assert_eq!(
            check_jwt(user.as_bytes(), &spec)
                .unwrap()
                .subtype
                .as_deref(),
            Some("user-generated")
        );
        let hs = format!(
            "{}.{}.{sig}",
            enc(r#"{"plntr":"x","alg":"HS256"}"#),
            enc(r#"{"sub":"u"}"#)
        );
        assert_eq!(check_jwt(hs.as_bytes(), &spec), Err(Invalid::JwtFields));
        assert_eq!(check_jwt(b"a.b", &spec), Err(Invalid::JwtShape));
    }

    #[test]
    fn entropy_separates_hex_from_base64() {
        assert!(shannon_entropy(b"0123456789abcdef0123456789abcdef01234567") <= 4.0);
        assert_eq!(shannon_entropy(b"aaaa"), 0.0);
    }
}
