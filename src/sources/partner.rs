//! Secret-scanning partner alerts. GitHub, GitLab and deps.dev share one scheme (DESIGN.md): an
//! ECDSA P-256 signature over the raw body in `<Platform>-Public-Key-Signature`, the key named by
//! `<Platform>-Public-Key-Identifier`. Verify the signature *before* parsing, record durably, then
//! answer with the feedback array (GitHub reads it; for the others any 2xx acknowledges).
//!
//! Must not import the revocation engine or write SQL: tokens go to `intake`.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::answer_recorded;
use crate::http::{ApiError, AppState, error};
use crate::intake::{self, ReportedToken};
use crate::scanner::TokenSecret;
use crate::sources::partner_keys::SignatureError;

/// The partner programs that share the signed-alert scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Github,
    Gitlab,
    Depsdev,
}

impl Platform {
    fn kind(self) -> &'static str {
        match self {
            Platform::Github => "github",
            Platform::Gitlab => "gitlab",
            Platform::Depsdev => "depsdev",
        }
    }

    /// (key id header, signature header), lower case (HTTP header names are case-insensitive).
    fn headers(self) -> (&'static str, &'static str) {
        match self {
            Platform::Github => (
                "github-public-key-identifier",
                "github-public-key-signature",
            ),
            Platform::Gitlab => (
                "gitlab-public-key-identifier",
                "gitlab-public-key-signature",
            ),
            Platform::Depsdev => (
                "depsdev-public-key-identifier",
                "depsdev-public-key-signature",
            ),
        }
    }
}

/// One element of an alert body: GitHub `{token, type, url, source}` (`url` may be empty, `source`
/// missing), GitLab `{type, token, url}`, deps.dev `{token, url}` (no type: inferred from the token).
#[derive(Deserialize)]
pub struct PartnerAlert {
    pub token: String,
    #[serde(rename = "type", default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
}

impl std::fmt::Debug for PartnerAlert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartnerAlert")
            .field("token", &"[REDACTED]")
            .field("token_type", &self.token_type)
            .field("url", &self.url)
            .field("source", &self.source)
            .finish()
    }
}

/// A partner alert body, or a message naming what is wrong with it (element and field). Public
/// for the fuzz targets (bench/fuzz).
pub fn parse_alerts(body: &[u8], type_required: bool) -> Result<Vec<PartnerAlert>, String> {
    let alerts: Vec<PartnerAlert> = serde_json::from_slice(body)
        .map_err(|e| describe_json_error(&e, "an array of objects {token, type, url, source}"))?;
    if let Some(i) = alerts.iter().position(|a| a.token.is_empty()) {
        return Err(format!("element {i}: field `token` must be non-empty"));
    }
    if let Some(i) = alerts
        .iter()
        .position(|a| type_required && a.token_type.as_deref().is_none_or(str::is_empty))
    {
        return Err(format!("element {i}: missing field `type`"));
    }
    Ok(alerts)
}

/// A required header's value, or the message that names what is wrong with it.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, String> {
    match headers.get(name).map(|v| v.to_str()) {
        None => Err(format!("missing header {name}")),
        Some(Err(_)) => Err(format!("header {name} is malformed (not visible ASCII)")),
        Some(Ok(v)) if v.trim().is_empty() => Err(format!("header {name} is empty")),
        Some(Ok(v)) => Ok(v),
    }
}

/// Serde's message names the field and position but, for a wrong type, may quote the value; keep
/// only what cannot contain a token: the field's name, the position and what was `expected`.
pub(super) fn describe_json_error(e: &serde_json::Error, expected: &str) -> String {
    let message = e.to_string();
    let field = message.split('`').nth(1);
    let at = format!("line {} column {}", e.line(), e.column());
    match (e.classify(), field) {
        (serde_json::error::Category::Data, Some(field))
            if message.starts_with("missing field") =>
        {
            format!("missing field `{field}` at {at}")
        }
        (serde_json::error::Category::Data, Some(field))
            if message.starts_with("duplicate field") =>
        {
            format!("duplicate field `{field}` at {at}")
        }
        (serde_json::error::Category::Data, _) => {
            format!("expected {expected} with string fields (error at {at})")
        }
        _ => format!("body is not valid JSON ({at})"),
    }
}

/// A partner alert's signature headers, checked before its body is read.
pub struct Signed<'a> {
    keys: &'a crate::sources::partner_keys::PartnerKeys,
    key_id: String,
    signature: String,
}

/// Checks that the platform is configured and its two headers are present and well formed, so a
/// request that cannot be authenticated is refused before its body is read.
pub(super) fn signed_headers<'s>(
    state: &'s AppState,
    platform: Platform,
    headers: &HeaderMap,
) -> Result<Signed<'s>, ApiError> {
    let kind = platform.kind();
    let (key_id_header, signature_header) = platform.headers();
    let keys = match platform {
        Platform::Github => Some(&state.github_keys),
        Platform::Gitlab => state.gitlab_keys.as_ref(),
        Platform::Depsdev => state.depsdev_keys.as_ref(),
    };
    let Some(keys) = keys else {
        state.metrics.alert(kind, "unavailable");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{kind} alerts are not configured: set SPILLWAY_{}_KEYS_URL",
                kind.to_ascii_uppercase()
            ),
        ));
    };
    match (
        header(headers, key_id_header),
        header(headers, signature_header),
    ) {
        (Ok(k), Ok(s)) => Ok(Signed {
            keys,
            key_id: k.to_owned(),
            signature: s.to_owned(),
        }),
        (Err(message), _) | (_, Err(message)) => {
            let absent = [key_id_header, signature_header]
                .iter()
                .any(|h| !headers.contains_key(*h));
            state.metrics.signature_failure(
                kind,
                if absent {
                    "missing_header"
                } else {
                    "malformed_header"
                },
            );
            state.metrics.alert(kind, "malformed");
            Err(ApiError::new(StatusCode::BAD_REQUEST, message))
        }
    }
}

pub async fn alert(
    state: &AppState,
    platform: Platform,
    listener_id: &str,
    signed: Signed<'_>,
    body: &[u8],
) -> Response {
    let kind = platform.kind();
    let (key_id_header, signature_header) = platform.headers();
    let Signed {
        keys,
        key_id,
        signature,
    } = signed;
    let key_id = key_id.as_str();
    let key_current = match keys.verify(key_id, &signature, body).await {
        Ok(current) => current,
        Err(SignatureError::MalformedSignature) => {
            state.metrics.signature_failure(kind, "malformed_header");
            state.metrics.alert(kind, "malformed");
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "header {signature_header}: {}",
                    SignatureError::MalformedSignature
                ),
            );
        }
        Err(e) => {
            state.metrics.signature_failure(
                kind,
                if matches!(e, SignatureError::UnknownKey) {
                    "unknown_key"
                } else {
                    "bad_signature"
                },
            );
            state.metrics.alert(kind, "bad_signature");
            return error(
                StatusCode::UNAUTHORIZED,
                format!("{e} ({key_id_header}: {key_id})"),
            );
        }
    };
    // deps.dev sends no type; GitHub and GitLab must.
    let alerts = match parse_alerts(body, platform != Platform::Depsdev) {
        Ok(a) => a,
        Err(message) => {
            state.metrics.alert(kind, "malformed");
            return error(StatusCode::BAD_REQUEST, message);
        }
    };
    let mut scanner = state.rules.scanner();
    let tokens: Vec<ReportedToken> = alerts
        .into_iter()
        .map(|a| ReportedToken {
            token_type: a.token_type.filter(|t| !t.is_empty()).unwrap_or_else(|| {
                super::gitlab_types::classify(&mut scanner, &a.token)
                    .unwrap_or_else(|| "unknown".to_owned())
            }),
            token: TokenSecret::new(a.token),
            url: a.url.filter(|u| !u.is_empty()),
            source: a.source.map(|s| s.to_ascii_lowercase()),
            context_hosts: Vec::new(),
        })
        .collect();
    answer_recorded(
        state,
        kind,
        state
            .intake
            .record(
                Some(&state.engine.key_cache),
                &intake::IncomingAlert {
                    listener_id,
                    listener_kind: kind,
                    body,
                    delivery_id: None,
                    key_id: Some(key_id),
                    key_current: Some(key_current),
                    tokens: &tokens,
                    event: None,
                },
            )
            .await,
        |recorded| (StatusCode::OK, axum::Json(recorded.feedback)).into_response(),
    )
}
