//! The admin API (on the admin address): listeners and their endpoints, admin keys, the audit log.
//! Every request is authenticated by an admin key (`Authorization: Bearer spillway_...`, else 401)
//! and authorised by its scopes (else 403); every message names what was wrong. Changes are audited
//! with the key's id as actor.
//!
//! Must not run SQL: it calls the registries' and stores' functions.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ApiError, AppState, error};
use crate::admin::api_keys::{self, AdminKey, Creator, KeyError, Scope};
use crate::installations::{self, RegistryError};
use crate::platform::store::now_ms;
use crate::scanner::TokenSecret;
use crate::sources::listeners::{self, ListenerKind, OldEndpoint, RotationError};

/// Longest lifetime an admin key or an old endpoint may be given (ten years, in seconds).
const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

/// A JSON request body whose rejections answer like every other error here (`{"error": ...}`,
/// naming the field), after the key was checked.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(error(rejection.status(), rejection.body_text())),
        }
    }
}

/// Every admin route needs a valid key before its body is even read: an unauthenticated caller
/// learns nothing about the body it sent. The key is authenticated here, once, and handed to the
/// handler through the request's extensions ([`Admin`]); each handler names the scope it needs.
async fn require_key(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: axum::middleware::Next,
) -> Response {
    match authenticate(&state, request.headers()).await {
        Ok(key) => {
            request.extensions_mut().insert(Admin(key));
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// The admin key that authenticated the request.
#[derive(Debug, Clone)]
pub struct Admin(pub AdminKey);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Admin>()
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "no admin key"))
    }
}

impl Admin {
    /// The key, if it holds `scope` (else 403 naming both).
    pub fn require(&self, scope: Scope) -> Result<AdminKey, ApiError> {
        if self.0.holds(scope) {
            Ok(self.0.clone())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("admin key {} lacks scope {scope}", self.0.id),
            ))
        }
    }
}

/// The admin key the request presents, if it is valid.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<AdminKey, ApiError> {
    let Some(value) = headers.get("authorization") else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing Authorization header: expected `Bearer <admin key>`",
        ));
    };
    let presented = value.to_str().ok().and_then(|v| {
        let (scheme, credentials) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(credentials)
    });
    let Some(presented) = presented else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Authorization header must be `Bearer <admin key>`",
        ));
    };
    match api_keys::authenticate(&state.store, presented.trim()).await {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown, malformed, expired or revoked admin key",
        )),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot check admin key");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable, retry later",
            ))
        }
    }
}

/// `secs` from now, in ms since the epoch, or a message naming `field`.
fn expiry(field: &str, secs: u64) -> Result<i64, String> {
    if secs > MAX_SECS {
        return Err(format!("{field}: at most {MAX_SECS} (ten years)"));
    }
    Ok(now_ms() + secs as i64 * 1000)
}

pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/api/v1/listeners",
            get(list_listeners).post(create_listener),
        )
        .route("/api/v1/listeners/{id}/rotate", post(rotate))
        .route("/api/v1/listeners/{id}/events", get(listener_events))
        .route("/api/v1/endpoints/{id}/extend", post(extend))
        .route("/api/v1/endpoints/{id}", delete(delete_endpoint))
        .route("/api/v1/admin-keys", get(list_keys).post(create_key))
        .route("/api/v1/admin-keys/{id}", delete(revoke_key))
        .route("/api/v1/audit", get(export_audit))
        .route(
            "/api/v1/installations",
            get(list_installations).post(register_installation),
        )
        .route(
            "/api/v1/installations/{id}",
            get(get_installation)
                .patch(update_installation)
                .delete(remove_installation),
        )
        .route(
            "/api/v1/installations/{id}/rotate-secret",
            post(rotate_installation_secret),
        )
        .route("/api/v1/findings", get(list_findings))
        .route_layer(axum::middleware::from_fn_with_state(state, require_key))
}

fn actor(key: &AdminKey) -> String {
    key.actor()
}

/// 503 for storage trouble (logged here; the caller hears only that it may retry).
fn unavailable(what: &str, e: anyhow::Error) -> ApiError {
    tracing::error!(error = %format!("{e:#}"), "{what} failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage unavailable, retry later",
    )
}

impl From<RotationError> for ApiError {
    fn from(e: RotationError) -> ApiError {
        match super::refusals::rotation_status(&e) {
            Some(status) => ApiError::new(status, e.to_string()),
            None => unavailable("listener change", anyhow::anyhow!("{e:#}")),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        match super::refusals::registry_status(&e) {
            Some(status) => ApiError::new(status, e.to_string()),
            None => unavailable("installation change", anyhow::anyhow!("{e:#}")),
        }
    }
}

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message.into())
}

async fn list_listeners(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<Response, ApiError> {
    admin.require(Scope::ListenersRead)?;
    let all = listeners::list(&state.store)
        .await
        .map_err(|e| unavailable("listing listeners", e))?;
    Ok(Json(all).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateListener {
    kind: String,
    #[serde(default)]
    name: String,
    /// The shared secret of a kind that needs one (Twilio's auth token, a GitHub webhook secret,
    /// GitLab's revocation token). A `standard-webhooks` listener without one gets a new
    /// `whsec_` secret, answered once.
    #[serde(default)]
    secret: Option<String>,
}

async fn create_listener(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiJson(body): ApiJson<CreateListener>,
) -> Result<Response, ApiError> {
    let key = admin.require(Scope::ListenersWrite)?;
    let Some(kind) = ListenerKind::parse(&body.kind) else {
        return Err(unprocessable(format!(
            "kind: unknown listener kind {:?}; known: {}",
            body.kind,
            ListenerKind::names().collect::<Vec<_>>().join(", ")
        )));
    };
    // Which kinds take, need or get a generated secret is the listener kind's rule (the CLI
    // asks the same one).
    let (secret, generated) = match kind
        .new_listener_secret(body.secret.map(TokenSecret::new))
        .map_err(|e| unprocessable(format!("secret: {e}")))?
    {
        Some((secret, generated)) => (Some(secret), generated),
        None => (None, false),
    };
    let (listener, url) = state
        .create_listener(kind, &body.name, secret.as_ref(), &actor(&key))
        .await?;
    let mut answer = serde_json::json!({ "listener": listener, "endpoint_url": url });
    if generated && let Some(s) = &secret {
        answer["secret"] = serde_json::Value::String(s.expose().to_owned());
    }
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// Seconds the old endpoint keeps working; omit with `delete_old: true`.
    expire_in_secs: Option<u64>,
    #[serde(default)]
    delete_old: bool,
}

async fn rotate(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Rotate>,
) -> Result<Response, ApiError> {
    let key = admin.require(Scope::ListenersWrite)?;
    let old = match (body.expire_in_secs, body.delete_old) {
        (None, true) => OldEndpoint::Delete,
        (Some(secs), false) => {
            OldEndpoint::ExpireAt(expiry("expire_in_secs", secs).map_err(unprocessable)?)
        }
        _ => {
            return Err(unprocessable(
                "give exactly one of expire_in_secs and delete_old",
            ));
        }
    };
    let (endpoint, url) = state.rotate_listener(&id, old, &actor(&key)).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "endpoint": endpoint, "endpoint_url": url })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Extend {
    expire_in_secs: u64,
}

async fn extend(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Extend>,
) -> Result<Response, ApiError> {
    let key = admin.require(Scope::ListenersWrite)?;
    let at = expiry("expire_in_secs", body.expire_in_secs).map_err(unprocessable)?;
    let extended = listeners::extend(&state.store, &id, at, &actor(&key)).await;
    state.reload_directory().await;
    Ok(Json(extended?).into_response())
}

async fn delete_endpoint(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = admin.require(Scope::ListenersWrite)?;
    let deleted = listeners::delete_endpoint(&state.store, &id, &actor(&key)).await;
    state.reload_directory().await;
    deleted?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    scopes: Vec<String>,
    ttl_secs: u64,
    #[serde(default)]
    name: String,
}

async fn create_key(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<Response, ApiError> {
    let key = admin.require(Scope::KeysWrite)?;
    let scopes = api_keys::parse_scopes(&body.scopes.join(","))
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("scopes: {e}")))?;
    if body.ttl_secs == 0 || body.ttl_secs > MAX_SECS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("ttl_secs: must be 1 to {MAX_SECS} (ten years)"),
        ));
    }
    let ttl_ms = body.ttl_secs as i64 * 1000;
    match api_keys::create(
        &state.store,
        &body.name,
        &scopes,
        ttl_ms,
        Creator::Key(&key),
    )
    .await
    {
        Ok((created, secret)) => Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({ "key": created, "secret": secret.expose() })),
        )
            .into_response()),
        Err(KeyError::Escalation(scope)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "scopes: cannot grant {scope}: admin key {} does not hold it",
                key.id
            ),
        )),
        Err(e @ KeyError::Outlives { .. }) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("ttl_secs: {e}"),
        )),
        Err(e) => Err(key_error(e)),
    }
}

fn key_error(e: KeyError) -> ApiError {
    let status = match &e {
        KeyError::NotFound(_) => StatusCode::NOT_FOUND,
        KeyError::AlreadyRevoked(_) => StatusCode::CONFLICT,
        KeyError::Database(inner) => {
            tracing::error!(error = %format!("{inner:#}"), "admin key change failed");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable, retry later",
            );
        }
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, e.to_string())
}

/// `GET /api/v1/admin-keys`: every key (never a secret), revoked and expired ones included.
async fn list_keys(State(state): State<Arc<AppState>>, admin: Admin) -> Result<Response, ApiError> {
    admin.require(Scope::KeysRead)?;
    let keys = api_keys::list(&state.store)
        .await
        .map_err(|e| key_error(KeyError::Database(e)))?;
    Ok(Json(serde_json::json!({ "keys": keys })).into_response())
}

/// `DELETE /api/v1/admin-keys/{id}`: revokes the key and every key it minted; answers the ids.
async fn revoke_key(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = admin.require(Scope::KeysWrite)?;
    let revoked = api_keys::revoke(&state.store, &id, &key.actor(), "revoked by an operator")
        .await
        .map_err(key_error)?;
    Ok(Json(serde_json::json!({ "revoked": revoked })).into_response())
}

async fn export_audit(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<Response, ApiError> {
    admin.require(Scope::AuditRead)?;
    let mut out = Vec::new();
    crate::platform::audit::export_jsonl(&state.store, &mut out)
        .await
        .map_err(|e| unavailable("audit export", e))?;
    Ok(([("content-type", "application/x-ndjson")], out).into_response())
}

/// A generic listener's output stream: its redacted requests, oldest first, as NDJSON.
async fn listener_events(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin.require(Scope::ListenersRead)?;
    let events = listeners::events(&state.store, &id)
        .await
        .map_err(|e| unavailable("reading listener events", e))?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no listener {id}")))?;
    let mut out = String::new();
    for event in events {
        out.push_str(&serde_json::to_string(&event).expect("an event serialises"));
        out.push('\n');
    }
    Ok(([("content-type", "application/x-ndjson")], out).into_response())
}

async fn list_installations(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<Response, ApiError> {
    admin.require(Scope::InstallationsRead)?;
    let all = installations::list(&state.store)
        .await
        .map_err(RegistryError::Storage)?;
    Ok(Json(all).into_response())
}

/// `POST /api/v1/installations`: the registration fields (docs/INSTALLATIONS.md) plus an optional
/// `secret` (`whsec_...`; generated and returned once when omitted). Unknown fields are refused.
async fn register_installation(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiJson(mut body): ApiJson<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response, ApiError> {
    let key = admin.require(Scope::InstallationsWrite)?;
    let secret = match body.remove("secret") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(TokenSecret::new(s)),
        Some(_) => return Err(unprocessable("secret: must be a string")),
    };
    let spec: installations::Spec = serde_json::from_value(serde_json::Value::Object(body))
        .map_err(|e| unprocessable(format!("body: {e}")))?;
    let (installation, generated) = installations::register(
        &state.store,
        &state.keys.sealing,
        &state.policy,
        spec,
        secret,
        &actor(&key),
    )
    .await?;
    state.engine.wake();
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "installation": installation,
            "secret": generated.as_ref().map(TokenSecret::expose),
        })),
    )
        .into_response())
}

async fn get_installation(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin.require(Scope::InstallationsRead)?;
    Ok(Json(installations::get(&state.store, &id).await?).into_response())
}

async fn update_installation(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<installations::Patch>,
) -> Result<Response, ApiError> {
    let key = admin.require(Scope::InstallationsWrite)?;
    let updated =
        installations::update(&state.store, &state.policy, &id, patch, &actor(&key)).await?;
    Ok(Json(updated).into_response())
}

async fn remove_installation(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = admin.require(Scope::InstallationsWrite)?;
    let stopped = installations::remove(&state.store, &id, &actor(&key)).await?;
    Ok(Json(serde_json::json!({ "removed": id, "findings_failed": stopped })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateSecret {
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    retire_old: bool,
}

async fn rotate_installation_secret(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateSecret>,
) -> Result<Response, ApiError> {
    let key = admin.require(Scope::InstallationsWrite)?;
    if body.retire_old {
        if body.secret.is_some() {
            return Err(unprocessable(
                "give either secret (add one) or retire_old, not both",
            ));
        }
        installations::retire_old_secret(&state.store, &id, &actor(&key)).await?;
        return Ok(Json(serde_json::json!({ "live_secrets": 1 })).into_response());
    }
    let generated = installations::rotate_secret(
        &state.store,
        &state.keys.sealing,
        &id,
        body.secret.map(TokenSecret::new),
        &actor(&key),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "live_secrets": 2,
            "secret": generated.as_ref().map(TokenSecret::expose),
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FindingQuery {
    state: Option<String>,
    installation: Option<String>,
    #[serde(default)]
    after: i64,
    #[serde(default = "default_page")]
    limit: i64,
}

fn default_page() -> i64 {
    100
}

async fn list_findings(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    query: Result<Query<FindingQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    admin.require(Scope::InstallationsRead)?;
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text())))?;
    if !(1..=1000).contains(&q.limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "limit: must be 1 to 1000",
        ));
    }
    if let Some(state) = &q.state
        && crate::findings::FindingState::parse(state).is_none()
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("state: unknown finding state {state:?}"),
        ));
    }
    let filter = crate::findings::Filter {
        state: q.state.as_deref(),
        installation: q.installation.as_deref(),
        source: None,
    };
    let rows = crate::findings::list(&state.store, &filter, q.after, q.limit)
        .await
        .map_err(|e| unavailable("listing findings", e))?;
    Ok(Json(rows).into_response())
}
