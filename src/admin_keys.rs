//! Admin API keys, held to the discipline Spillway enforces on others (seeds 001 and 002):
//! a recognisable, checksummed format the scanner finds (`spillway_` + 32 base62 + CRC32/base62, rule
//! `spillway.admin-key`), stored only as SHA-256, least-privilege scopes, a TTL, and no key can mint
//! a key with a scope it lacks.

use std::collections::BTreeSet;

use anyhow::Context as _;
use rand::Rng as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row as _;

use crate::audit;
use crate::scanner::TokenSecret;
use crate::scanner::validate::{check_crc32_base62, crc32_base62};
use crate::store::{Store, now_ms};

pub const KEY_PREFIX: &str = "spillway_";
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// What an admin key may do.
pub const SCOPES: &[&str] = &[
    "listeners:read",
    "listeners:write",
    "installations:read",
    "installations:write",
    "audit:read",
    "keys:write",
];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unknown scope {0:?}; known scopes: {known}", known = SCOPES.join(", "))]
    UnknownScope(String),
    #[error("a key needs at least one scope")]
    NoScopes,
    #[error("cannot grant scope {0:?}: the creating key does not hold it")]
    Escalation(String),
    #[error("TTL must be positive")]
    BadTtl,
    #[error(transparent)]
    Database(#[from] anyhow::Error),
}

/// Parses a comma-separated scope list.
pub fn parse_scopes(list: &str) -> Result<BTreeSet<String>, KeyError> {
    let scopes: BTreeSet<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(KeyError::UnknownScope(bad.clone()));
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
    pub scopes: BTreeSet<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub created_by: String,
}

/// Creates a key. `creator_scopes` is `None` for a local bootstrap (operator on the machine), else
/// the creating key's scopes, which bound the new key's.
pub async fn create(
    store: &Store,
    name: &str,
    scopes: &BTreeSet<String>,
    ttl_ms: i64,
    creator: &str,
    creator_scopes: Option<&BTreeSet<String>>,
) -> Result<(AdminKey, TokenSecret), KeyError> {
    if ttl_ms <= 0 {
        return Err(KeyError::BadTtl);
    }
    if let Some(held) = creator_scopes {
        if let Some(extra) = scopes.iter().find(|s| !held.contains(*s)) {
            return Err(KeyError::Escalation(extra.clone()));
        }
    }
    let secret = generate_key();
    let now = now_ms();
    let key = AdminKey {
        id: format!("key_{}", &key_hash(secret.expose())[..12]),
        name: name.to_owned(),
        scopes: scopes.clone(),
        created_at: now,
        expires_at: now + ttl_ms,
        created_by: creator.to_owned(),
    };
    let scope_list = scopes.iter().cloned().collect::<Vec<_>>().join(",");
    let mut tx = store.begin().await?;
    sqlx::query(
        "INSERT INTO admin_keys (id, key_hash, name, scopes, created_at, expires_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&key.id)
    .bind(key_hash(secret.expose()))
    .bind(&key.name)
    .bind(&scope_list)
    .bind(key.created_at)
    .bind(key.expires_at)
    .bind(&key.created_by)
    .execute(&mut *tx)
    .await
    .context("cannot store admin key")?;
    let details =
        serde_json::json!({ "name": name, "scopes": scope_list, "expires_at": key.expires_at });
    audit::append(
        &mut tx,
        store.backend(),
        creator,
        "admin_key.create",
        &key.id,
        details,
    )
    .await?;
    tx.commit().await.context("cannot commit")?;
    Ok((key, secret))
}

/// The key a presented secret belongs to, if well formed, known and not expired.
pub async fn authenticate(store: &Store, presented: &str) -> anyhow::Result<Option<AdminKey>> {
    if !is_well_formed(presented) {
        return Ok(None);
    }
    let row = sqlx::query("SELECT id, name, scopes, created_at, expires_at, created_by FROM admin_keys WHERE key_hash = $1")
        .bind(key_hash(presented))
        .fetch_optional(store.pool())
        .await?;
    let Some(row) = row else { return Ok(None) };
    let key = from_row(&row)?;
    Ok((key.expires_at > now_ms()).then_some(key))
}

/// Every admin key, expired ones included, oldest first (never the key itself: only its hash
/// is stored).
pub async fn list(store: &Store) -> anyhow::Result<Vec<AdminKey>> {
    let rows = sqlx::query(
        "SELECT id, name, scopes, created_at, expires_at, created_by FROM admin_keys ORDER BY created_at, id",
    )
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(from_row).collect()
}

fn from_row(row: &sqlx::any::AnyRow) -> anyhow::Result<AdminKey> {
    Ok(AdminKey {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        scopes: row
            .try_get::<String, _>("scopes")?
            .split(',')
            .map(str::to_owned)
            .collect(),
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        created_by: row.try_get("created_by")?,
    })
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
        assert!(matches!(parse_scopes(" , "), Err(KeyError::NoScopes)));
    }
}
