//! `POST /tokens`: Foundry-style ES256 tokens. Session tokens carry `exp`; user-generated tokens
//! carry none, and the installation itself remembers when they stop being active.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{Installation, parse_body, random_bytes, short};
use crate::devtools::now_ms;
use crate::http::error;

/// Session tokens' default lifetime (Foundry's).
pub const SESSION_TTL_SECS: u64 = 16 * 60 * 60;
/// How long a user-generated token stays active by default (it carries no `exp`).
pub const USER_TTL_SECS: u64 = 30 * 24 * 60 * 60;
/// Longest TTL `/tokens` accepts (100 years).
const MAX_TTL_SECS: u64 = 100 * 365 * 24 * 60 * 60;

/// Which kind of token `/tokens` mints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// User-generated: no `exp` claim; inactive after its TTL (default 30 days).
    User,
    /// Session: `exp` = `iat` + TTL (default 16 hours).
    Session,
}

/// Body of `POST /tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub kind: TokenKind,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    #[serde(default)]
    pub sub: Option<String>,
}

/// Answer of `POST /tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintedToken {
    pub token: String,
    pub kind: TokenKind,
    /// The `exp` claim (unix seconds); `null` for user tokens, which carry none.
    pub expires_at: Option<i64>,
    /// When the installation starts answering `inactive` for it (unix seconds).
    pub inactive_after: i64,
}

impl Installation {
    fn mint(&self, req: &TokenRequest) -> Result<MintedToken, String> {
        let default_ttl = match req.kind {
            TokenKind::User => USER_TTL_SECS,
            TokenKind::Session => SESSION_TTL_SECS,
        };
        let ttl = req.ttl_secs.unwrap_or(default_ttl);
        if ttl > MAX_TTL_SECS {
            return Err(format!("ttl_secs must be at most {MAX_TTL_SECS}"));
        }
        let iat = now_ms() / 1000;
        let inactive_after = iat + ttl as i64;
        let sub = req
            .sub
            .clone()
            .unwrap_or_else(|| format!("user-{}", hex::encode(random_bytes::<8>())));
        let mut claims = serde_json::json!({
            "sub": sub,
            "jti": hex::encode(random_bytes::<16>()),
            "org": self.org,
            "iat": iat,
        });
        let expires_at = (req.kind == TokenKind::Session).then_some(inactive_after);
        if let Some(exp) = expires_at {
            claims["exp"] = exp.into();
        }
        let token = crate::platform::jwt::mint(&self.signing_key, &self.plntr, &claims);
        let sha = hex::encode(Sha256::digest(token.as_bytes()));
        tracing::info!(token_sha256 = short(&sha), kind = ?req.kind, "issued token");
        self.ledger().issue(sha, inactive_after);
        Ok(MintedToken {
            token,
            kind: req.kind,
            expires_at,
            inactive_after,
        })
    }
}

pub(super) async fn issue_token(State(i): State<Arc<Installation>>, body: Bytes) -> Response {
    let minted = parse_body::<TokenRequest>(&body).and_then(|req| i.mint(&req));
    match minted {
        Ok(minted) => (StatusCode::CREATED, axum::Json(minted)).into_response(),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}
