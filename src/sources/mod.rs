//! Where tokens come from: partner alerts (GitHub, GitLab, deps.dev), generic signed webhooks and
//! GitLab's Token Revocation API on rotatable listener endpoints, and the public-repository
//! poller. Each source authenticates its sender before reading a body, then hands the tokens to
//! `intake`. Listener endpoints resolve through the in-memory [`directory`]. Must not import
//! `revocation` internals: a source only records and wakes.

pub mod directory;
mod gitlab_revocation;
pub mod gitlab_types;
pub mod listeners;
pub mod partner;
pub mod partner_keys;
pub mod poller;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};

use crate::http::{ApiError, AppState, error, not_found, read_body, within_deadline};
use listeners::ListenerKind;

pub use partner::{PartnerAlert, parse_alerts};
pub use webhooks::authenticate as authenticate_webhook;

/// The listener endpoints on the public address.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/l/{secret}", post(listener_endpoint))
        .route(
            "/l/{secret}/v1/revocable_token_types",
            get(revocable_token_types),
        )
        .route("/l/{secret}/v1/revoke_tokens", post(revoke_tokens))
}

/// The answer once intake has run: the alert counted as accepted (or replay) and answered by `ok`;
/// a storage failure answers 503, never a 2xx for an alert that was not stored (the sender retries,
/// or the alert would be lost).
pub(crate) fn answer_recorded(
    state: &AppState,
    kind: &'static str,
    result: anyhow::Result<crate::intake::Recorded>,
    ok: impl FnOnce(crate::intake::Recorded) -> Response,
) -> Response {
    match result {
        Ok(recorded) => {
            state.metrics.alert(
                kind,
                if recorded.replay {
                    "replay"
                } else {
                    "accepted"
                },
            );
            if !recorded.replay {
                state.engine.wake();
            }
            ok(recorded)
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), listener_kind = kind, "cannot record alert");
            state.metrics.alert(kind, "unavailable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not stored: storage unavailable, retry later",
            )
        }
    }
}

/// The route an endpoint secret resolves to: answered before any body byte is read.
async fn route(state: &AppState, secret: &str) -> Result<Arc<directory::Route>, ApiError> {
    match state.directory.resolve(secret).await {
        Ok(Some(found)) => Ok(found),
        Ok(None) => {
            state.metrics.ingress_refused("unknown_endpoint");
            Err(not_found())
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot resolve endpoint");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable, retry later",
            )
            .retry_after(1))
        }
    }
}

async fn listener_endpoint(
    State(state): State<Arc<AppState>>,
    Path(secret): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let route = route(&state, &secret).await?;
    let kind = route.kind;
    let platform = match kind {
        ListenerKind::Github => Some(partner::Platform::Github),
        ListenerKind::Gitlab => Some(partner::Platform::Gitlab),
        ListenerKind::Depsdev => Some(partner::Platform::Depsdev),
        ListenerKind::GitlabRevocation => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "a gitlab-revocation endpoint serves /v1/revocable_token_types and /v1/revoke_tokens",
            )
            .closing());
        }
        _ => None,
    };
    // Headers first: a request that cannot be authenticated is refused before its body is read.
    let signed = match platform {
        Some(p) => Some(partner::signed_headers(&state, p, &headers)?),
        None => {
            webhooks::signed_headers(&state, kind, &headers)?;
            None
        }
    };
    let (body, reservation) = read_body(&state, &headers, body, state.max_body).await?;
    let response = within_deadline(&state, kind.as_str(), async {
        match (platform, signed) {
            (Some(platform), Some(signed)) => {
                partner::alert(&state, platform, &route.listener_id, signed, &body).await
            }
            _ => webhooks::webhook(&state, &route, &uri, &headers, body.clone()).await,
        }
    })
    .await;
    drop(reservation);
    state.metrics.body_memory(state.budget.in_use());
    response
}

async fn revocable_token_types(
    State(state): State<Arc<AppState>>,
    Path(secret): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let route = route(&state, &secret).await?;
    if route.kind != ListenerKind::GitlabRevocation {
        return Err(not_found());
    }
    gitlab_revocation::authorized(&state, &route, &headers)?;
    Ok(gitlab_revocation::revocable_token_types(&state))
}

async fn revoke_tokens(
    State(state): State<Arc<AppState>>,
    Path(secret): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let route = route(&state, &secret).await?;
    if route.kind != ListenerKind::GitlabRevocation {
        return Err(not_found());
    }
    gitlab_revocation::authorized(&state, &route, &headers)?;
    let (body, reservation) = read_body(&state, &headers, body, state.max_body).await?;
    let kind = ListenerKind::GitlabRevocation.as_str();
    let response = within_deadline(
        &state,
        kind,
        gitlab_revocation::revoke_tokens(&state, &route.listener_id, &body),
    )
    .await;
    drop(reservation);
    response
}
