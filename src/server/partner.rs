//! Secret-scanning partner alerts, GitHub's protocol: verify the signature over the raw body
//! *before* parsing, then record durably, then answer with the feedback array.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{AppState, error};
use crate::intake::{self, ReportedToken};
use crate::partner_keys::SignatureError;
use crate::scanner::TokenSecret;

const KEY_ID_HEADER: &str = "github-public-key-identifier";
const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// One element of GitHub's alert body. `url` may be empty; `source` may be missing.
#[derive(Deserialize)]
struct GithubAlert {
    token: String,
    #[serde(rename = "type")]
    token_type: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

/// A required header's value, or the message that names what is wrong with it.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, String> {
    match headers.get(name).map(|v| v.to_str()) {
        None => Err(format!("missing header {name}")),
        Some(Err(_)) => Err(format!("header {name} is not visible ASCII")),
        Some(Ok(v)) if v.trim().is_empty() => Err(format!("header {name} is empty")),
        Some(Ok(v)) => Ok(v),
    }
}

/// Serde's message names the field and position but, for a wrong type, may quote the value; keep
/// only what cannot contain a token.
fn describe_json_error(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let field = message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("field"));
    match (e.classify(), field) {
        (_, Some(field)) if message.starts_with("missing field") => format!(
            "missing field `{field}` at line {} column {}",
            e.line(),
            e.column()
        ),
        (serde_json::error::Category::Data, _) => format!(
            "expected an array of objects with string fields token, type, url, source (error at line {} column {})",
            e.line(),
            e.column()
        ),
        _ => format!(
            "body is not valid JSON (line {} column {})",
            e.line(),
            e.column()
        ),
    }
}

pub async fn github(
    state: &AppState,
    listener_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let kind = "github";
    let (key_id, signature) = match (
        header(headers, KEY_ID_HEADER),
        header(headers, SIGNATURE_HEADER),
    ) {
        (Ok(k), Ok(s)) => (k, s),
        (Err(message), _) | (_, Err(message)) => {
            state.metrics.alert(kind, "malformed");
            return error(StatusCode::BAD_REQUEST, message);
        }
    };
    let key_current = match state.github_keys.verify(key_id, signature, body).await {
        Ok(current) => current,
        Err(SignatureError::MalformedSignature) => {
            state.metrics.alert(kind, "malformed");
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "header {SIGNATURE_HEADER}: {}",
                    SignatureError::MalformedSignature
                ),
            );
        }
        Err(e) => {
            state.metrics.alert(kind, "bad_signature");
            return error(
                StatusCode::UNAUTHORIZED,
                format!("{e} ({KEY_ID_HEADER}: {key_id})"),
            );
        }
    };
    let alerts: Vec<GithubAlert> = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            state.metrics.alert(kind, "malformed");
            return error(StatusCode::BAD_REQUEST, describe_json_error(&e));
        }
    };
    if let Some(i) = alerts
        .iter()
        .position(|a| a.token.is_empty() || a.token_type.is_empty())
    {
        state.metrics.alert(kind, "malformed");
        return error(
            StatusCode::BAD_REQUEST,
            format!("element {i}: fields token and type must be non-empty"),
        );
    }
    let tokens: Vec<ReportedToken> = alerts
        .into_iter()
        .map(|a| ReportedToken {
            token: TokenSecret::new(a.token),
            token_type: a.token_type,
            url: a.url.filter(|u| !u.is_empty()),
            source: a.source.map(|s| s.to_ascii_lowercase()),
        })
        .collect();
    let body_sha256 = hex::encode(Sha256::digest(body));
    match intake::record_alert(
        &state.store,
        &state.keys,
        &state.rules,
        listener_id,
        kind,
        &body_sha256,
        Some(key_id),
        Some(key_current),
        &tokens,
    )
    .await
    {
        Ok(recorded) => {
            state.metrics.alert(
                kind,
                if recorded.replay {
                    "replay"
                } else {
                    "accepted"
                },
            );
            (StatusCode::OK, axum::Json(recorded.feedback)).into_response()
        }
        Err(e) => {
            // Never 2xx for an alert that was not stored: the platform retries or we lose it.
            tracing::error!(error = %format!("{e:#}"), "cannot record alert");
            state.metrics.alert(kind, "unavailable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "alert not stored: storage unavailable, retry later",
            )
        }
    }
}
