//! One signed call to an installation and what its answer means under the contract: only a 200
//! with a specific JSON status counts; 429 and 503 honour `Retry-After`; anything else (another
//! status, HTML, a timeout, a reset connection) is "unknown" and retried, never guessed.
//!
//! Must not touch storage: one call, its answer classified.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::installations::contract::{
    self, RevokeResponse, RevokeStatus, VerifyResponse, VerifyStatus,
};
use crate::platform::outbound::{Outbound, SendError, retry_after};
use crate::scanner::TokenSecret;

/// The answer to a call, classified.
#[derive(Debug)]
pub enum Answer<T> {
    /// A positive, specific answer.
    Known(T),
    /// Try again later; `retry_after` when the installation said when. `reason` is safe to store
    /// (a status code or an error kind, never a response body).
    Unknown {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The call may not be made at all (the URL or what its name resolves to is refused by the
    /// outbound policy): retrying cannot help. `reason` names the field and the rule.
    Refused { reason: String },
}

impl<T> Answer<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Known(v) => Answer::Known(f(v)),
            Answer::Refused { reason } => Answer::Refused { reason },
            Answer::Unknown {
                reason,
                retry_after,
            } => Answer::Unknown {
                reason,
                retry_after,
            },
        }
    }

    fn unknown(reason: impl Into<String>) -> Self {
        Answer::Unknown {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

/// An installation's reply with a 200 or 204 status.
struct Reply {
    status: reqwest::StatusCode,
    is_json: bool,
    bytes: axum::body::Bytes,
}

/// POSTs `body` to `url`, signed with `secrets` as a Standard Webhook whose id is the idempotency
/// key (the same across retries, as the standard asks). Anything but a 200/204 is "unknown".
async fn post_signed(
    outbound: &Outbound,
    field: &str,
    url: &str,
    secrets: &[TokenSecret],
    idempotency_key: &str,
    body: &impl serde::Serialize,
) -> Result<Reply, Answer<std::convert::Infallible>> {
    if let Err(e) = outbound.policy.check(field, url) {
        return Err(Answer::Refused {
            reason: e.to_string(),
        });
    }
    let body = serde_json::to_vec(body).map_err(|_| Answer::unknown("cannot encode request"))?;
    let timestamp = crate::platform::store::now_ms() / 1000;
    let secrets: Vec<&str> = secrets.iter().map(TokenSecret::expose).collect();
    let signature = crate::platform::webhook_auth::sign_standard_webhooks(
        &secrets,
        idempotency_key,
        timestamp,
        &body,
    )
    .map_err(|_| Answer::unknown("installation secret unusable"))?;
    let sent = outbound
        .client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", idempotency_key)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .header(contract::IDEMPOTENCY_KEY, idempotency_key)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            return Err(match crate::platform::outbound::send_error(&e) {
                SendError::Refused(refused) => Answer::Refused {
                    reason: format!("{field}: {refused}"),
                },
                SendError::Transient(why) => Answer::unknown(format!("{field}: {why}")),
            });
        }
    };
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::SERVICE_UNAVAILABLE
    {
        return Err(Answer::Unknown {
            reason: format!("{field}: answered {}", status.as_u16()),
            retry_after: retry_after(response.headers()),
        });
    }
    if status != reqwest::StatusCode::OK && status != reqwest::StatusCode::NO_CONTENT {
        return Err(Answer::unknown(format!(
            "{field}: answered {}",
            status.as_u16()
        )));
    }
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let bytes = match crate::platform::outbound::read_capped(response, MAX_ANSWER).await {
        Ok(b) => b,
        Err(e) => return Err(Answer::unknown(format!("{field}: {e}"))),
    };
    Ok(Reply {
        status,
        is_json,
        bytes,
    })
}

fn rethrow<T>(a: Answer<std::convert::Infallible>) -> Answer<T> {
    a.map(|never| match never {})
}

/// Largest answer read from an installation (its answers are a few dozen bytes of JSON); a longer
/// one is abandoned while it streams and counts as "unknown".
pub const MAX_ANSWER: usize = 64 << 10;

/// A 200 with a JSON body of type `T`, else "unknown".
fn parse<T: DeserializeOwned>(field: &str, reply: Reply) -> Answer<T> {
    if reply.status != reqwest::StatusCode::OK || !reply.is_json {
        return Answer::unknown(format!(
            "{field}: answered {} without a JSON body",
            reply.status.as_u16()
        ));
    }
    match serde_json::from_slice::<T>(&reply.bytes) {
        Ok(v) => Answer::Known(v),
        Err(_) => Answer::unknown(format!("{field}: answered JSON without a known status")),
    }
}

/// A verify call's answer.
pub async fn verify(
    outbound: &Outbound,
    url: &str,
    secrets: &[TokenSecret],
    key: &str,
    body: &contract::VerifyRequest,
) -> Answer<VerifyStatus> {
    match post_signed(outbound, "verify_url", url, secrets, key, body).await {
        Ok(reply) => parse::<VerifyResponse>("verify_url", reply).map(|r| r.status),
        Err(a) => rethrow(a),
    }
}

/// A revoke call's answer.
pub async fn revoke(
    outbound: &Outbound,
    url: &str,
    secrets: &[TokenSecret],
    key: &str,
    body: &contract::RevokeRequest,
) -> Answer<RevokeStatus> {
    match post_signed(outbound, "revoke_url", url, secrets, key, body).await {
        Ok(reply) => parse::<RevokeResponse>("revoke_url", reply).map(|r| r.status),
        Err(a) => rethrow(a),
    }
}

/// A notify call's answer: any 200 or 204 acknowledges it.
pub async fn notify(
    outbound: &Outbound,
    url: &str,
    secrets: &[TokenSecret],
    key: &str,
    body: &contract::Notification,
) -> Answer<()> {
    match post_signed(outbound, "notify_url", url, secrets, key, body).await {
        Ok(_) => Answer::Known(()),
        Err(a) => rethrow(a),
    }
}
