//! GitHub's REST API as the poller uses it: conditional GETs through octocrab, and the rate-limit
//! policy. Every answer's `X-RateLimit-Remaining` / `X-RateLimit-Reset` is remembered; at zero,
//! or after a `Retry-After` (secondary limits), no request is sent until the limit resets: the
//! caller gets [`Error::RateLimited`] instead and skips work, never hammers.
//!
//! The wire types are GitHub's schemas, reduced to the fields the poller reads (a PushEvent's
//! payload no longer lists commits: `head` and `before` are all it carries).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use octocrab::Octocrab;
use reqwest::header::{ACCEPT, ETAG, HeaderMap, HeaderValue, IF_NONE_MATCH};
use secrecy::SecretString;
use serde::Deserialize;

/// A secondary limit without `Retry-After`: GitHub asks for at least a minute.
const SECONDARY_DEFAULT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("GitHub rate limit ({kind}): waiting {:?}", until.saturating_duration_since(Instant::now()))]
    RateLimited { until: Instant, kind: &'static str },
    #[error("not found (or no longer public)")]
    NotFound,
    #[error("GitHub answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("{0}")]
    Transport(String),
    /// This poll's call budget is spent: the rest waits for the next poll.
    #[error("call budget for this poll spent")]
    Budget,
}

/// Largest answer read from GitHub (a compare of 300 files with patches is a few MB): a longer one
/// is abandoned while it streams.
pub const MAX_ANSWER: usize = 32 << 20;

/// One successful answer, or a 304 (`not_modified`, empty body).
#[derive(Debug)]
pub struct Page {
    pub not_modified: bool,
    pub body: String,
    pub etag: Option<String>,
    /// `X-Poll-Interval`: how long GitHub asks pollers of this feed to wait.
    pub poll_interval: Option<Duration>,
}

impl Page {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(&self.body).map_err(|e| Error::Malformed(e.to_string()))
    }
}

/// What the rate-limit policy reports (to metrics).
pub trait RateObserver: Send + Sync {
    fn remaining(&self, _remaining: u64) {}
    fn limited(&self, _kind: &'static str) {}
}

#[derive(Default)]
struct RateState {
    remaining: Option<u64>,
    reset_at: Option<Instant>,
    paused_until: Option<(Instant, &'static str)>,
}

pub struct GitHub {
    octo: Octocrab,
    base: String,
    timeout: Duration,
    rate: Mutex<RateState>,
}

impl GitHub {
    /// A client for `api_url` (GitHub or Enterprise Server), authenticated when `token` is given.
    pub fn new(
        api_url: &str,
        token: Option<SecretString>,
        timeout: Duration,
    ) -> anyhow::Result<GitHub> {
        let base = api_url.trim_end_matches('/').to_owned();
        let mut builder = Octocrab::builder()
            .base_uri(base.as_str())?
            .set_connect_timeout(Some(timeout))
            .set_read_timeout(Some(timeout));
        if let Some(token) = token {
            builder = builder.personal_token(token);
        }
        Ok(GitHub {
            octo: builder.build()?,
            base,
            timeout,
            rate: Mutex::new(RateState::default()),
        })
    }

    /// When a request may next be sent, if not now.
    pub fn blocked(&self) -> Option<(Instant, &'static str)> {
        let rate = self.rate.lock().expect("rate state");
        let now = Instant::now();
        if let Some((until, kind)) = rate.paused_until.filter(|(u, _)| *u > now) {
            return Some((until, kind));
        }
        match (rate.remaining, rate.reset_at) {
            (Some(0), Some(reset)) if reset > now => Some((reset, "primary")),
            _ => None,
        }
    }

    /// GET `path` (with its query), conditional on `etag`.
    pub async fn get(
        &self,
        path: &str,
        etag: Option<&str>,
        observer: &dyn RateObserver,
    ) -> Result<Page, Error> {
        if let Some((until, kind)) = self.blocked() {
            return Err(Error::RateLimited { until, kind });
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "x-github-api-version",
            HeaderValue::from_static("2022-11-28"),
        );
        if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(t).ok()) {
            headers.insert(IF_NONE_MATCH, tag);
        }
        let url = format!("{}{path}", self.base);
        let exchange = async {
            let response = self
                .octo
                ._get_with_headers(url.as_str(), Some(headers))
                .await
                .map_err(|e| Error::Transport(format!("GET {path}: {e}")))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let bytes =
                crate::platform::outbound::read_body_capped(response.into_body(), MAX_ANSWER)
                    .await
                    .map_err(|e| Error::Transport(format!("GET {path}: {e}")))?;
            let body = String::from_utf8_lossy(&bytes).into_owned();
            Ok::<_, Error>((status, headers, body))
        };
        let (status, headers, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                Error::Transport(format!("GET {path}: no answer within {:?}", self.timeout))
            })??;
        self.classify(status, &headers, body, observer)
    }

    fn classify(
        &self,
        status: u16,
        headers: &HeaderMap,
        body: String,
        observer: &dyn RateObserver,
    ) -> Result<Page, Error> {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let remaining = number("x-ratelimit-remaining");
        let reset_at = number("x-ratelimit-reset").map(instant_of_epoch);
        let retry_after = crate::platform::outbound::retry_after(headers);
        {
            let mut rate = self.rate.lock().expect("rate state");
            if let Some(r) = remaining {
                rate.remaining = Some(r);
                observer.remaining(r);
            }
            if reset_at.is_some() {
                rate.reset_at = reset_at;
            }
            if matches!(status, 403 | 429) {
                let pause = if let Some(wait) = retry_after {
                    Some((Instant::now() + wait, "secondary"))
                } else if remaining == Some(0) {
                    Some((
                        reset_at.unwrap_or_else(|| Instant::now() + SECONDARY_DEFAULT),
                        "primary",
                    ))
                } else if body.to_ascii_lowercase().contains("secondary rate limit") {
                    Some((Instant::now() + SECONDARY_DEFAULT, "secondary"))
                } else {
                    None
                };
                if let Some((until, kind)) = pause {
                    rate.paused_until = Some((until, kind));
                    observer.limited(kind);
                    return Err(Error::RateLimited { until, kind });
                }
            }
        }
        match status {
            200..=299 | 304 => Ok(Page {
                not_modified: status == 304,
                etag: headers
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                poll_interval: number("x-poll-interval").map(Duration::from_secs),
                body,
            }),
            404 | 410 | 451 => Err(Error::NotFound),
            _ => Err(Error::Status {
                status,
                message: serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| body.chars().take(200).collect()),
            }),
        }
    }
}

/// `X-RateLimit-Reset` (Unix seconds) as a local instant, one second late for clock skew, and at
/// most an hour away (GitHub's window; a wild value must not stop the poller for longer).
fn instant_of_epoch(epoch_secs: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let wait = Duration::from_secs(epoch_secs)
        .saturating_sub(now)
        .min(Duration::from_secs(3600));
    Instant::now() + wait + Duration::from_secs(1)
}

/// One event of an events feed.
#[derive(Debug, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub repo: EventRepo,
    #[serde(default)]
    pub payload: serde_json::Value,
    pub created_at: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct EventRepo {
    pub name: String,
}

/// A PushEvent's payload.
#[derive(Debug, Deserialize)]
pub struct PushPayload {
    pub head: String,
    pub before: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
}

/// `GET /repos/{owner}/{repo}/compare/{base}...{head}`.
#[derive(Debug, Deserialize)]
pub struct Compare {
    #[serde(default)]
    pub commits: Vec<CommitRef>,
    #[serde(default)]
    pub files: Vec<File>,
}

#[derive(Debug, Deserialize)]
pub struct CommitRef {
    pub sha: String,
}

/// `GET /repos/{owner}/{repo}/commits/{sha}`.
#[derive(Debug, Deserialize)]
pub struct Commit {
    pub sha: String,
    #[serde(default)]
    pub files: Vec<File>,
}

/// A changed file, in a compare or a commit.
#[derive(Debug, Clone, Deserialize)]
pub struct File {
    pub filename: String,
    #[serde(default)]
    pub status: String,
    /// The blob's id (absent for some removals).
    pub sha: Option<String>,
    /// Absent for binary files and diffs too large to show.
    pub patch: Option<String>,
    pub blob_url: Option<String>,
}

/// `GET /repos/{owner}/{repo}/git/blobs/{sha}`.
#[derive(Debug, Deserialize)]
pub struct Blob {
    pub content: String,
    pub encoding: String,
    pub size: u64,
}

/// Largest number of files a compare or a commit page lists; a full list may be truncated.
pub const FILES_PER_DIFF: usize = 300;

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;
    impl RateObserver for Quiet {}

    /// Octocrab's client needs a Tokio runtime to be built in.
    fn client() -> GitHub {
        GitHub::new("http://127.0.0.1:9", None, Duration::from_secs(1)).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[tokio::test]
    async fn an_exhausted_primary_limit_blocks_until_reset() {
        let gh = client();
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 30;
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &reset.to_string()),
        ]);
        // The last allowed request succeeds, and the next is refused locally.
        assert!(
            !gh.classify(200, &h, "[]".into(), &Quiet)
                .unwrap()
                .not_modified
        );
        let (until, kind) = gh.blocked().expect("blocked");
        assert_eq!(kind, "primary");
        assert!(until > Instant::now() + Duration::from_secs(25));
    }

    #[tokio::test]
    async fn retry_after_pauses_as_a_secondary_limit() {
        let gh = client();
        let h = headers(&[("retry-after", "5"), ("x-ratelimit-remaining", "4000")]);
        let err = gh.classify(403, &h, "{}".into(), &Quiet).unwrap_err();
        assert!(
            matches!(
                err,
                Error::RateLimited {
                    kind: "secondary",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(gh.blocked().unwrap().1, "secondary");
        // A secondary limit named only in the message still pauses (a minute).
        let gh = client();
        let body = r#"{"message":"You have exceeded a secondary rate limit."}"#;
        let err = gh
            .classify(403, &HeaderMap::new(), body.into(), &Quiet)
            .unwrap_err();
        assert!(matches!(err, Error::RateLimited { .. }));
        // A plain 403 is an error, not a pause.
        let gh = client();
        let err = gh.classify(
            403,
            &HeaderMap::new(),
            r#"{"message":"Forbidden"}"#.into(),
            &Quiet,
        );
        assert!(matches!(err, Err(Error::Status { status: 403, .. })));
        assert!(gh.blocked().is_none());
    }

    #[tokio::test]
    async fn not_modified_and_poll_interval_are_read() {
        let gh = client();
        let h = headers(&[("etag", "W/\"abc\""), ("x-poll-interval", "60")]);
        let page = gh.classify(200, &h, "[]".into(), &Quiet).unwrap();
        assert_eq!(page.etag.as_deref(), Some("W/\"abc\""));
        assert_eq!(page.poll_interval, Some(Duration::from_secs(60)));
        let page = gh.classify(304, &h, String::new(), &Quiet).unwrap();
        assert!(page.not_modified);
        assert_eq!(page.poll_interval, Some(Duration::from_secs(60)));
    }
}
