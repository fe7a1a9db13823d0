//! Admin API keys, held to the discipline Spillway enforces on others (seeds 001 and 002):
//! a recognisable, checksummed format the scanner finds (`spillway_` + 32 base62 + CRC32/base62, rule
//! `spillway.admin-key`), stored only as SHA-256, least-privilege scopes, a TTL, and no key can mint
//! a key with a scope it lacks.
//!
//! Owns the `admin_keys` table. Must not import HTTP, the engine or the registries: it stands on
//! `platform` and the scanner's token types.

use std::collections::BTreeSet;

use anyhow::Context as _;
use rand::Rng as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::platform::audit;
use crate::platform::store::{Store, now_ms};
use crate::scanner::TokenSecret;
use crate::scanner::validate::{check_crc32_base62, crc32_base62};

pub const KEY_PREFIX: &str = "spillway_";
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// What an admin key may do. Scopes are an enum (parsed at the edge, `listeners:read` and so on
/// on the wire), so a handler names the scope it needs and a typo cannot compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    ListenersRead,
    ListenersWrite,
    InstallationsRead,
    InstallationsWrite,
    AuditRead,
    KeysRead,
    KeysWrite,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::ListenersRead,
        Scope::ListenersWrite,
        Scope::InstallationsRead,
        Scope::InstallationsWrite,
        Scope::AuditRead,
        Scope::KeysRead,
        Scope::KeysWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ListenersRead => "listeners:read",
            Scope::ListenersWrite => "listeners:write",
            Scope::InstallationsRead => "installations:read",
            Scope::InstallationsWrite => "installations:write",
            Scope::AuditRead => "audit:read",
            Scope::KeysRead => "keys:read",
            Scope::KeysWrite => "keys:write",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

fn known_scopes() -> String {
    Scope::ALL.map(Scope::as_str).join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unknown scope {0:?}; known scopes: {known}", known = known_scopes())]
    UnknownScope(String),
    #[error("a key needs at least one scope")]
    NoScopes,
    #[error("cannot grant scope {0}: the creating key does not hold it")]
    Escalation(Scope),
    #[error("TTL must be positive")]
    BadTtl,
    #[error(
        "a key cannot outlive the key that mints it: the new key would expire after {creator} does"
    )]
    Outlives { creator: String },
    #[error("no admin key {0}")]
    NotFound(String),
    #[error("admin key {0} is already revoked")]
    AlreadyRevoked(String),
    #[error(transparent)]
    Database(#[from] anyhow::Error),
}

impl From<sqlx::Error> for KeyError {
    fn from(e: sqlx::Error) -> Self {
        KeyError::Database(e.into())
    }
}

/// Parses a comma-separated scope list.
pub fn parse_scopes(list: &str) -> Result<BTreeSet<Scope>, KeyError> {
    let mut scopes = BTreeSet::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        scopes.insert(Scope::parse(name).ok_or_else(|| KeyError::UnknownScope(name.to_owned()))?);
    }
    if scopes.is_empty() {
        return Err(KeyError::NoScopes);
    }
    Ok(scopes)
}

/// A fresh key: 32 base62 characters (~190 bits) and their checksum.
pub fn generate_key() -> TokenSecret {
    let mut rng = rand::rngs::OsRng;
    let body: String = (0..32)
        .map(|_| BASE62[rng.gen_range(0..62)] as char)
        .collect();
    TokenSecret::new(format!(
        "{KEY_PREFIX}{body}{}",
        crc32_base62(body.as_bytes())
    ))
}

/// True when `key` has the admin-key shape and a valid checksum (cheap to check before any lookup).
pub fn is_well_formed(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX)
        .is_some_and(|rest| rest.len() == 38 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
        && check_crc32_base62(key.as_bytes()).is_ok()
}

fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminKey {
    pub id: String,
    pub name: String,
    pub scopes: BTreeSet<Scope>,
    pub created_at: i64,
    pub expires_at: i64,
    pub created_by: String,
    /// The key that minted this one (none for a key created on the machine).
    pub parent_id: Option<String>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    pub revoked_reason: Option<String>,
}

impl AdminKey {
    pub fn holds(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// The actor an audit entry names for changes this key makes.
    pub fn actor(&self) -> String {
        format!("admin-key:{}", self.id)
    }
}

/// Who creates a key: the operator on the machine (the CLI), or another key, whose scopes and
/// lifetime bound the new key's.
pub enum Creator<'a> {
    Local(&'a str),
    Key(&'a AdminKey),
}

const COLUMNS: &str = "id, name, scopes, created_at, expires_at, created_by, parent_id, \
                       last_used_at, revoked_at, revoked_by, revoked_reason";

/// Creates a key. A key minted by another key holds at most its scopes and expires no later.
pub async fn create(
    store: &Store,
    name: &str,
    scopes: &BTreeSet<Scope>,
    ttl_ms: i64,
    creator: Creator<'_>,
) -> Result<(AdminKey, TokenSecret), KeyError> {
    if ttl_ms <= 0 {
        return Err(KeyError::BadTtl);
    }
    let now = now_ms();
    let expires_at = now.saturating_add(ttl_ms);
    let (created_by, parent_id) = match &creator {
        Creator::Local(actor) => (actor.to_string(), None),
        Creator::Key(parent) => {
            if let Some(extra) = scopes.iter().find(|s| !parent.holds(**s)) {
                return Err(KeyError::Escalation(*extra));
            }
            if expires_at > parent.expires_at {
                return Err(KeyError::Outlives {
                    creator: parent.id.clone(),
                });
            }
            (parent.actor(), Some(parent.id.clone()))
        }
    };
    let secret = generate_key();
    let key = AdminKey {
        id: format!("key_{}", &key_hash(secret.expose())[..12]),
        name: name.to_owned(),
        scopes: scopes.clone(),
        created_at: now,
        expires_at,
        created_by,
        parent_id,
        last_used_at: None,
        revoked_at: None,
        revoked_by: None,
        revoked_reason: None,
    };
    let scope_list = scope_list(scopes);
    let mut tx = store.begin().await?;
    sqlx::query(
        "INSERT INTO admin_keys (id, key_hash, name, scopes, created_at, expires_at, created_by, \
         parent_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&key.id)
    .bind(key_hash(secret.expose()))
    .bind(&key.name)
    .bind(&scope_list)
    .bind(key.created_at)
    .bind(key.expires_at)
    .bind(&key.created_by)
    .bind(&key.parent_id)
    .execute(&mut *tx)
    .await
    .context("cannot store admin key")?;
    let details = serde_json::json!({
        "name": name,
        "scopes": scope_list,
        "expires_at": key.expires_at,
        "parent": key.parent_id,
    });
    audit::append(
        &mut tx,
        store.backend(),
        &key.created_by,
        "admin_key.create",
        &key.id,
        details,
    )
    .await?;
    tx.commit().await.context("cannot commit")?;
    Ok((key, secret))
}

fn scope_list(scopes: &BTreeSet<Scope>) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// How often `last_used_at` is written, at most, per key.
const LAST_USED_EVERY_MS: i64 = 60_000;

/// The key a presented secret belongs to, if well formed, known, not expired and not revoked.
pub async fn authenticate(store: &Store, presented: &str) -> anyhow::Result<Option<AdminKey>> {
    if !is_well_formed(presented) {
        return Ok(None);
    }
    let row = sqlx::query_as::<_, AdminKeyRow>(&format!(
        "SELECT {COLUMNS} FROM admin_keys WHERE key_hash = $1"
    ))
    .bind(key_hash(presented))
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let key = AdminKey::from(row);
    let now = now_ms();
    if key.expires_at <= now || key.revoked_at.is_some() {
        return Ok(None);
    }
    if key
        .last_used_at
        .is_none_or(|at| now - at >= LAST_USED_EVERY_MS)
    {
        sqlx::query("UPDATE admin_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(&key.id)
            .execute(store.pool())
            .await?;
    }
    Ok(Some(key))
}

/// Key `id`, if it is known, not expired and not revoked (a console session checks its key on
/// every request this way, so revoking a key ends its sessions).
pub async fn valid_by_id(store: &Store, id: &str) -> anyhow::Result<Option<AdminKey>> {
    let row = sqlx::query_as::<_, AdminKeyRow>(&format!(
        "SELECT {COLUMNS} FROM admin_keys WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(store.pool())
    .await?;
    Ok(row
        .map(AdminKey::from)
        .filter(|key| key.expires_at > now_ms() && key.revoked_at.is_none()))
}

/// Every admin key, expired and revoked ones included, oldest first (never the key itself: only
/// its hash is stored).
pub async fn list(store: &Store) -> anyhow::Result<Vec<AdminKey>> {
    let rows = sqlx::query_as::<_, AdminKeyRow>(&format!(
        "SELECT {COLUMNS} FROM admin_keys ORDER BY created_at, id"
    ))
    .fetch_all(store.pool())
    .await?;
    Ok(rows.into_iter().map(AdminKey::from).collect())
}

/// Revokes key `id` and every key it minted, recursively (no credential outlives the one that
/// minted it); returns the ids revoked, `id` first. One audit entry names them all.
pub async fn revoke(
    store: &Store,
    id: &str,
    actor: &str,
    reason: &str,
) -> Result<Vec<String>, KeyError> {
    let mut tx = store.begin().await?;
    let revoked = revoke_in(&mut tx, store, id, actor, reason).await?;
    tx.commit().await.context("cannot commit")?;
    Ok(revoked)
}

async fn revoke_in(
    tx: &mut crate::platform::store::Tx,
    store: &Store,
    id: &str,
    actor: &str,
    reason: &str,
) -> Result<Vec<String>, KeyError> {
    let state: Option<Option<i64>> =
        sqlx::query_scalar("SELECT revoked_at FROM admin_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    match state {
        None => return Err(KeyError::NotFound(id.to_owned())),
        Some(Some(_)) => return Err(KeyError::AlreadyRevoked(id.to_owned())),
        Some(None) => {}
    }
    let now = now_ms();
    let mut revoked: Vec<String> = sqlx::query_scalar(
        "WITH RECURSIVE tree(id) AS ( \
           SELECT id FROM admin_keys WHERE id = $1 \
           UNION SELECT k.id FROM admin_keys k JOIN tree t ON k.parent_id = t.id) \
         UPDATE admin_keys SET revoked_at = $2, revoked_by = $3, revoked_reason = $4 \
         WHERE id IN (SELECT id FROM tree) AND revoked_at IS NULL RETURNING id",
    )
    .bind(id)
    .bind(now)
    .bind(actor)
    .bind(reason)
    .fetch_all(&mut **tx)
    .await?;
    revoked.sort_by_key(|k| k != id);
    audit::append(
        tx,
        store.backend(),
        actor,
        "admin_key.revoke",
        id,
        serde_json::json!({ "reason": reason, "revoked": revoked }),
    )
    .await?;
    Ok(revoked)
}

/// What became of a Spillway admin key found in public.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeakedKey {
    /// It was live: it and the keys it minted are revoked now.
    Revoked(Vec<String>),
    AlreadyRevoked(String),
    /// No key of this Spillway's (another deployment's, or a made-up one).
    Unknown,
}

/// Revokes the admin key `token` is, found in public by `source` (self-revocation: Spillway's own
/// keys are tokens like any other, and a leaked one must stop working at once).
pub async fn revoke_leaked(
    tx: &mut crate::platform::store::Tx,
    store: &Store,
    token: &TokenSecret,
    source: &str,
) -> Result<LeakedKey, KeyError> {
    let id: Option<String> = sqlx::query_scalar("SELECT id FROM admin_keys WHERE key_hash = $1")
        .bind(key_hash(token.expose()))
        .fetch_optional(&mut **tx)
        .await?;
    let Some(id) = id else {
        return Ok(LeakedKey::Unknown);
    };
    match revoke_in(
        tx,
        store,
        &id,
        "spillway",
        &format!("leaked: found by {source}"),
    )
    .await
    {
        Ok(revoked) => Ok(LeakedKey::Revoked(revoked)),
        Err(KeyError::AlreadyRevoked(id)) => Ok(LeakedKey::AlreadyRevoked(id)),
        Err(e) => Err(e),
    }
}

/// A key as stored ([`COLUMNS`]): its scopes a comma-separated list.
#[derive(sqlx::FromRow)]
struct AdminKeyRow {
    id: String,
    name: String,
    scopes: String,
    created_at: i64,
    expires_at: i64,
    created_by: String,
    parent_id: Option<String>,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    revoked_by: Option<String>,
    revoked_reason: Option<String>,
}

/// Scope names this build does not know are dropped.
impl From<AdminKeyRow> for AdminKey {
    fn from(r: AdminKeyRow) -> AdminKey {
        AdminKey {
            id: r.id,
            name: r.name,
            scopes: r.scopes.split(',').filter_map(Scope::parse).collect(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            created_by: r.created_by,
            parent_id: r.parent_id,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
            revoked_by: r.revoked_by,
            revoked_reason: r.revoked_reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_found_by_the_scanner() {
        let key = generate_key();
        assert!(is_well_formed(key.expose()), "bad key shape");
        let set = crate::scanner::RuleSet::default_rules(Default::default()).unwrap();
        let mut ids = Vec::new();
        set.scanner().scan(
            "k",
            format!("ADMIN_KEY={}", key.expose()).as_bytes(),
            &mut |f: crate::scanner::Finding<'_>| {
                ids.push(f.rule.id.clone());
            },
        );
        assert_eq!(ids, ["spillway.admin-key"]);
        let mut corrupted = key.expose().to_owned();
        corrupted.replace_range(12..13, if &corrupted[12..13] == "a" { "b" } else { "a" });
        assert!(!is_well_formed(&corrupted));
    }

    #[test]
    fn scopes_are_checked() {
        assert_eq!(parse_scopes("audit:read, listeners:read").unwrap().len(), 2);
        assert!(matches!(parse_scopes("root"), Err(KeyError::UnknownScope(s)) if s == "root"));
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert!(matches!(parse_scopes(" , "), Err(KeyError::NoScopes)));
    }
}
