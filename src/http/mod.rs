//! The HTTP edge of `spillway serve`: the shared request state ([`AppState`]), the two routers
//! (public: listener endpoints and pull mode; admin: health, readiness, `/metrics`, the admin API),
//! and serving them under the ingress rules. Handlers of the sources live in `sources`; this module
//! owns what every request shares (request ids, spans, JSON errors, body reading, deadlines).
//! It starts no worker: the composition root (`service`) does.
//!
//! Must not run SQL.

pub mod admin_api;
mod api_error;
pub mod console;
pub mod ingress;
pub mod metrics;
mod pull_api;
mod refusals;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;

use crate::platform::config::IngressSettings;
use crate::platform::keyring::Keys;
use crate::platform::outbound::Policy;
use crate::platform::store::Store;
use crate::revocation::Engine;
use crate::scanner::RuleSet;
use crate::sources::directory;
use crate::sources::gitlab_types::GitlabTypes;
use crate::sources::partner_keys::PartnerKeys;

pub use api_error::ApiError;
pub use metrics::Metrics;

/// Largest body of a pull-mode acknowledgement.
const MAX_ACK_BODY: usize = 64 << 10;

/// Everything a request handler needs.
pub struct AppState {
    pub store: Store,
    pub keys: Arc<Keys>,
    pub rules: Arc<RuleSet>,
    /// Durable, group-committed intake of alerts.
    pub intake: Arc<crate::intake::Intake>,
    pub github_keys: PartnerKeys,
    /// GitLab's and deps.dev's keys, when their key URLs are configured.
    pub gitlab_keys: Option<PartnerKeys>,
    pub depsdev_keys: Option<PartnerKeys>,
    pub metrics: Arc<Metrics>,
    /// Base URL for endpoint URLs handed out by the admin API.
    pub public_url: String,
    /// The signed audit checkpoints (the console shows the log's verdict).
    pub audit_checkpoints: std::path::PathBuf,
    /// The console's cookie and audit-verdict settings and cache.
    pub console: console::ConsoleState,
    /// Which installation URLs may be registered and called.
    pub policy: Policy,
    /// Deciding, verifying, revoking and notifying.
    pub engine: Arc<Engine>,
    /// GitLab's names for the token types the rules issue (the GitLab Token Revocation API).
    pub gitlab_types: GitlabTypes,
    /// Endpoint routes, in memory: resolved before any body byte is read.
    pub directory: directory::Directory,
    /// Request body bytes buffered at once, all requests together.
    pub budget: ingress::MemoryBudget,
    pub body_rules: ingress::BodyRules,
    /// Largest body a listener endpoint takes.
    pub max_body: usize,
    /// From a body read to the answer.
    pub request_timeout: Duration,
}

impl AppState {
    /// Endpoint changes take effect on this replica's public address at once (others within
    /// `directory::REFRESH`).
    pub(crate) async fn reload_directory(&self) {
        if let Err(e) = self.directory.reload_now().await {
            tracing::warn!(error = %format!("{e:#}"), "cannot reload the endpoint directory");
        }
    }

    /// The public URL of an endpoint path (`/l/...`).
    pub(crate) fn endpoint_url(&self, path: &str) -> String {
        format!("{}{path}", self.public_url.trim_end_matches('/'))
    }

    /// Creates a listener with the secret its kind settled on (`new_listener_secret`), sealed,
    /// and makes its endpoint live; answers the listener and its endpoint's URL (the only time it
    /// is known).
    pub(crate) async fn create_listener(
        &self,
        kind: crate::sources::listeners::ListenerKind,
        name: &str,
        secret: Option<&crate::scanner::TokenSecret>,
        actor: &str,
    ) -> Result<
        (crate::sources::listeners::Listener, String),
        crate::sources::listeners::RotationError,
    > {
        let sealed = secret.map(|s| (&self.keys.sealing, s));
        let created =
            crate::sources::listeners::create_with_secret(&self.store, kind, name, actor, sealed)
                .await;
        self.reload_directory().await;
        let (listener, endpoint) = created?;
        Ok((listener, self.endpoint_url(&endpoint.path)))
    }

    /// Rotates listener `id`'s endpoint and makes the new one live; answers it and its URL.
    pub(crate) async fn rotate_listener(
        &self,
        id: &str,
        old: crate::sources::listeners::OldEndpoint,
        actor: &str,
    ) -> Result<
        (crate::sources::listeners::Endpoint, String),
        crate::sources::listeners::RotationError,
    > {
        let rotated = crate::sources::listeners::rotate(&self.store, id, old, actor).await;
        self.reload_directory().await;
        let new = rotated?;
        let url = self.endpoint_url(&new.path);
        Ok((new.endpoint, url))
    }
}

/// A request id for requests that arrive without `x-request-id`: 16 random hex digits.
#[derive(Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = format!("{:016x}", rand::random::<u64>());
        axum::http::HeaderValue::from_str(&id)
            .ok()
            .map(RequestId::new)
    }
}

/// Each request's span: method, route and request id. Spans name the route, never the URI: an
/// endpoint path is itself a secret.
fn request_span() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    impl Fn(&axum::http::Request<axum::body::Body>) -> tracing::Span + Clone,
> {
    tower_http::trace::TraceLayer::new_for_http().make_span_with(
        |req: &axum::http::Request<axum::body::Body>| {
            let route = req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or("unmatched", |p| p.as_str())
                .to_owned();
            let request_id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            tracing::info_span!("request", method = %req.method(), route, request_id)
        },
    )
}

/// The public router (listener endpoints, pull mode) and the admin router (health, readiness,
/// metrics, OpenAPI documents, the admin API), both answering errors as JSON.
pub fn routers(state: Arc<AppState>) -> (Router, Router) {
    let request_timeout = state.request_timeout;
    let public = Router::new()
        .merge(crate::sources::routes())
        .merge(pull_api::routes())
        .fallback(no_such_endpoint)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(request_span())
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .layer(axum::middleware::from_fn(ingress::json_errors))
        .with_state(state.clone());
    let admin = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics::serve))
        .route("/openapi.json", get(openapi_admin))
        .route("/openapi/installation.json", get(openapi_installation))
        .merge(admin_api::routes(state.clone()))
        .merge(console::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(request_span())
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .layer(RequestBodyLimitLayer::new(1 << 20))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // Outermost, so the errors the layers above give by themselves are JSON too.
        .layer(axum::middleware::from_fn(ingress::json_errors))
        .with_state(state.clone());

    (public, admin)
}

/// Serves both routers until `stop` flips: the public one under the ingress connection rules, the
/// admin one (not on the internet) without a per-address limit.
pub fn serve(
    (public_listener, public): (TcpListener, Router),
    (admin_listener, admin): (TcpListener, Router),
    ingress_settings: &IngressSettings,
    header_timeout: Duration,
    observer: Arc<dyn ingress::ConnectionObserver>,
    watch: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<std::io::Result<()>>> {
    let public_rules = ingress::ConnectionRules {
        header_timeout,
        max_connections: ingress_settings.max_connections.max(1),
        max_connections_per_ip: ingress_settings.max_connections_per_ip,
    };
    // The admin address is not on the internet: no per-address limit.
    let admin_rules = ingress::ConnectionRules {
        max_connections_per_ip: 0,
        ..public_rules
    };
    vec![
        tokio::spawn(ingress::serve(
            public_listener,
            public,
            public_rules,
            observer.clone(),
            watch.clone(),
        )),
        tokio::spawn(ingress::serve(
            admin_listener,
            admin,
            admin_rules,
            Arc::new(Quiet),
            watch.clone(),
        )),
    ]
}

/// Connection counts of the admin address are not reported.
struct Quiet;

impl ingress::ConnectionObserver for Quiet {
    fn refused(&self, _reason: &'static str) {}
    fn open(&self, _open: usize) {}
}

/// The admin API's OpenAPI 3.1 document (docs/openapi/admin.json).
async fn openapi_admin() -> Response {
    json_document(include_str!("../../docs/openapi/admin.json"))
}

/// The installation contract's OpenAPI 3.1 document (docs/openapi/installation.json).
async fn openapi_installation() -> Response {
    json_document(include_str!("../../docs/openapi/installation.json"))
}

fn json_document(text: &'static str) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.store.ping().await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response(),
    }
}

/// A JSON error body naming what was wrong (see [`ApiError`]).
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message.into()).into_response()
}

/// 404 for anything that is not an endpoint; the connection is closed (its body is not read).
async fn no_such_endpoint() -> ApiError {
    not_found()
}

pub(crate) fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").closing()
}

/// Reads a request body under the ingress rules (see `ingress`), counting refusals.
pub(crate) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<(axum::body::Bytes, ingress::Reservation), ApiError> {
    let read = ingress::read_body(body, headers, max, &state.budget, &state.body_rules).await;
    state.metrics.body_memory(state.budget.in_use());
    read.map_err(|e| {
        state.metrics.ingress_refused(e.reason());
        e.into_api_error()
    })
}

/// Runs a request's work after its body was read, within the request deadline.
pub(crate) async fn within_deadline(
    state: &AppState,
    kind: &'static str,
    work: impl std::future::Future<Output = Response>,
) -> Result<Response, ApiError> {
    tokio::time::timeout(state.request_timeout, work)
        .await
        .map_err(|_| {
            state.metrics.alert(kind, "unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not acknowledged in time: retry (a retry of a recorded alert is answered as a replay)",
            )
        })
}
