//! Console sessions: an admin key presented once at the console's sign-in form becomes a random
//! session secret held in a cookie. Only the secret's SHA-256 is stored; a session lasts at most
//! [`TTL_MS`] and never beyond its key, ends at sign-out, and every use re-checks that its key is
//! still valid (revoking a key ends its sessions). Forms carry a CSRF token derived from the
//! session secret (HMAC-SHA256), so nothing more is stored and no other page can forge one.
//!
//! Owns the `console_sessions` table. Must not import HTTP or the engine.

use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use super::api_keys::{self, AdminKey};
use crate::platform::audit;
use crate::platform::store::{Store, now_ms};
use crate::scanner::TokenSecret;

/// A session's longest life: 16 hours.
pub const TTL_MS: i64 = 16 * 3600 * 1000;

/// Expired sessions are deleted this long after they end (kept a day for the record).
const KEEP_EXPIRED_MS: i64 = 24 * 3600 * 1000;

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A session's public name: the first 16 hex digits of its stored hash (in audit entries and the
/// console's list; it opens nothing).
const HANDLE_LEN: usize = 16;

/// A signed-in session: its key, as valid now, and when it ends.
#[derive(Clone)]
pub struct Session {
    pub key: AdminKey,
    pub expires_at: i64,
    /// Its public name.
    pub handle: String,
    csrf: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key.id)
            .field("handle", &self.handle)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn handle_of(id_hash: &str) -> String {
    id_hash[..HANDLE_LEN].to_owned()
}

impl Session {
    /// The token every form of this session carries.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        same(&self.csrf, presented)
    }
}

fn csrf_of(secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(b"spillway console csrf v1");
    hex::encode(mac.finalize().into_bytes())
}

/// 32 random bytes, hex: a session secret or a sign-in form's token.
pub fn random_secret() -> TokenSecret {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    TokenSecret::new(hex::encode(b))
}

/// Starts a session for `key` (already authenticated); returns its secret (for the cookie only)
/// and the session. Audited.
pub async fn start(store: &Store, key: &AdminKey) -> anyhow::Result<(TokenSecret, Session)> {
    let secret = random_secret();
    let id_hash = hash(secret.expose());
    let now = now_ms();
    let expires_at = (now + TTL_MS).min(key.expires_at);
    let mut tx = store.begin().await?;
    sqlx::query("DELETE FROM console_sessions WHERE expires_at < $1")
        .bind(now - KEEP_EXPIRED_MS)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO console_sessions (id_hash, key_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&id_hash)
    .bind(&key.id)
    .bind(now)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    audit::append(
        &mut tx,
        store.backend(),
        &key.actor(),
        "console.signed_in",
        &key.actor(),
        serde_json::json!({ "session": handle_of(&id_hash), "expires_at": expires_at }),
    )
    .await?;
    tx.commit().await?;
    let csrf = csrf_of(secret.expose());
    Ok((
        secret,
        Session {
            key: key.clone(),
            expires_at,
            handle: handle_of(&id_hash),
            csrf,
        },
    ))
}

#[derive(sqlx::FromRow)]
struct Row {
    key_id: String,
    expires_at: i64,
    revoked_at: Option<i64>,
}

/// The live session `secret` opens, with its key as valid now; `None` when unknown, expired,
/// signed out, or its key is expired or revoked.
pub async fn open(store: &Store, secret: &str) -> anyhow::Result<Option<Session>> {
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let id_hash = hash(secret);
    let row = sqlx::query_as::<_, Row>(
        "SELECT key_id, expires_at, revoked_at FROM console_sessions WHERE id_hash = $1",
    )
    .bind(&id_hash)
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    if row.revoked_at.is_some() || row.expires_at <= now_ms() {
        return Ok(None);
    }
    let Some(key) = api_keys::valid_by_id(store, &row.key_id).await? else {
        return Ok(None);
    };
    Ok(Some(Session {
        key,
        expires_at: row.expires_at,
        handle: handle_of(&id_hash),
        csrf: csrf_of(secret),
    }))
}

/// Signs the session out: it cannot be used again, even with the cookie. Audited when it was
/// live.
pub async fn end(store: &Store, session: &Session) -> anyhow::Result<()> {
    revoke(
        store,
        &session.handle,
        &session.key.actor(),
        "console.signed_out",
    )
    .await?;
    Ok(())
}

/// Ends the live session named `handle` (any key's); `action` is the audit entry's. Answers
/// whether there was one.
pub async fn revoke(
    store: &Store,
    handle: &str,
    actor: &str,
    action: &str,
) -> anyhow::Result<bool> {
    if handle.len() != HANDLE_LEN || !handle.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    let now = now_ms();
    let mut tx = store.begin().await?;
    let key_id: Option<String> = sqlx::query_scalar(
        "UPDATE console_sessions SET revoked_at = $1 \
         WHERE substr(id_hash, 1, 16) = $2 AND revoked_at IS NULL AND expires_at > $1 \
         RETURNING key_id",
    )
    .bind(now)
    .bind(handle)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(key_id) = key_id else {
        return Ok(false);
    };
    audit::append(
        &mut tx,
        store.backend(),
        actor,
        action,
        &format!("admin-key:{key_id}"),
        serde_json::json!({ "session": handle }),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// A live session as the console lists it (never its secret or hash).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Listed {
    pub handle: String,
    pub key_id: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// Every live session, newest first.
pub async fn live(store: &Store) -> anyhow::Result<Vec<Listed>> {
    Ok(sqlx::query_as(
        "SELECT substr(id_hash, 1, 16) AS handle, key_id, created_at, expires_at \
         FROM console_sessions WHERE revoked_at IS NULL AND expires_at > $1 \
         ORDER BY created_at DESC",
    )
    .bind(now_ms())
    .fetch_all(store.pool())
    .await?)
}
