//! `spillway serve`: public ingress (listener endpoints) on one address; health, readiness and
//! `/metrics` on the admin address. [`start`] binds both (port 0 works, so tests get free ports)
//! and returns their addresses and a handle; `main` only composes.

mod admin_api;
mod api_error;
pub mod directory;
mod generic;
mod gitlab_revocation;
pub mod ingress;
mod metrics;
mod partner;
mod pull_api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;

use crate::config::Settings;
use crate::keys::Keys;
use crate::listeners::ListenerKind;
use crate::outbound::Policy;
use crate::partner_keys::PartnerKeys;
use crate::revocation::Engine;
use crate::scanner::RuleSet;
use crate::store::Store;

pub use api_error::ApiError;
pub use generic::authenticate as authenticate_webhook;
pub use gitlab_revocation::GitlabTypes;
pub use metrics::Metrics;
pub use partner::{PartnerAlert, parse_alerts};

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

/// A running server.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Stops accepting, finishes in-flight requests, then returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
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

/// Opens the database, loads keys and rules, binds both addresses and starts serving.
pub async fn start(settings: &Settings) -> anyhow::Result<Running> {
    let store = Store::connect(settings.database_url.expose()).await?;
    let keys = Arc::new(Keys::load(&settings.key_file, !settings.is_production())?);
    // Invalid candidates too: a failed checksum is itself a decision (false positive).
    let rules = Arc::new(RuleSet::default_rules(crate::scanner::ScanOptions {
        include_invalid: true,
    })?);
    let metrics = Arc::new(Metrics::default());
    let intake = Arc::new(crate::intake::Intake::start(
        store.clone(),
        keys.clone(),
        rules.clone(),
        metrics.clone(),
    ));
    let gitlab_types = GitlabTypes::load(&rules)?;
    let request_timeout = Duration::from_secs(settings.request_timeout_secs.max(1));
    let header_timeout = Duration::from_secs(settings.header_read_timeout_secs.max(1));
    let ingress_settings = &settings.ingress;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("spillway/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let github_keys = PartnerKeys::new(&settings.github_keys_url, client.clone());
    let optional = |url: &str| (!url.is_empty()).then(|| PartnerKeys::new(url, client.clone()));
    let policy = Policy {
        allow_http: settings.outbound_allow_http,
        allow_private: settings.outbound_allow_private,
    };
    let engine = Arc::new(Engine::new(
        store.clone(),
        keys.clone(),
        policy,
        settings,
        metrics.clone(),
    )?);
    let (store_for_directory, keys_for_directory) = (store.clone(), keys.clone());
    let state = Arc::new(AppState {
        store,
        keys,
        rules,
        intake: intake.clone(),
        github_keys,
        gitlab_keys: optional(&settings.gitlab_keys_url),
        depsdev_keys: optional(&settings.depsdev_keys_url),
        metrics,
        public_url: settings.public_url.clone(),
        policy,
        engine: engine.clone(),
        gitlab_types,
        directory: directory::Directory::new(store_for_directory, keys_for_directory),
        budget: ingress::MemoryBudget::new(ingress_settings.body_memory_bytes),
        body_rules: ingress::BodyRules {
            grace: Duration::from_secs(ingress_settings.body_grace_secs),
            min_rate: ingress_settings.body_min_rate.max(1),
            deadline: Duration::from_secs(ingress_settings.body_timeout_secs.max(1)),
        },
        max_body: ingress_settings.max_body_bytes,
        request_timeout,
    });

    let public = Router::new()
        .route("/l/{secret}", post(listener_endpoint))
        .route(
            "/l/{secret}/v1/revocable_token_types",
            get(revocable_token_types),
        )
        .route("/l/{secret}/v1/revoke_tokens", post(revoke_tokens))
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

    let public_listener = TcpListener::bind(&settings.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen_addr))?;
    let admin_listener = TcpListener::bind(&settings.admin_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.admin_addr))?;
    let (public_addr, admin_addr) = (public_listener.local_addr()?, admin_listener.local_addr()?);
    let (shutdown, watch) = tokio::sync::watch::channel(false);
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
    let observer: Arc<dyn ingress::ConnectionObserver> = state.metrics.clone();
    let mut tasks = vec![
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
    ];
    tasks.push(tokio::spawn(checkpoints(
        state.clone(),
        settings.audit_checkpoint_file.clone(),
        Duration::from_millis(settings.audit_checkpoint_interval_ms.max(10)),
        watch.clone(),
    )));
    tasks.push(tokio::spawn(sample_metrics(state.clone(), watch.clone())));
    if settings.poller.enabled {
        let poller = Arc::new(crate::poller::Poller::new(
            state.store.clone(),
            engine.clone(),
            intake.clone(),
            &settings.poller,
            state.metrics.clone(),
        )?);
        let stop = watch.clone();
        tasks.push(tokio::spawn(async move {
            poller.run(stop).await;
            Ok(())
        }));
    }
    tasks.push(tokio::spawn({
        let stop = watch.clone();
        async move {
            engine.run(stop).await;
            Ok(())
        }
    }));
    tracing::info!(%public_addr, %admin_addr, "spillway serving");
    Ok(Running {
        public_addr,
        admin_addr,
        state,
        shutdown,
        tasks,
    })
}

use ingress::stopped;

/// Connection counts of the admin address are not reported.
struct Quiet;

impl ingress::ConnectionObserver for Quiet {
    fn refused(&self, _reason: &'static str) {}
    fn open(&self, _open: usize) {}
}

/// Signs an audit checkpoint every `interval`, and once more at shutdown.
async fn checkpoints(
    state: Arc<AppState>,
    path: std::path::PathBuf,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let key = state.keys.audit_signing_key();
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = stopped(&mut stop) => true,
        };
        match crate::audit::write_checkpoint(&state.store, &path, &key).await {
            Ok(_) => state.metrics.checkpointed(),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot write audit checkpoint"),
        }
        if stopping {
            return Ok(());
        }
    }
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

/// How often queue depths and breaker states are sampled into gauges.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

async fn sample_metrics(
    state: Arc<AppState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    loop {
        if let Err(e) = state.metrics.sample(&state.engine).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot sample queue metrics");
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_INTERVAL) => {}
            _ = stopped(&mut stop) => return Ok(()),
        }
    }
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match sqlx::query("SELECT 1").execute(state.store.pool()).await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response(),
    }
}

/// The answer once intake has run: the alert counted as accepted (or replay) and answered by `ok`;
/// a storage failure answers 503, never a 2xx for an alert that was not stored (the sender retries,
/// or the alert would be lost).
fn answer_recorded(
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

/// A JSON error body naming what was wrong (see [`ApiError`]).
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message.into()).into_response()
}

/// 404 for anything that is not an endpoint; the connection is closed (its body is not read).
async fn no_such_endpoint() -> ApiError {
    not_found()
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").closing()
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

/// Reads a request body under the ingress rules (see `ingress`), counting refusals.
async fn read_body(
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
async fn within_deadline(
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
            generic::signed_headers(&state, kind, &headers)?;
            None
        }
    };
    let (body, reservation) = read_body(&state, &headers, body, state.max_body).await?;
    let response = within_deadline(&state, kind.as_str(), async {
        match (platform, signed) {
            (Some(platform), Some(signed)) => {
                partner::alert(&state, platform, &route.listener_id, signed, &body).await
            }
            _ => generic::webhook(&state, &route, &uri, &headers, body.clone()).await,
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

/// Runs until SIGINT/SIGTERM, then shuts down gracefully.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    // Before the addresses are announced, so a stop right after it is still a clean shutdown.
    let signals = crate::devtools::StopSignals::install()?;
    let running = start(&settings).await?;
    println!(
        "spillway: public listener on http://{}, admin on http://{}",
        running.public_addr, running.admin_addr
    );
    signals.wait().await;
    tracing::info!("shutting down: finishing in-flight requests");
    running.shutdown().await;
    Ok(())
}
