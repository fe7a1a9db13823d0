//! GitHub's Credential Revocation API as GitHub documents it, for tests and benchmarks:
//! `POST /credentials/revoke` with `{"credentials": [...]}` (1 to 1,000 strings) answers `202`;
//! a malformed body or too many credentials `422` with GitHub's `Validation Failed` body; any
//! authenticated call `403`; more than the hourly limit of calls (60, or `--revocation-limit`) in the
//! last hour `403` with `x-ratelimit-limit`, `x-ratelimit-remaining: 0` and `x-ratelimit-reset`, as
//! GitHub's primary rate limit answers unauthenticated callers.
//!
//! It keeps only the SHA-256 of each credential it was given, and the size of each call, for tests
//! to read ([`Revocation::received`], `GET /_fake/revocations`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sha2::{Digest, Sha256};

/// What the fake was sent.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Received {
    /// Tokens per accepted call, in order.
    pub batches: Vec<usize>,
    /// SHA-256 (hex) of every credential accepted.
    pub sha256: Vec<String>,
    /// When each of those was accepted (Unix milliseconds), in the same order.
    pub at_ms: Vec<i64>,
    /// Calls refused: over the hourly limit, authenticated, or invalid.
    pub rate_limited: usize,
    pub authenticated: usize,
    pub invalid: usize,
}

pub struct Revocation {
    limit_per_hour: usize,
    calls: Mutex<Vec<Instant>>,
    received: Mutex<Received>,
}

impl Revocation {
    pub fn new(limit_per_hour: usize) -> Revocation {
        Revocation {
            limit_per_hour,
            calls: Mutex::new(Vec::new()),
            received: Mutex::new(Received::default()),
        }
    }

    pub fn received(&self) -> Received {
        self.received.lock().expect("not poisoned").clone()
    }
}

pub fn routes(state: Arc<Revocation>) -> Router {
    Router::new()
        .route("/credentials/revoke", post(revoke))
        .route("/_fake/revocations", get(revocations))
        .with_state(state)
}

async fn revocations(State(r): State<Arc<Revocation>>) -> Response {
    axum::Json(r.received()).into_response()
}

fn validation_failed(message: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        axum::Json(json!({
            "message": "Validation Failed",
            "errors": [{ "resource": "Credential", "field": "credentials", "code": "invalid", "message": message }],
            "documentation_url": "https://docs.github.com/rest/credentials/revoke#revoke-a-list-of-credentials",
            "status": "422"
        })),
    )
        .into_response()
}

async fn revoke(State(r): State<Arc<Revocation>>, headers: HeaderMap, body: Bytes) -> Response {
    if headers.contains_key("authorization") {
        r.received.lock().expect("not poisoned").authenticated += 1;
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({
                "message": "This endpoint does not accept authenticated requests.",
                "status": "403"
            })),
        )
            .into_response();
    }
    {
        let mut calls = r.calls.lock().expect("not poisoned");
        let hour_ago = Instant::now().checked_sub(Duration::from_secs(3600));
        calls.retain(|t| hour_ago.is_none_or(|h| *t > h));
        if calls.len() >= r.limit_per_hour {
            let oldest = calls.first().copied().unwrap_or_else(Instant::now);
            let reset_in = Duration::from_secs(3600).saturating_sub(oldest.elapsed());
            let reset = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| (d + reset_in).as_secs());
            r.received.lock().expect("not poisoned").rate_limited += 1;
            let mut response = (
                StatusCode::FORBIDDEN,
                axum::Json(json!({
                    "message": "API rate limit exceeded for 127.0.0.1. (But here's the good news: Authenticated requests get a higher rate limit. Check out the documentation for more details.)",
                    "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"
                })),
            )
                .into_response();
            let h = response.headers_mut();
            h.insert("x-ratelimit-limit", r.limit_per_hour.into());
            h.insert("x-ratelimit-remaining", 0.into());
            h.insert("x-ratelimit-reset", reset.into());
            h.insert("x-ratelimit-resource", "core".parse().expect("ascii"));
            return response;
        }
        calls.push(Instant::now());
    }
    let credentials = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("credentials").cloned())
        .and_then(|c| {
            c.as_array().and_then(|items| {
                items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<Vec<String>>>()
            })
        });
    let Some(credentials) = credentials else {
        r.received.lock().expect("not poisoned").invalid += 1;
        return validation_failed("credentials must be an array of strings");
    };
    if credentials.is_empty() || credentials.len() > 1000 {
        r.received.lock().expect("not poisoned").invalid += 1;
        return validation_failed("credentials must hold 1 to 1000 items");
    }
    let mut received = r.received.lock().expect("not poisoned");
    received.batches.push(credentials.len());
    let now = crate::devtools::now_ms();
    received
        .at_ms
        .extend(std::iter::repeat_n(now, credentials.len()));
    received.sha256.extend(
        credentials
            .iter()
            .map(|c| hex::encode(Sha256::digest(c.as_bytes()))),
    );
    StatusCode::ACCEPTED.into_response()
}
