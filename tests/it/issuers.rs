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
            "-d" | "--data" | "--data-raw" | "--data-urlencode" | "--data-binary" => {
                c.data = words.next()
            }
            "-L" | "--location" | "-s" | "--silent" | "-i" | "-v" | "-f" | "--fail" => {}
            w if w.starts_with("http://") || w.starts_with("https://") => {
                let url = url::Url::parse(w).expect("a URL");
                c.path = url.path().to_owned();
            }
            w if w.starts_with('-') => {
                panic!("curl option {w} not understood in {command}")
            }
            _ => {}
        }
    }
    c.method = method.unwrap_or_else(|| if c.data.is_some() { "POST" } else { "GET" }.into());
    c
}

/// Every shipped issuer file parses, serves token types Spillway's rules report, and declares the
/// very request its issuer's documentation shows.
#[test]
fn every_issuer_declares_the_request_its_documentation_shows() {
    let specs = Spec::shipped().expect("issuer files parse and check");
    assert!(!specs.is_empty());
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
            doc.path.ends_with(&call.path),
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
            let (before, _) = body.split_once("{token}").unwrap_or((body, ""));
            assert!(
                documented.starts_with(before),
                "{}: documented body {documented:?}, declared {body:?}",
                spec.name
            );
        }
    }
}

/// Where `call` puts the token, read back from a request the fake received: every carrier the
/// spec declares must hold it, and the same one.
fn token_in(call: &Call, headers: &axum::http::HeaderMap, body: &[u8]) -> Option<String> {
    let mut found: Vec<Option<String>> = Vec::new();
    if let Some(h) = call.header.as_ref().filter(|h| h.value.contains("{token}")) {
        let (prefix, suffix) = h.value.split_once("{token}")?;
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
    if let Some(template) = call.body.as_ref().filter(|b| b.contains("{token}")) {
        let (before, after) = template.split_once("{token}")?;
        found.push(
            std::str::from_utf8(body)
                .ok()
                .and_then(|t| t.strip_prefix(before)?.strip_suffix(after))
                .map(str::to_owned),
        );
    }
    let first = found.first()?.clone()?;
    found
        .iter()
        .all(|f| f.as_deref() == Some(first.as_str()))
        .then_some(first)
}

/// The answer a documented "revoked" looks like, for `ok_json`.
fn revoked_body(call: &Call) -> String {
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

/// Every issuer's driver, against a fake that answers as the issuer documents: the live token is
/// revoked (then gone), a wrong token is gone, and "who am I" says live, then dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_issuer_driver_sends_the_token_where_declared_and_reads_the_answers() {
    use std::sync::{Arc, Mutex};
    for spec in Spec::shipped().unwrap() {
        let live = format!("{}_live_token_8f3a2c", spec.name);
        let revoked: Arc<Mutex<bool>> = Arc::default();
        let s = spec.clone();
        let (live2, revoked2) = (live.clone(), revoked.clone());
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method,
                  uri: axum::http::Uri,
                  headers: axum::http::HeaderMap,
                  body: axum::body::Bytes| {
                let (s, live, revoked) = (s.clone(), live2.clone(), revoked2.clone());
                async move {
                    let status = |code: u16| axum::http::StatusCode::from_u16(code).unwrap();
                    for (call, is_revoke) in [(Some(&s.revoke), true), (s.whoami.as_ref(), false)] {
                        let Some(call) = call else { continue };
                        if method.as_str() != call.method || uri.path() != call.path {
                            continue;
                        }
                        let sent = token_in(call, &headers, &body);
                        let valid =
                            sent.as_deref() == Some(live.as_str()) && !*revoked.lock().unwrap();
                        return match (is_revoke, valid) {
                            (true, true) => {
                                *revoked.lock().unwrap() = true;
                                (status(call.revoked[0]), revoked_body(call))
                            }
                            (true, false) => {
                                (status(*call.gone.first().unwrap_or(&401)), String::new())
                            }
                            (false, true) => (status(call.live[0]), String::new()),
                            (false, false) => {
                                (status(*call.dead.first().unwrap_or(&401)), String::new())
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
        if !spec.revoke.gone.is_empty() {
            assert_eq!(
                spec.revoke(&out, &base, &token).await,
                Outcome::Gone,
                "{}: again",
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

/// A spec that would put the token in a URL, or nowhere, is refused by field.
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
}
