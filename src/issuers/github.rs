//! GitHub's Credential Revocation API: `POST {base}/credentials/revoke` with
//! `{"credentials": [...]}`, at most 1,000 tokens a call, unauthenticated (an authenticated call is
//! answered 403), 60 calls an hour; `202` accepted, `422` validation failed or the endpoint spammed
//! (GitHub REST docs, "Revoke a list of credentials", and the 2025-04-29 changelog). It takes
//! classic and fine-grained personal access tokens, OAuth app tokens, GitHub App user-to-server
//! tokens and refresh tokens ([`TOKEN_TYPES`]); installation tokens (`ghs_`) expire within the hour
//! and are not taken.
//!
//! [`Client`] makes one call and classifies the answer; [`Batcher`] is how the rest of Spillway
//! reports tokens: each caller submits one token and awaits the outcome of the batch it joined. A
//! batch is sent when it holds 1,000 tokens or when the first token in it has waited `linger`, and
//! only within an hourly budget that can never exceed the API's limit in any hour; over budget, or
//! after GitHub said to wait, a caller is told at once when to come back, so no one holds work
//! while waiting. The budget lives in the process: replicas sharing an address must share one
//! batcher (run it where the poller runs) or split the limit between them.
//!
//! Must not import storage or the revocation engine.

use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, oneshot};

use super::Outcome;
use crate::platform::outbound::{
    Outbound, SendError, read_capped, retry_after as retry_after_header,
};
use crate::scanner::TokenSecret;

/// The API's path under the REST base (`https://api.github.com`, or `https://HOST/api/v3`).
pub const PATH: &str = "/credentials/revoke";
/// Tokens in one call, at most.
pub const MAX_BATCH: usize = 1000;
/// Calls in an hour, at most (unauthenticated).
pub const HOURLY_LIMIT: u32 = 60;
/// Spillway's token types for the credentials the API takes.
pub const TOKEN_TYPES: &[&str] = &[
    "github_personal_access_token",
    "github_oauth_access_token",
    "github_user_to_server_token",
    "github_refresh_token",
];
/// How much of an answer is read (GitHub's error bodies are a few hundred bytes).
const ANSWER_CAP: usize = 64 * 1024;
/// How long to stay away after a 422 ("the endpoint has been spammed").
const AFTER_422: Duration = Duration::from_secs(60);

/// One call to the API.
#[derive(Clone)]
pub struct Client {
    outbound: Outbound,
    url: String,
}

impl Client {
    /// `base_url`: the REST API's base (`https://api.github.com`).
    pub fn new(outbound: Outbound, base_url: &str) -> Client {
        Client {
            outbound,
            url: format!("{}{PATH}", base_url.trim_end_matches('/')),
        }
    }

    /// Reports `tokens` (1 to [`MAX_BATCH`]) in one call.
    pub async fn revoke(&self, tokens: &[TokenSecret]) -> Outcome {
        if tokens.is_empty() || tokens.len() > MAX_BATCH {
            return Outcome::Refused {
                reason: format!(
                    "a batch holds 1 to {MAX_BATCH} tokens, not {}",
                    tokens.len()
                ),
            };
        }
        if let Err(e) = self
            .outbound
            .policy
            .check("issuers.github.base_url", &self.url)
        {
            return Outcome::Refused {
                reason: e.to_string(),
            };
        }
        #[derive(serde::Serialize)]
        struct Body<'t> {
            credentials: Vec<&'t str>,
        }
        let body = Body {
            credentials: tokens.iter().map(TokenSecret::expose).collect(),
        };
        // No Authorization header: GitHub answers an authenticated call with 403.
        let sent = self
            .outbound
            .client
            .post(&self.url)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .json(&body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                return match crate::platform::outbound::send_error(&e) {
                    SendError::Refused(refused) => Outcome::Refused {
                        reason: format!("issuers.github.base_url: {refused}"),
                    },
                    SendError::Transient(why) => retry(why, None),
                };
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        // Read (bounded) and drop the body: nothing in it is stored.
        let _ = read_capped(response, ANSWER_CAP).await;
        match status {
            202 => Outcome::Accepted,
            422 => retry(
                "answered 422 (validation failed or spammed)",
                Some(AFTER_422),
            ),
            403 | 429 => match rate_limit_wait(&headers) {
                Some(wait) => retry(&format!("answered {status}: rate limited"), Some(wait)),
                None if status == 429 => retry("answered 429", None),
                None => Outcome::Refused {
                    reason: "answered 403 without a rate limit: GitHub refuses authenticated \
                             calls (is a proxy adding credentials?)"
                        .into(),
                },
            },
            _ => retry(&format!("answered {status}"), None),
        }
    }
}

fn retry(reason: &str, retry_after: Option<Duration>) -> Outcome {
    Outcome::RetryLater {
        reason: reason.to_owned(),
        retry_after,
    }
}

/// How long GitHub's rate-limit headers say to wait: `retry-after`, or `x-ratelimit-reset` (epoch
/// seconds) when `x-ratelimit-remaining` is 0; at most an hour.
pub fn rate_limit_wait(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if let Some(wait) = retry_after_header(headers) {
        return Some(wait);
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if text("x-ratelimit-remaining").map(str::trim) != Some("0") {
        return None;
    }
    let reset = text("x-ratelimit-reset")?.trim().parse::<u64>().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(
        reset.saturating_sub(now).clamp(1, 3600),
    ))
}

/// The budget that keeps calls within `limit` in every hour, however they are spread: a burst of
/// a sixth of it, the rest refilled over the hour (in any hour: burst + refill = limit).
pub fn hourly_budget(limit: u32) -> DefaultDirectRateLimiter {
    let limit = limit.max(1);
    let burst = (limit / 6).max(1);
    let refill = limit - burst;
    let period = if refill == 0 {
        Duration::from_secs(7200)
    } else {
        // A millisecond over the exact share, so a call on the hour's boundary is not an extra one.
        Duration::from_secs(3600) / refill + Duration::from_millis(1)
    };
    let quota = Quota::with_period(period)
        .expect("a period over zero")
        .allow_burst(std::num::NonZeroU32::new(burst).expect("burst >= 1"));
    RateLimiter::direct(quota)
}

/// How the batcher forms batches.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// How long the first token of a batch waits for others.
    pub linger: Duration,
    /// Calls in an hour, at most (the API's limit, or less to leave some for others).
    pub hourly_limit: u32,
    /// Tokens waiting for a batch, at most; a submission past it is told to come back shortly.
    pub max_waiting: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            linger: Duration::from_millis(250),
            hourly_limit: HOURLY_LIMIT,
            max_waiting: 4 * MAX_BATCH,
        }
    }
}

struct Request {
    token: TokenSecret,
    reply: oneshot::Sender<Outcome>,
}

/// Batches submitted tokens into calls (see the module documentation).
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Request>,
}

impl Batcher {
    /// Starts the batching task; it ends when every `Batcher` handle is dropped.
    pub fn spawn(client: Client, options: BatchOptions) -> Batcher {
        let (tx, rx) = mpsc::channel(options.max_waiting.max(1));
        tokio::spawn(run(client, options, rx));
        Batcher { tx }
    }

    /// Reports `token`; resolves when the batch it joined has been answered (or at once, when the
    /// hourly budget is spent or too many tokens are waiting).
    pub async fn submit(&self, token: TokenSecret) -> Outcome {
        let (reply, answer) = oneshot::channel();
        match self.tx.try_send(Request { token, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return retry(
                    "too many tokens waiting for a batch",
                    Some(Duration::from_secs(1)),
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return retry("the batcher stopped", None);
            }
        }
        answer
            .await
            .unwrap_or_else(|_| retry("the batcher stopped", None))
    }
}

async fn run(client: Client, options: BatchOptions, mut rx: mpsc::Receiver<Request>) {
    let budget = hourly_budget(options.hourly_limit);
    // When GitHub said when to come back (its rate limit, a 422 for spam), nobody calls before.
    let mut paused_until: Option<tokio::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        if let Some(until) = paused_until.filter(|u| *u > tokio::time::Instant::now()) {
            let wait = until - tokio::time::Instant::now();
            let paused = || retry("GitHub asked to wait", Some(wait));
            let _ = first.reply.send(paused());
            while let Ok(next) = rx.try_recv() {
                let _ = next.reply.send(paused());
            }
            continue;
        }
        if let Err(not_until) = budget.check() {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let over = || retry("the hourly budget of calls is spent", Some(wait));
            let _ = first.reply.send(over());
            while let Ok(next) = rx.try_recv() {
                let _ = next.reply.send(over());
            }
            continue;
        }
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + options.linger;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(next)) => batch.push(next),
                Ok(None) | Err(_) => break,
            }
        }
        let tokens: Vec<TokenSecret> = batch.iter().map(|r| r.token.clone()).collect();
        let outcome = client.revoke(&tokens).await;
        if let Outcome::RetryLater {
            retry_after: Some(wait),
            ..
        } = &outcome
        {
            paused_until = Some(tokio::time::Instant::now() + *wait);
        }
        for request in batch {
            let _ = request.reply.send(outcome.clone());
        }
    }
}
