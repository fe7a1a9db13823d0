//! Pull mode on the public address (installations reach Spillway, not the reverse):
//! `GET /installations/v1/{id}/revocations?after=&limit=` and
//! `POST /installations/v1/{id}/revocations/{finding_id}/ack`, authenticated by
//! `Authorization: Bearer <installation shared secret>`.
//!
//! Must not run SQL (`revocation::pull` reads and acknowledges).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{AppState, error};
use crate::installations::Installation;
use crate::installations::contract::PullAck;
use crate::revocation::pull::{self, PullError};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/installations/v1/{id}/revocations", get(list))
        .route(
            "/installations/v1/{id}/revocations/{finding}/ack",
            post(ack),
        )
}

fn pull_error(e: PullError) -> Response {
    let status = match &e {
        PullError::Unauthorized => StatusCode::UNAUTHORIZED,
        PullError::NotPullMode(_) => StatusCode::FORBIDDEN,
        PullError::NotFound(_) => StatusCode::NOT_FOUND,
        PullError::Conflict { .. } => StatusCode::CONFLICT,
        PullError::Storage(inner) => {
            tracing::error!(error = %format!("{inner:#}"), "pull request failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable, retry later",
            );
        }
    };
    error(status, e.to_string())
}

async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<Installation, Response> {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "missing or malformed Authorization header: expected `Bearer <installation secret>`",
            )
        })?;
    pull::authenticate(&state.store, &state.keys, id, presented.trim())
        .await
        .map_err(pull_error)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

async fn list(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let installation = match authenticate(&state, &headers, &id).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query parameters: `after` and `limit` must be integers",
        );
    };
    if !(1..=500).contains(&q.limit) {
        return error(StatusCode::BAD_REQUEST, "limit: must be 1 to 500");
    }
    let engine = state.engine.clone();
    let installation_id = installation.id.clone();
    match pull::page(
        &state.store,
        &state.keys,
        |fp| engine.idempotency_key("revoke", &installation_id, fp),
        &installation,
        q.after,
        q.limit,
    )
    .await
    {
        Ok(page) => axum::Json(page).into_response(),
        Err(e) => pull_error(e),
    }
}

async fn ack(
    State(state): State<Arc<AppState>>,
    Path((id, finding)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let installation = match authenticate(&state, &headers, &id).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let (body, _reservation) =
        match super::read_body(&state, &headers, body, super::MAX_ACK_BODY).await {
            Ok(read) => read,
            Err(e) => return e.into_response(),
        };
    let ack: PullAck = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "body: expected {\"status\": \"revoked\" | \"already_revoked\" | \"unknown_token\"}",
            );
        }
    };
    match pull::ack(&state.store, &installation, &finding, ack.status).await {
        Ok(new_state) => {
            state.engine.wake();
            axum::Json(serde_json::json!({ "finding_id": finding, "state": new_state }))
                .into_response()
        }
        Err(e) => pull_error(e),
    }
}
