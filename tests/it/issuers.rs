//! Issuer drivers against fakes that speak the issuers' documented wire formats. GitHub's
//! Credential Revocation API: the fake (`spillway fake-github`) enforces 1 to 1,000 credentials a
//! call, refuses authenticated calls and answers over its hourly limit as GitHub's primary rate
//! limit does.

use std::time::Duration;

use spillway::devtools::fake_github;
use spillway::issuers::Outcome;
use spillway::issuers::github::{BatchOptions, Batcher, Client, hourly_budget};
use spillway::platform::outbound::{Outbound, Policy};
use spillway::scanner::TokenSecret;

fn outbound() -> Outbound {
    Outbound::new(
        Policy {
            allow_http: true,
            allow_private: true,
        },
        Duration::from_secs(5),
    )
    .unwrap()
}

fn token(i: usize) -> TokenSecret {
    // The API takes any string; the fake keeps only hashes.
    TokenSecret::new(format!("ghp_{i:036}"))
}

async fn fake(limit: usize) -> fake_github::Running {
    fake_github::start(&fake_github::Args {
        revocation_limit: limit,
        ..fake_github::Args::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_found_together_are_reported_a_thousand_a_call() {
    let github = fake(60).await;
    let batcher = Batcher::spawn(
        Client::new(outbound(), &github.api_url()),
        BatchOptions {
            linger: Duration::from_millis(300),
            ..BatchOptions::default()
        },
    );
    let tokens: Vec<TokenSecret> = (0..2_500).map(token).collect();
    let calls: Vec<_> = tokens
        .iter()
        .map(|t| {
            let (b, t) = (batcher.clone(), t.clone());
            tokio::spawn(async move { b.submit(t).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), Outcome::Accepted);
    }
    let received = github.revocation.received();
    assert_eq!(received.batches.iter().sum::<usize>(), 2_500);
    assert!(
        received.batches.iter().all(|&n| n <= 1_000),
        "{:?}",
        received.batches
    );
    assert!(received.batches.len() <= 3, "{:?}", received.batches);
    let mut sent: Vec<String> = tokens.iter().map(TokenSecret::sha256_hex).collect();
    let mut got = received.sha256.clone();
    sent.sort();
    got.sort();
    assert_eq!(sent, got, "every token reported once");
    assert_eq!(received.authenticated, 0, "Spillway never authenticates");
    github.shutdown().await;
}

/// Over the hourly budget a caller is told at once when to come back, and the API never sees a
/// call past its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hourly_limit_is_kept_and_callers_are_told_when_to_return() {
    let github = fake(6).await;
    let batcher = Batcher::spawn(
        Client::new(outbound(), &github.api_url()),
        BatchOptions {
            linger: Duration::from_millis(5),
            hourly_limit: 6,
            ..BatchOptions::default()
        },
    );
    let mut accepted = 0;
    let mut told = Vec::new();
    for i in 0..20 {
        let started = std::time::Instant::now();
        match batcher.submit(token(i)).await {
            Outcome::Accepted => accepted += 1,
            Outcome::RetryLater {
                retry_after: Some(wait),
                ..
            } => {
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "answered at once"
                );
                told.push(wait);
            }
            other => panic!("{other:?}"),
        }
    }
    // A burst of a sixth of the limit, the rest spread over the hour (10 minutes apart here).
    assert_eq!(accepted, 1);
    assert_eq!(told.len(), 19);
    assert!(
        told.iter()
            .all(|w| *w > Duration::from_secs(500) && *w <= Duration::from_secs(721)),
        "{told:?}"
    );
    let received = github.revocation.received();
    assert_eq!(received.batches.len(), 1);
    assert_eq!(received.rate_limited, 0, "never past the API's limit");
    github.shutdown().await;
}

/// GitHub's own rate-limit answer (403, `x-ratelimit-remaining: 0`, `x-ratelimit-reset`) is read
/// as "come back at the reset", not as a refusal.
#[tokio::test]
async fn githubs_rate_limit_answer_says_when_to_return() {
    let github = fake(1).await;
    let client = Client::new(outbound(), &github.api_url());
    assert_eq!(client.revoke(&[token(1)]).await, Outcome::Accepted);
    match client.revoke(&[token(2)]).await {
        Outcome::RetryLater {
            reason,
            retry_after: Some(wait),
        } => {
            assert!(
                reason.contains("403") && reason.contains("rate limited"),
                "{reason}"
            );
            assert!(
                wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600),
                "{wait:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(github.revocation.received().rate_limited, 1);
    github.shutdown().await;
}

/// After GitHub says to wait, the batcher calls nobody until then, whatever its own budget says.
#[tokio::test]
async fn once_github_says_wait_no_call_is_made_before() {
    let github = fake(1).await;
    let batcher = Batcher::spawn(
        Client::new(outbound(), &github.api_url()),
        BatchOptions {
            linger: Duration::from_millis(5),
            ..BatchOptions::default()
        },
    );
    assert_eq!(batcher.submit(token(1)).await, Outcome::Accepted);
    assert!(matches!(
        batcher.submit(token(2)).await,
        Outcome::RetryLater {
            retry_after: Some(_),
            ..
        }
    ));
    for i in 3..10 {
        match batcher.submit(token(i)).await {
            Outcome::RetryLater {
                reason,
                retry_after: Some(wait),
            } => {
                assert_eq!(reason, "GitHub asked to wait");
                assert!(wait > Duration::from_secs(3500), "{wait:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        github.revocation.received().rate_limited,
        1,
        "one refused call, no more"
    );
    github.shutdown().await;
}

/// The fake holds GitHub's rules (so the tests above could fail): more than 1,000 credentials or
/// an authenticated call are refused. The client refuses to build such a call at all.
#[tokio::test]
async fn batches_outside_githubs_rules_are_never_sent() {
    let github = fake(60).await;
    let url = format!("{}/credentials/revoke", github.api_url());
    let http = reqwest::Client::new();
    let many: Vec<String> = (0..1_001).map(|i| format!("ghp_{i:036}")).collect();
    let too_many = http
        .post(&url)
        .json(&serde_json::json!({ "credentials": many }))
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), 422);
    let body: serde_json::Value = too_many.json().await.unwrap();
    assert_eq!(body["message"], "Validation Failed");
    let authenticated = http
        .post(&url)
        .bearer_auth("ghp_caller")
        .json(&serde_json::json!({ "credentials": ["ghp_x"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(authenticated.status(), 403);

    let client = Client::new(outbound(), &github.api_url());
    let tokens: Vec<TokenSecret> = (0..1_001).map(token).collect();
    assert!(matches!(
        client.revoke(&tokens).await,
        Outcome::Refused { .. }
    ));
    assert!(matches!(client.revoke(&[]).await, Outcome::Refused { .. }));
    // Plain http to a loopback address is refused unless the operator allows it.
    let strict = Client::new(
        Outbound::new(Policy::default(), Duration::from_secs(5)).unwrap(),
        &github.api_url(),
    );
    match strict.revoke(&[token(1)]).await {
        Outcome::Refused { reason } => {
            assert!(reason.contains("issuers.github.base_url"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let received = github.revocation.received();
    assert_eq!(received.batches.len(), 0);
    assert_eq!((received.invalid, received.authenticated), (1, 1));
    github.shutdown().await;
}

/// An HTML page (a proxy's, a maintenance or sign-in page) is never the issuer's answer, whatever
/// its status: a 200 page is not "revoked" nor "live", a 401 page not "gone" nor "dead".
#[tokio::test]
async fn an_html_page_is_never_an_issuers_answer() {
    use axum::routing::get;
    let status = std::sync::Arc::new(std::sync::Mutex::new(200u16));
    let answer = status.clone();
    let page = move || {
        let code = *answer.lock().unwrap();
        async move {
            (
                axum::http::StatusCode::from_u16(code).unwrap(),
                [("content-type", "text/html; charset=utf-8")],
                "<html><body>Sign in</body></html>",
            )
        }
    };
    let app = axum::Router::new().route(
        "/api/v4/personal_access_tokens/self",
        get(page.clone()).delete(page),
    );
    let served = spillway::devtools::Served::bind("127.0.0.1:0", app)
        .await
        .unwrap();
    let base = format!("http://{}", served.addr);
    let gitlab = Spec::shipped()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "gitlab")
        .unwrap();
    let token = TokenSecret::new("glpat-live_token_00000000");
    for code in [200, 204, 401] {
        *status.lock().unwrap() = code;
        assert_eq!(
            gitlab.revoke(&outbound(), &base, &token).await,
            Outcome::RetryLater {
                reason: "answered an HTML page".into(),
                retry_after: None,
            },
            "{code}"
        );
        assert!(
            matches!(
                gitlab.whoami(&outbound(), &base, &token).await,
                Some(Liveness::Unknown { .. })
            ),
            "{code}"
        );
    }
}

/// A 422 ("validation failed, or the endpoint has been spammed") backs off for a minute; a huge
/// answer is read only up to the cap.
#[tokio::test]
async fn a_422_backs_off_and_answers_are_read_bounded() {
    use axum::routing::post;
    let huge = "x".repeat(8 << 20);
    let app = axum::Router::new().route(
        "/credentials/revoke",
        post(move || {
            let huge = huge.clone();
            async move { (axum::http::StatusCode::UNPROCESSABLE_ENTITY, huge) }
        }),
    );
    let served = spillway::devtools::Served::bind("127.0.0.1:0", app)
        .await
        .unwrap();
    let client = Client::new(outbound(), &format!("http://{}", served.addr));
    assert_eq!(
        client.revoke(&[token(1)]).await,
        Outcome::RetryLater {
            reason: "answered 422 (validation failed or spammed)".into(),
            retry_after: Some(Duration::from_secs(60)),
        }
    );
    served.shutdown().await;
}

/// In any hour the budget allows at most the limit: the burst, then one call per share of the hour.
#[test]
fn the_budget_allows_a_sixth_at_once_and_no_more() {
    for (limit, burst) in [(60, 10), (6, 1), (1, 1), (1_000, 166)] {
        let budget = hourly_budget(limit);
        let mut now = 0;
        while budget.check().is_ok() {
            now += 1;
            assert!(now <= limit, "more than the limit at once");
        }
        assert_eq!(now, burst, "limit {limit}");
    }
}

// --- Tokens that revoke themselves (patterns/issuers/) -------------------------------------------

use spillway::issuers::self_revoke::{Call, Liveness, Spec};

/// The request a published curl command makes: method, URL path, headers, basic user, body.
#[derive(Debug, Default)]
struct Curl {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    user: Option<String>,
    data: Option<String>,
}

fn parse_curl(command: &str) -> Curl {
    let words = shlex::split(&command.replace("\\\n", " ")).expect("a shell command");
    assert_eq!(words.first().map(String::as_str), Some("curl"), "{command}");
    let mut c = Curl::default();
    let mut method = None;
    let mut words = words.into_iter().skip(1);
    let url = |w: &str, c: &mut Curl| {
        let url = url::Url::parse(w).expect("a URL");
        c.path = url.path().to_owned();
    };
    while let Some(w) = words.next() {
        match w.as_str() {
            "-X" | "--request" => method = words.next(),
            "-H" | "--header" => {
                let h = words.next().expect("a header");
                let (name, value) = h.split_once(':').expect("name: value");
                c.headers
                    .push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
            "-u" | "--user" => c.user = words.next(),
            "-d" | "--data" | "--data-raw" | "--data-urlencode" | "--data-binary" | "-F"
            | "--form" => c.data = words.next(),
            "--url" => url(&words.next().expect("a URL"), &mut c),
            "-L" | "--location" | "-s" | "--silent" | "-i" | "-v" | "-f" | "--fail" => {}
            w if w.starts_with("http://") || w.starts_with("https://") => url(w, &mut c),
            w if w.starts_with('-') => {
                panic!("curl option {w} not understood in {command}")
            }
            _ => {}
        }
    }
    c.method = method.unwrap_or_else(|| if c.data.is_some() { "POST" } else { "GET" }.into());
    c
}

/// A regular expression for a declared template: its literal text, each placeholder (`{token}`,
/// `{id}`, `{token_path}`) a named group standing for any non-empty text.
fn template_regex(template: &str, anchored_start: bool) -> regex_automata::meta::Regex {
    let mut pattern = String::from(if anchored_start { "^" } else { "" });
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map(|c| open + c);
        let name = close.map(|c| &rest[open + 1..c]);
        match (close, name) {
            (Some(close), Some(name @ ("token" | "id" | "token_path"))) => {
                pattern.push_str(&regex_syntax::escape(&rest[..open]));
                pattern.push_str(&format!("(?P<{name}>.+?)"));
                rest = &rest[close + 1..];
            }
            _ => {
                pattern.push_str(&regex_syntax::escape(&rest[..=open]));
                rest = &rest[open + 1..];
            }
        }
    }
    pattern.push_str(&regex_syntax::escape(rest));
    pattern.push('$');
    regex_automata::meta::Regex::new(&pattern).expect("a template regex")
}

/// The named placeholders' values where `template` matches all of `text` (None: no match).
fn template_values(
    template: &str,
    text: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let re = template_regex(template, true);
    let mut caps = re.create_captures();
    re.captures(text, &mut caps);
    if !caps.is_match() {
        return None;
    }
    let mut values = std::collections::BTreeMap::new();
    for name in ["token", "id", "token_path"] {
        if let Some(span) = caps.get_group_by_name(name) {
            values.insert(name.to_owned(), text[span.start..span.end].to_owned());
        }
    }
    Some(values)
}

/// Whether a documented JSON body is the declared one: the same keys, and the same values except
/// where the declaration has a placeholder.
fn same_json(declared: &serde_json::Value, documented: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (declared, documented) {
        (Value::String(d), Value::String(_)) if d == "{token}" || d == "{id}" => true,
        (Value::Object(d), Value::Object(o)) => {
            d.len() == o.len()
                && d.iter()
                    .all(|(k, v)| o.get(k).is_some_and(|w| same_json(v, w)))
        }
        (d, o) => d == o,
    }
}

/// Every shipped issuer file parses, serves token types Spillway's rules report, and declares the
/// very request its issuer's documentation shows.
#[test]
fn every_issuer_declares_the_request_its_documentation_shows() {
    let specs = Spec::shipped().expect("issuer files parse and check");
    assert!(specs.len() >= 24, "{} issuer files", specs.len());
    let mut rules = spillway::scanner::rule::default_rules().unwrap();
    rules.extend(
        spillway::scanner::rule::load_rules_dir(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/patterns/extended"
        )))
        .unwrap(),
    );
    let types: std::collections::BTreeSet<&str> =
        rules.iter().map(|r| r.token_type.as_str()).collect();
    for spec in &specs {
        for t in &spec.token_types {
            assert!(
                types.contains(t.as_str()),
                "{}: no rule reports {t}",
                spec.name
            );
        }
        let doc = parse_curl(&spec.documented_request);
        let call = &spec.revoke;
        assert_eq!(doc.method, call.method, "{}: method", spec.name);
        assert!(
            template_regex(&call.path, true).is_match(&doc.path),
            "{}: documented path {} is not {}",
            spec.name,
            doc.path,
            call.path
        );
        if let Some(h) = &call.header {
            assert!(
                doc.headers
                    .iter()
                    .any(|(name, _)| *name == h.name.to_ascii_lowercase()),
                "{}: the documentation sends no {} header",
                spec.name,
                h.name
            );
            if let Some((prefix, _)) = h.value.split_once("{token}") {
                let documented = doc
                    .headers
                    .iter()
                    .find(|(name, _)| *name == h.name.to_ascii_lowercase())
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_default();
                assert!(
                    documented.starts_with(prefix),
                    "{}: documented {documented:?}, declared {:?}",
                    spec.name,
                    h.value
                );
            }
        }
        if call.basic.is_some() {
            assert!(
                doc.user.is_some(),
                "{}: the documentation uses no -u",
                spec.name
            );
        }
        if let Some(body) = &call.body {
            let documented = doc.data.clone().unwrap_or_default();
            let same = if call.content_type.as_deref() == Some("application/json") {
                let declared: serde_json::Value = serde_json::from_str(body).unwrap();
                serde_json::from_str(&documented).is_ok_and(|d| same_json(&declared, &d))
            } else {
                template_values(body, &documented).is_some()
            };
            assert!(
                same,
                "{}: documented body {documented:?}, declared {body:?}",
                spec.name
            );
        }
        // Documented answers are for statuses the call reads, or the documented failures.
        for c in [Some(call), spec.lookup.as_ref(), spec.whoami.as_ref()]
            .into_iter()
            .flatten()
        {
            for status in 100..600 {
                if let Some(body) = c.documented_answer(status)
                    && body.starts_with('{')
                {
                    serde_json::from_str::<serde_json::Value>(body)
                        .unwrap_or_else(|e| panic!("{}: answer {status}: {e}", spec.name));
                }
            }
        }
    }
}

/// The id the generic fake's lookup answers carry (when the issuer documents no example).
const FAKE_ID: &str = "tok_5b1e0c2a9d";

/// A live token for `spec`: a plain string, or for a URL credential a URL of the declared form.
fn live_token(spec: &Spec) -> String {
    match &spec.url_token {
        Some(_) => format!(
            "https://discord.com/api/webhooks/123456789012345678/{}",
            "Ab3_-".repeat(14)
        ),
        None => format!("{}_live_token_8f3a2c", spec.name),
    }
}

/// Where `call` puts the token (and the id, if it takes one), read back from a request the fake
/// received: every carrier the spec declares must hold the token, and the same one.
fn sent_by(
    call: &Call,
    path: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> (Option<String>, Option<String>) {
    let mut found: Vec<Option<String>> = Vec::new();
    let mut id = None;
    let path_values = template_values(&call.path, path).unwrap_or_default();
    if let Some(p) = path_values.get("token_path") {
        found.push(Some(p.clone()));
    }
    if let Some(i) = path_values.get("id") {
        id = Some(i.clone());
    }
    if let Some(h) = call.header.as_ref().filter(|h| h.value.contains("{token}")) {
        let (prefix, suffix) = h.value.split_once("{token}").unwrap();
        found.push(
            headers
                .get(h.name.as_str())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix(prefix)?.strip_suffix(suffix))
                .map(str::to_owned),
        );
    }
    if let Some(b) = &call.basic {
        use base64::Engine as _;
        let pair = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .and_then(|d| String::from_utf8(d).ok());
        found.push(pair.and_then(|p| {
            let (user, password) = p.split_once(':')?;
            Some(
                if b.user.contains("{token}") {
                    user
                } else {
                    password
                }
                .to_owned(),
            )
        }));
    }
    if let Some(template) = &call.body {
        let text = std::str::from_utf8(body).unwrap_or_default();
        let values = template_values(template, text).unwrap_or_default();
        let form = call.content_type.as_deref() == Some("application/x-www-form-urlencoded");
        let decode = |v: &String| {
            if form {
                url::form_urlencoded::parse(format!("v={v}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            } else {
                v.clone()
            }
        };
        if template.contains("{token}") {
            found.push(values.get("token").map(decode));
        }
        if let Some(i) = values.get("id") {
            id = Some(decode(i));
        }
    }
    let token = found
        .first()
        .cloned()
        .flatten()
        .filter(|first| found.iter().all(|f| f.as_deref() == Some(first.as_str())));
    (token, id)
}

/// The answer a documented "revoked" looks like, for `ok_json`.
fn revoked_body(call: &Call) -> String {
    if let Some(body) = call.documented_answer(call.revoked[0]) {
        return body.to_owned();
    }
    match &call.ok_json {
        // {"ok": true, <pointer>: true}, built from the pointer's segments.
        Some(pointer) => {
            let mut value = serde_json::Value::Bool(true);
            for part in pointer.trim_start_matches('/').split('/').rev() {
                value = serde_json::json!({ part: value });
            }
            if let Some(map) = value.as_object_mut() {
                map.entry("ok").or_insert(serde_json::Value::Bool(true));
            }
            value.to_string()
        }
        None => String::new(),
    }
}

/// The lookup's "live" answer and the id it carries: the issuer's documented example if there is
/// one, else a body holding [`FAKE_ID`] at the declared pointer.
fn lookup_answer(lookup: &Call) -> (String, String) {
    let pointer = lookup.id.clone().unwrap();
    if let Some(body) = lookup.documented_answer(lookup.live[0]) {
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        let id = value
            .pointer(&pointer)
            .and_then(|v| v.as_str().map(str::to_owned).or(Some(v.to_string())))
            .expect("the documented answer carries the id");
        return (body.to_owned(), id);
    }
    let mut value = serde_json::Value::String(FAKE_ID.into());
    for part in pointer.trim_start_matches('/').split('/').rev() {
        value = serde_json::json!({ part: value });
    }
    (value.to_string(), FAKE_ID.to_owned())
}

/// What the generic fake received, by call.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    pub(crate) lookups: usize,
    pub(crate) revokes: usize,
    pub(crate) whoamis: usize,
    pub(crate) wrong_ids: usize,
}

/// A fake of `spec`'s issuer built from the spec alone: it answers each declared call as the
/// issuer documents (statuses, and the documented bodies where the file gives them), knows one
/// live token until it is revoked, hands out its id on lookup and insists on that id in the
/// revoke.
pub(crate) async fn generic_fake(
    spec: &Spec,
    live: &str,
) -> (
    spillway::devtools::Served,
    std::sync::Arc<std::sync::Mutex<Seen>>,
) {
    use std::sync::{Arc, Mutex};
    let revoked: Arc<Mutex<bool>> = Arc::default();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let s = spec.clone();
    // What identifies the live token on the wire: for a URL credential, its path.
    let live_wire = match &spec.url_token {
        // The path the calls carry: what follows the API base in the URL.
        Some(_) => live.split_once(".com/api").unwrap().1.to_owned(),
        None => live.to_owned(),
    };
    let (live2, revoked2, seen2) = (live_wire, revoked.clone(), seen.clone());
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method,
              uri: axum::http::Uri,
              headers: axum::http::HeaderMap,
              body: axum::body::Bytes| {
            let (s, live, revoked, seen) =
                (s.clone(), live2.clone(), revoked2.clone(), seen2.clone());
            async move {
                let status = |code: u16| axum::http::StatusCode::from_u16(code).unwrap();
                let answer = |call: &Call, code: u16, fallback: String| {
                    let body = call
                        .documented_answer(code)
                        .map(str::to_owned)
                        .unwrap_or(fallback);
                    (status(code), body)
                };
                let calls = [
                    ("lookup", s.lookup.as_ref()),
                    ("revoke", Some(&s.revoke)),
                    ("whoami", s.whoami.as_ref()),
                ];
                for (kind, call) in calls {
                    let Some(call) = call else { continue };
                    if method.as_str() != call.method
                        || template_values(&call.path, uri.path()).is_none()
                    {
                        continue;
                    }
                    let (sent, id) = sent_by(call, uri.path(), &headers, &body);
                    let valid = sent.as_deref() == Some(live.as_str()) && !*revoked.lock().unwrap();
                    let dead = |c: &Call, fallback: &[u16]| {
                        *c.dead.first().or(fallback.first()).unwrap_or(&401)
                    };
                    return match (kind, valid) {
                        ("lookup", true) => {
                            seen.lock().unwrap().lookups += 1;
                            let (body, _) = lookup_answer(call);
                            (status(call.live[0]), body)
                        }
                        ("lookup", false) => {
                            seen.lock().unwrap().lookups += 1;
                            answer(call, dead(call, &[]), String::new())
                        }
                        ("revoke", true) => {
                            seen.lock().unwrap().revokes += 1;
                            let expected = s.lookup.as_ref().map(|l| lookup_answer(l).1);
                            if id != expected {
                                seen.lock().unwrap().wrong_ids += 1;
                                return (status(404), "no such token id".to_owned());
                            }
                            *revoked.lock().unwrap() = true;
                            (status(call.revoked[0]), revoked_body(call))
                        }
                        ("revoke", false) => {
                            seen.lock().unwrap().revokes += 1;
                            answer(call, *call.gone.first().unwrap_or(&401), String::new())
                        }
                        (_, true) => {
                            seen.lock().unwrap().whoamis += 1;
                            (status(call.live[0]), String::new())
                        }
                        (_, false) => {
                            seen.lock().unwrap().whoamis += 1;
                            answer(call, dead(call, &[]), String::new())
                        }
                    };
                }
                (axum::http::StatusCode::NOT_FOUND, "no such call".to_owned())
            }
        },
    );
    let served = spillway::devtools::Served::bind("127.0.0.1:0", app)
        .await
        .unwrap();
    (served, seen)
}

/// Every issuer's driver, against a fake built from its spec that answers as the issuer documents:
/// the live token is looked up (where the revoke needs its id), revoked, then gone; "who am I"
/// says live, then dead; a refused target is named by the issuer's setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_issuer_driver_sends_the_token_where_declared_and_reads_the_answers() {
    for spec in Spec::shipped().unwrap() {
        let live = live_token(&spec);
        let (served, seen) = generic_fake(&spec, &live).await;
        let base = format!("http://{}", served.addr);
        let out = outbound();
        let token = TokenSecret::new(live.clone());
        if spec.whoami.is_some() {
            assert_eq!(
                spec.whoami(&out, &base, &token).await,
                Some(Liveness::Live),
                "{}",
                spec.name
            );
        }
        assert_eq!(
            spec.revoke(&out, &base, &token).await,
            Outcome::Accepted,
            "{}",
            spec.name
        );
        let after = seen.lock().unwrap().clone();
        assert_eq!(
            after.wrong_ids, 0,
            "{}: the revoke named the looked-up id",
            spec.name
        );
        assert_eq!(after.revokes, 1, "{}", spec.name);
        // A lookup and a "who am I" may be the same request (LaunchDarkly, Twitch).
        assert_eq!(
            after.lookups + after.whoamis,
            usize::from(spec.lookup.is_some()) + usize::from(spec.whoami.is_some()),
            "{}",
            spec.name
        );
        // Once revoked: the lookup says dead (nothing left to revoke) or the revoke says gone.
        let lookup_knows_dead = spec.lookup.as_ref().is_some_and(|l| !l.dead.is_empty());
        if lookup_knows_dead || (spec.lookup.is_none() && !spec.revoke.gone.is_empty()) {
            assert_eq!(
                spec.revoke(&out, &base, &token).await,
                Outcome::Gone,
                "{}: again",
                spec.name
            );
        }
        if lookup_knows_dead {
            assert_eq!(
                seen.lock().unwrap().revokes,
                1,
                "{}: no second revoke",
                spec.name
            );
        }
        if spec.whoami.as_ref().is_some_and(|w| !w.dead.is_empty()) {
            assert_eq!(
                spec.whoami(&out, &base, &token).await,
                Some(Liveness::Dead),
                "{}",
                spec.name
            );
        }
        // A refused target is named by the issuer's setting.
        let strict = Outbound::new(Policy::default(), Duration::from_secs(5)).unwrap();
        match spec.revoke(&strict, &base, &token).await {
            Outcome::Refused { reason } => {
                assert!(
                    reason.contains(&format!("issuers.{}.base_url", spec.name)),
                    "{reason}"
                )
            }
            other => panic!("{}: {other:?}", spec.name),
        }
        served.shutdown().await;
    }
}

/// A spec that would put the token in a URL, or nowhere, is refused by field; so are an `{id}`
/// with no lookup to yield it, a lookup whose id nothing uses, and a body in an encoding the
/// driver cannot fill safely.
#[test]
fn an_issuer_file_that_misplaces_the_token_is_refused() {
    let file = |revoke: &str| {
        format!(
            "[issuer]\nname = \"x\"\ndescription = \"d\"\nsource = \"https://example.com\"\n\
             token_types = [\"t\"]\nbase_url = \"https://example.com\"\ndocumented_request = \"curl\"\n\
             [issuer.revoke]\n{revoke}\nrevoked = [204]\n"
        )
    };
    let in_url = Spec::parse(
        "x.toml",
        &file("method = \"POST\"\npath = \"/revoke?token={token}\""),
    )
    .unwrap_err();
    assert!(
        in_url.contains("issuer.revoke.path") && in_url.contains("URL"),
        "{in_url}"
    );
    let nowhere =
        Spec::parse("x.toml", &file("method = \"POST\"\npath = \"/revoke\"")).unwrap_err();
    assert!(
        nowhere.contains("a header, basic or the body must carry"),
        "{nowhere}"
    );
    let named = Spec::parse(
        "y.toml",
        &file("method = \"POST\"\npath = \"/r\"\nheader = { name = \"A\", value = \"{token}\" }"),
    )
    .unwrap_err();
    assert!(named.contains("issuer.name must be \"y\""), "{named}");
    // A JSON placeholder outside a string would let a token shape the body.
    let bare = Spec::parse(
        "x.toml",
        &file(
            "method = \"POST\"\npath = \"/r\"\nbody = '{\"t\": {token}}'\ncontent_type = \"application/json\"",
        ),
    )
    .unwrap_err();
    assert!(bare.contains("issuer.revoke.body: not JSON"), "{bare}");
    Spec::parse(
        "x.toml",
        &file(
            "method = \"POST\"\npath = \"/r\"\nbody = '{\"t\": \"{token}\"}'\ncontent_type = \"application/json\"",
        ),
    )
    .expect("a placeholder inside a string");
    let bearer = "header = { name = \"A\", value = \"{token}\" }";
    let no_lookup = Spec::parse(
        "x.toml",
        &file(&format!(
            "method = \"DELETE\"\npath = \"/tokens/{{id}}\"\n{bearer}"
        )),
    )
    .unwrap_err();
    assert!(no_lookup.contains("needs an issuer.lookup"), "{no_lookup}");
    let unused = Spec::parse(
        "x.toml",
        &format!(
            "{}[issuer.lookup]\nmethod = \"GET\"\npath = \"/me\"\n{bearer}\nlive = [200]\nid = \"/id\"\n",
            file(&format!("method = \"DELETE\"\npath = \"/tokens/self\"\n{bearer}"))
        ),
    )
    .unwrap_err();
    assert!(unused.contains("does not use the {id}"), "{unused}");
    let no_pointer = Spec::parse(
        "x.toml",
        &format!(
            "{}[issuer.lookup]\nmethod = \"GET\"\npath = \"/me\"\n{bearer}\nlive = [200]\n",
            file(&format!(
                "method = \"DELETE\"\npath = \"/tokens/{{id}}\"\n{bearer}"
            ))
        ),
    )
    .unwrap_err();
    assert!(
        no_pointer.contains("issuer.lookup.id must be a JSON pointer"),
        "{no_pointer}"
    );
    let in_header = Spec::parse(
        "x.toml",
        &format!(
            "{}[issuer.lookup]\nmethod = \"GET\"\npath = \"/me\"\n{bearer}\nlive = [200]\nid = \"/id\"\n",
            file("method = \"DELETE\"\npath = \"/tokens/{id}\"\nheader = { name = \"A\", value = \"{token} {id}\" }")
        ),
    )
    .unwrap_err();
    assert!(
        in_header.contains("goes in the path or the body only"),
        "{in_header}"
    );
    let xml = Spec::parse(
        "x.toml",
        &file("method = \"POST\"\npath = \"/r\"\nbody = \"<t>{token}</t>\"\ncontent_type = \"text/xml\""),
    )
    .unwrap_err();
    assert!(xml.contains("issuer.revoke.content_type"), "{xml}");
    let url_path = Spec::parse(
        "x.toml",
        &file("method = \"DELETE\"\npath = \"/hooks{token_path}\""),
    )
    .unwrap_err();
    assert!(url_path.contains("issuer.url_token"), "{url_path}");
}

/// A two-step issuer (the revoke names the token by an id a lookup call yields), against a fake
/// whose lookup answer the test sets: every way the lookup can fail ends without a revoke call.
#[tokio::test]
async fn a_two_step_revoke_sends_the_looked_up_id_and_nothing_without_it() {
    use std::sync::{Arc, Mutex};
    let spec = Spec::parse(
        "acme.toml",
        r#"[issuer]
name = "acme"
description = "d"
source = "https://example.com"
token_types = ["t"]
base_url = "https://example.com"
documented_request = "curl"
[issuer.lookup]
method = "GET"
path = "/user/tokens/verify"
header = { name = "Authorization", value = "Bearer {token}" }
live = [200]
dead = [401]
id = "/result/id"
[issuer.revoke]
method = "DELETE"
path = "/user/tokens/{id}"
header = { name = "Authorization", value = "Bearer {token}" }
revoked = [200]
gone = [404]
ok_json = "/success"
"#,
    )
    .unwrap();
    #[derive(Default)]
    struct State {
        lookup: (u16, String, Option<u64>),
        revoke: (u16, String),
        revoked_paths: Vec<String>,
        authorizations: Vec<String>,
    }
    let state: Arc<Mutex<State>> = Arc::default();
    let s = state.clone();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method, uri: axum::http::Uri, headers: axum::http::HeaderMap| {
            let s = s.clone();
            async move {
                let mut st = s.lock().unwrap();
                if let Some(a) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
                    st.authorizations.push(a.to_owned());
                }
                let mut response_headers = axum::http::HeaderMap::new();
                let (code, body) = if uri.path() == "/user/tokens/verify" && method == "GET" {
                    if let Some(secs) = st.lookup.2 {
                        response_headers.insert("retry-after", secs.into());
                    }
                    (st.lookup.0, st.lookup.1.clone())
                } else if method == "DELETE" {
                    st.revoked_paths.push(uri.path().to_owned());
                    st.revoke.clone()
                } else {
                    (404, String::new())
                };
                (
                    axum::http::StatusCode::from_u16(code).unwrap(),
                    response_headers,
                    body,
                )
            }
        },
    );
    let served = spillway::devtools::Served::bind("127.0.0.1:0", app)
        .await
        .unwrap();
    let base = format!("http://{}", served.addr);
    let out = outbound();
    let token = TokenSecret::new("acme_live_token_77");
    let set = |lookup: (u16, &str, Option<u64>), revoke: (u16, &str)| {
        let mut st = state.lock().unwrap();
        st.lookup = (lookup.0, lookup.1.to_owned(), lookup.2);
        st.revoke = (revoke.0, revoke.1.to_owned());
    };
    let ok = (200, r#"{"success":true,"result":{"id":"x"}}"#);
    /// (status, body, Retry-After seconds) of the lookup's answer.
    type Lookup<'a> = (u16, &'a str, Option<u64>);
    let cases: Vec<(Lookup, Outcome)> = vec![
        // The token is dead: nothing to revoke.
        ((401, r#"{"success":false}"#, None), Outcome::Gone),
        (
            (500, "", None),
            Outcome::RetryLater {
                reason: "lookup answered 500".into(),
                retry_after: None,
            },
        ),
        (
            (429, "", Some(7)),
            Outcome::RetryLater {
                reason: "lookup answered 429".into(),
                retry_after: Some(Duration::from_secs(7)),
            },
        ),
        (
            (200, r#"{"success":true,"result":{}}"#, None),
            Outcome::RetryLater {
                reason: "lookup answered 200 without an id at /result/id".into(),
                retry_after: None,
            },
        ),
        (
            (200, "<html>not json</html>", None),
            Outcome::RetryLater {
                reason: "lookup answered 200 without an id at /result/id".into(),
                retry_after: None,
            },
        ),
        (
            (200, r#"{"result":{"id":"../../accounts/1"}}"#, None),
            Outcome::RetryLater {
                reason:
                    "lookup answered 200 with an id at /result/id that is not a plain path segment"
                        .into(),
                retry_after: None,
            },
        ),
    ];
    for (lookup, expected) in cases {
        set(lookup, ok);
        assert_eq!(
            spec.revoke(&out, &base, &token).await,
            expected,
            "{lookup:?}"
        );
        assert!(
            state.lock().unwrap().revoked_paths.is_empty(),
            "{lookup:?}: no revoke without an id"
        );
    }
    // The id found goes into the revoke's path; the answer is read as documented.
    set((200, r#"{"result":{"id":"ed1757438685"}}"#, None), ok);
    assert_eq!(spec.revoke(&out, &base, &token).await, Outcome::Accepted);
    set(
        (200, r#"{"result":{"id":"ed1757438685"}}"#, None),
        (200, r#"{"success":false}"#),
    );
    assert!(matches!(
        spec.revoke(&out, &base, &token).await,
        Outcome::RetryLater { .. }
    ));
    set((200, r#"{"result":{"id":12345}}"#, None), (404, ""));
    assert_eq!(spec.revoke(&out, &base, &token).await, Outcome::Gone);
    let (revoked_paths, authorizations) = {
        let st = state.lock().unwrap();
        (st.revoked_paths.clone(), st.authorizations.clone())
    };
    assert_eq!(
        revoked_paths,
        [
            "/user/tokens/ed1757438685",
            "/user/tokens/ed1757438685",
            "/user/tokens/12345"
        ]
    );
    assert!(
        authorizations
            .iter()
            .all(|a| a == "Bearer acme_live_token_77"),
        "every call authenticated with the token itself"
    );
    served.shutdown().await;
}

/// Bodies are filled for their content type: a token or id with characters that mean something
/// there cannot change the request's shape.
#[tokio::test]
async fn values_are_encoded_for_the_body_they_go_into() {
    use std::sync::{Arc, Mutex};
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let b = bodies.clone();
    let app = axum::Router::new().fallback(move |body: String| {
        let b = b.clone();
        async move {
            b.lock().unwrap().push(body);
            axum::http::StatusCode::OK
        }
    });
    let served = spillway::devtools::Served::bind("127.0.0.1:0", app)
        .await
        .unwrap();
    let base = format!("http://{}", served.addr);
    let spec = |body: &str, content_type: &str| {
        Spec::parse(
            "x.toml",
            &format!(
                "[issuer]\nname = \"x\"\ndescription = \"d\"\nsource = \"s\"\ntoken_types = [\"t\"]\n\
                 base_url = \"b\"\ndocumented_request = \"curl\"\n[issuer.revoke]\nmethod = \"POST\"\n\
                 path = \"/r\"\nbody = '{body}'\ncontent_type = \"{content_type}\"\nrevoked = [200]\n"
            ),
        )
        .unwrap()
    };
    let token = TokenSecret::new("a&b=c+d\"}\\");
    let out = outbound();
    let form = spec("token={token}", "application/x-www-form-urlencoded");
    assert_eq!(form.revoke(&out, &base, &token).await, Outcome::Accepted);
    let json = spec(r#"{"token":"{token}"}"#, "application/json");
    assert_eq!(json.revoke(&out, &base, &token).await, Outcome::Accepted);
    let got = bodies.lock().unwrap().clone();
    let parsed: Vec<(String, String)> = url::form_urlencoded::parse(got[0].as_bytes())
        .into_owned()
        .collect();
    assert_eq!(parsed, [("token".to_owned(), "a&b=c+d\"}\\".to_owned())]);
    let value: serde_json::Value = serde_json::from_str(&got[1]).unwrap();
    assert_eq!(value, serde_json::json!({ "token": "a&b=c+d\"}\\" }));
    served.shutdown().await;
}

/// A URL that is the credential (a Discord webhook URL): the calls go to the issuer's base URL
/// with the URL's own path, only for a URL of the declared form, and no outcome, reason or
/// liveness answer ever holds any part of it.
#[tokio::test]
async fn a_url_credential_is_sent_only_to_the_issuer_and_never_echoed() {
    use std::sync::{Arc, Mutex};
    let spec = Spec::shipped()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "discord")
        .unwrap();
    let secret = "Zk9_-".repeat(14);
    let paths: Arc<Mutex<Vec<String>>> = Arc::default();
    let status: Arc<Mutex<u16>> = Arc::new(Mutex::new(204));
    let (p, st) = (paths.clone(), status.clone());
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let (p, st) = (p.clone(), st.clone());
        async move {
            p.lock().unwrap().push(uri.path().to_owned());
            let code = *st.lock().unwrap();
            (
                axum::http::StatusCode::from_u16(code).unwrap(),
                r#"{"message": "Unknown Webhook", "code": 10015}"#,
            )
        }
    });
    let served = spillway::devtools::Served::bind("127.0.0.1:0", app)
        .await
        .unwrap();
    let base = format!("http://{}", served.addr);
    let out = outbound();
    let never_echoed = |text: &str| {
        assert!(!text.contains(&secret) && !text.contains("Zk9_"), "{text}");
    };
    let show = |o: &Outcome| format!("{o:?}");
    for url in [
        format!("https://discord.com/api/webhooks/123456789012345678/{secret}"),
        format!("https://ptb.discord.com/api/v10/webhooks/123456789012345678/{secret}"),
        format!("https://discordapp.com/api/v9/webhooks/123456789012345678/{secret}"),
    ] {
        *status.lock().unwrap() = 204;
        let token = TokenSecret::new(url.clone());
        assert_eq!(
            spec.revoke(&out, &base, &token).await,
            Outcome::Accepted,
            "{url}"
        );
        // Answers that are not "revoked" and failures of every kind say nothing of the URL.
        for code in [500, 429, 403] {
            *status.lock().unwrap() = code;
            never_echoed(&show(&spec.revoke(&out, &base, &token).await));
            never_echoed(&format!("{:?}", spec.whoami(&out, &base, &token).await));
        }
        *status.lock().unwrap() = 404;
        assert_eq!(spec.revoke(&out, &base, &token).await, Outcome::Gone);
        let strict = Outbound::new(Policy::default(), Duration::from_secs(5)).unwrap();
        never_echoed(&show(&spec.revoke(&strict, &base, &token).await));
        never_echoed(&show(
            &spec.revoke(&out, "http://127.0.0.1:9", &token).await,
        ));
    }
    let expected = format!("/api/v10/webhooks/123456789012345678/{secret}");
    assert!(
        paths.lock().unwrap().iter().all(|p| *p == expected),
        "every call went to the base URL with the webhook's path: {:?}",
        paths.lock().unwrap()
    );
    // Not a webhook URL of the declared form: refused before any call, naming none of it.
    let sent = paths.lock().unwrap().len();
    for bad in [
        format!("https://evil.example/api/webhooks/123456789012345678/{secret}"),
        format!("https://discord.com/api/webhooks/123456789012345678/{secret}/../../users/@me"),
        format!("https://discord.com.evil.example/api/webhooks/123456789012345678/{secret}"),
        format!("https://discord.com/api/webhooks/12/{secret}"),
        secret.clone(),
    ] {
        let token = TokenSecret::new(bad);
        match spec.revoke(&out, &base, &token).await {
            Outcome::Refused { reason } => {
                never_echoed(&reason);
                assert!(reason.contains("issuers.discord"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            spec.whoami(&out, &base, &token).await,
            Some(Liveness::Refused { .. })
        ));
    }
    assert_eq!(
        paths.lock().unwrap().len(),
        sent,
        "no call for a URL of another form"
    );
    served.shutdown().await;
}

/// Through the engine: an enabled issuer with a "who am I" call checks liveness first, as an
/// installation with a verify URL does. A dead token ends `unknown_token`, audited, with no revoke call;
/// a live one is revoked.
#[tokio::test]
async fn an_issuers_who_am_i_is_the_findings_verify_step() {
    use crate::common::revocation::Rig;
    let spec = Spec::shipped()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "gitlab")
        .unwrap();
    let glpat = |seed: &str| {
        use sha2::Digest as _;
        let digest = hex::encode(sha2::Sha256::digest(seed.as_bytes()));
        format!("glpat-{}", &digest[..20])
    };
    let (live, dead) = (glpat("live"), glpat("dead"));
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let (fake, seen) = generic_fake(&spec, &live).await;
        let base = format!("http://{}", fake.addr);
        let rig = Rig::start(
            &url,
            |_| {},
            |s| {
                s.issuers.insert(
                    "gitlab".into(),
                    spillway::platform::config::IssuerSettings {
                        enabled: Some(true),
                        base_url: Some(base.clone()),
                        ..Default::default()
                    },
                );
            },
            |_| {},
        )
        .await;
        let alert = |token: &str| {
            serde_json::json!({
                "token": token,
                "type": "gitlab_access_token",
                "url": "https://github.com/acme/site/blob/main/.env",
                "source": "content",
            })
        };
        let (status, body) = rig
            .alert(&serde_json::json!([alert(&live), alert(&dead)]))
            .await;
        assert!(status.is_success(), "{backend}: {status} {body}");
        let findings = rig.settled(2, Duration::from_secs(20)).await;
        let mut states: Vec<(String, String)> = findings
            .iter()
            .map(|f| {
                assert_eq!(
                    f.installation_id.as_deref(),
                    Some("issuer:gitlab"),
                    "{backend}"
                );
                (f.state.clone(), f.attribution.clone())
            })
            .collect();
        states.sort();
        assert_eq!(
            states,
            [
                ("revoked".to_owned(), "issuer".to_owned()),
                ("unknown_token".to_owned(), "issuer".to_owned())
            ],
            "{backend}: {findings:#?}"
        );
        let calls = seen.lock().unwrap().clone();
        assert_eq!(
            (calls.whoamis, calls.revokes),
            (2, 1),
            "{backend}: both checked, only the live one revoked"
        );
        let mut exported = Vec::new();
        spillway::platform::audit::export_jsonl(&rig.server.state.store, &mut exported)
            .await
            .unwrap();
        let text = String::from_utf8(exported).unwrap();
        assert!(text.contains("finding.unknown_token"), "{backend}: {text}");
        assert!(!text.contains(&live) && !text.contains(&dead), "{backend}");
        rig.stop().await;
        fake.shutdown().await;
    }
}
