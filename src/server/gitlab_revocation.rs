//! The GitLab Token Revocation API, exactly as GitLab's client calls it
//! (`ee/app/services/security/token_revocation_service.rb`, docs
//! `doc/development/sec/token_revocation_api.md`): both calls carry the raw shared secret in
//! `Authorization` (no `Bearer`) and are refused without it (401). `GET .../v1/revocable_token_types`
//! answers `{"types": [...]}`, a list of **strings** in GitLab's own naming; GitLab keeps only the
//! tokens whose type is in it and then `POST`s `[{type, token, location}]` to
//! `.../v1/revoke_tokens`: 204 accepted, 400 invalid body or unsupported type (not retried).
//!
//! GitLab's names map to Spillway's token types through `patterns/integrations/gitlab-revocation.toml`.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::directory::Route;
use super::{ApiError, AppState, answer_recorded, error};
use crate::intake::{self, ReportedToken};
use crate::listeners::ListenerKind;
use crate::scanner::{Finding, RuleSet, Scanner, TokenSecret};
use crate::webhook_auth;

const MAPPING: &str = include_str!("../../patterns/integrations/gitlab-revocation.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    types: Vec<MappingEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingEntry {
    gitlab: String,
    token_types: Vec<String>,
}

/// GitLab's type names for the token types the rule set can act on.
#[derive(Debug, Clone, Default)]
pub struct GitlabTypes {
    by_name: BTreeMap<String, Vec<String>>,
}

impl GitlabTypes {
    /// The shipped mapping, limited to types `rules` issues. Fails on a malformed mapping file
    /// (tests/it/rules.rs keeps it well formed).
    pub fn load(rules: &RuleSet) -> anyhow::Result<Self> {
        let file: MappingFile = toml::from_str(MAPPING)
            .map_err(|e| anyhow::anyhow!("patterns/integrations/gitlab-revocation.toml: {e}"))?;
        let known = |t: &String| rules.rules().iter().any(|r| &r.token_type == t);
        let mut by_name = BTreeMap::new();
        for entry in file.types {
            let types: Vec<String> = entry.token_types.into_iter().filter(known).collect();
            if !types.is_empty() {
                by_name.insert(entry.gitlab, types);
            }
        }
        Ok(GitlabTypes { by_name })
    }

    /// Every name GitLab may send us, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The Spillway token types a GitLab name stands for.
    pub fn token_types(&self, name: &str) -> Option<&[String]> {
        self.by_name.get(name).map(Vec::as_slice)
    }

    /// The Spillway token type of a token reported under `name`: the mapped type the token matches
    /// whole (or the only mapped type); for a name not in the mapping, a Spillway type name as is,
    /// else the type of the default rule that matches the token whole. `None`: unsupported.
    pub fn resolve<'r>(
        &self,
        rules: &'r RuleSet,
        scanner: &mut Scanner<'r>,
        name: &str,
        token: &str,
    ) -> Option<String> {
        let classified = classify(scanner, token);
        match self.by_name.get(name) {
            Some(types) => Some(
                classified
                    .filter(|t| types.contains(t))
                    .unwrap_or_else(|| types[0].clone()),
            ),
            None if rules.rules().iter().any(|r| r.token_type == name) => Some(name.to_owned()),
            None => classified,
        }
    }
}

/// The token type of the rule that matches `token` whole, if any (one whose validators pass
/// first; a failed checksum still says what the token claims to be).
pub fn classify(scanner: &mut Scanner<'_>, token: &str) -> Option<String> {
    let (mut valid, mut invalid) = (None, None);
    scanner.scan("alert", token.as_bytes(), &mut |f: Finding<'_>| {
        if f.span == (0..token.len()) {
            let slot = if f.verdict.is_invalid() {
                &mut invalid
            } else {
                &mut valid
            };
            slot.get_or_insert_with(|| f.rule.token_type.clone());
        }
    });
    valid.or(invalid)
}

/// Checks GitLab's `Authorization` header (the raw shared secret) against the listener's, before
/// any body byte is read.
pub(super) fn authorized(
    state: &AppState,
    route: &Route,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let kind = ListenerKind::GitlabRevocation.as_str();
    let Some(secret) = &route.secret else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this listener has no secret configured",
        ));
    };
    let (reason, message) = match headers.get("authorization").map(|v| v.to_str()) {
        Some(Ok(v)) if webhook_auth::same_secret(v.trim(), secret.expose()) => return Ok(()),
        Some(Ok(_)) => (
            "bad_signature",
            "authorization does not match this listener's shared secret",
        ),
        None => ("missing_header", "missing header authorization"),
        Some(Err(_)) => (
            "malformed_header",
            "header authorization is malformed (not visible ASCII)",
        ),
    };
    state.metrics.signature_failure(kind, reason);
    state.metrics.alert(
        kind,
        if reason == "bad_signature" {
            "bad_signature"
        } else {
            "malformed"
        },
    );
    Err(ApiError::new(StatusCode::UNAUTHORIZED, message))
}

/// `GET .../v1/revocable_token_types`, once [`authorized`].
pub fn revocable_token_types(state: &AppState) -> Response {
    let types: Vec<&str> = state.gitlab_types.names().collect();
    axum::Json(serde_json::json!({ "types": types })).into_response()
}

/// One element of GitLab's revoke body. GitLab serialises its whole finding hash, so fields it
/// adds (such as `vulnerability`) are ignored; a duplicated field is an error.
#[derive(Deserialize)]
struct RevokeRequest {
    #[serde(rename = "type")]
    token_type: String,
    token: String,
    #[serde(default)]
    location: Option<String>,
}

/// A name safe to repeat in an error: GitLab's names are lower-case words.
fn printable_name(name: &str) -> Option<&str> {
    (name.len() <= 120
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.()/".contains(&b)))
    .then_some(name)
}

/// `POST .../v1/revoke_tokens`, once [`authorized`].
pub async fn revoke_tokens(state: &AppState, listener_id: &str, body: &[u8]) -> Response {
    let kind = ListenerKind::GitlabRevocation.as_str();
    let requests: Vec<RevokeRequest> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.alert(kind, "malformed");
            return error(
                StatusCode::BAD_REQUEST,
                super::partner::describe_json_error(&e, "an array of {type, token, location}"),
            );
        }
    };
    let mut scanner = state.rules.scanner();
    let mut tokens = Vec::with_capacity(requests.len());
    for (i, r) in requests.into_iter().enumerate() {
        if r.token.is_empty() {
            state.metrics.alert(kind, "malformed");
            return error(
                StatusCode::BAD_REQUEST,
                format!("element {i}: field `token` must be non-empty"),
            );
        }
        let Some(token_type) =
            state
                .gitlab_types
                .resolve(&state.rules, &mut scanner, &r.token_type, &r.token)
        else {
            state.metrics.alert(kind, "malformed");
            let named = printable_name(&r.token_type)
                .map(|n| format!(" {n:?}"))
                .unwrap_or_default();
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "element {i}: field `type`: unsupported token type{named} (see GET v1/revocable_token_types)"
                ),
            );
        };
        tokens.push(ReportedToken {
            token: TokenSecret::new(r.token),
            token_type,
            url: r.location.filter(|l| !l.is_empty()),
            source: Some("gitlab".into()),
            context_hosts: Vec::new(),
        });
    }
    answer_recorded(
        state,
        kind,
        state
            .intake
            .record(
                Some(&state.engine.key_cache),
                &intake::IncomingAlert {
                    listener_id,
                    listener_kind: kind,
                    body,
                    delivery_id: None,
                    key_id: None,
                    key_current: None,
                    tokens: &tokens,
                    event: None,
                },
            )
            .await,
        |_| StatusCode::NO_CONTENT.into_response(),
    )
}
