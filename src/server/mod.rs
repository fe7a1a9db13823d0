//! `spillway serve`: public ingress (listener endpoints) on one address; health, readiness and
//! `/metrics` on the admin address. [`start`] binds both (port 0 works, so tests get free ports)
//! and returns their addresses and a handle; `main` only composes.

mod admin_api;
mod generic;
mod gitlab_revocation;
mod metrics;
mod partner;
mod pull_api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;

use crate::config::Settings;
use crate::keys::Keys;
use crate::listeners::{self, ListenerKind};
use crate::outbound::Policy;
use crate::partner_keys::PartnerKeys;
use crate::revocation::Engine;
use crate::scanner::RuleSet;
use crate::store::Store;

pub use generic::authenticate as authenticate_webhook;
pub use gitlab_revocation::GitlabTypes;
pub use metrics::Metrics;
pub use partner::{PartnerAlert, parse_alerts};

/// Largest accepted request body (a 5,000-token alert is well under 1 MiB).
pub const MAX_BODY: usize = 8 << 20;
/// Requests handled at once per address; more wait.
pub const MAX_CONCURRENT: usize = 256;

/// Everything a request handler needs.
pub struct AppState {
    pub store: Store,
    pub keys: Arc<Keys>,
    pub rules: RuleSet,
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
    let store = Store::connect(&settings.database_url).await?;
    let keys = Arc::new(Keys::load(&settings.key_file, !settings.is_production())?);
    // Invalid candidates too: a failed checksum is itself a decision (false positive).
    let rules = RuleSet::default_rules(crate::scanner::ScanOptions {
        include_invalid: true,
    })?;
    let gitlab_types = GitlabTypes::load(&rules)?;
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
    let metrics = Arc::new(Metrics::default());
    let engine = Arc::new(Engine::new(
        store.clone(),
        keys.clone(),
        policy,
        settings,
        metrics.clone(),
    )?);
    let state = Arc::new(AppState {
        store,
        keys,
        rules,
        github_keys,
        gitlab_keys: optional(&settings.gitlab_keys_url),
        depsdev_keys: optional(&settings.depsdev_keys_url),
        metrics,
        public_url: settings.public_url.clone(),
        policy,
        engine: engine.clone(),
        gitlab_types,
    });

    // Whole-request deadline (GitHub allows partners 30 s; answer well inside it).
    let request_timeout = Duration::from_secs(settings.request_timeout_secs.max(1));
    let header_timeout = Duration::from_secs(settings.header_read_timeout_secs.max(1));
    let public = Router::new()
        .route("/l/{secret}", post(listener_endpoint))
        .route(
            "/l/{secret}/v1/revocable_token_types",
            get(revocable_token_types),
        )
        .route("/l/{secret}/v1/revoke_tokens", post(revoke_tokens))
        .merge(pull_api::routes())
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such endpoint\n") })
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(request_span())
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(ConcurrencyLimitLayer::new(MAX_CONCURRENT))
        .with_state(state.clone());
    let admin = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics::serve))
        .route("/openapi.json", get(openapi_admin))
        .route("/openapi/installation.json", get(openapi_installation))
        .merge(admin_api::routes(state.clone()))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(request_span())
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .layer(RequestBodyLimitLayer::new(1 << 20))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(state.clone());

    let public_listener = TcpListener::bind(&settings.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen_addr))?;
    let admin_listener = TcpListener::bind(&settings.admin_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.admin_addr))?;
    let (public_addr, admin_addr) = (public_listener.local_addr()?, admin_listener.local_addr()?);
    let (shutdown, watch) = tokio::sync::watch::channel(false);
    let serve = |listener: TcpListener, app: Router| {
        tokio::spawn(serve_connections(
            listener,
            app,
            header_timeout,
            watch.clone(),
        ))
    };
    let mut tasks = vec![serve(public_listener, public), serve(admin_listener, admin)];
    tasks.push(tokio::spawn(checkpoints(
        state.clone(),
        settings.audit_checkpoint_file.clone(),
        Duration::from_secs(settings.audit_checkpoint_interval_secs.max(1)),
        watch.clone(),
    )));
    tasks.push(tokio::spawn(sample_metrics(state.clone(), watch.clone())));
    if settings.poller.enabled {
        let poller = Arc::new(crate::poller::Poller::new(
            state.store.clone(),
            state.keys.clone(),
            engine.clone(),
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

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        let stopping = *stop.borrow_and_update();
        if stopping || stop.changed().await.is_err() {
            return;
        }
    }
}

/// Accepts connections until told to stop, then waits for in-flight requests to finish. Unlike
/// `axum::serve`, it gives hyper a timer, so slow or stalled request headers are cut off after
/// `header_timeout` (axum's default server has no header-read timeout).
async fn serve_connections(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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

/// A JSON error body naming what was wrong.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

/// The listener an endpoint secret routes to, or the response to give when there is none.
async fn route(state: &AppState, secret: &str) -> Result<(String, ListenerKind), Response> {
    match listeners::resolve(&state.store, secret).await {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err((StatusCode::NOT_FOUND, "no such endpoint\n").into_response()),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot resolve endpoint");
            Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable, retry later",
            ))
        }
    }
}

async fn listener_endpoint(
    State(state): State<Arc<AppState>>,
    Path(secret): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (listener_id, kind) = match route(&state, &secret).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match kind {
        ListenerKind::Github => {
            partner::alert(
                &state,
                partner::Platform::Github,
                &listener_id,
                &headers,
                &body,
            )
            .await
        }
        ListenerKind::Gitlab => {
            partner::alert(
                &state,
                partner::Platform::Gitlab,
                &listener_id,
                &headers,
                &body,
            )
            .await
        }
        ListenerKind::Depsdev => {
            partner::alert(
                &state,
                partner::Platform::Depsdev,
                &listener_id,
                &headers,
                &body,
            )
            .await
        }
        ListenerKind::StandardWebhooks | ListenerKind::Twilio | ListenerKind::GithubHmac => {
            generic::webhook(&state, &listener_id, kind, &uri, &headers, body).await
        }
        ListenerKind::GitlabRevocation => error(
            StatusCode::NOT_FOUND,
            "a gitlab-revocation endpoint serves /v1/revocable_token_types and /v1/revoke_tokens",
        ),
    }
}

async fn revocable_token_types(
    State(state): State<Arc<AppState>>,
    Path(secret): Path<String>,
    headers: HeaderMap,
) -> Response {
    match route(&state, &secret).await {
        Ok((listener_id, ListenerKind::GitlabRevocation)) => {
            gitlab_revocation::revocable_token_types(&state, &listener_id, &headers).await
        }
        Ok(_) => (StatusCode::NOT_FOUND, "no such endpoint\n").into_response(),
        Err(response) => response,
    }
}

async fn revoke_tokens(
    State(state): State<Arc<AppState>>,
    Path(secret): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match route(&state, &secret).await {
        Ok((listener_id, ListenerKind::GitlabRevocation)) => {
            gitlab_revocation::revoke_tokens(&state, &listener_id, &headers, &body).await
        }
        Ok(_) => (StatusCode::NOT_FOUND, "no such endpoint\n").into_response(),
        Err(response) => response,
    }
}

/// Runs until SIGINT/SIGTERM, then shuts down gracefully.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let running = start(&settings).await?;
    println!(
        "spillway: public listener on http://{}, admin on http://{}",
        running.public_addr, running.admin_addr
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
    running.shutdown().await;
    Ok(())
}
