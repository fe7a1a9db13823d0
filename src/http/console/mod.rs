//! The operator console on the admin address (`/console/`): server-rendered pages (markup in
//! [`pages`], compiled into the binary; no script at all) over the same registries the admin API
//! uses. Signing in takes an admin key once and answers a session cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` as `console_secure_cookies` says, at most 16 hours:
//! `admin::sessions`); every form
//! carries the session's CSRF token, every page and form names the scope it needs and refuses a
//! key without it (as the API does), and signing out ends the session.
//!
//! Must not run SQL: it calls the registries' and stores' functions.

mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::AppState;
use crate::admin::api_keys::{self, KeyError, Scope};
use crate::admin::sessions::{self, Session};
use crate::findings::{self, FindingState};
use crate::installations::{self, RegistryError};
use crate::platform::audit::Verdict;
use crate::platform::config::CookieSecurity;
use crate::platform::store::now_ms;
use crate::scanner::TokenSecret;
use crate::sources::listeners::{self, ListenerKind, OldEndpoint, RotationError};

const SESSION_COOKIE: &str = "spillway_session";
/// The sign-in form's own token (double-submit: the form and this cookie must agree), so another
/// site cannot sign a browser in with the attacker's key.
const SIGNIN_COOKIE: &str = "spillway_signin";
/// Findings shown per page.
const PAGE: i64 = 50;
/// Longest expiry the console sets (ten years), as the API.
const MAX_AHEAD_MS: i64 = 10 * 365 * 24 * 3600 * 1000;

/// How long the audit log's verdict is shown before it is checked again (it reads the whole log).
const VERDICT_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// The console's settings and its one cache.
pub struct ConsoleState {
    secure: CookieSecurity,
    admin_loopback: bool,
    /// The audit log's last verdict and when it was reached (ms); the lock makes checks
    /// single-flight.
    verdict: tokio::sync::Mutex<Option<(std::time::Instant, i64, Verdict)>>,
    /// One-time tokens of create forms already used, with when (kept [`FORM_ONCE_FOR`]): a form
    /// sent twice (a reload) creates nothing the second time.
    used_forms: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// How long a create form's one-time token is remembered as used, and how many at most.
const FORM_ONCE_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
const FORMS_REMEMBERED: usize = 10_000;

impl ConsoleState {
    pub fn new(secure: CookieSecurity, admin_loopback: bool) -> ConsoleState {
        ConsoleState {
            secure,
            admin_loopback,
            verdict: tokio::sync::Mutex::new(None),
            used_forms: std::sync::Mutex::default(),
        }
    }

    /// Marks a create form's one-time token used; false when it already was (or is malformed).
    fn first_use(&self, once: &str) -> bool {
        if once.len() != 64 || !once.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
        let mut used = self.used_forms.lock().expect("used forms lock");
        used.retain(|_, at| at.elapsed() < FORM_ONCE_FOR);
        // Bounded whatever a signed-in client sends: the oldest token is forgotten first.
        if used.len() >= FORMS_REMEMBERED
            && let Some(oldest) = used
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
        {
            used.remove(&oldest);
        }
        used.insert(once.to_owned(), std::time::Instant::now())
            .is_none()
    }

    /// `; Secure` for the cookies of a request with `headers`, as the setting says.
    fn secure(&self, headers: &HeaderMap) -> &'static str {
        let secure = match self.secure {
            CookieSecurity::Always => true,
            CookieSecurity::Never => false,
            CookieSecurity::Auto => !self.admin_loopback || over_https(headers),
        };
        if secure { "; Secure" } else { "" }
    }
}

/// Whether a proxy in front says the browser's request came over https: the first (the
/// browser-facing) element of `X-Forwarded-Proto` or of `Forwarded`'s `proto`.
fn over_https(headers: &HeaderMap) -> bool {
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_ascii_lowercase())
    };
    let forwarded_proto = first("forwarded").and_then(|element| {
        element
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k.trim() == "proto")
            .map(|(_, v)| v.trim().trim_matches('"').to_owned())
    });
    first("x-forwarded-proto").as_deref() == Some("https")
        || forwarded_proto.as_deref() == Some("https")
}

/// A console form: a body that does not parse is a page naming what was wrong.
pub struct ConsoleForm<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S>
    for ConsoleForm<T>
{
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &S) -> Result<Self, Refusal> {
        match Form::<T>::from_request(req, state).await {
            Ok(Form(value)) => Ok(ConsoleForm(value)),
            Err(rejection) => Err(Refusal::Page(
                rejection.status(),
                format!("form: {}", rejection.body_text()),
            )),
        }
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/listeners") }),
        )
        .route("/console/style.css", get(style))
        .route("/console/login", get(signin_form).post(signin))
        .route("/console/logout", post(signout))
        .route(
            "/console/listeners",
            get(listeners_page).post(create_listener),
        )
        .route(
            "/console/listeners/{id}/rotate",
            get(rotate_form).post(rotate),
        )
        .route("/console/endpoints/{id}/extend", post(extend))
        .route("/console/endpoints/{id}/delete", post(delete_endpoint))
        .route("/console/findings", get(findings_page))
        .route("/console/findings/{id}", get(finding_page))
        .route("/console/installations", get(installations_page))
        .route(
            "/console/installations/{id}/secret",
            post(installation_secret),
        )
        .route("/console/keys", get(keys_page))
        .route("/console/keys/{id}/revoke", post(revoke_key))
        .route("/console/sessions/{handle}/revoke", post(revoke_session))
        .route("/console/audit", get(audit_page))
        .layer(axum::middleware::from_fn(headers))
}

/// Every console answer: not cached, not framed, no script, forms post only here, no referrer.
async fn headers(request: Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    response
        .extensions_mut()
        .insert(super::ingress::OwnErrorPage);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

/// A page that could not be shown: its status and what was wrong, as an HTML page (or the sign-in
/// page, when the session is missing).
pub enum Refusal {
    SignIn,
    Page(StatusCode, String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::SignIn => Redirect::to("/console/login").into_response(),
            Refusal::Page(status, message) => {
                (status, pages::html(pages::problem(status, &message))).into_response()
            }
        }
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "console: {what} failed");
    Refusal::Page(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage unavailable, retry later".into(),
    )
}

fn unprocessable(message: impl Into<String>) -> Refusal {
    Refusal::Page(StatusCode::UNPROCESSABLE_ENTITY, message.into())
}

impl From<RotationError> for Refusal {
    fn from(e: RotationError) -> Refusal {
        match super::refusals::rotation_status(&e) {
            Some(status) => Refusal::Page(status, e.to_string()),
            None => unavailable("listener change", format!("{e:#}")),
        }
    }
}

impl From<RegistryError> for Refusal {
    fn from(e: RegistryError) -> Refusal {
        match super::refusals::registry_status(&e) {
            Some(status) => Refusal::Page(status, e.to_string()),
            None => unavailable("installation change", format!("{e:#}")),
        }
    }
}

/// The signed-in session of a request: its cookie's secret and what it opens.
pub struct Signed {
    session: Session,
}

impl Signed {
    /// The session, if its key holds `scope` (else 403 naming both).
    fn require(&self, scope: Scope) -> Result<&Session, Refusal> {
        if self.session.key.holds(scope) {
            Ok(&self.session)
        } else {
            Err(Refusal::Page(
                StatusCode::FORBIDDEN,
                format!(
                    "admin key {} lacks scope {scope}: sign in with a key that holds it",
                    self.session.key.id
                ),
            ))
        }
    }

    /// As [`Signed::require`], for a form: also checks the form's CSRF token.
    fn require_form(&self, scope: Scope, csrf: &str) -> Result<&Session, Refusal> {
        if !self.session.csrf_matches(csrf) {
            return Err(Refusal::Page(
                StatusCode::FORBIDDEN,
                "csrf: the form's token does not match this session; reload the page and try again"
                    .into(),
            ));
        }
        self.require(scope)
    }

    fn actor(&self) -> String {
        self.session.key.actor()
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<Arc<AppState>> for Signed {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Refusal> {
        let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(Refusal::SignIn);
        };
        match sessions::open(&state.store, secret).await {
            Ok(Some(session)) => Ok(Signed { session }),
            Ok(None) => Err(Refusal::SignIn),
            Err(e) => Err(unavailable("opening a session", format!("{e:#}"))),
        }
    }
}

fn set_cookie(response: &mut Response, value: String) {
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&value).expect("cookie values are hex"),
    );
}

/// Milliseconds since the epoch of a `datetime-local` value taken as UTC (`2026-12-07T15:30`).
fn parse_utc(field: &str, value: &str) -> Result<i64, Refusal> {
    let value = value.trim();
    let full = if value.len() == 16 {
        format!("{value}:00Z")
    } else {
        format!("{value}Z")
    };
    let at = humantime::parse_rfc3339(&full).map_err(|_| {
        unprocessable(format!(
            "{field}: expected a UTC date and time as YYYY-MM-DDTHH:MM, got {value:?}"
        ))
    })?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| unprocessable(format!("{field}: before 1970")))?
        .as_millis() as i64;
    if ms <= now_ms() {
        return Err(unprocessable(format!("{field}: must be in the future")));
    }
    if ms > now_ms() + MAX_AHEAD_MS {
        return Err(unprocessable(format!("{field}: at most ten years ahead")));
    }
    Ok(ms)
}

// ---- signing in and out ----

#[derive(Deserialize, Default)]
struct SigninQuery {
    #[serde(default)]
    signed_out: Option<String>,
}

async fn signin_form(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Query<SigninQuery>,
) -> Response {
    let note = query
        .signed_out
        .is_some()
        .then_some("You are signed out; the session cannot be used again.");
    signin_page(&state, &headers, StatusCode::OK, note, None)
}

fn signin_page(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    note: Option<&str>,
    error: Option<&str>,
) -> Response {
    let token = sessions::random_secret();
    let mut response = (
        status,
        pages::html(pages::signin(token.expose(), note, error)),
    )
        .into_response();
    set_cookie(
        &mut response,
        format!(
            "{SIGNIN_COOKIE}={}; Path=/console/login; HttpOnly; SameSite=Strict; Max-Age=1800{}",
            token.expose(),
            state.console.secure(headers)
        ),
    );
    response
}

#[derive(Deserialize)]
struct SigninForm {
    form_token: String,
    admin_key: String,
}

async fn signin(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ConsoleForm(form): ConsoleForm<SigninForm>,
) -> Result<Response, Refusal> {
    let presented_token = cookie(&headers, SIGNIN_COOKIE).unwrap_or("");
    if presented_token.is_empty() || !sessions::same(presented_token, &form.form_token) {
        return Ok(signin_page(
            &state,
            &headers,
            StatusCode::FORBIDDEN,
            None,
            Some("form_token: the sign-in form expired or came from elsewhere; sign in again"),
        ));
    }
    let presented = TokenSecret::new(form.admin_key.trim().to_owned());
    let key = match api_keys::authenticate(&state.store, presented.expose()).await {
        Ok(Some(key)) => key,
        Ok(None) => {
            return Ok(signin_page(
                &state,
                &headers,
                StatusCode::UNAUTHORIZED,
                None,
                Some("admin_key: unknown, malformed, expired or revoked admin key"),
            ));
        }
        Err(e) => return Err(unavailable("checking an admin key", format!("{e:#}"))),
    };
    // A browser signing in again ends the session it still holds.
    if let Some(previous) = cookie(&headers, SESSION_COOKIE)
        && let Ok(Some(session)) = sessions::open(&state.store, previous).await
        && let Err(e) = sessions::end(&state.store, &session).await
    {
        return Err(unavailable("ending the previous session", format!("{e:#}")));
    }
    let (secret, session) = sessions::start(&state.store, &key)
        .await
        .map_err(|e| unavailable("starting a session", format!("{e:#}")))?;
    let max_age = ((session.expires_at - now_ms()) / 1000).max(1);
    let mut response = Redirect::to("/console/listeners").into_response();
    set_cookie(
        &mut response,
        format!(
            "{SESSION_COOKIE}={}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
            secret.expose(),
            state.console.secure(&headers)
        ),
    );
    set_cookie(
        &mut response,
        format!("{SIGNIN_COOKIE}=; Path=/console/login; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: String,
}

async fn signout(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    headers: HeaderMap,
    ConsoleForm(form): ConsoleForm<CsrfOnly>,
) -> Result<Response, Refusal> {
    if !signed.session.csrf_matches(&form.csrf) {
        return Err(Refusal::Page(
            StatusCode::FORBIDDEN,
            "csrf: the form's token does not match this session".into(),
        ));
    }
    sessions::end(&state.store, &signed.session)
        .await
        .map_err(|e| unavailable("ending a session", format!("{e:#}")))?;
    let mut response = Redirect::to("/console/login?signed_out=1").into_response();
    set_cookie(
        &mut response,
        format!(
            "{SESSION_COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{}",
            state.console.secure(&headers)
        ),
    );
    Ok(response)
}

// ---- listeners and endpoints ----

#[derive(Deserialize, Default)]
struct Notice {
    #[serde(default)]
    done: Option<String>,
}

async fn listeners_page(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Query(notice): Query<Notice>,
) -> Result<Response, Refusal> {
    let session = signed.require(Scope::ListenersRead)?;
    let all = listeners::list(&state.store)
        .await
        .map_err(|e| unavailable("listing listeners", format!("{e:#}")))?;
    let kinds: Vec<&str> = ListenerKind::names().collect();
    // The create form's one-time token.
    let once = sessions::random_secret();
    Ok(pages::html(pages::listeners(
        session,
        &all,
        once.expose(),
        &kinds,
        notice.done.as_deref(),
        now_ms(),
    ))
    .into_response())
}

#[derive(Deserialize)]
struct CreateListenerForm {
    csrf: String,
    /// The form's one-time token.
    once: String,
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    secret: String,
}

async fn create_listener(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    ConsoleForm(form): ConsoleForm<CreateListenerForm>,
) -> Result<Response, Refusal> {
    let session = signed.require_form(Scope::ListenersWrite, &form.csrf)?;
    let Some(kind) = ListenerKind::parse(&form.kind) else {
        return Err(unprocessable(format!(
            "kind: unknown listener kind {:?}",
            form.kind
        )));
    };
    let given = Some(form.secret.trim())
        .filter(|s| !s.is_empty())
        .map(|s| TokenSecret::new(s.to_owned()));
    let (secret, generated) = match kind
        .new_listener_secret(given)
        .map_err(|e| unprocessable(format!("secret: {e}")))?
    {
        Some((secret, generated)) => (Some(secret), generated),
        None => (None, false),
    };
    // Checked last, so a form refused for its fields can be corrected and sent again.
    if !state.console.first_use(&form.once) {
        return Err(Refusal::Page(
            StatusCode::CONFLICT,
            "once: this form was already sent (a reload?): no second listener was created; see \
             the listeners page"
                .into(),
        ));
    }
    let (listener, url) = state
        .create_listener(kind, form.name.trim(), secret.as_ref(), &signed.actor())
        .await?;
    let shown_secret = secret.filter(|_| generated);
    Ok(pages::html(pages::shown_once(
        session,
        "/console/listeners",
        "Listener created",
        &format!("Listener {} ({})", listener.id, listener.kind),
        &url,
        shown_secret.as_ref().map(TokenSecret::expose),
    ))
    .into_response())
}

async fn rotate_form(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let session = signed.require(Scope::ListenersWrite)?;
    let all = listeners::list(&state.store)
        .await
        .map_err(|e| unavailable("listing listeners", format!("{e:#}")))?;
    let Some(listener) = all.into_iter().find(|l| l.id == id) else {
        return Err(Refusal::Page(
            StatusCode::NOT_FOUND,
            format!("no listener {id}"),
        ));
    };
    Ok(pages::html(pages::rotate(session, &listener, now_ms())).into_response())
}

#[derive(Deserialize)]
struct RotateForm {
    csrf: String,
    /// The endpoint that was active when the form was shown: a form sent twice (a reload, the back
    /// button) or after someone else rotated finds another one active and changes nothing.
    expected_active: String,
    /// `expire` or `delete`.
    old: String,
    #[serde(default)]
    expires_at: String,
}

async fn rotate(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(id): Path<String>,
    ConsoleForm(form): ConsoleForm<RotateForm>,
) -> Result<Response, Refusal> {
    let session = signed.require_form(Scope::ListenersWrite, &form.csrf)?;
    let old = match form.old.as_str() {
        "delete" => OldEndpoint::Delete,
        "expire" => OldEndpoint::ExpireAt(parse_utc("expires_at", &form.expires_at)?),
        other => {
            return Err(unprocessable(format!(
                "old: expected \"expire\" or \"delete\", got {other:?}"
            )));
        }
    };
    let all = listeners::list(&state.store)
        .await
        .map_err(|e| unavailable("listing listeners", format!("{e:#}")))?;
    let active = all
        .iter()
        .find(|l| l.id == id)
        .and_then(|l| l.endpoints.iter().find(|e| e.expires_at.is_none()))
        .map(|e| e.id.as_str());
    if active.is_some() && active != Some(form.expected_active.as_str()) {
        return Err(Refusal::Page(
            StatusCode::CONFLICT,
            format!(
                "expected_active: the active endpoint of {id} is now {}, not {}: it was rotated \
                 after this form was shown (a form sent twice?); nothing was changed",
                active.unwrap_or("none"),
                form.expected_active
            ),
        ));
    }
    let (new, url) = state.rotate_listener(&id, old, &signed.actor()).await?;
    Ok(pages::html(pages::shown_once(
        session,
        "/console/listeners",
        "Endpoint rotated",
        &format!("New endpoint {} of listener {id}", new.id),
        &url,
        None,
    ))
    .into_response())
}

#[derive(Deserialize)]
struct ExtendForm {
    csrf: String,
    expires_at: String,
}

async fn extend(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(id): Path<String>,
    ConsoleForm(form): ConsoleForm<ExtendForm>,
) -> Result<Response, Refusal> {
    signed.require_form(Scope::ListenersWrite, &form.csrf)?;
    let at = parse_utc("expires_at", &form.expires_at)?;
    let extended = listeners::extend(&state.store, &id, at, &signed.actor()).await;
    state.reload_directory().await;
    extended?;
    Ok(Redirect::to("/console/listeners?done=extended").into_response())
}

async fn delete_endpoint(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(id): Path<String>,
    ConsoleForm(form): ConsoleForm<CsrfOnly>,
) -> Result<Response, Refusal> {
    signed.require_form(Scope::ListenersWrite, &form.csrf)?;
    let deleted = listeners::delete_endpoint(&state.store, &id, &signed.actor()).await;
    state.reload_directory().await;
    deleted?;
    Ok(Redirect::to("/console/listeners?done=deleted").into_response())
}

// ---- findings ----

#[derive(Deserialize, Default)]
struct FindingsQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    installation: String,
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    before: Option<i64>,
}

/// What the findings page filters by, as chosen (empty = any).
pub struct Chosen<'a> {
    pub state: &'a str,
    pub installation: &'a str,
    pub issuer: &'a str,
    pub source: &'a str,
}

async fn findings_page(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    query: Result<Query<FindingsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refusal> {
    let session = signed.require(Scope::InstallationsRead)?;
    let Query(q) = query
        .map_err(|e| Refusal::Page(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text())))?;
    if !q.state.is_empty() && FindingState::parse(&q.state).is_none() {
        return Err(Refusal::Page(
            StatusCode::BAD_REQUEST,
            format!("state: unknown finding state {:?}", q.state),
        ));
    }
    if !q.installation.is_empty() && !q.issuer.is_empty() {
        return Err(Refusal::Page(
            StatusCode::BAD_REQUEST,
            "installation, issuer: choose one of them (an issuer is the installation that revokes its tokens)".into(),
        ));
    }
    let by_issuer = format!("{}{}", installations::ISSUER_PREFIX, q.issuer);
    let nonempty = |s: &str| (!s.is_empty()).then_some(s.to_owned());
    let installation = nonempty(&q.installation).or_else(|| nonempty(&q.issuer).map(|_| by_issuer));
    let filter = findings::Filter {
        state: (!q.state.is_empty()).then_some(q.state.as_str()),
        installation: installation.as_deref(),
        source: (!q.source.is_empty()).then_some(q.source.as_str()),
    };
    let rows = findings::newest(&state.store, &filter, q.before, PAGE)
        .await
        .map_err(|e| unavailable("listing findings", format!("{e:#}")))?;
    // A finding's source is the listener kind (or the poller) that received it.
    let sources: Vec<String> = ListenerKind::names()
        .chain([crate::sources::poller::LISTENER])
        .map(str::to_owned)
        .collect();
    let all = state
        .engine
        .read_installations(true)
        .await
        .map_err(|e| unavailable("reading installations", format!("{e:#}")))?;
    let (issuers, registered): (Vec<_>, Vec<_>) =
        all.iter().partition(|i| installations::is_issuer(i));
    let issuer_names: Vec<&str> = issuers
        .iter()
        .filter_map(|i| i.id.strip_prefix(installations::ISSUER_PREFIX))
        .collect();
    let chosen = Chosen {
        state: &q.state,
        installation: &q.installation,
        issuer: &q.issuer,
        source: &q.source,
    };
    let older = (rows.len() as i64 == PAGE)
        .then(|| rows.last().map(|f| f.row_id))
        .flatten();
    Ok(pages::html(pages::findings(
        session,
        &rows,
        &chosen,
        &registered,
        &issuer_names,
        &sources,
        older,
    ))
    .into_response())
}

async fn finding_page(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let session = signed.require(Scope::InstallationsRead)?;
    let not_found = || Refusal::Page(StatusCode::NOT_FOUND, format!("no finding {id}"));
    let row_id: i64 = id
        .strip_prefix("fnd_")
        .filter(|n| !n.is_empty() && n.len() <= 18 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .ok_or_else(not_found)?;
    let finding = findings::get(&state.store, row_id)
        .await
        .map_err(|e| unavailable("reading a finding", format!("{e:#}")))?
        .ok_or_else(not_found)?;
    // The timeline needs the audit log; a key without audit:read sees the finding alone.
    // Its candidate's entries (a failed decision) and its own, in the log's order.
    let timeline = if session.key.holds(Scope::AuditRead) {
        let mut entries = Vec::new();
        for subject in [
            format!("candidate:{}", finding.candidate_id),
            format!("finding:{row_id}"),
        ] {
            entries.extend(
                crate::platform::audit::about(&state.store, &subject)
                    .await
                    .map_err(|e| unavailable("reading the audit log", format!("{e:#}")))?,
            );
        }
        entries.sort_by_key(|e| e.seq);
        Some(entries)
    } else {
        None
    };
    Ok(pages::html(pages::finding(session, &finding, timeline.as_deref())).into_response())
}

// ---- installations ----

/// One installation's health as the console shows it.
pub struct Health {
    pub installation: installations::Installation,
    pub breaker: &'static str,
    pub open_for_secs: Option<u64>,
    /// (finding row id, received at, the error).
    pub last_error: Option<(i64, i64, String)>,
}

async fn installations_page(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Query(notice): Query<Notice>,
) -> Result<Response, Refusal> {
    let session = signed.require(Scope::InstallationsRead)?;
    let all = state
        .engine
        .read_installations(true)
        .await
        .map_err(|e| unavailable("reading installations", format!("{e:#}")))?;
    let mut health = Vec::with_capacity(all.len());
    for installation in all.iter() {
        let limits = state.engine.limits.of(installation);
        let breaker = match limits.breaker_state() {
            crate::revocation::limits::BreakerState::Closed => "closed",
            crate::revocation::limits::BreakerState::Open => "open",
            crate::revocation::limits::BreakerState::HalfOpen => "half-open",
        };
        let last_error = findings::last_error(&state.store, &installation.id)
            .await
            .map_err(|e| unavailable("reading last errors", format!("{e:#}")))?;
        health.push(Health {
            installation: installation.clone(),
            breaker,
            open_for_secs: limits.open_for().map(|d| d.as_secs().max(1)),
            last_error,
        });
    }
    Ok(pages::html(pages::installations(
        session,
        &health,
        notice.done.as_deref(),
    ))
    .into_response())
}

#[derive(Deserialize)]
struct SecretForm {
    csrf: String,
    /// `add` (a new generated secret, both live until the old is retired) or `retire_old`.
    action: String,
}

async fn installation_secret(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(id): Path<String>,
    ConsoleForm(form): ConsoleForm<SecretForm>,
) -> Result<Response, Refusal> {
    let session = signed.require_form(Scope::InstallationsWrite, &form.csrf)?;
    match form.action.as_str() {
        "retire_old" => {
            installations::retire_old_secret(&state.store, &id, &signed.actor()).await?;
            Ok(Redirect::to("/console/installations?done=retired").into_response())
        }
        "add" => {
            let generated = installations::rotate_secret(
                &state.store,
                &state.keys.sealing,
                &id,
                None,
                &signed.actor(),
            )
            .await?;
            let secret = generated
                .ok_or_else(|| unavailable("rotating a secret", "no secret was generated"))?;
            Ok(pages::html(pages::shown_once(
                session,
                "/console/installations",
                "Shared secret added",
                &format!(
                    "New shared secret of installation {id}: both secrets sign until you retire the old one"
                ),
                "",
                Some(secret.expose()),
            ))
            .into_response())
        }
        other => Err(unprocessable(format!(
            "action: expected \"add\" or \"retire_old\", got {other:?}"
        ))),
    }
}

// ---- admin keys ----

async fn keys_page(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Query(notice): Query<Notice>,
) -> Result<Response, Refusal> {
    let session = signed.require(Scope::KeysRead)?;
    let keys = api_keys::list(&state.store)
        .await
        .map_err(|e| unavailable("listing admin keys", format!("{e:#}")))?;
    let live = sessions::live(&state.store)
        .await
        .map_err(|e| unavailable("listing sessions", format!("{e:#}")))?;
    Ok(pages::html(pages::keys(
        session,
        &keys,
        &live,
        notice.done.as_deref(),
        now_ms(),
    ))
    .into_response())
}

/// Ends one console session (any key's): sessions are credentials, listed and revoked like keys.
async fn revoke_session(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(handle): Path<String>,
    ConsoleForm(form): ConsoleForm<CsrfOnly>,
) -> Result<Response, Refusal> {
    signed.require_form(Scope::KeysWrite, &form.csrf)?;
    let ended = sessions::revoke(
        &state.store,
        &handle,
        &signed.actor(),
        "console.session_revoked",
    )
    .await
    .map_err(|e| unavailable("revoking a session", format!("{e:#}")))?;
    if !ended {
        return Err(Refusal::Page(
            StatusCode::NOT_FOUND,
            format!("no live session {handle}"),
        ));
    }
    Ok(Redirect::to("/console/keys?done=session_revoked").into_response())
}

async fn revoke_key(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(id): Path<String>,
    ConsoleForm(form): ConsoleForm<CsrfOnly>,
) -> Result<Response, Refusal> {
    signed.require_form(Scope::KeysWrite, &form.csrf)?;
    match api_keys::revoke(&state.store, &id, &signed.actor(), "revoked in the console").await {
        Ok(_) => Ok(Redirect::to("/console/keys?done=revoked").into_response()),
        Err(KeyError::NotFound(_)) => Err(Refusal::Page(
            StatusCode::NOT_FOUND,
            format!("no admin key {id}"),
        )),
        Err(KeyError::Database(e)) => Err(unavailable("revoking a key", format!("{e:#}"))),
        Err(e) => Err(Refusal::Page(StatusCode::CONFLICT, e.to_string())),
    }
}

// ---- the audit log ----

async fn audit_page(
    State(state): State<Arc<AppState>>,
    signed: Signed,
) -> Result<Response, Refusal> {
    let session = signed.require(Scope::AuditRead)?;
    // Checking reads the whole log: one check at a time, and its verdict is shown for a minute.
    let mut cached = state.console.verdict.lock().await;
    let fresh = cached
        .as_ref()
        .is_some_and(|(at, _, _)| at.elapsed() < VERDICT_FOR);
    if !fresh {
        let key = state.keys.audit_signing_key().verifying_key();
        let verdict = crate::platform::audit::verify(&state.store, &state.audit_checkpoints, &key)
            .await
            .map_err(|e| unavailable("verifying the audit log", format!("{e:#}")))?;
        *cached = Some((std::time::Instant::now(), now_ms(), verdict));
    }
    let (_, checked_at, verdict) = cached.as_ref().expect("just checked");
    Ok(pages::html(pages::audit(session, verdict, *checked_at)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_secure_as_the_setting_and_the_request_say() {
        let plain = HeaderMap::new();
        let mut proxied = HeaderMap::new();
        proxied.insert(
            "forwarded",
            HeaderValue::from_static("for=192.0.2.1;proto=https"),
        );
        let secure = |setting, loopback, headers: &HeaderMap| {
            ConsoleState::new(setting, loopback).secure(headers) == "; Secure"
        };
        assert!(!secure(CookieSecurity::Auto, true, &plain));
        assert!(secure(CookieSecurity::Auto, true, &proxied));
        assert!(secure(CookieSecurity::Auto, false, &plain));
        assert!(secure(CookieSecurity::Always, true, &plain));
        assert!(!secure(CookieSecurity::Never, false, &proxied));
    }
}
