//! Listeners and their rotatable secret endpoints (seed 000, DESIGN.md).
//!
//! Rules, enforced here and tested as properties:
//! - every listener has exactly one *active* endpoint (no expiry);
//! - rotating creates a new active endpoint and gives the old one an expiry, or deletes it at once;
//! - an expiry can be extended while it has not passed; an expired endpoint processes nothing (it
//!   resolves to nothing, so the server answers 404) and can no longer be changed, only deleted;
//! - the active endpoint cannot be deleted (rotate first).
//!
//! An endpoint's path is `/l/<secret>`; only SHA-256 of the secret is stored, so the URL is shown
//! once, at creation. Every change appends an audit entry in the same transaction.

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::platform::audit;
use crate::platform::keyring::KeyBytes;
use crate::platform::store::{Store, Tx, now_ms};
use crate::scanner::TokenSecret;

/// The integrations a listener can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerKind {
    Github,
    Gitlab,
    Depsdev,
    GitlabRevocation,
    StandardWebhooks,
    Twilio,
    GithubHmac,
}

impl ListenerKind {
    /// Every kind's name, in declaration order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        <ListenerKind as clap::ValueEnum>::value_variants()
            .iter()
            .map(ListenerKind::as_str)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ListenerKind::Github => "github",
            ListenerKind::Gitlab => "gitlab",
            ListenerKind::Depsdev => "depsdev",
            ListenerKind::GitlabRevocation => "gitlab-revocation",
            ListenerKind::StandardWebhooks => "standard-webhooks",
            ListenerKind::Twilio => "twilio",
            ListenerKind::GithubHmac => "github-hmac",
        }
    }

    /// Kinds whose requests are authenticated with a per-listener secret.
    pub fn needs_secret(&self) -> bool {
        matches!(
            self,
            ListenerKind::StandardWebhooks
                | ListenerKind::Twilio
                | ListenerKind::GithubHmac
                | ListenerKind::GitlabRevocation
        )
    }

    /// A fresh secret in the kind's own format, for kinds where Spillway may choose it (Twilio's is
    /// the account's auth token and must be given).
    pub fn generate_secret(&self) -> Option<TokenSecret> {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        match self {
            ListenerKind::StandardWebhooks => Some(TokenSecret::new(format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            ))),
            ListenerKind::GithubHmac | ListenerKind::GitlabRevocation => {
                Some(TokenSecret::new(URL_SAFE_NO_PAD.encode(bytes)))
            }
            _ => None,
        }
    }

    /// Checks a secret given for a listener of this kind, so that a secret the sender's requests
    /// could never verify against is refused now, with the reason, not later as a 401 to them.
    pub fn check_secret(&self, secret: &str) -> Result<(), SecretError> {
        if secret.trim().is_empty() {
            return Err(SecretError::Empty);
        }
        match self {
            ListenerKind::StandardWebhooks => {
                crate::platform::webhook_auth::StandardWebhooksKey::parse(secret)
                    .map(|_| ())
                    .map_err(|e| SecretError::Unusable(e.to_string()))
            }
            // Sent raw in a header by GitLab, so it must be a header value.
            ListenerKind::GitlabRevocation if !secret.bytes().all(|b| b.is_ascii_graphic()) => {
                Err(SecretError::Unusable(
                    "GitLab sends it in the Authorization header: visible ASCII only".into(),
                ))
            }
            ListenerKind::Twilio if secret.bytes().any(|b| b.is_ascii_whitespace()) => Err(
                SecretError::Unusable("a Twilio auth token has no whitespace".into()),
            ),
            _ => Ok(()),
        }
    }

    /// The secret a new listener of this kind holds, decided once for the CLI and the admin API:
    /// the one `given` (checked), else a generated one where Spillway may choose it. Returns the
    /// secret and whether it was generated (and so must be shown once).
    pub fn new_listener_secret(
        &self,
        given: Option<TokenSecret>,
    ) -> Result<Option<(TokenSecret, bool)>, SecretError> {
        match (self.needs_secret(), given) {
            (false, Some(_)) => Err(SecretError::NotTaken(self.as_str())),
            (false, None) => Ok(None),
            (true, Some(secret)) => {
                self.check_secret(secret.expose())?;
                Ok(Some((secret, false)))
            }
            (true, None) => self
                .generate_secret()
                .map(|s| Some((s, true)))
                .ok_or(SecretError::Required(self.as_str())),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        <Self as clap::ValueEnum>::value_variants()
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
    }
}

/// Why a listener secret was refused. Messages never include the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a {0} listener takes no secret")]
    NotTaken(&'static str),
    #[error("must not be empty")]
    Empty,
    #[error("required for a {0} listener: the sender's secret cannot be generated here")]
    Required(&'static str),
    #[error("{0}")]
    Unusable(String),
}

/// Why a listener change was refused. Messages name the endpoint or listener.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("no listener {0}")]
    NoListener(String),
    #[error("no endpoint {0}")]
    NoEndpoint(String),
    #[error("endpoint {0} is the active endpoint and has no expiry: rotate the listener first")]
    Active(String),
    #[error("endpoint {0} has expired: an expired endpoint can no longer be changed, only deleted")]
    Expired(String),
    #[error("the new expiry must be in the future")]
    ExpiryInPast,
    #[error(transparent)]
    Database(#[from] anyhow::Error),
}

impl From<sqlx::Error> for RotationError {
    fn from(e: sqlx::Error) -> Self {
        RotationError::Database(e.into())
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Endpoint {
    pub id: String,
    pub listener_id: String,
    pub created_at: i64,
    /// `None` for the active endpoint.
    pub expires_at: Option<i64>,
}

impl Endpoint {
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Listener {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub created_at: i64,
    /// Read separately (`endpoints_of`).
    #[sqlx(skip)]
    pub endpoints: Vec<Endpoint>,
}

/// A newly created endpoint: the only time its secret path is known.
#[derive(Debug)]
pub struct NewEndpoint {
    pub endpoint: Endpoint,
    /// `/l/<secret>`.
    pub path: String,
}

fn random_id(prefix: &str, bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

/// What is stored of an endpoint's secret path part: its SHA-256, hex.
pub fn path_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

async fn insert_endpoint(
    tx: &mut Tx,
    listener_id: &str,
    now: i64,
) -> Result<NewEndpoint, RotationError> {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let endpoint = Endpoint {
        id: random_id("ep_", 8),
        listener_id: listener_id.to_owned(),
        created_at: now,
        expires_at: None,
    };
    sqlx::query("INSERT INTO listener_endpoints (id, listener_id, path_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, NULL)")
        .bind(&endpoint.id)
        .bind(listener_id)
        .bind(path_hash(&secret))
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(NewEndpoint {
        endpoint,
        path: format!("/l/{secret}"),
    })
}

/// Creates a listener with one active endpoint.
pub async fn create(
    store: &Store,
    kind: ListenerKind,
    name: &str,
    actor: &str,
) -> Result<(Listener, NewEndpoint), RotationError> {
    create_with_secret(store, kind, name, actor, None).await
}

/// Creates a listener whose requests are authenticated with `secret` (generic listeners and the
/// GitLab revocation API), stored sealed under the sealing key and bound to the listener's id.
pub async fn create_with_secret(
    store: &Store,
    kind: ListenerKind,
    name: &str,
    actor: &str,
    secret: Option<(&KeyBytes, &TokenSecret)>,
) -> Result<(Listener, NewEndpoint), RotationError> {
    let now = now_ms();
    let mut tx = store.begin().await?;
    let id = random_id("lst_", 8);
    let sealed = secret.map(|(key, secret)| crate::platform::seal::seal(key, &id, secret));
    sqlx::query("INSERT INTO listeners (id, kind, name, created_at, secret_sealed) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(kind.as_str())
        .bind(name)
        .bind(now)
        .bind(sealed)
        .execute(&mut *tx)
        .await?;
    let endpoint = insert_endpoint(&mut tx, &id, now).await?;
    let details = serde_json::json!({ "kind": kind.as_str(), "name": name, "endpoint": endpoint.endpoint.id });
    audit::append(
        &mut tx,
        store.backend(),
        actor,
        "listener.create",
        &id,
        details,
    )
    .await?;
    tx.commit().await.context("cannot commit")?;
    let listener = Listener {
        id,
        kind: kind.as_str().into(),
        name: name.into(),
        created_at: now,
        endpoints: vec![endpoint.endpoint.clone()],
    };
    Ok((listener, endpoint))
}

async fn endpoints_of(tx: &mut Tx, listener_id: &str) -> Result<Vec<Endpoint>, RotationError> {
    Ok(sqlx::query_as::<_, Endpoint>("SELECT id, listener_id, created_at, expires_at FROM listener_endpoints WHERE listener_id = $1 ORDER BY created_at, id")
        .bind(listener_id)
        .fetch_all(&mut **tx)
        .await?)
}

/// All listeners with their endpoints.
pub async fn list(store: &Store) -> anyhow::Result<Vec<Listener>> {
    let mut tx = store.begin().await?;
    let mut listeners = sqlx::query_as::<_, Listener>(
        "SELECT id, kind, name, created_at FROM listeners ORDER BY created_at, id",
    )
    .fetch_all(&mut *tx)
    .await?;
    for listener in &mut listeners {
        listener.endpoints = endpoints_of(&mut tx, &listener.id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    tx.commit().await?;
    Ok(listeners)
}

/// What happens to the old active endpoint on rotation.
#[derive(Debug, Clone, Copy)]
pub enum OldEndpoint {
    /// It keeps working until this time (ms since the epoch).
    ExpireAt(i64),
    /// It stops working at once.
    Delete,
}

/// Creates a new active endpoint; the old one expires or is deleted.
pub async fn rotate(
    store: &Store,
    listener_id: &str,
    old: OldEndpoint,
    actor: &str,
) -> Result<NewEndpoint, RotationError> {
    let now = now_ms();
    if let OldEndpoint::ExpireAt(at) = old
        && at <= now
    {
        return Err(RotationError::ExpiryInPast);
    }
    let mut tx = store.begin().await?;
    let endpoints = endpoints_of(&mut tx, listener_id).await?;
    let Some(active) = endpoints.iter().find(|e| e.expires_at.is_none()) else {
        return Err(RotationError::NoListener(listener_id.to_owned()));
    };
    match old {
        OldEndpoint::ExpireAt(at) => {
            sqlx::query("UPDATE listener_endpoints SET expires_at = $1 WHERE id = $2")
                .bind(at)
                .bind(&active.id)
                .execute(&mut *tx)
                .await?;
        }
        OldEndpoint::Delete => {
            sqlx::query("DELETE FROM listener_endpoints WHERE id = $1")
                .bind(&active.id)
                .execute(&mut *tx)
                .await?;
        }
    }
    let new = insert_endpoint(&mut tx, listener_id, now).await?;
    let details = match old {
        OldEndpoint::ExpireAt(at) => {
            serde_json::json!({ "old": active.id, "old_expires_at": at, "new": new.endpoint.id })
        }
        OldEndpoint::Delete => {
            serde_json::json!({ "old": active.id, "old_deleted": true, "new": new.endpoint.id })
        }
    };
    audit::append(
        &mut tx,
        store.backend(),
        actor,
        "listener.rotate",
        listener_id,
        details,
    )
    .await?;
    tx.commit().await.context("cannot commit")?;
    Ok(new)
}

async fn find_endpoint(tx: &mut Tx, endpoint_id: &str) -> Result<Endpoint, RotationError> {
    sqlx::query_as::<_, Endpoint>(
        "SELECT id, listener_id, created_at, expires_at FROM listener_endpoints WHERE id = $1",
    )
    .bind(endpoint_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| RotationError::NoEndpoint(endpoint_id.to_owned()))
}

/// Moves an expiring endpoint's expiry to `until`, while it has not passed.
pub async fn extend(
    store: &Store,
    endpoint_id: &str,
    until: i64,
    actor: &str,
) -> Result<Endpoint, RotationError> {
    let now = now_ms();
    let mut tx = store.begin().await?;
    let mut endpoint = find_endpoint(&mut tx, endpoint_id).await?;
    match endpoint.expires_at {
        None => return Err(RotationError::Active(endpoint.id)),
        Some(at) if at <= now => return Err(RotationError::Expired(endpoint.id)),
        Some(_) if until <= now => return Err(RotationError::ExpiryInPast),
        Some(_) => {}
    }
    sqlx::query("UPDATE listener_endpoints SET expires_at = $1 WHERE id = $2")
        .bind(until)
        .bind(&endpoint.id)
        .execute(&mut *tx)
        .await?;
    let details =
        serde_json::json!({ "endpoint": endpoint.id, "from": endpoint.expires_at, "to": until });
    audit::append(
        &mut tx,
        store.backend(),
        actor,
        "listener.extend",
        &endpoint.listener_id,
        details,
    )
    .await?;
    tx.commit().await.context("cannot commit")?;
    endpoint.expires_at = Some(until);
    Ok(endpoint)
}

/// Deletes an expiring or expired endpoint (never the active one).
pub async fn delete_endpoint(
    store: &Store,
    endpoint_id: &str,
    actor: &str,
) -> Result<(), RotationError> {
    let mut tx = store.begin().await?;
    let endpoint = find_endpoint(&mut tx, endpoint_id).await?;
    if endpoint.expires_at.is_none() {
        return Err(RotationError::Active(endpoint.id));
    }
    sqlx::query("DELETE FROM listener_endpoints WHERE id = $1")
        .bind(&endpoint.id)
        .execute(&mut *tx)
        .await?;
    let details = serde_json::json!({ "endpoint": endpoint.id });
    audit::append(
        &mut tx,
        store.backend(),
        actor,
        "listener.delete_endpoint",
        &endpoint.listener_id,
        details,
    )
    .await?;
    tx.commit().await.context("cannot commit")?;
    Ok(())
}

/// What [`resolve`] reads of an endpoint and its listener.
#[derive(sqlx::FromRow)]
struct ResolvedRow {
    id: String,
    kind: String,
    expires_at: Option<i64>,
}

/// The listener an endpoint secret routes to, if the endpoint exists and has not expired.
pub async fn resolve(
    store: &Store,
    secret: &str,
) -> anyhow::Result<Option<(String, ListenerKind)>> {
    let row = sqlx::query_as::<_, ResolvedRow>(
        "SELECT l.id, l.kind, e.expires_at FROM listener_endpoints e JOIN listeners l ON l.id = e.listener_id WHERE e.path_hash = $1",
    )
    .bind(path_hash(secret))
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    if row.expires_at.is_some_and(|at| at <= now_ms()) {
        return Ok(None);
    }
    Ok(ListenerKind::parse(&row.kind).map(|k| (row.id, k)))
}

/// Every endpoint with its listener: (path hash, expiry, listener id, kind, sealed secret). The
/// public listener keeps these in memory (`server::directory`), so an endpoint resolves before any
/// body byte is read and without a query per request.
pub struct RouteRow {
    pub path_hash: String,
    pub expires_at: Option<i64>,
    pub listener_id: String,
    pub kind: ListenerKind,
    pub secret_sealed: Option<String>,
}

/// A route as stored: the kind still its name.
#[derive(sqlx::FromRow)]
struct StoredRoute {
    path_hash: String,
    expires_at: Option<i64>,
    #[sqlx(rename = "id")]
    listener_id: String,
    kind: String,
    secret_sealed: Option<String>,
}

/// All endpoint routes (see [`RouteRow`]); endpoints of an unknown kind are left out.
pub async fn routes(store: &Store) -> anyhow::Result<Vec<RouteRow>> {
    let rows = sqlx::query_as::<_, StoredRoute>(
        "SELECT e.path_hash, e.expires_at, l.id, l.kind, l.secret_sealed \
         FROM listener_endpoints e JOIN listeners l ON l.id = e.listener_id",
    )
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(RouteRow {
                kind: ListenerKind::parse(&r.kind)?,
                path_hash: r.path_hash,
                expires_at: r.expires_at,
                listener_id: r.listener_id,
                secret_sealed: r.secret_sealed,
            })
        })
        .collect())
}

/// Opens a listener's sealed secret (bound to its id).
pub fn open_secret(key: &KeyBytes, listener_id: &str, sealed: &str) -> anyhow::Result<TokenSecret> {
    crate::platform::seal::open(key, listener_id, sealed)
}

/// The listener's authentication secret, unsealed, if it has one.
pub async fn secret(
    store: &Store,
    key: &KeyBytes,
    listener_id: &str,
) -> anyhow::Result<Option<TokenSecret>> {
    let sealed: Option<Option<String>> =
        sqlx::query_scalar("SELECT secret_sealed FROM listeners WHERE id = $1")
            .bind(listener_id)
            .fetch_optional(store.pool())
            .await?;
    sealed
        .flatten()
        .map(|s| crate::platform::seal::open(key, listener_id, &s))
        .transpose()
}

/// One request a generic listener received, as its output stream shows it (redacted).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ListenerEvent {
    pub id: i64,
    pub received_at: i64,
    pub body_sha256: String,
    pub tokens_found: i64,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// `null` when the body did not decode as declared and no copy was kept.
    #[sqlx(skip)]
    pub body: Option<String>,
    #[serde(skip)]
    redacted_body: String,
    #[serde(skip)]
    body_kept: i64,
    pub note: Option<String>,
}

/// A listener's events, oldest first; None when there is no such listener.
pub async fn events(
    store: &Store,
    listener_id: &str,
) -> anyhow::Result<Option<Vec<ListenerEvent>>> {
    let exists = sqlx::query("SELECT 1 FROM listeners WHERE id = $1")
        .bind(listener_id)
        .fetch_optional(store.pool())
        .await
        .context("cannot read listeners")?;
    if exists.is_none() {
        return Ok(None);
    }
    let rows: Vec<ListenerEvent> = sqlx::query_as(
        "SELECT id, received_at, body_sha256, redacted_body, tokens_found, content_type, \
         content_encoding, body_kept, note FROM listener_events WHERE listener_id = $1 ORDER BY id",
    )
    .bind(listener_id)
    .fetch_all(store.pool())
    .await
    .context("cannot read listener events")?;
    Ok(Some(
        rows.into_iter()
            .map(|mut e| {
                e.body = (e.body_kept != 0).then(|| std::mem::take(&mut e.redacted_body));
                e
            })
            .collect(),
    ))
}

/// An endpoint past its expiry that still exists (for `doctor`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExpiredEndpoint {
    pub id: String,
    pub listener_id: String,
    pub expires_at: i64,
}

/// Endpoints expired at `now` and not deleted, oldest expiry first.
pub async fn expired_endpoints(store: &Store, now: i64) -> anyhow::Result<Vec<ExpiredEndpoint>> {
    sqlx::query_as(
        "SELECT id, listener_id, expires_at FROM listener_endpoints \
         WHERE expires_at IS NOT NULL AND expires_at <= $1 ORDER BY expires_at",
    )
    .bind(now)
    .fetch_all(store.pool())
    .await
    .context("cannot read listener endpoints")
}
