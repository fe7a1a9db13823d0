//! Tokens that end themselves: many issuers let a token authenticate the call that revokes it
//! (GitLab `DELETE /api/v4/personal_access_tokens/self`, Slack `auth.revoke`, ...). Each family is
//! declared as data in `patterns/issuers/*.toml` (format: `patterns/issuers/README.md`), compiled in;
//! [`Spec::revoke`] and [`Spec::whoami`] make the declared calls and read the answers by the
//! statuses the issuer documents. Where the revoke call names the token by an id (Cloudflare's
//! `DELETE /user/tokens/{id}`), a declared lookup call made with the token first reads that id from
//! its JSON answer (a JSON pointer); the id is not a secret and may go into the revoke call's path,
//! but only as one plain path segment. Answers are read bounded and never kept; a token goes only
//! where its spec says (a header, basic authentication or the body, encoded for the body's content
//! type), never into a URL or a log, except where the token is itself a URL (a Discord webhook):
//! then its checked path, and nothing else of it, is the request's path on `base_url`.
//!
//! Must not import storage or the revocation engine.

use std::collections::BTreeMap;
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
    /// Each customer has its own host (an Okta org, a Shopify store, a Vault server): `base_url`
    /// must be set by the operator, and enabling the issuer without it stops start-up.
    #[serde(default)]
    pub base_url_required: bool,
    /// The issuer's own example of the revoke request (a curl command), or where it publishes none
    /// the request built from the reference entry the file's comment names; checked against `revoke`.
    pub documented_request: String,
    /// Where the credential *is* a URL (a Discord webhook URL): the pattern the whole token must
    /// match, whose `path` group the calls' paths take as `{token_path}`. The request still goes
    /// to `base_url`, never to a host the token names, and the URL it builds is as secret as the
    /// token: it appears in no error, reason, log or stored field.
    #[serde(default)]
    pub url_token: Option<UrlToken>,
    #[serde(default)]
    pub whoami: Option<Call>,
    /// Made before `revoke` when the revoke call names the token by an id (`{id}`): its `live`
    /// answer carries the id at the JSON pointer `id`; a `dead` answer means there is nothing left
    /// to revoke.
    #[serde(default)]
    pub lookup: Option<Call>,
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
    /// lookup: the JSON pointer to the token's id in a `live` answer.
    #[serde(default)]
    pub id: Option<String>,
    /// Answer bodies the issuer documents, by status, verbatim from `source` (error bodies above
    /// all). The driver reads no body but `ok_json` and `id`; the tests' fakes answer with these.
    #[serde(default)]
    pub documented_answers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlToken {
    /// A regular expression the whole token must match, with a group named `path`.
    pub pattern: String,
    /// `pattern`, anchored and compiled once.
    #[serde(skip)]
    compiled: std::sync::OnceLock<Option<regex_automata::meta::Regex>>,
}

impl UrlToken {
    /// The token's `path` group, if the whole token matches and the path is made of plain
    /// segments only (so it can name nothing but the credential).
    fn path_of(&self, token: &str) -> Option<String> {
        let re = self
            .compiled
            .get_or_init(|| {
                regex_automata::meta::Regex::new(&format!("^(?:{})$", self.pattern)).ok()
            })
            .as_ref()?;
        let mut caps = re.create_captures();
        re.captures(token, &mut caps);
        let span = caps.get_group_by_name("path")?;
        let path = &token[span.start..span.end];
        let plain = path.starts_with('/') && path[1..].split('/').all(plain_segment);
        plain.then(|| path.to_owned())
    }
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
    /// Not known yet: ask again, not before `retry_after` when the issuer said when.
    Unknown {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The call may not be made (the outbound policy refuses the target).
    Refused {
        reason: String,
    },
}

impl Call {
    /// The body the issuer documents for an answer with `status`, if `source` gives one.
    pub fn documented_answer(&self, status: u16) -> Option<&str> {
        self.documented_answers
            .get(&status.to_string())
            .map(String::as_str)
    }
}

const TOKEN: &str = "{token}";
const ID: &str = "{id}";
const TOKEN_PATH: &str = "{token_path}";
/// The body encodings a template may fill (each value is encoded for its content type).
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";
/// The longest id a lookup may yield.
const ID_MAX: usize = 128;

/// `value` as it must appear inside a body of `content_type`: form-encoded, or the inside of a
/// JSON string.
fn encode_for(content_type: &str, value: &str) -> String {
    if content_type == JSON {
        let quoted = serde_json::Value::String(value.to_owned()).to_string();
        quoted[1..quoted.len() - 1].to_owned()
    } else {
        url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
    }
}

/// Whether `id` may become one path segment as is: unreserved URL characters only, and not `.` or
/// `..` (so it can name nothing but itself).
fn plain_segment(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_MAX
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

impl Call {
    /// Where the token goes: a header, basic authentication or the body must carry `{token}` (some
    /// issuers want it in two: a bearer header and the body naming the token to revoke), and the
    /// path must not (URLs are logged by proxies and servers).
    fn check(&self, field: &str, takes_id: bool, url_token: bool) -> Result<(), String> {
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
        if self.path.contains(TOKEN_PATH) != url_token {
            return Err(format!(
                "{field}.path: {TOKEN_PATH} goes in the path exactly when issuer.url_token is declared"
            ));
        }
        let carriers = [
            url_token,
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
                "{field}: a header, basic or the body must carry {TOKEN} (or the path {TOKEN_PATH}, for a URL that is the credential)"
            ));
        }
        if self.body.is_some() != self.content_type.is_some() {
            return Err(format!("{field}: body and content_type go together"));
        }
        if let Some(content_type) = &self.content_type
            && content_type != FORM
            && content_type != JSON
        {
            return Err(format!(
                "{field}.content_type: {content_type:?} is not {FORM} or {JSON}"
            ));
        }
        // A JSON body's placeholders must stand inside strings: filled with a value that holds a
        // quote, the body still parses, and the value is one string of it (JSON escaping protects
        // a value only inside quotes).
        if let (Some(body), Some(JSON)) = (&self.body, self.content_type.as_deref()) {
            const PROBE: &str = "pro\"be";
            let filled = body
                .replace(TOKEN, &encode_for(JSON, PROBE))
                .replace(ID, &encode_for(JSON, PROBE));
            let parsed: Option<serde_json::Value> = serde_json::from_str(&filled).ok();
            fn holds(v: &serde_json::Value) -> bool {
                match v {
                    serde_json::Value::String(s) => s == PROBE,
                    serde_json::Value::Array(a) => a.iter().any(holds),
                    serde_json::Value::Object(o) => o.values().any(holds),
                    _ => false,
                }
            }
            if !parsed.as_ref().is_some_and(holds) {
                return Err(format!(
                    "{field}.body: not JSON with each placeholder inside a string (\"{TOKEN}\")"
                ));
            }
        }
        if let Some(key) = self
            .documented_answers
            .keys()
            .find(|k| !k.parse::<u16>().is_ok_and(|s| (100..600).contains(&s)))
        {
            return Err(format!(
                "{field}.documented_answers: {key:?} is not an HTTP status"
            ));
        }
        let in_headers = self.header.as_ref().is_some_and(|h| h.value.contains(ID))
            || self
                .basic
                .as_ref()
                .is_some_and(|b| b.user.contains(ID) || b.password.contains(ID));
        if in_headers {
            return Err(format!("{field}: {ID} goes in the path or the body only"));
        }
        let uses_id = self.path.contains(ID) || self.body.as_ref().is_some_and(|b| b.contains(ID));
        if uses_id && !takes_id {
            return Err(format!(
                "{field}: {ID} needs an issuer.lookup call (and only revoke takes it)"
            ));
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
        id: Option<&str>,
        token_path: Option<&str>,
    ) -> Result<(u16, Option<Duration>, axum::body::Bytes), SendError> {
        let field = format!("issuers.{issuer}.base_url");
        let mut path = match id {
            // Checked by the caller: one plain segment.
            Some(id) => self.path.replace(ID, id),
            None => self.path.clone(),
        };
        if let Some(token_path) = token_path {
            path = path.replace(TOKEN_PATH, token_path);
        }
        let url = format!("{}{}", base_url.trim_end_matches('/'), path);
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
            // The id first: it is a plain segment, so it cannot hold a placeholder; the token
            // may, and must not be read as one.
            let with_id = match id {
                Some(id) => body.replace(ID, &encode_for(content_type, id)),
                None => body.clone(),
            };
            let filled = with_id.replace(TOKEN, &encode_for(content_type, token.expose()));
            request = request
                .header("content-type", content_type.as_str())
                .body(filled);
        }
        let response = request.send().await.map_err(|e| match send_error(&e) {
            SendError::Refused(refused) => SendError::Refused(format!("{field}: {refused}")),
            transient => transient,
        })?;
        let status = response.status().as_u16();
        let wait = crate::issuers::github::rate_limit_wait(response.headers());
        // An HTML page (a proxy's, a maintenance or sign-in page) is not the issuer's API
        // answering, whatever its status: never read as revoked, gone, live or dead.
        let html = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/html"));
        if html {
            return Err(SendError::Transient("answered an HTML page"));
        }
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
        let url_token = spec.url_token.is_some();
        if let Some(u) = &spec.url_token {
            let compiled = regex_automata::meta::Regex::new(&u.pattern)
                .map_err(|e| format!("{file}: issuer.url_token.pattern: {e}"))?;
            if compiled
                .group_info()
                .to_index(regex_automata::PatternID::ZERO, "path")
                .is_none()
            {
                return Err(format!(
                    "{file}: issuer.url_token.pattern has no group named path"
                ));
            }
        }
        spec.revoke
            .check("issuer.revoke", spec.lookup.is_some(), url_token)
            .map_err(|e| format!("{file}: {e}"))?;
        if spec.revoke.revoked.is_empty() {
            return Err(format!("{file}: issuer.revoke.revoked lists no status"));
        }
        if let Some(l) = &spec.lookup {
            l.check("issuer.lookup", false, url_token)
                .map_err(|e| format!("{file}: {e}"))?;
            if !l.id.as_deref().is_some_and(|p| p.starts_with('/')) {
                return Err(format!(
                    "{file}: issuer.lookup.id must be a JSON pointer (\"/result/id\")"
                ));
            }
            if l.live.is_empty() {
                return Err(format!("{file}: issuer.lookup lists no live status"));
            }
            let names_id = spec.revoke.path.contains(ID)
                || spec.revoke.body.as_ref().is_some_and(|b| b.contains(ID));
            if !names_id {
                return Err(format!(
                    "{file}: issuer.revoke does not use the {ID} the lookup yields"
                ));
            }
        }
        if let Some(w) = &spec.whoami {
            w.check("issuer.whoami", false, url_token)
                .map_err(|e| format!("{file}: {e}"))?;
            // Dead statuses may be undocumented: then "who am I" can only confirm a live token.
            if w.live.is_empty() {
                return Err(format!("{file}: issuer.whoami lists no live status"));
            }
        }
        Ok(spec)
    }

    /// The path a URL credential contributes (`{token_path}`); Err when the token is not such a
    /// URL (the reason names no part of it).
    fn token_path(&self, token: &TokenSecret) -> Result<Option<String>, String> {
        match &self.url_token {
            None => Ok(None),
            Some(u) => u.path_of(token.expose()).map(Some).ok_or_else(|| {
                format!(
                    "issuers.{}: the token is not a URL of the declared form",
                    self.name
                )
            }),
        }
    }

    /// Revokes `token` with the declared call, at `base_url` (the spec's unless the operator
    /// points elsewhere).
    pub async fn revoke(
        &self,
        outbound: &Outbound,
        base_url: &str,
        token: &TokenSecret,
    ) -> Outcome {
        let token_path = match self.token_path(token) {
            Ok(p) => p,
            Err(reason) => return Outcome::Refused { reason },
        };
        let id = match &self.lookup {
            Some(lookup) => match self
                .look_up(lookup, outbound, base_url, token, token_path.as_deref())
                .await
            {
                Ok(id) => Some(id),
                Err(outcome) => return outcome,
            },
            None => None,
        };
        let sent = self
            .revoke
            .send(
                &self.name,
                outbound,
                base_url,
                token,
                id.as_deref(),
                token_path.as_deref(),
            )
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

    /// The token's id, from the declared lookup call's answer; or what the revoke comes to without
    /// it (the token is dead: [`Outcome::Gone`]; no usable id or no answer: try again later).
    async fn look_up(
        &self,
        lookup: &Call,
        outbound: &Outbound,
        base_url: &str,
        token: &TokenSecret,
        token_path: Option<&str>,
    ) -> Result<String, Outcome> {
        let pointer = lookup.id.as_deref().unwrap_or_default();
        let (status, wait, body) = match lookup
            .send(&self.name, outbound, base_url, token, None, token_path)
            .await
        {
            Ok(answer) => answer,
            Err(SendError::Refused(reason)) => return Err(Outcome::Refused { reason }),
            Err(SendError::Transient(why)) => {
                return Err(Outcome::RetryLater {
                    reason: format!("lookup: {why}"),
                    retry_after: None,
                });
            }
        };
        if lookup.dead.contains(&status) {
            return Err(Outcome::Gone);
        }
        if !lookup.live.contains(&status) {
            return Err(Outcome::RetryLater {
                reason: format!("lookup answered {status}"),
                retry_after: if status == 429 || status == 503 {
                    wait
                } else {
                    None
                },
            });
        }
        let id = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| match v.pointer(pointer)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        match id {
            Some(id) if plain_segment(&id) => Ok(id),
            // Not the answer the issuer documents: nothing is sent with it.
            Some(_) => Err(Outcome::RetryLater {
                reason: format!(
                    "lookup answered {status} with an id at {pointer} that is not a plain path segment"
                ),
                retry_after: None,
            }),
            None => Err(Outcome::RetryLater {
                reason: format!("lookup answered {status} without an id at {pointer}"),
                retry_after: None,
            }),
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
        let token_path = match self.token_path(token) {
            Ok(p) => p,
            Err(reason) => return Some(Liveness::Refused { reason }),
        };
        Some(
            match call
                .send(
                    &self.name,
                    outbound,
                    base_url,
                    token,
                    None,
                    token_path.as_deref(),
                )
                .await
            {
                Ok((status, _, _)) if call.live.contains(&status) => Liveness::Live,
                Ok((status, _, _)) if call.dead.contains(&status) => Liveness::Dead,
                Ok((status, wait, _)) => Liveness::Unknown {
                    reason: format!("answered {status}"),
                    retry_after: if status == 429 || status == 503 {
                        wait
                    } else {
                        None
                    },
                },
                Err(SendError::Refused(reason)) => Liveness::Refused { reason },
                Err(SendError::Transient(why)) => Liveness::Unknown {
                    reason: why.to_owned(),
                    retry_after: None,
                },
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_goes_into_a_path_only_as_one_plain_segment() {
        for ok in ["ed17574386854bf78a67040be0a770b0", "12345", "a.b_c-d~e"] {
            assert!(plain_segment(ok), "{ok}");
        }
        let long = "a".repeat(ID_MAX + 1);
        for bad in [
            "", ".", "..", "a/b", "../x", "a b", "a%2Fb", "a?b", "a#b", "é", &long,
        ] {
            assert!(!plain_segment(bad), "{bad:?}");
        }
    }

    #[test]
    fn values_are_encoded_for_their_body() {
        assert_eq!(encode_for(FORM, "a b&c=d+/"), "a+b%26c%3Dd%2B%2F");
        assert_eq!(encode_for(JSON, "a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }

    #[test]
    fn a_url_credential_yields_its_path_only_in_the_declared_form() {
        let u = UrlToken {
            pattern: r"https://(?:(?:ptb|canary)\.)?discord(?:app)?\.com/api(?:/v[0-9]{1,2})?(?P<path>/webhooks/[0-9]{17,20}/[A-Za-z0-9_-]{60,80})".into(),
            compiled: Default::default(),
        };
        let secret = "x".repeat(68);
        assert_eq!(
            u.path_of(&format!(
                "https://canary.discord.com/api/v10/webhooks/123456789012345678/{secret}"
            ))
            .as_deref(),
            Some(format!("/webhooks/123456789012345678/{secret}").as_str())
        );
        for bad in [
            format!("https://discord.com.evil.example/api/webhooks/123456789012345678/{secret}"),
            format!("https://discord.com/api/webhooks/123456789012345678/{secret}/extra"),
            format!("xhttps://discord.com/api/webhooks/123456789012345678/{secret}"),
            format!(" https://discord.com/api/webhooks/123456789012345678/{secret}"),
        ] {
            assert_eq!(u.path_of(&bad), None, "{bad}");
        }
    }
}
