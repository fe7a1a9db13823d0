//! The public-repository poller: finds tokens pushed to GitHub before anyone reports them.
//!
//! Each poll reads the configured event feeds (`/events`, `/orgs/{org}/events`,
//! `/repos/{owner}/{name}/events`) with `If-None-Match`, queues their PushEvents durably and moves
//! each feed's cursor (the newest event id) in the same transaction; a feed whose pages never
//! reach the cursor has a gap (recorded as a metric and an audit entry). Then, within a call
//! budget, it scans queued pushes ([`scan`]) and records their tokens through the same intake as
//! partner alerts (listener `poller`), so attribution, verification and revocation follow.
//! Polls are `X-Poll-Interval` apart (never less than `min_interval_ms`), and GitHub's rate
//! limits are obeyed by not sending ([`github`]).
//!
//! One replica polls ([`leader`]); the others wait to take over.
//!
//! Must not import HTTP servers or write findings: it records candidates through `intake`.

pub mod diff;
pub mod github;
pub mod leader;
pub mod scan;
pub mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;

use crate::intake::{self, ReportedToken};
use crate::platform::config::PollerSettings;
use crate::platform::store::{Store, now_ms};
use crate::revocation::Engine;
use crate::scanner::{RuleSet, ScanOptions};
use github::{Error, Event, GitHub, PushPayload, RateObserver};
use leader::Leadership;
use state::{Cursor, Gap, Push};

/// The intake listener id (and kind) of tokens the poller finds.
pub const LISTENER: &str = "poller";
/// Events per page (GitHub's maximum for event feeds).
const PER_PAGE: usize = 100;
/// A push that keeps failing (malformed answers, server errors) is given up after this many
/// attempts, with an audit entry.
const MAX_ATTEMPTS: i64 = 8;
/// Finished pushes and seen commits are kept this long (a week), then pruned.
const KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

/// What the poller reports (to metrics).
pub trait Observer: RateObserver {
    fn leader(&self, _leading: bool) {}
    /// A poll finished; `lag`: age of the newest event listed, when known.
    fn polled(&self, _lag: Option<Duration>) {}
    fn gap(&self) {}
    fn push(&self, _outcome: &'static str) {}
    fn skipped_file(&self, _reason: &'static str) {}
    fn scanned_bytes(&self, _bytes: u64) {}
    fn token_matched(&self, _rule: &str, _verdict: &'static str) {}
    fn alert(&self, _outcome: &'static str) {}
}

pub struct Poller {
    store: Store,
    rules: RuleSet,
    intake: Arc<intake::Intake>,
    engine: Arc<Engine>,
    gh: GitHub,
    settings: PollerSettings,
    feeds: Vec<(String, String)>,
    observer: Arc<dyn Observer>,
    /// The last `X-Poll-Interval` GitHub sent, kept for polls whose feeds did not answer.
    asked_interval: std::sync::Mutex<Option<Duration>>,
}

impl Poller {
    /// A poller for `settings`; the API token, if any, comes from `SPILLWAY_GITHUB_TOKEN` (or the
    /// file `SPILLWAY_GITHUB_TOKEN_FILE` names).
    pub fn new(
        store: Store,
        engine: Arc<Engine>,
        intake: Arc<intake::Intake>,
        settings: &PollerSettings,
        observer: Arc<dyn Observer>,
    ) -> anyhow::Result<Poller> {
        let token: Option<SecretString> =
            crate::platform::config::secret_from_env("SPILLWAY_GITHUB_TOKEN")?;
        let gh = GitHub::new(
            &settings.api_url,
            token,
            Duration::from_millis(settings.request_timeout_ms.max(1)),
        )?;
        let mut feeds = Vec::new();
        if settings.public_events {
            feeds.push(("events".to_owned(), "/events".to_owned()));
        }
        for org in &settings.orgs {
            anyhow::ensure!(
                is_name(org),
                "poller.orgs: {org:?} is not an organisation name"
            );
            feeds.push((format!("orgs/{org}"), format!("/orgs/{org}/events")));
        }
        for repo in &settings.repos {
            let ok = repo
                .split_once('/')
                .is_some_and(|(o, n)| is_name(o) && is_name(n));
            anyhow::ensure!(ok, "poller.repos: {repo:?} is not owner/name");
            feeds.push((format!("repos/{repo}"), format!("/repos/{repo}/events")));
        }
        anyhow::ensure!(
            !feeds.is_empty(),
            "poller: nothing to watch (public_events is off and orgs and repos are empty)"
        );
        Ok(Poller {
            store,
            rules: RuleSet::default_rules(ScanOptions {
                include_invalid: false,
            })?,
            engine,
            intake,
            gh,
            settings: settings.clone(),
            feeds,
            observer,
            asked_interval: std::sync::Mutex::new(None),
        })
    }

    /// Polls while this replica holds the poller lock, and waits to take over while it does not,
    /// until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let election = Duration::from_millis(self.settings.election_interval_ms.max(100));
        let mut leadership: Option<Leadership> = None;
        let mut pruned_at = Instant::now();
        while !*stop.borrow() {
            if let Some(held) = leadership.as_mut()
                && !held.still_held().await
            {
                tracing::warn!("poller: lost the poller lock's session; standing down");
                leadership = None;
                self.observer.leader(false);
            }
            if leadership.is_none() {
                match leader::try_acquire(&self.store).await {
                    Ok(Some(l)) => {
                        tracing::info!("poller: this replica polls");
                        leadership = Some(l);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "poller: cannot try the poller lock"),
                }
                self.observer.leader(leadership.is_some());
            }
            let wait = if leadership.is_some() {
                if pruned_at.elapsed() > Duration::from_secs(3600) {
                    pruned_at = Instant::now();
                    if let Err(e) = state::prune(&self.store, KEEP_MS).await {
                        tracing::warn!(error = %e, "poller: cannot prune");
                    }
                }
                let started = Instant::now();
                let wait = self.poll().await.saturating_sub(started.elapsed());
                tracing::debug!(?wait, "poller: next poll");
                wait
            } else {
                election
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        if let Some(l) = leadership {
            l.release().await;
        }
        self.observer.leader(false);
    }

    /// One poll: every feed, then the due pushes. Returns how long to wait before the next.
    pub async fn poll(&self) -> Duration {
        let mut asked: Option<Duration> = None;
        let mut limited: Option<Instant> = None;
        for (feed, path) in &self.feeds {
            match self.poll_feed(feed, path).await {
                Ok(interval) => asked = asked.max(interval),
                Err(e) => {
                    if let Some(Error::RateLimited { until, kind }) = e.downcast_ref::<Error>() {
                        tracing::debug!(feed, kind, "poller: rate limited");
                        limited = Some(*until);
                        break;
                    }
                    tracing::warn!(feed, error = %e, "poller: cannot read feed");
                }
            }
        }
        if limited.is_none() {
            match self.scan_due().await {
                Ok(()) => {}
                Err(e) => match e.downcast_ref::<Error>() {
                    Some(Error::RateLimited { until, .. }) => limited = Some(*until),
                    _ => tracing::warn!(error = %e, "poller: cannot scan pushes"),
                },
            }
        }
        let mut remembered = self.asked_interval.lock().expect("poll interval");
        if asked.is_some() {
            *remembered = asked;
        }
        let base = remembered
            .unwrap_or(Duration::from_millis(self.settings.interval_ms))
            .max(Duration::from_millis(self.settings.min_interval_ms));
        match limited {
            Some(until) => base.max(until.saturating_duration_since(Instant::now())),
            None => base,
        }
    }

    /// Reads one feed back to its cursor (at most `max_pages` pages) and queues its pushes.
    /// Returns the `X-Poll-Interval` GitHub asked for.
    async fn poll_feed(&self, feed: &str, path: &str) -> anyhow::Result<Option<Duration>> {
        let obs = self.observer.as_ref();
        let cursor = state::cursor(&self.store, feed).await?;
        let mut next = Cursor {
            etag: cursor.etag.clone(),
            last_event_id: cursor.last_event_id,
        };
        let mut reached = cursor.last_event_id == 0;
        let mut oldest_listed = i64::MAX;
        let mut newest_created: Option<String> = None;
        let mut interval = None;
        let mut pushes = Vec::new();
        for n in 1..=self.settings.max_pages.max(1) {
            let etag = if n == 1 { cursor.etag.as_deref() } else { None };
            let page = self
                .gh
                .get(&format!("{path}?per_page={PER_PAGE}&page={n}"), etag, obs)
                .await?;
            if n == 1 {
                interval = page.poll_interval;
                if page.not_modified {
                    state::touch(&self.store, feed).await?;
                    self.observer.polled(None);
                    return Ok(interval);
                }
                next.etag = page.etag.clone().or(next.etag);
            }
            let events: Vec<Event> = page.json()?;
            let count = events.len();
            for event in events {
                let Ok(id) = event.id.parse::<i64>() else {
                    tracing::warn!(feed, "poller: an event id is not a number; ignored");
                    continue;
                };
                if newest_created.is_none() {
                    newest_created = event.created_at.clone();
                }
                if id <= cursor.last_event_id {
                    reached = true;
                    continue;
                }
                next.last_event_id = next.last_event_id.max(id);
                oldest_listed = oldest_listed.min(id);
                if event.kind.as_deref() != Some("PushEvent") {
                    continue;
                }
                match serde_json::from_value::<PushPayload>(event.payload) {
                    Ok(p) => pushes.push(Push {
                        event_id: id,
                        repo: event.repo.name,
                        before: p.before,
                        head: p.head,
                        git_ref: p.git_ref,
                        pushed_at: event
                            .created_at
                            .as_deref()
                            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map_or_else(now_ms, |d| d.as_millis() as i64),
                        attempts: 0,
                    }),
                    Err(e) => {
                        tracing::warn!(feed, event = id, error = %e, "poller: a PushEvent without head/before; ignored")
                    }
                }
            }
            if reached || count < PER_PAGE {
                break;
            }
        }
        let gap = (!reached).then_some(Gap {
            after_event_id: cursor.last_event_id,
            oldest_listed,
        });
        state::listed(&self.store, feed, &next, &pushes, gap.as_ref()).await?;
        if let Some(gap) = &gap {
            tracing::warn!(
                feed,
                after = gap.after_event_id,
                oldest = gap.oldest_listed,
                "poller: gap in the event feed; events between were not seen"
            );
            self.observer.gap();
        }
        let lag = newest_created
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| t.elapsed().ok());
        self.observer.polled(lag.or(Some(Duration::ZERO)));
        Ok(interval)
    }

    /// Scans due pushes, oldest first, until none is due or the call budget is spent.
    async fn scan_due(&self) -> anyhow::Result<()> {
        let skipped =
            state::trim_backlog(&self.store, i64::from(self.settings.max_backlog)).await?;
        for _ in 0..skipped {
            self.observer.push("skipped_budget");
        }
        let limits = scan::Limits {
            max_blobs: self.settings.max_blobs_per_push,
            max_blob_bytes: self.settings.max_blob_bytes,
            html_url: self.settings.html_url.clone(),
        };
        let full = self.settings.call_budget.max(1);
        let mut budget = scan::Budget(full);
        loop {
            let due = state::due(&self.store, 50).await?;
            if due.is_empty() {
                return Ok(());
            }
            for push in due {
                if budget.is_spent() {
                    return Ok(());
                }
                if state::seen(&self.store, &push.repo, &push.head).await? {
                    state::finish(&self.store, &push, "duplicate", &[], None).await?;
                    self.observer.push("duplicate");
                    continue;
                }
                let obs = self.observer.as_ref();
                // A push that starts with the whole budget never waits for a bigger one.
                let degrade = budget.0 == full;
                match scan::scan_push(
                    &self.gh,
                    obs,
                    &self.rules,
                    &limits,
                    &push,
                    &mut budget,
                    degrade,
                )
                .await
                {
                    Ok(scanned) => self.record(&push, scanned).await?,
                    Err(Error::Budget) => return Ok(()),
                    Err(e @ Error::RateLimited { .. }) => return Err(e.into()),
                    Err(Error::NotFound) => {
                        let details = serde_json::json!({ "repo": push.repo, "head": push.head });
                        state::finish(&self.store, &push, "unavailable", &[], Some(details))
                            .await?;
                        self.observer.push("unavailable");
                    }
                    Err(e) => {
                        let backoff = 1000_i64 << push.attempts.clamp(0, 8);
                        let message = e.to_string();
                        tracing::warn!(repo = %push.repo, event = push.event_id, error = %message, "poller: cannot scan push; will retry");
                        if state::retry_later(&self.store, &push, &message, backoff, MAX_ATTEMPTS)
                            .await?
                        {
                            self.observer.push("failed");
                        }
                    }
                }
            }
        }
    }

    /// Hands a push's tokens to the intake, then finishes the push.
    async fn record(&self, push: &Push, scanned: scan::Scanned) -> anyhow::Result<()> {
        self.observer.scanned_bytes(scanned.bytes);
        for (_, reason) in &scanned.skipped {
            self.observer.skipped_file(reason);
        }
        if !scanned.hits.is_empty() {
            let tokens: Vec<ReportedToken> = scanned
                .hits
                .iter()
                .map(|h| ReportedToken {
                    token: h.token.clone(),
                    token_type: h.token_type.clone(),
                    url: Some(h.url.clone()),
                    source: Some(LISTENER.to_owned()),
                    context_hosts: h.hosts.clone(),
                })
                .collect();
            // The same push (repository, before, head) is one alert: scanning it again after a
            // crash is a replay, not a second alert.
            let body = format!("poller push {} {}...{}", push.repo, push.before, push.head);
            let recorded = self
                .intake
                .record(
                    Some(&self.engine.key_cache),
                    &intake::IncomingAlert {
                        listener_id: LISTENER,
                        listener_kind: LISTENER,
                        body: body.as_bytes(),
                        delivery_id: None,
                        key_id: None,
                        key_current: None,
                        tokens: &tokens,
                        event: None,
                    },
                )
                .await?;
            self.observer.alert(if recorded.replay {
                "replay"
            } else {
                "accepted"
            });
            self.engine.wake();
            for h in &scanned.hits {
                self.observer.token_matched(&h.rule, h.verdict);
                tracing::info!(rule = %h.rule, url = %h.url, "poller: token found in a public push");
            }
        }
        let noteworthy =
            !scanned.hits.is_empty() || !scanned.skipped.is_empty() || scanned.truncated;
        let details = noteworthy.then(|| {
            serde_json::json!({
                "repo": push.repo,
                "ref": push.git_ref,
                "before": push.before,
                "head": push.head,
                "commits": scanned.commits.len(),
                "files": scanned.files,
                "truncated": scanned.truncated,
                "hits": scanned.hits.iter().map(|h| serde_json::json!({
                    "rule": h.rule, "path": h.path, "line": h.line, "url": h.url,
                    "decoded": h.decoded,
                })).collect::<Vec<_>>(),
                "skipped": scanned.skipped.iter().take(100).map(|(path, reason)| serde_json::json!({
                    "path": path, "reason": reason,
                })).collect::<Vec<_>>(),
            })
        });
        state::finish(&self.store, push, "scanned", &scanned.commits, details).await?;
        self.observer.push("scanned");
        Ok(())
    }
}

/// A GitHub login or repository name: letters, digits, `-`, `_`, `.`.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s != "."
        && s != ".."
}
