//! The installation registry: who issues which tokens, their signing keys, where Spillway verifies,
//! revokes and notifies (or pull mode), their rate limit, and the shared secrets that sign
//! Spillway's calls (sealed; two live during a rotation: add the new one beside the old, let the
//! installation verify with it, then retire the old). Every change is audited.

pub mod contract;
pub mod signing_keys;
pub mod verdict;

use std::collections::BTreeSet;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::installations::contract::Jwks;
use crate::platform::audit;
use crate::platform::keyring::KeyBytes;
use crate::platform::outbound::Policy;
use crate::platform::store::{Store, now_ms};
use crate::scanner::TokenSecret;

/// How tokens are handed to an installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// `token_sha256` only (the default: the installation looks tokens up by hash).
    #[default]
    Sha256,
    /// The raw token as well, for installations that cannot look up by hash.
    Raw,
}

impl Delivery {
    pub fn as_str(&self) -> &'static str {
        match self {
            Delivery::Sha256 => "sha256",
            Delivery::Raw => "raw",
        }
    }
}

/// What an operator registers (and what `update` replaces field by field).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    #[serde(default)]
    pub hostnames: Vec<String>,
    pub token_types: Vec<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub inline_jwks: Option<Jwks>,
    #[serde(default)]
    pub verify_url: Option<String>,
    #[serde(default)]
    pub revoke_url: Option<String>,
    #[serde(default)]
    pub notify_url: Option<String>,
    #[serde(default)]
    pub pull_mode: bool,
    #[serde(default = "default_rate")]
    pub rate_per_sec: f64,
    #[serde(default = "default_burst")]
    pub burst: u32,
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    #[serde(default)]
    pub delivery: Delivery,
}

fn default_rate() -> f64 {
    10.0
}
fn default_burst() -> u32 {
    20
}
fn default_concurrency() -> u32 {
    4
}

/// A registered installation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Installation {
    pub id: String,
    #[serde(flatten)]
    pub spec: Spec,
    pub created_at: i64,
    pub updated_at: i64,
    /// When the newest shared secret was added, and how many are live (1, or 2 mid-rotation).
    pub secret_created_at: i64,
    pub live_secrets: usize,
}

/// Why a registration or change was refused. Messages name the field.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("no installation {0}")]
    NotFound(String),
    #[error("an installation named {0:?} exists")]
    NameTaken(String),
    #[error(
        "installation {0} already has two live secrets: retire the old one (rotate-secret --retire-old) before adding another"
    )]
    TwoSecretsLive(String),
    #[error("installation {0} has one live secret: nothing to retire")]
    NothingToRetire(String),
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

fn invalid(field: &str, message: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl Spec {
    /// Checks every field; `policy` decides which URLs may be called.
    pub fn validate(&self, policy: &Policy) -> Result<(), RegistryError> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > 100 {
            return Err(invalid("name", "must be 1 to 100 characters"));
        }
        if name.starts_with("ins_") {
            return Err(invalid(
                "name",
                "must not start with ins_ (installation ids do)",
            ));
        }
        if self.token_types.is_empty() {
            return Err(invalid("token_types", "name at least one token type"));
        }
        if let Some(t) = self
            .token_types
            .iter()
            .find(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(invalid(
                "token_types",
                format!("{t:?} is not a token type name (letters, digits, _)"),
            ));
        }
        for h in &self.hostnames {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.contains('.')
                && h.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                });
            if !ok {
                return Err(invalid(
                    "hostnames",
                    format!("{h:?} is not a lowercase DNS name"),
                ));
            }
        }
        for (field, url) in [
            ("jwks_url", &self.jwks_url),
            ("verify_url", &self.verify_url),
            ("revoke_url", &self.revoke_url),
            ("notify_url", &self.notify_url),
        ] {
            if let Some(url) = url {
                policy.check(field, url).map_err(|e| {
                    invalid(field, e.to_string().replacen(&format!("{field}: "), "", 1))
                })?;
            }
        }
        if let Some(jwks) = &self.inline_jwks {
            for (i, jwk) in jwks.keys.iter().enumerate() {
                crate::platform::jwt::key_from_jwk(jwk)
                    .map_err(|e| invalid(&format!("inline_jwks.keys[{i}]"), e.to_string()))?;
                if jwk.kid.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid(
                        &format!("inline_jwks.keys[{i}].kid"),
                        "required (the token header's plntr or kid)",
                    ));
                }
            }
        }
        if self.pull_mode {
            if self.verify_url.is_some() || self.revoke_url.is_some() {
                return Err(invalid(
                    "pull_mode",
                    "a pull-mode installation has no verify_url or revoke_url (it fetches its revocations)",
                ));
            }
        } else if self.revoke_url.is_none() {
            return Err(invalid("revoke_url", "required unless pull_mode is set"));
        }
        if !(self.rate_per_sec.is_finite()
            && self.rate_per_sec > 0.0
            && self.rate_per_sec <= 10_000.0)
        {
            return Err(invalid("rate_per_sec", "must be > 0 and <= 10000"));
        }
        if !(1..=10_000).contains(&self.burst) {
            return Err(invalid("burst", "must be 1 to 10000"));
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err(invalid("concurrency", "must be 1 to 256"));
        }
        Ok(())
    }
}

/// Partial update: each `Some` replaces the field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    pub name: Option<String>,
    pub hostnames: Option<Vec<String>>,
    pub token_types: Option<Vec<String>>,
    /// `null` removes the field; absent leaves it as it is (likewise below).
    #[serde(default, deserialize_with = "present")]
    pub jwks_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub inline_jwks: Option<Option<Jwks>>,
    #[serde(default, deserialize_with = "present")]
    pub verify_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub revoke_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub notify_url: Option<Option<String>>,
    pub pull_mode: Option<bool>,
    pub rate_per_sec: Option<f64>,
    pub burst: Option<u32>,
    pub concurrency: Option<u32>,
    pub delivery: Option<Delivery>,
}

/// A field that is present in a patch: `Some(None)` for `null`, `Some(Some(v))` for a value (an
/// absent field never gets here: `#[serde(default)]` makes it `None`).
fn present<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl Patch {
    pub fn apply(self, spec: &mut Spec) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { spec.$f = v; } )* };
        }
        set!(
            name,
            hostnames,
            token_types,
            jwks_url,
            inline_jwks,
            verify_url,
            revoke_url,
            notify_url,
            pull_mode,
            rate_per_sec,
            burst,
            concurrency,
            delivery
        );
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

fn secret_owner(installation_id: &str) -> String {
    format!("installation:{installation_id}")
}

/// A shared secret given by the operator, or a new one.
fn secret_or_new(secret: Option<TokenSecret>) -> Result<(TokenSecret, bool), RegistryError> {
    match secret {
        Some(s) => {
            crate::platform::webhook_auth::sign_standard_webhooks(&[s.expose()], "check", 0, b"")
                .map_err(|_| invalid("secret", "must be whsec_<base64>"))?;
            Ok((s, false))
        }
        None => Ok((
            TokenSecret::new(crate::platform::webhook_auth::generate_whsec()),
            true,
        )),
    }
}

/// An installation that publishes keys inline, as [`check_key_ids`] reads it.
#[derive(sqlx::FromRow)]
struct InlineKeysRow {
    id: String,
    name: String,
    inline_jwks: Option<String>,
}

/// `NameTaken` when an installation is already registered as `name`.
async fn name_free(tx: &mut crate::platform::store::Tx, name: &str) -> Result<(), RegistryError> {
    let taken = sqlx::query("SELECT 1 FROM installations WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .context("cannot read installations")?;
    match taken {
        Some(_) => Err(RegistryError::NameTaken(name.to_owned())),
        None => Ok(()),
    }
}

/// Refuses inline keys whose key id another installation already publishes inline: a key id has
/// one owner (DESIGN.md, trust rules), and a second claim could make a genuine token look forged.
/// Key ids served by JWKS URLs are checked when fetched (`installation_keys`).
async fn check_key_ids(
    tx: &mut crate::platform::store::Tx,
    spec: &Spec,
    own_id: Option<&str>,
) -> Result<(), RegistryError> {
    let Some(jwks) = &spec.inline_jwks else {
        return Ok(());
    };
    let rows = sqlx::query_as::<_, InlineKeysRow>(
        "SELECT id, name, inline_jwks FROM installations WHERE inline_jwks IS NOT NULL",
    )
    .fetch_all(&mut **tx)
    .await
    .context("cannot read installations")?;
    for row in rows {
        if Some(row.id.as_str()) == own_id {
            continue;
        }
        let theirs: Option<Jwks> = row.inline_jwks.and_then(|t| serde_json::from_str(&t).ok());
        let Some(theirs) = theirs else { continue };
        for (i, key) in jwks.keys.iter().enumerate() {
            let Some(kid) = &key.kid else { continue };
            if theirs.keys.iter().any(|k| k.kid.as_ref() == Some(kid)) {
                let (name, id) = (&row.name, &row.id);
                return Err(invalid(
                    &format!("inline_jwks.keys[{i}].kid"),
                    format!(
                        "key id {kid:?} is already published by installation {name} ({id}): a key id has one owner"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Registers an installation; returns it and, when Spillway generated the shared secret, that
/// secret (shown once; only its sealed form is stored).
pub async fn register(
    store: &Store,
    sealing: &KeyBytes,
    policy: &Policy,
    mut spec: Spec,
    secret: Option<TokenSecret>,
    actor: &str,
) -> Result<(Installation, Option<TokenSecret>), RegistryError> {
    spec.name = spec.name.trim().to_owned();
    spec.validate(policy)?;
    let (secret, generated) = secret_or_new(secret)?;
    let id = new_id("ins");
    let now = now_ms();
    let mut tx = store.begin().await?;
    name_free(&mut tx, &spec.name).await?;
    check_key_ids(&mut tx, &spec, None).await?;
    write_spec(&mut tx, &id, &spec, now, true).await?;
    add_secret(&mut tx, sealing, &id, &secret, now).await?;
    audit::append(
        &mut tx,
        store.backend(),
        actor,
        "installation.registered",
        &format!("installation:{id}"),
        audit_details(&spec),
    )
    .await?;
    tx.commit().await.context("cannot commit installation")?;
    let installation = get(store, &id).await?;
    Ok((installation, generated.then_some(secret)))
}

fn audit_details(spec: &Spec) -> serde_json::Value {
    serde_json::json!({
        "name": spec.name,
        "token_types": spec.token_types,
        "hostnames": spec.hostnames,
        "pull_mode": spec.pull_mode,
        "delivery": spec.delivery.as_str(),
        "rate_per_sec": spec.rate_per_sec,
        "burst": spec.burst,
        "concurrency": spec.concurrency,
    })
}

async fn write_spec(
    tx: &mut crate::platform::store::Tx,
    id: &str,
    spec: &Spec,
    now: i64,
    insert: bool,
) -> anyhow::Result<()> {
    let sql = if insert {
        "INSERT INTO installations (name, hostnames, token_types, jwks_url, inline_jwks, verify_url, \
         revoke_url, notify_url, pull_mode, rate_per_sec, burst, concurrency, delivery, updated_at, \
         id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $14)"
    } else {
        "UPDATE installations SET name = $1, hostnames = $2, token_types = $3, jwks_url = $4, \
         inline_jwks = $5, verify_url = $6, revoke_url = $7, notify_url = $8, pull_mode = $9, \
         rate_per_sec = $10, burst = $11, concurrency = $12, delivery = $13, updated_at = $14 \
         WHERE id = $15"
    };
    sqlx::query(sql)
        .bind(&spec.name)
        .bind(serde_json::to_string(&spec.hostnames)?)
        .bind(serde_json::to_string(&spec.token_types)?)
        .bind(spec.jwks_url.clone())
        .bind(
            spec.inline_jwks
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
        )
        .bind(spec.verify_url.clone())
        .bind(spec.revoke_url.clone())
        .bind(spec.notify_url.clone())
        .bind(i64::from(spec.pull_mode))
        .bind(spec.rate_per_sec)
        .bind(i64::from(spec.burst))
        .bind(i64::from(spec.concurrency))
        .bind(spec.delivery.as_str())
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await
        .context("cannot write installation")?;
    Ok(())
}

async fn add_secret(
    tx: &mut crate::platform::store::Tx,
    sealing: &KeyBytes,
    id: &str,
    secret: &TokenSecret,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO installation_secrets (id, installation_id, sealed, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(new_id("sec"))
    .bind(id)
    .bind(crate::platform::seal::seal(sealing, &secret_owner(id), secret))
    .bind(now)
    .execute(&mut **tx)
    .await
    .context("cannot store installation secret")?;
    Ok(())
}

const COLUMNS: &str = "i.id, i.name, i.hostnames, i.token_types, i.jwks_url, i.inline_jwks, \
    i.verify_url, i.revoke_url, i.notify_url, i.pull_mode, i.rate_per_sec, i.burst, i.concurrency, \
    i.delivery, i.created_at, i.updated_at, \
    (SELECT MAX(s.created_at) FROM installation_secrets s WHERE s.installation_id = i.id) AS secret_created_at, \
    (SELECT COUNT(*) FROM installation_secrets s WHERE s.installation_id = i.id) AS live_secrets";

/// An installation as stored ([`COLUMNS`]): lists and inline keys as JSON text, `pull_mode` as
/// 0/1, `delivery` as its name.
#[derive(sqlx::FromRow)]
struct InstallationRow {
    id: String,
    name: String,
    hostnames: String,
    token_types: String,
    jwks_url: Option<String>,
    inline_jwks: Option<String>,
    verify_url: Option<String>,
    revoke_url: Option<String>,
    notify_url: Option<String>,
    pull_mode: i64,
    rate_per_sec: f64,
    burst: i64,
    concurrency: i64,
    delivery: String,
    created_at: i64,
    updated_at: i64,
    secret_created_at: Option<i64>,
    live_secrets: i64,
}

impl TryFrom<InstallationRow> for Installation {
    type Error = anyhow::Error;

    fn try_from(r: InstallationRow) -> anyhow::Result<Installation> {
        Ok(Installation {
            id: r.id,
            spec: Spec {
                name: r.name,
                hostnames: serde_json::from_str(&r.hostnames)?,
                token_types: serde_json::from_str(&r.token_types)?,
                jwks_url: r.jwks_url,
                inline_jwks: r
                    .inline_jwks
                    .map(|s| serde_json::from_str(&s))
                    .transpose()?,
                verify_url: r.verify_url,
                revoke_url: r.revoke_url,
                notify_url: r.notify_url,
                pull_mode: r.pull_mode != 0,
                rate_per_sec: r.rate_per_sec,
                burst: r.burst as u32,
                concurrency: r.concurrency as u32,
                delivery: if r.delivery == "raw" {
                    Delivery::Raw
                } else {
                    Delivery::Sha256
                },
            },
            created_at: r.created_at,
            updated_at: r.updated_at,
            secret_created_at: r.secret_created_at.unwrap_or(0),
            live_secrets: r.live_secrets as usize,
        })
    }
}

/// Every installation, by name.
pub async fn list(store: &Store) -> anyhow::Result<Vec<Installation>> {
    let rows = sqlx::query_as::<_, InstallationRow>(&format!(
        "SELECT {COLUMNS} FROM installations i ORDER BY i.name"
    ))
    .fetch_all(store.pool())
    .await
    .context("cannot list installations")?;
    rows.into_iter().map(Installation::try_from).collect()
}

/// One installation by id or name.
pub async fn get(store: &Store, id_or_name: &str) -> Result<Installation, RegistryError> {
    let row = sqlx::query_as::<_, InstallationRow>(&format!(
        "SELECT {COLUMNS} FROM installations i WHERE i.id = $1 OR i.name = $1"
    ))
    .bind(id_or_name)
    .fetch_optional(store.pool())
    .await
    .context("cannot read installation")?;
    match row {
        Some(row) => Ok(Installation::try_from(row)?),
        None => Err(RegistryError::NotFound(id_or_name.into())),
    }
}

/// Applies `patch`, validates the result and records it.
pub async fn update(
    store: &Store,
    policy: &Policy,
    id_or_name: &str,
    patch: Patch,
    actor: &str,
) -> Result<Installation, RegistryError> {
    let current = get(store, id_or_name).await?;
    let mut spec = current.spec.clone();
    patch.apply(&mut spec);
    spec.name = spec.name.trim().to_owned();
    spec.validate(policy)?;
    let mut tx = store.begin().await?;
    if spec.name != current.spec.name {
        name_free(&mut tx, &spec.name).await?;
    }
    check_key_ids(&mut tx, &spec, Some(&current.id)).await?;
    let now = now_ms();
    write_spec(&mut tx, &current.id, &spec, now, false).await?;
    let moved = crate::findings::store::follow_registration(
        &mut tx,
        &current.id,
        crate::findings::store::Registration {
            pull_mode: spec.pull_mode,
            verifies: spec.verify_url.is_some(),
            notifies: spec.notify_url.is_some(),
        },
        now,
    )
    .await?;
    let mut details = audit_details(&spec);
    details["findings_moved"] = moved.into();
    audit::append(
        &mut tx,
        store.backend(),
        actor,
        "installation.updated",
        &format!("installation:{}", current.id),
        details,
    )
    .await?;
    tx.commit().await.context("cannot commit installation")?;
    get(store, &current.id).await
}

/// Adds a shared secret beside the current one (generated unless given); both sign until the old
/// one is retired. Returns the generated secret, if any.
pub async fn rotate_secret(
    store: &Store,
    sealing: &KeyBytes,
    id_or_name: &str,
    secret: Option<TokenSecret>,
    actor: &str,
) -> Result<Option<TokenSecret>, RegistryError> {
    let current = get(store, id_or_name).await?;
    if current.live_secrets >= 2 {
        return Err(RegistryError::TwoSecretsLive(current.id));
    }
    let (secret, generated) = secret_or_new(secret)?;
    let mut tx = store.begin().await?;
    add_secret(&mut tx, sealing, &current.id, &secret, now_ms()).await?;
    audit::append(
        &mut tx,
        store.backend(),
        actor,
        "installation.secret_added",
        &format!("installation:{}", current.id),
        serde_json::json!({ "live_secrets": current.live_secrets + 1 }),
    )
    .await?;
    tx.commit().await.context("cannot commit secret")?;
    Ok(generated.then_some(secret))
}

/// Retires every secret but the newest.
pub async fn retire_old_secret(
    store: &Store,
    id_or_name: &str,
    actor: &str,
) -> Result<(), RegistryError> {
    let current = get(store, id_or_name).await?;
    if current.live_secrets < 2 {
        return Err(RegistryError::NothingToRetire(current.id));
    }
    let mut tx = store.begin().await?;
    sqlx::query(
        "DELETE FROM installation_secrets WHERE installation_id = $1 AND id NOT IN \
         (SELECT id FROM installation_secrets WHERE installation_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1)",
    )
    .bind(&current.id)
    .execute(&mut *tx)
    .await
    .context("cannot retire secret")?;
    audit::append(
        &mut tx,
        store.backend(),
        actor,
        "installation.secret_retired",
        &format!("installation:{}", current.id),
        serde_json::json!({ "live_secrets": 1 }),
    )
    .await?;
    tx.commit().await.context("cannot commit secret")?;
    Ok(())
}

/// The live shared secrets, newest first.
pub async fn secrets(
    store: &Store,
    sealing: &KeyBytes,
    installation_id: &str,
) -> anyhow::Result<Vec<TokenSecret>> {
    let sealed: Vec<String> = sqlx::query_scalar(
        "SELECT sealed FROM installation_secrets WHERE installation_id = $1 ORDER BY created_at DESC, id DESC",
    )
    .bind(installation_id)
    .fetch_all(store.pool())
    .await
    .context("cannot read installation secrets")?;
    sealed
        .iter()
        .map(|s| crate::platform::seal::open(sealing, &secret_owner(installation_id), s))
        .collect()
}

/// How old an installation's live shared secrets are (for `doctor`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecretAges {
    pub installation_id: String,
    /// 1, or 2 mid-rotation.
    pub live: i64,
    pub newest: i64,
    pub oldest: i64,
}

/// Every installation's secret ages, by installation id.
pub async fn secret_ages(store: &Store) -> anyhow::Result<Vec<SecretAges>> {
    sqlx::query_as(
        "SELECT installation_id, COUNT(*) AS live, MAX(created_at) AS newest, MIN(created_at) AS oldest \
         FROM installation_secrets GROUP BY installation_id ORDER BY installation_id",
    )
    .fetch_all(store.pool())
    .await
    .context("cannot read installation secrets")
}

/// Removes an installation. Its findings still in progress fail (audited), so none waits forever
/// on a target that no longer exists.
pub async fn remove(store: &Store, id_or_name: &str, actor: &str) -> Result<usize, RegistryError> {
    let current = get(store, id_or_name).await?;
    let now = now_ms();
    let mut tx = store.begin().await?;
    let stopped =
        crate::findings::store::fail_for_removed(&mut tx, &current.id, now).await? as usize;
    sqlx::query("DELETE FROM installations WHERE id = $1")
        .bind(&current.id)
        .execute(&mut *tx)
        .await
        .context("cannot remove installation")?;
    audit::append(
        &mut tx,
        store.backend(),
        actor,
        "installation.removed",
        &format!("installation:{}", current.id),
        serde_json::json!({ "name": current.spec.name, "findings_stopped": stopped }),
    )
    .await?;
    tx.commit().await.context("cannot commit removal")?;
    Ok(stopped)
}

/// Ids of the issuers the engine adds beside registered installations (`issuer:github`).
pub const ISSUER_PREFIX: &str = "issuer:";

/// Whether `i` is an issuer (a company whose tokens Spillway did not issue), not a registration.
pub fn is_issuer(i: &Installation) -> bool {
    i.id.starts_with(ISSUER_PREFIX)
}

/// The installations that issue `token_type` (issuers apart: they are the fallback).
pub fn issuing<'a>(all: &'a [Installation], token_type: &str) -> Vec<&'a Installation> {
    all.iter()
        .filter(|i| !is_issuer(i) && i.spec.token_types.iter().any(|t| t == token_type))
        .collect()
}

/// The issuer that can revoke `token_type`, when no installation claims a token of it.
pub fn issuer_of<'a>(all: &'a [Installation], token_type: &str) -> Option<&'a Installation> {
    all.iter()
        .find(|i| is_issuer(i) && i.spec.token_types.iter().any(|t| t == token_type))
}

/// The installations one of whose hostnames is `host` or a parent domain of it.
pub fn by_hostname<'a>(all: &'a [Installation], hosts: &[String]) -> Vec<&'a Installation> {
    let hosts: BTreeSet<&str> = hosts.iter().map(String::as_str).collect();
    all.iter()
        .filter(|i| {
            i.spec.hostnames.iter().any(|h| {
                hosts
                    .iter()
                    .any(|seen| *seen == h || seen.ends_with(&format!(".{h}")))
            })
        })
        .collect()
}

#[cfg(test)]
mod patch_tests {
    use super::Patch;

    #[test]
    fn null_removes_a_field_and_absent_leaves_it() {
        let p: Patch =
            serde_json::from_str(r#"{"verify_url": null, "notify_url": "https://x.example/n"}"#)
                .unwrap();
        assert_eq!(p.verify_url, Some(None));
        assert_eq!(p.notify_url, Some(Some("https://x.example/n".to_owned())));
        assert_eq!(p.revoke_url, None);
    }
}
