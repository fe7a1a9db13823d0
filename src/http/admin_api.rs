//! The admin API (on the admin address): listeners and their endpoints, admin keys, the audit log.
//! Every request is authenticated by an admin key (`Authorization: Bearer spillway_...`, else 401)
//! and authorised by its scopes (else 403); every message names what was wrong. Changes are audited
//! with the key's id as actor.

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

/// Endpoint changes take effect on this replica's public address at once (others within
/// `directory::REFRESH`).
async fn reload_directory(state: &AppState) {
    if let Err(e) = state.directory.reload_now().await {
        tracing::warn!(error = %format!("{e:#}"), "cannot reload the endpoint directory");
    }
}

fn actor(key: &AdminKey) -> String {
    key.actor()
}

fn rotation_error(e: RotationError) -> Response {
    let status = match &e {
        RotationError::NoListener(_) | RotationError::NoEndpoint(_) => StatusCode::NOT_FOUND,
        RotationError::Active(_) | RotationError::Expired(_) => StatusCode::CONFLICT,
        RotationError::ExpiryInPast => StatusCode::UNPROCESSABLE_ENTITY,
        RotationError::Database(inner) => {
            tracing::error!(error = %format!("{inner:#}"), "listener change failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable, retry later",
            );
        }
    };
    error(status, e.to_string())
}

fn endpoint_url(state: &AppState, path: &str) -> String {
    format!("{}{path}", state.public_url.trim_end_matches('/'))
}

async fn list_listeners(State(state): State<Arc<AppState>>, admin: Admin) -> Response {
    if let Err(e) = admin.require(Scope::ListenersRead) {
        return e.into_response();
    }
    match listeners::list(&state.store).await {
        Ok(all) => Json(all).into_response(),
        Err(e) => rotation_error(RotationError::Database(e)),
    }
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
) -> Response {
    let key = match admin.require(Scope::ListenersWrite) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let Some(kind) = ListenerKind::parse(&body.kind) else {
        let known: Vec<&str> = <ListenerKind as clap::ValueEnum>::value_variants()
            .iter()
            .map(ListenerKind::as_str)
            .collect();
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "kind: unknown listener kind {:?}; known: {}",
                body.kind,
                known.join(", ")
            ),
        );
    };
    let (secret, generated) = match kind.new_listener_secret(body.secret.map(TokenSecret::new)) {
        Ok(Some((secret, generated))) => (Some(secret), generated),
        Ok(None) => (None, false),
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, format!("secret: {e}")),
    };
    let sealed = secret.as_ref().map(|s| (&state.keys.sealing, s));
    let created =
        listeners::create_with_secret(&state.store, kind, &body.name, &actor(&key), sealed).await;
    reload_directory(&state).await;
    match created {
        Ok((listener, endpoint)) => {
            let mut answer = serde_json::json!({ "listener": listener, "endpoint_url": endpoint_url(&state, &endpoint.path) });
            if generated && let Some(s) = &secret {
                answer["secret"] = serde_json::Value::String(s.expose().to_owned());
            }
            (StatusCode::CREATED, Json(answer)).into_response()
        }
        Err(e) => rotation_error(e),
    }
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
) -> Response {
    let key = match admin.require(Scope::ListenersWrite) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let old = match (body.expire_in_secs, body.delete_old) {
        (None, true) => OldEndpoint::Delete,
        (Some(secs), false) => match expiry("expire_in_secs", secs) {
            Ok(at) => OldEndpoint::ExpireAt(at),
            Err(m) => return error(StatusCode::UNPROCESSABLE_ENTITY, m),
        },
        _ => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give exactly one of expire_in_secs and delete_old",
            );
        }
    };
    let rotated = listeners::rotate(&state.store, &id, old, &actor(&key)).await;
    reload_directory(&state).await;
    match rotated {
        Ok(new) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "endpoint": new.endpoint, "endpoint_url": endpoint_url(&state, &new.path) })),
        )
            .into_response(),
        Err(e) => rotation_error(e),
    }
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
) -> Response {
    let key = match admin.require(Scope::ListenersWrite) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let at = match expiry("expire_in_secs", body.expire_in_secs) {
        Ok(at) => at,
        Err(m) => return error(StatusCode::UNPROCESSABLE_ENTITY, m),
    };
    let extended = listeners::extend(&state.store, &id, at, &actor(&key)).await;
    reload_directory(&state).await;
    match extended {
        Ok(endpoint) => Json(endpoint).into_response(),
        Err(e) => rotation_error(e),
    }
}

async fn delete_endpoint(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
) -> Response {
    let key = match admin.require(Scope::ListenersWrite) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let deleted = listeners::delete_endpoint(&state.store, &id, &actor(&key)).await;
    reload_directory(&state).await;
    match deleted {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => rotation_error(e),
    }
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

async fn export_audit(State(state): State<Arc<AppState>>, admin: Admin) -> Response {
    if let Err(e) = admin.require(Scope::AuditRead) {
        return e.into_response();
    }
    let mut out = Vec::new();
    match crate::platform::audit::export_jsonl(&state.store, &mut out).await {
        Ok(_) => ([("content-type", "application/x-ndjson")], out).into_response(),
        Err(e) => rotation_error(RotationError::Database(e)),
    }
}

/// A generic listener's output stream: its redacted requests, oldest first, as NDJSON.
async fn listener_events(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = admin.require(Scope::ListenersRead) {
        return e.into_response();
    }
    match listeners::list(&state.store).await {
        Ok(all) if all.iter().any(|l| l.id == id) => {}
        Ok(_) => return error(StatusCode::NOT_FOUND, format!("no listener {id}")),
        Err(e) => return rotation_error(RotationError::Database(e)),
    }
    let rows = sqlx::query(
        "SELECT id, received_at, body_sha256, redacted_body, tokens_found, content_type, \
         content_encoding, body_kept, note FROM listener_events WHERE listener_id = $1 ORDER BY id",
    )
    .bind(&id)
    .fetch_all(state.store.pool())
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return rotation_error(RotationError::Database(e.into())),
    };
    use sqlx::Row as _;
    let mut out = String::new();
    for r in rows {
        let event = (|| {
            Ok::<_, sqlx::Error>(serde_json::json!({
                "id": r.try_get::<i64, _>("id")?,
                "received_at": r.try_get::<i64, _>("received_at")?,
                "body_sha256": r.try_get::<String, _>("body_sha256")?,
                "tokens_found": r.try_get::<i64, _>("tokens_found")?,
                "content_type": r.try_get::<Option<String>, _>("content_type")?,
                "content_encoding": r.try_get::<Option<String>, _>("content_encoding")?,
                // `null` when the body did not decode as declared and no copy was kept.
                "body": (r.try_get::<i64, _>("body_kept")? != 0)
                    .then(|| r.try_get::<String, _>("redacted_body"))
                    .transpose()?,
                "note": r.try_get::<Option<String>, _>("note")?,
            }))
        })();
        match event {
            Ok(event) => out.push_str(&event.to_string()),
            Err(e) => return rotation_error(RotationError::Database(e.into())),
        }
        out.push('\n');
    }
    ([("content-type", "application/x-ndjson")], out).into_response()
}

fn registry_error(e: RegistryError) -> Response {
    let status = match &e {
        RegistryError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::NameTaken(_)
        | RegistryError::TwoSecretsLive(_)
        | RegistryError::NothingToRetire(_) => StatusCode::CONFLICT,
        RegistryError::Storage(inner) => {
            tracing::error!(error = %format!("{inner:#}"), "installation change failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable, retry later",
            );
        }
    };
    error(status, e.to_string())
}

async fn list_installations(State(state): State<Arc<AppState>>, admin: Admin) -> Response {
    if let Err(e) = admin.require(Scope::InstallationsRead) {
        return e.into_response();
    }
    match installations::list(&state.store).await {
        Ok(all) => Json(all).into_response(),
        Err(e) => registry_error(RegistryError::Storage(e)),
    }
}

/// `POST /api/v1/installations`: the registration fields (docs/INSTALLATIONS.md) plus an optional
/// `secret` (`whsec_...`; generated and returned once when omitted). Unknown fields are refused.
async fn register_installation(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiJson(mut body): ApiJson<serde_json::Map<String, serde_json::Value>>,
) -> Response {
    let key = match admin.require(Scope::InstallationsWrite) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let secret = match body.remove("secret") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(TokenSecret::new(s)),
        Some(_) => return error(StatusCode::UNPROCESSABLE_ENTITY, "secret: must be a string"),
    };
    let spec: installations::Spec = match serde_json::from_value(serde_json::Value::Object(body)) {
        Ok(spec) => spec,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, format!("body: {e}")),
    };
    match installations::register(
        &state.store,
        &state.keys.sealing,
        &state.policy,
        spec,
        secret,
        &actor(&key),
    )
    .await
    {
        Ok((installation, generated)) => {
            state.engine.wake();
            (
                StatusCode::CREATED,
                Json(serde_json::json!({
                    "installation": installation,
                    "secret": generated.as_ref().map(TokenSecret::expose),
                })),
            )
                .into_response()
        }
        Err(e) => registry_error(e),
    }
}

async fn get_installation(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = admin.require(Scope::InstallationsRead) {
        return e.into_response();
    }
    match installations::get(&state.store, &id).await {
        Ok(i) => Json(i).into_response(),
        Err(e) => registry_error(e),
    }
}

async fn update_installation(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<installations::Patch>,
) -> Response {
    let key = match admin.require(Scope::InstallationsWrite) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    match installations::update(&state.store, &state.policy, &id, patch, &actor(&key)).await {
        Ok(i) => Json(i).into_response(),
        Err(e) => registry_error(e),
    }
}

async fn remove_installation(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
) -> Response {
    let key = match admin.require(Scope::InstallationsWrite) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    match installations::remove(&state.store, &id, &actor(&key)).await {
        Ok(stopped) => {
            Json(serde_json::json!({ "removed": id, "findings_failed": stopped })).into_response()
        }
        Err(e) => registry_error(e),
    }
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
) -> Response {
    let key = match admin.require(Scope::InstallationsWrite) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    if body.retire_old {
        if body.secret.is_some() {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give either secret (add one) or retire_old, not both",
            );
        }
        return match installations::retire_old_secret(&state.store, &id, &actor(&key)).await {
            Ok(()) => Json(serde_json::json!({ "live_secrets": 1 })).into_response(),
            Err(e) => registry_error(e),
        };
    }
    match installations::rotate_secret(
        &state.store,
        &state.keys.sealing,
        &id,
        body.secret.map(TokenSecret::new),
        &actor(&key),
    )
    .await
    {
        Ok(generated) => (
            StatusCode::CREATED,
            Json(serde_json::json!({
                "live_secrets": 2,
                "secret": generated.as_ref().map(TokenSecret::expose),
            })),
        )
            .into_response(),
        Err(e) => registry_error(e),
    }
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
) -> Response {
    if let Err(e) = admin.require(Scope::InstallationsRead) {
        return e.into_response();
    }
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text())),
    };
    if !(1..=1000).contains(&q.limit) {
        return error(StatusCode::BAD_REQUEST, "limit: must be 1 to 1000");
    }
    match crate::findings::list(
        &state.store,
        q.state.as_deref(),
        q.installation.as_deref(),
        q.after,
        q.limit,
    )
    .await
    {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => registry_error(RegistryError::Storage(e)),
    }
}
