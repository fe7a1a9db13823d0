//! Tokens that end themselves: many issuers let a token authenticate the call that revokes it
//! (GitLab `DELETE /api/v4/personal_access_tokens/self`, Slack `auth.revoke`, ...). Each family is
//! declared as data in `patterns/issuers/*.toml` (format: `patterns/issuers/README.md`), compiled in;
//! [`Spec::revoke`] and [`Spec::whoami`] make the declared calls and read the answers by the
//! statuses the issuer documents. Answers are read bounded and never kept; a token goes only where
//! its spec says (a header, basic authentication or the body), never into a URL or a log.
//!
//! Must not import storage or the revocation engine.

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::Outcome;
use crate::platform::outbound::{Outbound, SendError, read_capped, send_error};
use crate::scanner::TokenSecret;

include!(concat!(env!("OUT_DIR"), "/issuer_files.rs"));

/// How much of an answer is read.
const ANSWER_CAP: usize = 64 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    issuer: Spec,
}

/// One issuer family's self-revocation, as declared.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    pub description: String,
    /// The documentation page the calls come from.
    pub source: String,
    pub token_types: Vec<String>,
    pub base_url: String,
    /// The issuer's own example of the revoke request (a curl command), checked against `revoke`.
    pub documented_request: String,
    #[serde(default)]
    pub whoami: Option<Call>,
    pub revoke: Call,
}

/// One declared call and the statuses that answer it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub header: Option<Header>,
    #[serde(default)]
    pub basic: Option<Basic>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    /// whoami: statuses meaning the token is live / dead.
    #[serde(default)]
    pub live: Vec<u16>,
    #[serde(default)]
    pub dead: Vec<u16>,
    /// revoke: statuses meaning revoked now / already gone.
    #[serde(default)]
    pub revoked: Vec<u16>,
    #[serde(default)]
    pub gone: Vec<u16>,
    /// revoke: a JSON pointer that must be `true` in a `revoked` answer.
    #[serde(default)]
    pub ok_json: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Basic {
    pub user: String,
    pub password: String,
}

/// Is the token live?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Live,
    Dead,
    Unknown { reason: String },
}

const TOKEN: &str = "{token}";

impl Call {
    /// Where the token goes: a header, basic authentication or the body must carry `{token}` (some
    /// issuers want it in two: a bearer header and the body naming the token to revoke), and the
    /// path must not (URLs are logged by proxies and servers).
    fn check(&self, field: &str) -> Result<(), String> {
        let method = self.method.as_str();
        if !["GET", "POST", "DELETE", "PUT", "PATCH"].contains(&method) {
            return Err(format!("{field}.method: {method:?} is not an HTTP method"));
        }
        if !self.path.starts_with('/') {
            return Err(format!("{field}.path: must start with /"));
        }
        if self.path.contains(TOKEN) {
            return Err(format!(
                "{field}.path: the token must not be in the URL (use header, basic or body)"
            ));
        }
        let carriers = [
            self.header
                .as_ref()
                .is_some_and(|h| h.value.contains(TOKEN)),
            self.basic
                .as_ref()
                .is_some_and(|b| b.user.contains(TOKEN) || b.password.contains(TOKEN)),
            self.body.as_ref().is_some_and(|b| b.contains(TOKEN)),
        ];
        if !carriers.iter().any(|c| *c) {
            return Err(format!(
                "{field}: a header, basic or the body must carry {TOKEN}"
            ));
        }
        if self.body.is_some() != self.content_type.is_some() {
            return Err(format!("{field}: body and content_type go together"));
        }
        Ok(())
    }

    /// Makes the call at `base_url` for the issuer `issuer` (named in a refusal): the outbound
    /// policy first, then the request with the token where declared; the answer read bounded.
    async fn send(
        &self,
        issuer: &str,
        outbound: &Outbound,
        base_url: &str,
        token: &TokenSecret,
    ) -> Result<(u16, Option<Duration>, axum::body::Bytes), SendError> {
        let field = format!("issuers.{issuer}.base_url");
        let url = format!("{}{}", base_url.trim_end_matches('/'), self.path);
        outbound
            .policy
            .check(&field, &url)
            .map_err(|e| SendError::Refused(e.to_string()))?;
        let method = reqwest::Method::from_bytes(self.method.as_bytes())
            .map_err(|_| SendError::Refused(format!("{field}: an invalid method")))?;
        let fill = |template: &str| template.replace(TOKEN, token.expose());
        let mut request = outbound.client.request(method, &url);
        if let Some(h) = &self.header {
            request = request.header(h.name.as_str(), fill(&h.value));
        }
        if let Some(b) = &self.basic {
            let pair = format!("{}:{}", fill(&b.user), fill(&b.password));
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            request = request.header("authorization", format!("Basic {encoded}"));
        }
        if let (Some(body), Some(content_type)) = (&self.body, &self.content_type) {
            request = request
                .header("content-type", content_type.as_str())
                .body(fill(body));
        }
        let response = request.send().await.map_err(|e| match send_error(&e) {
            SendError::Refused(refused) => SendError::Refused(format!("{field}: {refused}")),
            transient => transient,
        })?;
        let status = response.status().as_u16();
        let wait = crate::issuers::github::rate_limit_wait(response.headers());
        let body = read_capped(response, ANSWER_CAP).await.unwrap_or_default();
        Ok((status, wait, body))
    }
}

impl Spec {
    /// Every shipped spec, parsed and checked.
    pub fn shipped() -> Result<Vec<Spec>, String> {
        ISSUER_FILES
            .iter()
            .map(|(file, text)| Spec::parse(file, text))
            .collect()
    }

    /// Parses one file and checks it; errors name the file and the field.
    pub fn parse(file: &str, text: &str) -> Result<Spec, String> {
        let spec = toml::from_str::<File>(text)
            .map_err(|e| format!("{file}: {e}"))?
            .issuer;
        let stem = file.trim_end_matches(".toml");
        if spec.name != stem {
            return Err(format!("{file}: issuer.name must be {stem:?}"));
        }
        if spec.token_types.is_empty() {
            return Err(format!("{file}: issuer.token_types is empty"));
        }
        spec.revoke
            .check("issuer.revoke")
            .map_err(|e| format!("{file}: {e}"))?;
        if spec.revoke.revoked.is_empty() {
            return Err(format!("{file}: issuer.revoke.revoked lists no status"));
        }
        if let Some(w) = &spec.whoami {
            w.check("issuer.whoami")
                .map_err(|e| format!("{file}: {e}"))?;
            // Dead statuses may be undocumented: then "who am I" can only confirm a live token.
            if w.live.is_empty() {
                return Err(format!("{file}: issuer.whoami lists no live status"));
            }
        }
        Ok(spec)
    }

    /// Revokes `token` with the declared call, at `base_url` (the spec's unless the operator
    /// points elsewhere).
    pub async fn revoke(
        &self,
        outbound: &Outbound,
        base_url: &str,
        token: &TokenSecret,
    ) -> Outcome {
        let sent = self
            .revoke
            .send(&self.name, outbound, base_url, token)
            .await;
        let (status, wait, body) = match sent {
            Ok(answer) => answer,
            Err(SendError::Refused(reason)) => return Outcome::Refused { reason },
            Err(SendError::Transient(why)) => {
                return Outcome::RetryLater {
                    reason: why.to_owned(),
                    retry_after: None,
                };
            }
        };
        let call = &self.revoke;
        if call.revoked.contains(&status) {
            let confirmed = call.ok_json.as_deref().is_none_or(|pointer| {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.pointer(pointer).and_then(serde_json::Value::as_bool))
                    == Some(true)
            });
            if confirmed {
                return Outcome::Accepted;
            }
            return Outcome::RetryLater {
                reason: format!(
                    "answered {status} without {}",
                    call.ok_json.as_deref().unwrap_or("")
                ),
                retry_after: None,
            };
        }
        if call.gone.contains(&status) {
            return Outcome::Gone;
        }
        Outcome::RetryLater {
            reason: format!("answered {status}"),
            retry_after: if status == 429 || status == 503 {
                wait
            } else {
                None
            },
        }
    }

    /// Asks the issuer whether `token` is live, with the declared "who am I" call.
    pub async fn whoami(
        &self,
        outbound: &Outbound,
        base_url: &str,
        token: &TokenSecret,
    ) -> Option<Liveness> {
        let call = self.whoami.as_ref()?;
        Some(
            match call.send(&self.name, outbound, base_url, token).await {
                Ok((status, _, _)) if call.live.contains(&status) => Liveness::Live,
                Ok((status, _, _)) if call.dead.contains(&status) => Liveness::Dead,
                Ok((status, _, _)) => Liveness::Unknown {
                    reason: format!("answered {status}"),
                },
                Err(SendError::Refused(reason)) => Liveness::Unknown { reason },
                Err(SendError::Transient(why)) => Liveness::Unknown {
                    reason: why.to_owned(),
                },
            },
        )
    }
}
