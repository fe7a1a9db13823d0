//! Generic signed webhooks (Standard Webhooks, Twilio, GitHub HMAC) and the GitLab Token Revocation
//! API. A generic listener authenticates the request with its sealed secret, scans the body, keeps a
//! redacted copy as its output stream (each token replaced by its type and fingerprint) and feeds
//! the tokens it found into the same intake as partner alerts.

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{AppState, answer_recorded, error};
use crate::intake::{self, ReportedToken};
use crate::listeners::{self, ListenerKind};
use crate::scanner::{Finding, TokenSecret};
use crate::webhook_auth::{self, AuthError};

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, AuthError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or(AuthError::Missing(name))
}

async fn listener_secret(state: &AppState, listener_id: &str) -> Result<TokenSecret, Response> {
    match listeners::secret(&state.store, &state.keys.sealing, listener_id).await {
        Ok(Some(secret)) => Ok(secret),
        Ok(None) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this listener has no secret configured",
        )),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot open listener secret");
            Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "listener secret unavailable, retry later",
            ))
        }
    }
}

/// Authenticates a generic listener's request (Standard Webhooks, Twilio, GitHub HMAC). Public
/// for the fuzz targets (bench/fuzz).
pub fn authenticate(
    kind: ListenerKind,
    secret: &str,
    public_url: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), AuthError> {
    match kind {
        ListenerKind::StandardWebhooks => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            webhook_auth::standard_webhooks(
                secret,
                header(headers, "webhook-id")?,
                header(headers, "webhook-timestamp")?,
                header(headers, "webhook-signature")?,
                body,
                now,
            )
        }
        ListenerKind::Twilio => {
            let url = format!(
                "{}{}",
                public_url.trim_end_matches('/'),
                uri.path_and_query().map_or("", |p| p.as_str())
            );
            let params: Vec<(String, String)> = url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            webhook_auth::twilio(
                secret,
                &url,
                &params,
                header(headers, "x-twilio-signature")?,
            )
        }
        ListenerKind::GithubHmac => {
            webhook_auth::github_hmac(secret, header(headers, "x-hub-signature-256")?, body)
        }
        _ => Err(AuthError::Secret("not a generic listener kind")),
    }
}

/// Handles one request to a generic listener.
pub async fn webhook(
    state: &AppState,
    listener_id: &str,
    kind: ListenerKind,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let kind_name = kind.as_str();
    let secret = match listener_secret(state, listener_id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(e) = authenticate(kind, secret.expose(), &state.public_url, uri, headers, body) {
        let (status, outcome) = match e {
            AuthError::Missing(_) | AuthError::Malformed(_) => {
                (StatusCode::BAD_REQUEST, "malformed")
            }
            AuthError::Stale => (StatusCode::UNAUTHORIZED, "replay"),
            _ => (StatusCode::UNAUTHORIZED, "bad_signature"),
        };
        let reason = match e {
            AuthError::Missing(_) => "missing_header",
            AuthError::Malformed(_) => "malformed_header",
            AuthError::Stale => "stale_timestamp",
            _ => "bad_signature",
        };
        state.metrics.signature_failure(kind_name, reason);
        state.metrics.alert(kind_name, outcome);
        return error(status, e.to_string());
    }
    // Every token in the body: reported ones feed the intake, and all are redacted in the stored copy.
    let mut tokens = Vec::new();
    let mut redacted = String::with_capacity(body.len());
    let mut copied = 0;
    state
        .rules
        .scanner()
        .scan(kind_name, body, &mut |f: Finding<'_>| {
            state.metrics.token_matched(&f.rule.id, f.verdict.as_str());
            if f.span.start < copied {
                return;
            }
            let fingerprint = state.keys.fingerprint(f.secret().expose());
            redacted.push_str(&String::from_utf8_lossy(&body[copied..f.span.start]));
            redacted.push_str(&format!(
                "[REDACTED {} {}]",
                f.rule.token_type,
                &fingerprint[..16]
            ));
            copied = f.span.end;
            if !f.verdict.is_invalid() {
                tokens.push(ReportedToken {
                    token: f.secret().clone(),
                    token_type: f.rule.token_type.clone(),
                    url: None,
                    source: Some(kind_name.to_owned()),
                    context_hosts: intake::hosts_near(body, f.span.clone(), 256),
                });
            }
        });
    redacted.push_str(&String::from_utf8_lossy(&body[copied..]));
    state.metrics.scanned("listener", body.len() as u64);
    let found_count = tokens.len();
    answer_recorded(
        state,
        kind_name,
        intake::record_alert(
            &state.store,
            &state.keys,
            &state.rules,
            Some(&state.engine.key_cache),
            listener_id,
            kind_name,
            body,
            None,
            None,
            &tokens,
            Some(&redacted),
        )
        .await,
        |_| axum::Json(serde_json::json!({ "tokens_found": found_count })).into_response(),
    )
}

/// `GET .../v1/revocable_token_types` of the GitLab Token Revocation API: the token types Spillway
/// accepts (one per type among the default rules).
pub fn revocable_token_types(state: &AppState) -> Response {
    let mut seen = std::collections::BTreeSet::new();
    let types: Vec<_> = state
        .rules
        .rules()
        .iter()
        .filter(|r| seen.insert(r.token_type.clone()))
        .map(|r| serde_json::json!({ "type": r.token_type, "name": r.name, "description": r.description }))
        .collect();
    axum::Json(serde_json::json!({ "types": types })).into_response()
}

#[derive(Deserialize)]
struct RevokeRequest {
    #[serde(rename = "type")]
    token_type: String,
    token: String,
    #[serde(default)]
    location: Option<String>,
}

/// `POST .../v1/revoke_tokens`: GitLab sends the raw shared secret in `Authorization` (no `Bearer`)
/// and `[{type, token, location}]`; 204 means accepted for eventual revocation.
pub async fn revoke_tokens(
    state: &AppState,
    listener_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let kind = ListenerKind::GitlabRevocation.as_str();
    let secret = match listener_secret(state, listener_id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(presented) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        state.metrics.signature_failure(kind, "missing_header");
        state.metrics.alert(kind, "malformed");
        return error(StatusCode::UNAUTHORIZED, "missing header authorization");
    };
    if !webhook_auth::same_secret(presented.trim(), secret.expose()) {
        state.metrics.signature_failure(kind, "bad_signature");
        state.metrics.alert(kind, "bad_signature");
        return error(
            StatusCode::UNAUTHORIZED,
            "authorization does not match this listener's shared secret",
        );
    }
    let requests: Vec<RevokeRequest> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.alert(kind, "malformed");
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected [{{type, token, location}}]: line {} column {}",
                    e.line(),
                    e.column()
                ),
            );
        }
    };
    let tokens: Vec<ReportedToken> = requests
        .into_iter()
        .map(|r| ReportedToken {
            token: TokenSecret::new(r.token),
            token_type: r.token_type,
            url: r.location,
            source: Some("gitlab".into()),
            context_hosts: Vec::new(),
        })
        .collect();
    answer_recorded(
        state,
        kind,
        intake::record_alert(
            &state.store,
            &state.keys,
            &state.rules,
            Some(&state.engine.key_cache),
            listener_id,
            kind,
            body,
            None,
            None,
            &tokens,
            None,
        )
        .await,
        |_| StatusCode::NO_CONTENT.into_response(),
    )
}
