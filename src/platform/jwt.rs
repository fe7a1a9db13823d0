//! ES256 JSON Web Tokens as Foundry-style installations issue them: header
//! `{"plntr":"<b64 16 bytes>","alg":"ES256"}` (or a standard `kid`), signature `r || s` (64 bytes,
//! base64url). Spillway verifies them offline against an installation's JWKS; the reference
//! installation mints them. No I/O.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde_json::Value;

use crate::installations::contract::Jwk;

/// Why a token or key was not usable. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT: expected three base64url parts")]
    Shape,
    #[error("JWT {0} is not base64url JSON")]
    Part(&'static str),
    #[error("JWT header alg is not ES256")]
    Alg,
    #[error("JWT header has no plntr or kid")]
    NoKeyId,
    #[error("JWT signature is not 64 bytes of r || s")]
    SignatureShape,
    #[error("JWK is not an EC P-256 public key: {0}")]
    Jwk(&'static str),
}

/// A decoded (not yet verified) JWT.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub header: Value,
    pub claims: Value,
    signing_input_len: usize,
    signature: Vec<u8>,
}

impl Decoded {
    /// The key id: Foundry's `plntr`, else the standard `kid`.
    pub fn key_id(&self) -> Option<&str> {
        self.header
            .get("plntr")
            .or_else(|| self.header.get("kid"))
            .and_then(Value::as_str)
    }

    /// `exp` in seconds since the epoch, when present.
    pub fn expires_at(&self) -> Option<i64> {
        self.claims.get("exp").and_then(Value::as_i64)
    }
}

fn b64_json(part: &str, what: &'static str) -> Result<Value, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| JwtError::Part(what))?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Part(what))
}

/// Splits and decodes `token`; checks `alg` is ES256 and a key id is present.
pub fn decode(token: &str) -> Result<Decoded, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Shape);
    };
    let header = b64_json(h, "header")?;
    let claims = b64_json(c, "payload")?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err(JwtError::Alg);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::SignatureShape)?;
    let decoded = Decoded {
        header,
        claims,
        signing_input_len: h.len() + 1 + c.len(),
        signature,
    };
    if decoded.key_id().is_none() {
        return Err(JwtError::NoKeyId);
    }
    Ok(decoded)
}

/// True when `decoded` (from `token`) carries a valid ES256 signature by `key`.
pub fn verify(token: &str, decoded: &Decoded, key: &VerifyingKey) -> bool {
    // High-S too: JOSE does not require low-S, and issuers do not normalise.
    crate::platform::ecdsa::verify_fixed(
        key,
        &token.as_bytes()[..decoded.signing_input_len],
        &decoded.signature,
    )
}

/// The verifying key of an EC P-256 JWK.
pub fn key_from_jwk(jwk: &Jwk) -> Result<VerifyingKey, JwtError> {
    if jwk.kty != "EC" {
        return Err(JwtError::Jwk("kty must be EC"));
    }
    if jwk.crv.as_deref() != Some("P-256") {
        return Err(JwtError::Jwk("crv must be P-256"));
    }
    let coord = |c: &Option<String>, name: &'static str| -> Result<[u8; 32], JwtError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(c.as_deref().ok_or(JwtError::Jwk(name))?)
            .map_err(|_| JwtError::Jwk(name))?;
        bytes.try_into().map_err(|_| JwtError::Jwk(name))
    };
    let (x, y) = (coord(&jwk.x, "x")?, coord(&jwk.y, "y")?);
    let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    VerifyingKey::from_encoded_point(&point).map_err(|_| JwtError::Jwk("point not on the curve"))
}

/// The public JWK of `key` under `kid`.
pub fn jwk_of(key: &VerifyingKey, kid: &str) -> Jwk {
    let point = key.to_encoded_point(false);
    Jwk {
        kty: "EC".into(),
        crv: Some("P-256".into()),
        x: point.x().map(|x| URL_SAFE_NO_PAD.encode(x)),
        y: point.y().map(|y| URL_SAFE_NO_PAD.encode(y)),
        kid: Some(kid.into()),
        alg: Some("ES256".into()),
        use_: Some("sig".into()),
    }
}

/// A Foundry-style token: header `{"plntr": plntr, "alg": "ES256"}`, the given claims.
pub fn mint(key: &SigningKey, plntr: &str, claims: &Value) -> String {
    // Field order matters to the prefix (`eyJwbG50ciI6`): plntr first, as Foundry writes it.
    let header = format!(
        r#"{{"plntr":{},"alg":"ES256"}}"#,
        Value::String(plntr.into())
    );
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_only_under_their_key() {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let other = SigningKey::random(&mut rand::rngs::OsRng);
        let claims =
            serde_json::json!({"sub": "u1", "jti": "j1", "org": "o1", "exp": 2_000_000_000});
        let token = mint(&key, "AAAAAAAAAAAAAAAAAAAAAA==", &claims);
        assert!(token.starts_with("eyJwbG50ciI6"), "Foundry header prefix");
        let d = decode(&token).unwrap();
        assert_eq!(d.key_id(), Some("AAAAAAAAAAAAAAAAAAAAAA=="));
        assert_eq!(d.expires_at(), Some(2_000_000_000));
        let jwk = jwk_of(key.verifying_key(), "k");
        let public = key_from_jwk(&jwk).unwrap();
        assert!(verify(&token, &d, &public));
        assert!(!verify(&token, &d, other.verifying_key()));
        // A changed payload no longer verifies.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"sub":"admin"}"#);
        parts[1] = &forged;
        let forged_token = parts.join(".");
        let fd = decode(&forged_token).unwrap();
        assert!(!verify(&forged_token, &fd, &public));
    }

    #[test]
    fn malformed_tokens_and_keys_are_named() {
        assert_eq!(decode("a.b").unwrap_err(), JwtError::Shape);
        let hs = format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"k"}"#),
            URL_SAFE_NO_PAD.encode("{}")
        );
        assert_eq!(decode(&hs).unwrap_err(), JwtError::Alg);
        let mut jwk = jwk_of(
            SigningKey::random(&mut rand::rngs::OsRng).verifying_key(),
            "k",
        );
        jwk.crv = Some("P-384".into());
        assert_eq!(
            key_from_jwk(&jwk).unwrap_err(),
            JwtError::Jwk("crv must be P-256")
        );
    }
}
