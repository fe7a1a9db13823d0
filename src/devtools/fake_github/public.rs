//! The public side of the fake GitHub, for the poller: event feeds, compares, commits and blobs
//! in GitHub's REST schemas, over a small in-memory world of repositories that a test or a
//! benchmark pushes to (`POST /_fake/push`). It also misbehaves on request
//! (`POST /_fake/faults`): primary and secondary rate limits, malformed feeds, slow answers; and
//! it counts every request sent while a limit was in force (`GET /_fake/stats`: `violations`).
//!
//! Like GitHub: feeds list newest first, keep the last 300 events, answer `If-None-Match` with
//! 304 and send `X-Poll-Interval`; a PushEvent's payload carries `head` and `before` only; a diff
//! lists at most 300 files; files without a patch (binary, or pushed with `no_patch`) must be
//! read as blobs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use sha1::Digest as _;

use crate::http::error;

/// GitHub keeps this many events per feed.
const RETAINED: usize = 300;
/// At most this many files in a compare or on one page of a commit.
const FILES_PER_DIFF: usize = 300;
const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// How the fake misbehaves (`POST /_fake/faults` replaces it whole).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Primary limit: requests per window (none: unlimited).
    pub rate_limit: Option<u64>,
    pub rate_window_ms: u64,
    /// Every n-th request is refused with a secondary limit and `Retry-After`.
    pub secondary_every: Option<u64>,
    pub secondary_retry_after_s: u64,
    /// The next n feed answers are malformed JSON.
    pub malformed: u32,
    /// Every answer is this late.
    pub slow_ms: u64,
    /// `X-Poll-Interval` sent with feeds.
    pub poll_interval_s: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rate_limit: None,
            rate_window_ms: 60_000,
            secondary_every: None,
            secondary_retry_after_s: 1,
            malformed: 0,
            slow_ms: 0,
            poll_interval_s: 1,
        }
    }
}

/// A file written by `POST /_fake/push`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushFile {
    path: String,
    #[serde(default)]
    content: String,
    /// Binary content (a tarball), standard base64; replaces `content`.
    #[serde(default)]
    content_base64: Option<String>,
}

/// Body of `POST /_fake/push`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    /// `owner/name`; the owner is the organisation of the event.
    repo: String,
    files: Vec<PushFile>,
    /// Leave the patches out of compares and commits (as GitHub does for large diffs).
    #[serde(default)]
    no_patch: bool,
}

struct CommitData {
    parent: Option<String>,
    tree: BTreeMap<String, String>,
    no_patch: bool,
    date: String,
}

#[derive(Default)]
struct Stats {
    requests: u64,
    not_modified: u64,
    violations: u64,
    primary_refusals: u64,
    secondary_refusals: u64,
    malformed_served: u64,
    pushes: Vec<Value>,
}

struct World {
    next_event_id: i64,
    next_sha: u64,
    events: VecDeque<Value>,
    repo_ids: HashMap<String, i64>,
    heads: HashMap<String, String>,
    commits: HashMap<(String, String), CommitData>,
    blobs: HashMap<String, Vec<u8>>,
    faults: Faults,
    stats: Stats,
    remaining: u64,
    reset_at: Instant,
    retry_until: Option<Instant>,
    since_secondary: u64,
}

pub struct Public {
    world: Mutex<World>,
}

impl Public {
    pub fn new() -> Public {
        Public {
            world: Mutex::new(World {
                next_event_id: 40_000_000_000,
                next_sha: 0,
                events: VecDeque::new(),
                repo_ids: HashMap::new(),
                heads: HashMap::new(),
                commits: HashMap::new(),
                blobs: HashMap::new(),
                faults: Faults::default(),
                stats: Stats::default(),
                remaining: 0,
                reset_at: Instant::now(),
                retry_until: None,
                since_secondary: 0,
            }),
        }
    }
}

impl Default for Public {
    fn default() -> Self {
        Public::new()
    }
}

pub fn routes(state: Arc<Public>) -> Router {
    Router::new()
        .route("/events", get(public_events))
        .route("/orgs/{org}/events", get(org_events))
        .route("/repos/{owner}/{repo}/events", get(repo_events))
        .route("/repos/{owner}/{repo}/compare/{basehead}", get(compare))
        .route("/repos/{owner}/{repo}/commits/{sha}", get(commit))
        .route("/repos/{owner}/{repo}/git/blobs/{sha}", get(blob))
        .route("/_fake/push", post(push))
        .route("/_fake/noise", post(noise))
        .route("/_fake/faults", post(set_faults))
        .route("/_fake/stats", get(stats))
        .with_state(state)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn epoch_secs(at: Instant) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + at.saturating_duration_since(Instant::now())).as_secs() + 1
}

impl World {
    fn sha(&mut self, seed: &str) -> String {
        self.next_sha += 1;
        let mut h = sha1::Sha1::new();
        h.update(seed.as_bytes());
        h.update(self.next_sha.to_be_bytes());
        hex::encode(h.finalize())
    }

    /// Rate limits, in GitHub's order: a secondary pause, the primary window, then the
    /// injected secondary limit. A refused request sent while a limit was known is a violation.
    fn admit(&mut self) -> Option<Response> {
        self.stats.requests += 1;
        let now = Instant::now();
        if let Some(until) = self.retry_until {
            if now < until {
                self.stats.violations += 1;
                let wait = until.saturating_duration_since(now).as_secs() + 1;
                return Some(self.secondary(wait));
            }
            self.retry_until = None;
        }
        if let Some(limit) = self.faults.rate_limit {
            if now >= self.reset_at {
                self.remaining = limit;
                self.reset_at = now + Duration::from_millis(self.faults.rate_window_ms);
            }
            if self.remaining == 0 {
                self.stats.violations += 1;
                self.stats.primary_refusals += 1;
                let mut r = error_body(
                    StatusCode::FORBIDDEN,
                    "API rate limit exceeded for 127.0.0.1. (But here's the good news: Authenticated requests get a higher rate limit.)",
                );
                self.rate_headers(r.headers_mut());
                return Some(r);
            }
            self.remaining -= 1;
        }
        if let Some(every) = self.faults.secondary_every.filter(|e| *e > 0) {
            self.since_secondary += 1;
            if self.since_secondary >= every {
                self.since_secondary = 0;
                let wait = self.faults.secondary_retry_after_s;
                self.retry_until = Some(now + Duration::from_secs(wait));
                return Some(self.secondary(wait));
            }
        }
        None
    }

    fn secondary(&mut self, wait_secs: u64) -> Response {
        self.stats.secondary_refusals += 1;
        let mut r = error_body(
            StatusCode::FORBIDDEN,
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        );
        r.headers_mut()
            .insert("retry-after", HeaderValue::from(wait_secs));
        self.rate_headers(r.headers_mut());
        r
    }

    fn rate_headers(&self, headers: &mut HeaderMap) {
        let (limit, remaining, reset) = match self.faults.rate_limit {
            Some(limit) => (limit, self.remaining, epoch_secs(self.reset_at)),
            None => (
                5000,
                5000,
                epoch_secs(Instant::now() + Duration::from_secs(3600)),
            ),
        };
        headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
        headers.insert("x-ratelimit-used", HeaderValue::from(limit - remaining));
        headers.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
    }

    fn json(&self, status: StatusCode, body: Value) -> Response {
        let mut r = (status, axum::Json(body)).into_response();
        self.rate_headers(r.headers_mut());
        r
    }

    fn event(&mut self, kind: &str, repo: &str, payload: Value) -> i64 {
        self.next_event_id += 1;
        let id = self.next_event_id;
        let next_repo_id = self.repo_ids.len() as i64 + 1000;
        let repo_id = *self.repo_ids.entry(repo.to_owned()).or_insert(next_repo_id);
        let owner = repo.split('/').next().unwrap_or_default();
        self.events.push_back(json!({
            "id": id.to_string(),
            "type": kind,
            "actor": {
                "id": 1, "login": "octo-bench", "display_login": "octo-bench", "gravatar_id": "",
                "url": "https://api.github.com/users/octo-bench",
                "avatar_url": "https://avatars.githubusercontent.com/u/1?",
            },
            "repo": { "id": repo_id, "name": repo, "url": format!("https://api.github.com/repos/{repo}") },
            "payload": payload,
            "public": true,
            "created_at": now_rfc3339(),
            "org": {
                "id": 2, "login": owner, "gravatar_id": "",
                "url": format!("https://api.github.com/orgs/{owner}"),
                "avatar_url": "https://avatars.githubusercontent.com/u/2?",
            },
        }));
        while self.events.len() > RETAINED {
            self.events.pop_front();
        }
        id
    }

    /// The diff between two trees, as GitHub lists files.
    fn files(
        &self,
        repo: &str,
        head: &str,
        old: &BTreeMap<String, String>,
        new: &BTreeMap<String, String>,
        with_patch: bool,
    ) -> Vec<Value> {
        let mut paths: Vec<&String> = old.keys().chain(new.keys()).collect();
        paths.sort();
        paths.dedup();
        let mut files = Vec::new();
        for path in paths {
            let (before, after) = (old.get(path), new.get(path));
            if before == after {
                continue;
            }
            let text = |sha: Option<&String>| {
                sha.and_then(|s| self.blobs.get(s))
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            };
            let (old_text, new_text) = (text(before), text(after));
            let status = match (before, after) {
                (None, _) => "added",
                (_, None) => "removed",
                _ => "modified",
            };
            let binary = new_text.contains('\0') || old_text.contains('\0');
            let old_lines: Vec<&str> = old_text.lines().collect();
            let new_lines: Vec<&str> = new_text.lines().collect();
            let mut file = json!({
                "sha": after.or(before),
                "filename": path,
                "status": status,
                "additions": new_lines.len(),
                "deletions": old_lines.len(),
                "changes": new_lines.len() + old_lines.len(),
                "blob_url": format!("https://github.com/{repo}/blob/{head}/{path}"),
                "raw_url": format!("https://github.com/{repo}/raw/{head}/{path}"),
                "contents_url": format!("https://api.github.com/repos/{repo}/contents/{path}?ref={head}"),
            });
            if with_patch && !binary {
                // Whole-file replacement: a valid unified diff, if not a minimal one.
                let mut patch = format!(
                    "@@ -{},{} +{},{} @@",
                    usize::from(!old_lines.is_empty()),
                    old_lines.len(),
                    usize::from(!new_lines.is_empty()),
                    new_lines.len()
                );
                for l in &old_lines {
                    patch.push_str("\n-");
                    patch.push_str(l);
                }
                for l in &new_lines {
                    patch.push_str("\n+");
                    patch.push_str(l);
                }
                file["patch"] = Value::String(patch);
            }
            files.push(file);
        }
        files
    }

    fn commit_json(&self, repo: &str, sha: &str, files: Vec<Value>) -> Value {
        let c = &self.commits[&(repo.to_owned(), sha.to_owned())];
        json!({
            "sha": sha,
            "url": format!("https://api.github.com/repos/{repo}/commits/{sha}"),
            "html_url": format!("https://github.com/{repo}/commit/{sha}"),
            "commit": {
                "author": { "name": "Octo Bench", "email": "bench@example.com", "date": c.date },
                "committer": { "name": "Octo Bench", "email": "bench@example.com", "date": c.date },
                "message": "bench commit",
            },
            "parents": c.parent.iter().map(|p| json!({ "sha": p })).collect::<Vec<_>>(),
            "files": files,
        })
    }
}

fn error_body(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "message": message,
            "documentation_url": "https://docs.github.com/rest",
            "status": status.as_u16().to_string(),
        })),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct Paging {
    per_page: Option<usize>,
    page: Option<usize>,
}

/// Slows down (if asked), then admits the request under the rate limits.
async fn gate(state: &Public) -> Option<Response> {
    let slow = state.world.lock().expect("world").faults.slow_ms;
    if slow > 0 {
        tokio::time::sleep(Duration::from_millis(slow)).await;
    }
    state.world.lock().expect("world").admit()
}

async fn feed(
    state: Arc<Public>,
    name: String,
    keep: impl Fn(&Value) -> bool,
    paging: Paging,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = gate(&state).await {
        return refused;
    }
    let mut w = state.world.lock().expect("world");
    let listed: Vec<&Value> = w.events.iter().rev().filter(|e| keep(e)).collect();
    let newest = listed
        .first()
        .map_or("none", |e| e["id"].as_str().unwrap_or("none"));
    let etag = format!(
        "W/\"{}\"",
        hex::encode(sha1::Sha1::digest(format!("{name}:{newest}")))
    );
    let poll_interval = HeaderValue::from(w.faults.poll_interval_s);
    let page = paging.page.unwrap_or(1).max(1);
    if page == 1
        && headers
            .get("if-none-match")
            .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        w.stats.not_modified += 1;
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut()
            .insert("etag", HeaderValue::from_str(&etag).expect("ascii"));
        r.headers_mut().insert("x-poll-interval", poll_interval);
        w.rate_headers(r.headers_mut());
        return r;
    }
    let per_page = paging.per_page.unwrap_or(30).clamp(1, 100);
    let items: Vec<Value> = listed
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    let mut r = if w.faults.malformed > 0 {
        w.faults.malformed -= 1;
        w.stats.malformed_served += 1;
        let mut r = (StatusCode::OK, "[{\"id\": \"1\", \"type\": \"PushEv").into_response();
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        w.rate_headers(r.headers_mut());
        r
    } else {
        w.json(StatusCode::OK, Value::Array(items))
    };
    r.headers_mut()
        .insert("etag", HeaderValue::from_str(&etag).expect("ascii"));
    r.headers_mut().insert("x-poll-interval", poll_interval);
    r
}

async fn public_events(
    State(state): State<Arc<Public>>,
    Query(paging): Query<Paging>,
    headers: HeaderMap,
) -> Response {
    feed(state, "events".into(), |_| true, paging, headers).await
}

async fn org_events(
    State(state): State<Arc<Public>>,
    Path(org): Path<String>,
    Query(paging): Query<Paging>,
    headers: HeaderMap,
) -> Response {
    let name = format!("orgs/{org}");
    feed(
        state,
        name,
        move |e| e["org"]["login"] == org.as_str(),
        paging,
        headers,
    )
    .await
}

async fn repo_events(
    State(state): State<Arc<Public>>,
    Path((owner, repo)): Path<(String, String)>,
    Query(paging): Query<Paging>,
    headers: HeaderMap,
) -> Response {
    let full = format!("{owner}/{repo}");
    let name = format!("repos/{full}");
    feed(
        state,
        name,
        move |e| e["repo"]["name"] == full.as_str(),
        paging,
        headers,
    )
    .await
}

async fn compare(
    State(state): State<Arc<Public>>,
    Path((owner, repo, basehead)): Path<(String, String, String)>,
) -> Response {
    if let Some(refused) = gate(&state).await {
        return refused;
    }
    let repo = format!("{owner}/{repo}");
    let w = state.world.lock().expect("world");
    let Some((base, head)) = basehead.split_once("...") else {
        return w.json(StatusCode::NOT_FOUND, json!({ "message": "Not Found" }));
    };
    // Walk back from head to base.
    let mut chain = Vec::new();
    let mut at = Some(head.to_owned());
    while let Some(sha) = at {
        if sha == base {
            break;
        }
        let Some(c) = w.commits.get(&(repo.clone(), sha.clone())) else {
            return w.json(StatusCode::NOT_FOUND, json!({ "message": "Not Found" }));
        };
        chain.push(sha.clone());
        at = c.parent.clone();
    }
    let (Some(base_c), Some(head_c)) = (
        w.commits.get(&(repo.clone(), base.to_owned())),
        w.commits.get(&(repo.clone(), head.to_owned())),
    ) else {
        return w.json(StatusCode::NOT_FOUND, json!({ "message": "Not Found" }));
    };
    chain.reverse();
    let with_patch = !chain
        .iter()
        .any(|s| w.commits[&(repo.clone(), s.clone())].no_patch);
    let mut files = w.files(&repo, head, &base_c.tree, &head_c.tree, with_patch);
    files.truncate(FILES_PER_DIFF);
    let commits: Vec<Value> = chain
        .iter()
        .map(|s| {
            let mut c = w.commit_json(&repo, s, Vec::new());
            c.as_object_mut().map(|o| o.remove("files"));
            c
        })
        .collect();
    w.json(
        StatusCode::OK,
        json!({
            "url": format!("https://api.github.com/repos/{repo}/compare/{basehead}"),
            "html_url": format!("https://github.com/{repo}/compare/{basehead}"),
            "status": "ahead",
            "ahead_by": chain.len(),
            "behind_by": 0,
            "total_commits": chain.len(),
            "commits": commits,
            "files": files,
        }),
    )
}

async fn commit(
    State(state): State<Arc<Public>>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    Query(paging): Query<Paging>,
) -> Response {
    if let Some(refused) = gate(&state).await {
        return refused;
    }
    let repo = format!("{owner}/{repo}");
    let w = state.world.lock().expect("world");
    let Some(c) = w.commits.get(&(repo.clone(), sha.clone())) else {
        return w.json(
            StatusCode::NOT_FOUND,
            json!({ "message": "No commit found for SHA" }),
        );
    };
    let empty = BTreeMap::new();
    let parent_tree = c
        .parent
        .as_ref()
        .and_then(|p| w.commits.get(&(repo.clone(), p.clone())))
        .map_or(&empty, |p| &p.tree);
    let files = w.files(&repo, &sha, parent_tree, &c.tree, !c.no_patch);
    let per_page = paging
        .per_page
        .unwrap_or(FILES_PER_DIFF)
        .clamp(1, FILES_PER_DIFF);
    let page = paging.page.unwrap_or(1).max(1);
    let files = files
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let body = w.commit_json(&repo, &sha, files);
    w.json(StatusCode::OK, body)
}

async fn blob(
    State(state): State<Arc<Public>>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
) -> Response {
    if let Some(refused) = gate(&state).await {
        return refused;
    }
    let w = state.world.lock().expect("world");
    let Some(bytes) = w.blobs.get(&sha) else {
        return w.json(StatusCode::NOT_FOUND, json!({ "message": "Not Found" }));
    };
    // GitHub wraps base64 content at 60 characters.
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let wrapped: Vec<&str> = encoded
        .as_bytes()
        .chunks(60)
        .map(|c| std::str::from_utf8(c).expect("base64 is ascii"))
        .collect();
    w.json(
        StatusCode::OK,
        json!({
            "sha": sha,
            "node_id": "B_fake",
            "size": bytes.len(),
            "url": format!("https://api.github.com/repos/{owner}/{repo}/git/blobs/{sha}"),
            "content": wrapped.join("\n") + "\n",
            "encoding": "base64",
        }),
    )
}

async fn push(State(state): State<Arc<Public>>, body: Bytes) -> Response {
    let request: PushRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let valid_repo = request
        .repo
        .split_once('/')
        .is_some_and(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'));
    if !valid_repo {
        return error(StatusCode::BAD_REQUEST, "repo: must be owner/name");
    }
    let mut w = state.world.lock().expect("world");
    let repo = request.repo;
    let before = w.heads.get(&repo).cloned();
    let mut tree = before
        .as_ref()
        .map(|b| w.commits[&(repo.clone(), b.clone())].tree.clone())
        .unwrap_or_default();
    for f in request.files {
        let content = match &f.content_base64 {
            Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(bytes) => bytes,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "files[].content_base64: not standard base64",
                    );
                }
            },
            None => f.content.into_bytes(),
        };
        let mut object = format!("blob {}\0", content.len()).into_bytes();
        object.extend_from_slice(&content);
        let blob_sha = hex::encode(sha1::Sha1::digest(&object));
        w.blobs.insert(blob_sha.clone(), content);
        tree.insert(f.path, blob_sha);
    }
    // A first push creates the branch: `before` is all zeros, and the base commit is empty.
    let base = match &before {
        Some(b) => b.clone(),
        None => {
            let root = w.sha(&repo);
            w.commits.insert(
                (repo.clone(), root.clone()),
                CommitData {
                    parent: None,
                    tree: BTreeMap::new(),
                    no_patch: false,
                    date: now_rfc3339(),
                },
            );
            root
        }
    };
    let head = w.sha(&repo);
    w.commits.insert(
        (repo.clone(), head.clone()),
        CommitData {
            parent: Some(base),
            tree,
            no_patch: request.no_patch,
            date: now_rfc3339(),
        },
    );
    w.heads.insert(repo.clone(), head.clone());
    let before = before.unwrap_or_else(|| ZERO_SHA.to_owned());
    let push_id = w.next_event_id;
    let repo_id = w.repo_ids.get(&repo).copied().unwrap_or(0);
    let event_id = w.event(
        "PushEvent",
        &repo,
        json!({
            "repository_id": repo_id,
            "push_id": push_id,
            "ref": "refs/heads/main",
            "head": head,
            "before": before,
        }),
    );
    let pushed_at_ms = crate::devtools::now_ms();
    let record = json!({
        "event_id": event_id, "repo": repo, "before": before, "head": head,
        "pushed_at_ms": pushed_at_ms,
    });
    w.stats.pushes.push(record.clone());
    axum::Json(record).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Noise {
    count: usize,
}

/// Other public activity (WatchEvents): enough of it between polls makes a gap.
async fn noise(State(state): State<Arc<Public>>, body: Bytes) -> Response {
    let noise: Noise = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let mut w = state.world.lock().expect("world");
    for i in 0..noise.count {
        w.event(
            "WatchEvent",
            &format!("noise/repo{}", i % 50),
            json!({ "action": "started" }),
        );
    }
    axum::Json(json!({ "added": noise.count })).into_response()
}

async fn set_faults(State(state): State<Arc<Public>>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let mut w = state.world.lock().expect("world");
    w.faults = faults;
    w.reset_at = Instant::now();
    w.retry_until = None;
    w.since_secondary = 0;
    StatusCode::NO_CONTENT.into_response()
}

async fn stats(State(state): State<Arc<Public>>) -> Response {
    let w = state.world.lock().expect("world");
    axum::Json(json!({
        "requests": w.stats.requests,
        "not_modified": w.stats.not_modified,
        "violations": w.stats.violations,
        "primary_refusals": w.stats.primary_refusals,
        "secondary_refusals": w.stats.secondary_refusals,
        "malformed_served": w.stats.malformed_served,
        "pushes": w.stats.pushes,
    }))
    .into_response()
}
