//! The installation contract's wire format (docs/INSTALLATIONS.md, docs/openapi/installation.json):
//! what Spillway sends to an installation's verify, revoke and notify URLs, what it accepts back,
//! the pull-mode pages, and the JWKS an installation publishes. Shared by the service and by the
//! reference installation, so both sides speak exactly one format.
//!
//! Every call Spillway makes is a `POST` of JSON signed as a Standard Webhook (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature` with one `v1,` signature per live shared secret) and
//! carries a deterministic `Idempotency-Key`. Tokens travel as `token_sha256` (lowercase hex);
//! the raw `token` is added only for installations registered with delivery `raw`.
//!
//! Must not import anything but the secret type: the reference installation shares it.

use serde::{Deserialize, Serialize, Serializer};

use crate::scanner::TokenSecret;

/// Writes a raw token onto the wire: the one place a contract body exposes it.
fn expose_token<S: Serializer>(token: &Option<TokenSecret>, s: S) -> Result<S::Ok, S::Error> {
    match token {
        Some(token) => s.serialize_str(token.expose()),
        None => s.serialize_none(),
    }
}

/// Header carrying the deterministic idempotency key of a call.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Body of a call to the verify URL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyRequest {
    pub finding_id: String,
    pub token_type: String,
    pub token_sha256: String,
    /// Only for installations in `raw` delivery; secret-typed up to the serialiser, so `Debug`
    /// never prints it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_token"
    )]
    pub token: Option<TokenSecret>,
}

/// What an installation says of a token. Only `active` means live; `revoked`, `inactive` (expired
/// or disabled) and `unknown_token` are final answers that it is not; anything else (another
/// status, a non-200, HTML, a timeout) is "unknown" and retried.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VerifyStatus {
    Active,
    Inactive,
    Revoked,
    UnknownToken,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyResponse {
    pub status: VerifyStatus,
}

/// Body of a call to the revoke URL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevokeRequest {
    pub finding_id: String,
    pub token_type: String,
    pub token_sha256: String,
    /// Only for installations in `raw` delivery; secret-typed up to the serialiser, so `Debug`
    /// never prints it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_token"
    )]
    pub token: Option<TokenSecret>,
    /// Where the token was found (a public URL), when known.
    #[serde(default)]
    pub found_at: Option<String>,
    /// Which source reported it: `github`, `gitlab`, `poller`, ...
    pub source: String,
    /// When Spillway received the report (RFC 3339).
    pub received_at: String,
}

/// The revoke URL's answers; all three are terminal.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RevokeStatus {
    Revoked,
    AlreadyRevoked,
    UnknownToken,
}

impl RevokeStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RevokeStatus::Revoked => "revoked",
            RevokeStatus::AlreadyRevoked => "already_revoked",
            RevokeStatus::UnknownToken => "unknown_token",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevokeResponse {
    pub status: RevokeStatus,
}

/// Body of a call to the notify URL, sent once a finding reaches its outcome. Never the token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notification {
    /// Always `token.revoked` in this version (the outcome says whether it was already revoked).
    pub event: String,
    pub finding_id: String,
    pub token_type: String,
    pub token_sha256: String,
    #[serde(default)]
    pub found_at: Option<String>,
    pub source: String,
    pub received_at: String,
    /// `revoked` or `already_revoked`.
    pub outcome: String,
    pub decided_at: String,
}

/// One pending revocation in pull mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PullItem {
    pub finding_id: String,
    /// Pass the largest cursor seen as `after` to get the next page.
    pub cursor: i64,
    pub idempotency_key: String,
    pub token_type: String,
    pub token_sha256: String,
    /// Only for installations in `raw` delivery; secret-typed up to the serialiser, so `Debug`
    /// never prints it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_token"
    )]
    pub token: Option<TokenSecret>,
    #[serde(default)]
    pub found_at: Option<String>,
    pub source: String,
    pub received_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PullPage {
    pub revocations: Vec<PullItem>,
    /// The cursor to pass next (the last item's, or the one passed in when the page is empty).
    pub next_cursor: i64,
}

/// Acknowledgement of one pulled revocation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PullAck {
    pub status: RevokeStatus,
}

/// A JSON Web Key Set as installations publish it (only EC P-256 keys are used).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One key: for Foundry-style tokens `kid` is the token header's `plntr` value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
}

/// RFC 3339 (UTC, milliseconds) for a time in milliseconds since the epoch.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_token_is_on_the_wire_but_never_in_debug_output() {
        let secret = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";
        let request = RevokeRequest {
            finding_id: "fnd_1".into(),
            token_type: "github_pat".into(),
            token_sha256: TokenSecret::new(secret).sha256_hex(),
            token: Some(TokenSecret::new(secret)),
            found_at: None,
            source: "github".into(),
            received_at: rfc3339_ms(0),
        };
        assert!(!format!("{request:?}").contains(secret));
        let wire = serde_json::to_value(&request).unwrap();
        assert_eq!(wire["token"], secret);
        let back: RevokeRequest = serde_json::from_value(wire).unwrap();
        assert_eq!(back, request);
        // Hash-only delivery leaves the field out altogether.
        let hashed = VerifyRequest {
            finding_id: "fnd_1".into(),
            token_type: "github_pat".into(),
            token_sha256: "00".into(),
            token: None,
        };
        assert!(
            serde_json::to_value(&hashed)
                .unwrap()
                .get("token")
                .is_none()
        );
    }
}
