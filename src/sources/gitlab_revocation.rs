//! The GitLab Token Revocation API, exactly as GitLab's client calls it
//! (`ee/app/services/security/token_revocation_service.rb`, docs
//! `doc/development/sec/token_revocation_api.md`): both calls carry the raw shared secret in
//! `Authorization` (no `Bearer`) and are refused without it (401). `GET .../v1/revocable_token_types`
//! answers `{"types": [...]}`, a list of **strings** in GitLab's own naming; GitLab keeps only the
//! tokens whose type is in it and then `POST`s `[{type, token, location}]` to
//! `.../v1/revoke_tokens`: 204 accepted, 400 invalid body or unsupported type (not retried).
//!
//! GitLab's names map to Spillway's token types through `patterns/integrations/gitlab-revocation.toml`
//! ([`super::gitlab_types`]).
//!
//! Must not import the revocation engine or write SQL: tokens go to `intake`.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::answer_recorded;
use super::directory::Route;
use crate::http::{ApiError, AppState, error};
use crate::intake::{self, ReportedToken};
use crate::platform::webhook_auth;
use crate::scanner::TokenSecret;
use crate::sources::listeners::ListenerKind;

/// Checks GitLab's `Authorization` header (the raw shared secret) against the listener's, before
/// any body byte is read.
pub(super) fn authorized(
    state: &AppState,
    route: &Route,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let kind = ListenerKind::GitlabRevocation.as_str();
    let Some(secret) = &route.secret else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this listener has no secret configured",
        ));
    };
    let (reason, message) = match headers.get("authorization").map(|v| v.to_str()) {
        Some(Ok(v)) if webhook_auth::same_secret(v.trim(), secret.expose()) => return Ok(()),
        Some(Ok(_)) => (
            "bad_signature",
            "authorization does not match this listener's shared secret",
        ),
        None => ("missing_header", "missing header authorization"),
        Some(Err(_)) => (
            "malformed_header",
            "header authorization is malformed (not visible ASCII)",
        ),
    };
    state.metrics.signature_failure(kind, reason);
    state.metrics.alert(
        kind,
        if reason == "bad_signature" {
            "bad_signature"
        } else {
            "malformed"
        },
    );
    Err(ApiError::new(StatusCode::UNAUTHORIZED, message))
}

/// `GET .../v1/revocable_token_types`, once [`authorized`].
pub fn revocable_token_types(state: &AppState) -> Response {
    let types: Vec<&str> = state.gitlab_types.names().collect();
    axum::Json(serde_json::json!({ "types": types })).into_response()
}

/// One element of GitLab's revoke body. GitLab serialises its whole finding hash, so fields it
/// adds (such as `vulnerability`) are ignored; a duplicated field is an error.
#[derive(Deserialize)]
struct RevokeRequest {
    #[serde(rename = "type")]
    token_type: String,
    token: String,
    #[serde(default)]
    location: Option<String>,
}

/// A name safe to repeat in an error: GitLab's names are lower-case words.
fn printable_name(name: &str) -> Option<&str> {
    (name.len() <= 120
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.()/".contains(&b)))
    .then_some(name)
}

/// `POST .../v1/revoke_tokens`, once [`authorized`].
pub async fn revoke_tokens(state: &AppState, listener_id: &str, body: &[u8]) -> Response {
    let kind = ListenerKind::GitlabRevocation.as_str();
    let requests: Vec<RevokeRequest> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.alert(kind, "malformed");
            return error(
                StatusCode::BAD_REQUEST,
                super::partner::describe_json_error(&e, "an array of {type, token, location}"),
            );
        }
    };
    let mut scanner = state.rules.scanner();
    let mut tokens = Vec::with_capacity(requests.len());
    for (i, r) in requests.into_iter().enumerate() {
        if r.token.is_empty() {
            state.metrics.alert(kind, "malformed");
            return error(
                StatusCode::BAD_REQUEST,
                format!("element {i}: field `token` must be non-empty"),
            );
        }
        let Some(token_type) =
            state
                .gitlab_types
                .resolve(&state.rules, &mut scanner, &r.token_type, &r.token)
        else {
            state.metrics.alert(kind, "malformed");
            let named = printable_name(&r.token_type)
                .map(|n| format!(" {n:?}"))
                .unwrap_or_default();
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "element {i}: field `type`: unsupported token type{named} (see GET v1/revocable_token_types)"
                ),
            );
        };
        tokens.push(ReportedToken {
            token: TokenSecret::new(r.token),
            token_type,
            url: r.location.filter(|l| !l.is_empty()),
            source: Some("gitlab".into()),
            context_hosts: Vec::new(),
        });
    }
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
                    key_id: None,
                    key_current: None,
                    tokens: &tokens,
                    event: None,
                },
            )
            .await,
        |_| StatusCode::NO_CONTENT.into_response(),
    )
}
