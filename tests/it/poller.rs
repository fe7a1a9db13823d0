//! The public-events poller against the fake GitHub's public side (GitHub's real schemas): tokens
//! pushed to a public repository are found, attributed, revoked and recorded with their commit,
//! path, line and URL; 304s, primary and secondary rate limits, truncated compares, gaps,
//! malformed feeds and slow answers are survived without a rate-limit violation; a restart
//! neither loses nor repeats a push; exactly one replica polls, and another takes over.

use std::time::Duration;

use crate::common::revocation::Rig;
use serde_json::{Value, json};
use spillway::platform::config::Settings;

/// Polls as fast as the fake's `X-Poll-Interval: 0` allows (100 ms), short GitHub deadlines.
fn polling(s: &mut Settings) {
    s.poller.enabled = true;
    s.poller.min_interval_ms = 100;
    s.poller.request_timeout_ms = 2_000;
}

async fn fake(rig: &Rig, path: &str, body: Value) -> Value {
    let r = rig
        .client
        .post(format!("{}{path}", rig.github.api_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap_or(Value::Null)
}

async fn faults(rig: &Rig, faults: Value) {
    let mut all = json!({ "poll_interval_s": 0 });
    all.as_object_mut()
        .unwrap()
        .extend(faults.as_object().unwrap().clone());
    fake(rig, "/_fake/faults", all).await;
}

async fn stats(rig: &Rig) -> Value {
    rig.client
        .get(format!("{}/_fake/stats", rig.github.api_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn push(rig: &Rig, repo: &str, files: &[(&str, String)], no_patch: bool) -> Value {
    crate::common::revocation::fake_push(&rig.client, &rig.github.api_url(), repo, files, no_patch)
        .await
}

/// A push of 305 files, more than a compare lists (300), with `token` in the last one.
async fn push_too_many_files(rig: &Rig, repo: &str, token: &str) -> Value {
    let mut files: Vec<(String, String)> = (0..305)
        .map(|i| (format!("gen/f{i:03}.txt"), format!("line {i}\n")))
        .collect();
    files[304].1 = env_file(token);
    let refs: Vec<(&str, String)> = files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect();
    push(rig, repo, &refs, false).await
}

async fn metrics(rig: &Rig) -> String {
    rig.client
        .get(format!("http://{}/metrics", rig.server.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of a metric line starting with `prefix` (0 when absent).
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn audit_actions(rig: &Rig) -> Vec<Value> {
    let mut out = Vec::new();
    spillway::platform::audit::export_jsonl(&rig.server.state.store, &mut out)
        .await
        .unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until the reference installation has revoked `n` tokens.
async fn revoked(rig: &Rig, n: u64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let stats = rig.installation.stats();
        if stats.revocations >= n {
            assert_eq!(stats.revocations, n, "more revoked than pushed");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} tokens revoked; pushes: {:#?}; findings: {:#?}; fake GitHub: {}",
            stats.revocations,
            pushes(rig).await,
            rig.findings().await,
            self::stats(rig).await,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The poller's queue, for failure messages.
async fn pushes(rig: &Rig) -> Vec<String> {
    use sqlx::Row as _;
    sqlx::query("SELECT event_id, repo, state, outcome, attempts, last_error FROM poller_pushes ORDER BY event_id")
        .fetch_all(rig.server.state.store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {:?} attempts={} {:?}",
                r.get::<i64, _>("event_id"),
                r.get::<String, _>("repo"),
                r.get::<String, _>("state"),
                r.get::<Option<String>, _>("outcome"),
                r.get::<i64, _>("attempts"),
                r.get::<Option<String>, _>("last_error"),
            )
        })
        .collect()
}

fn env_file(token: &str) -> String {
    format!("FOUNDRY_URL=https://acme.palantirfoundry.com\nFOUNDRY_TOKEN={token}\n")
}

#[tokio::test]
async fn pushed_tokens_are_found_revoked_and_located() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let rig = Rig::start(&url, |_| {}, polling, |_| {}).await;
        faults(&rig, json!({})).await;
        // A new branch (before = zeros), then a patch, then a file GitHub shows no patch for.
        let t1 = rig.mint("user", None).await;
        let first = push(&rig, "acme/app", &[("README.md", "hello\n".into())], false).await;
        assert!(first["before"].as_str().unwrap().bytes().all(|b| b == b'0'));
        let with_patch = push(&rig, "acme/app", &[("config/.env", env_file(&t1))], false).await;
        let t2 = rig.mint("user", None).await;
        let no_patch = push(
            &rig,
            "acme/lib",
            &[("deploy/prod.env", env_file(&t2))],
            true,
        )
        .await;
        revoked(&rig, 2, Duration::from_secs(20)).await;
        let findings = rig.settled(2, Duration::from_secs(10)).await;
        let urls: Vec<&str> = findings
            .iter()
            .map(|f| f.found_at.as_deref().unwrap())
            .collect();
        let head = with_patch["head"].as_str().unwrap();
        assert!(
            urls.contains(
                &format!("https://github.com/acme/app/blob/{head}/config/.env#L2").as_str()
            ),
            "{backend}: {urls:?}"
        );
        let head = no_patch["head"].as_str().unwrap();
        assert!(
            urls.contains(
                &format!("https://github.com/acme/lib/blob/{head}/deploy/prod.env#L2").as_str()
            ),
            "{backend}: {urls:?}"
        );
        assert!(
            findings
                .iter()
                .all(|f| f.source == "poller" && f.state == "revoked")
        );
        // The audit log locates each hit (commit, path, line), without the token.
        let audit = audit_actions(&rig).await;
        let scanned: Vec<&Value> = audit
            .iter()
            .filter(|e| e["action"] == "poller.scanned")
            .collect();
        assert_eq!(scanned.len(), 2, "{backend}: {scanned:?}");
        let hit = &scanned[0]["details"]["hits"][0];
        assert_eq!(
            (hit["path"].as_str(), hit["line"].as_u64()),
            (Some("config/.env"), Some(2))
        );
        let text = serde_json::to_string(&audit).unwrap();
        assert!(!text.contains(&t1) && !text.contains(&t2));
        // Canary: no raw token in any database file (SQLite: the file, its WAL and shared memory).
        if let Some(path) = url.strip_prefix("sqlite://") {
            let dir = std::path::Path::new(path).parent().unwrap();
            for entry in std::fs::read_dir(dir).unwrap() {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
                for t in [&t1, &t2] {
                    assert!(
                        !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                        "a raw token in a database file"
                    );
                }
            }
        }
        // With nothing new, polls are answered 304; nothing was sent over a limit.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = stats(&rig).await;
        assert!(s["not_modified"].as_u64().unwrap() >= 2, "{backend}: {s}");
        assert_eq!(s["violations"], 0, "{backend}: {s}");
        let m = metrics(&rig).await;
        assert_eq!(metric(&m, "spillway_poller_leader "), 1.0, "{m}");
        assert_eq!(
            metric(&m, "spillway_poller_pushes_total{outcome=\"scanned\"}"),
            3.0,
            "{m}"
        );
        assert!(
            metric(&m, "spillway_scanned_bytes_total{source=\"poller\"}") > 0.0,
            "{m}"
        );
        assert_eq!(rig.installation.stats().duplicate_effects, 0);
        rig.stop().await;
    }
}

/// A GitHub token pushed to a public repository is reported to GitHub's Credential Revocation API
/// (the fake enforces its batch size and hourly limit): no installation claims it, so its issuer
/// revokes it, through the same durable steps, audit and metrics.
#[tokio::test]
async fn a_pushed_github_token_is_reported_to_githubs_revocation_api() {
    use sha2::Digest as _;
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let rig = Rig::start(&url, |_| {}, polling, |_| {}).await;
        faults(&rig, json!({})).await;
        let token = crate::common::senders::fresh_github_token();
        let pushed = std::time::Instant::now();
        push(
            &rig,
            "acme/site",
            &[("deploy/ci.env", format!("GH_TOKEN={token}\n"))],
            false,
        )
        .await;
        let findings = rig.settled(1, Duration::from_secs(20)).await;
        let elapsed = pushed.elapsed();
        assert_eq!(findings.len(), 1, "{backend}: {findings:#?}");
        let f = &findings[0];
        assert_eq!(
            f.installation_id.as_deref(),
            Some("issuer:github"),
            "{backend}"
        );
        assert_eq!(
            (f.state.as_str(), f.attribution.as_str()),
            ("revoked", "issuer"),
            "{backend}: {f:#?}"
        );
        let received = rig.github.revocation.received();
        assert_eq!(received.batches, [1], "{backend}");
        assert_eq!(
            received.sha256,
            [hex::encode(sha2::Sha256::digest(token.as_bytes()))]
        );
        assert_eq!((received.authenticated, received.rate_limited), (0, 0));
        eprintln!("{backend}: pushed to reported and revoked in {elapsed:?}");
        let audit = serde_json::to_string(&audit_actions(&rig).await).unwrap();
        assert!(
            audit.contains("issuer:github") && !audit.contains(&token),
            "{backend}"
        );
        let m = metrics(&rig).await;
        assert!(m.contains("issuer:github"), "{m}");
        rig.stop().await;
    }
}

#[tokio::test]
async fn rate_limits_are_obeyed_not_hammered() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("spillway=debug")
        .with_test_writer()
        .try_init();
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let rig = Rig::start(&url, |_| {}, polling, |_| {}).await;
        // 8 requests per 2 s window, and every 5th request refused with Retry-After: 1.
        faults(
            &rig,
            json!({ "rate_limit": 8, "rate_window_ms": 2000, "secondary_every": 5, "secondary_retry_after_s": 1 }),
        )
        .await;
        let mut tokens = Vec::new();
        for i in 0..4 {
            let t = rig.mint("user", None).await;
            push(
                &rig,
                &format!("acme/repo{i}"),
                &[("app.env", env_file(&t))],
                false,
            )
            .await;
            tokens.push(t);
        }
        revoked(&rig, 4, Duration::from_secs(40)).await;
        let s = stats(&rig).await;
        assert_eq!(s["violations"], 0, "{backend}: {s}");
        assert_eq!(
            s["primary_refusals"], 0,
            "{backend}: the client stops at remaining 0: {s}"
        );
        assert!(
            s["secondary_refusals"].as_u64().unwrap() >= 1,
            "{backend}: {s}"
        );
        let m = metrics(&rig).await;
        assert!(
            metric(
                &m,
                "spillway_github_rate_limit_waits_total{kind=\"secondary\"}"
            ) >= 1.0,
            "{m}"
        );
        rig.stop().await;
    }
}

#[tokio::test]
async fn truncated_compares_gaps_malformed_feeds_and_slow_answers_lose_nothing() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let rig = Rig::start(
            &url,
            |_| {},
            |s| {
                polling(s);
                s.poller.request_timeout_ms = 500;
                s.poller.call_budget = 200;
            },
            |_| {},
        )
        .await;
        faults(&rig, json!({})).await;
        push(&rig, "acme/big", &[("README.md", "start\n".into())], false).await;
        // Wait for the first poll to set the cursor.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while metric(
            &metrics(&rig).await,
            "spillway_poller_pushes_total{outcome=\"scanned\"}",
        ) < 1.0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{backend}: first push not scanned"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // too_many_files: 305 files in one push, the token in one the compare does not list.
        faults(&rig, json!({ "slow_ms": 2000 })).await; // hold the poller off while pushing
        let t1 = rig.mint("user", None).await;
        push_too_many_files(&rig, "acme/big", &t1).await;
        // A gap: 400 other events arrive after it, so the feed no longer reaches the cursor.
        fake(&rig, "/_fake/noise", json!({ "count": 400 })).await;
        let t2 = rig.mint("user", None).await;
        push(&rig, "acme/after-gap", &[("x.env", env_file(&t2))], false).await;
        // Slow answers time out (500 ms deadline) for a while; then two malformed feeds.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        faults(&rig, json!({ "malformed": 2 })).await;
        let t3 = rig.mint("user", None).await;
        push(
            &rig,
            "acme/after-malformed",
            &[("y.env", env_file(&t3))],
            false,
        )
        .await;

        // t1 was pushed before the gap's noise, so it is lost to the feed; the other two are
        // found. The gap is recorded.
        revoked(&rig, 2, Duration::from_secs(30)).await;
        let s = stats(&rig).await;
        assert!(
            s["malformed_served"].as_u64().unwrap() == 2,
            "{backend}: {s}"
        );
        assert_eq!(s["violations"], 0, "{backend}: {s}");
        let m = metrics(&rig).await;
        assert!(
            metric(&m, "spillway_poller_gaps_total") >= 1.0,
            "{backend}: {m}"
        );
        let audit = audit_actions(&rig).await;
        assert!(
            audit.iter().any(|e| e["action"] == "poller.gap"),
            "{backend}"
        );
        rig.stop().await;

        // The truncated compare on its own: the token beyond the 300 listed files is found.
        let dir = tempfile::tempdir().unwrap();
        let url2 = if backend == "sqlite" {
            format!("sqlite://{}", dir.path().join("t2.db").display())
        } else {
            crate::common::fresh_databases().await.pop().unwrap().1
        };
        let rig = Rig::start(
            &url2,
            |_| {},
            |s| {
                polling(s);
                s.poller.call_budget = 200;
            },
            |_| {},
        )
        .await;
        faults(&rig, json!({})).await;
        push(&rig, "acme/big", &[("README.md", "start\n".into())], false).await;
        let t1 = rig.mint("user", None).await;
        let big = push_too_many_files(&rig, "acme/big", &t1).await;
        revoked(&rig, 1, Duration::from_secs(20)).await;
        let audit = audit_actions(&rig).await;
        let entry = audit
            .iter()
            .find(|e| e["action"] == "poller.scanned" && e["details"]["head"] == big["head"])
            .expect("the big push is recorded");
        assert_eq!(entry["details"]["truncated"], true, "{backend}: {entry}");
        assert_eq!(entry["details"]["hits"][0]["path"], "gen/f304.txt");
        rig.stop().await;
    }
}

#[tokio::test]
async fn a_restart_neither_loses_nor_repeats_pushes() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let rig = Rig::start(&url, |_| {}, polling, |_| {}).await;
        faults(&rig, json!({})).await;
        let t1 = rig.mint("user", None).await;
        push(&rig, "acme/one", &[("a.env", env_file(&t1))], false).await;
        revoked(&rig, 1, Duration::from_secs(20)).await;
        // Stop the server (GitHub and the installation keep running), push while it is down,
        // restart on the same database and keys.
        let rig = rig
            .restart_server(
                async |github, installation| {
                    let client = reqwest::Client::new();
                    let t2 = crate::common::revocation::mint_at(
                        &client,
                        &installation.url(),
                        "user",
                        None,
                    )
                    .await;
                    let files = [("a.env", env_file(&t2))];
                    crate::common::revocation::fake_push(
                        &client,
                        &github.api_url(),
                        "acme/two",
                        &files,
                        false,
                    )
                    .await;
                },
                polling,
            )
            .await;
        revoked(&rig, 2, Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = rig.installation.stats();
        assert_eq!(
            (stats.revocations, stats.duplicate_effects),
            (2, 0),
            "{backend}"
        );
        let alerts: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM alerts WHERE listener_id = 'poller'")
                .fetch_one(rig.server.state.store.pool())
                .await
                .unwrap();
        assert_eq!(alerts, 2, "{backend}: one alert per push with tokens");
        rig.stop().await;
    }
}

#[tokio::test]
async fn a_push_bigger_than_the_call_budget_is_scanned_as_far_as_it_goes_and_blocks_nothing() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        // Two calls a poll: the compare, and one page of the truncated compare's commit.
        let rig = Rig::start(
            &url,
            |_| {},
            |s| {
                polling(s);
                s.poller.call_budget = 2;
            },
            |_| {},
        )
        .await;
        faults(&rig, json!({})).await;
        push(&rig, "acme/big", &[("README.md", "start\n".into())], false).await;
        let hidden = rig.mint("user", None).await;
        let big = push_too_many_files(&rig, "acme/big", &hidden).await;
        let t = rig.mint("user", None).await;
        push(&rig, "acme/small", &[("x.env", env_file(&t))], false).await;
        // The push behind it is found: the big one did not hold the queue.
        revoked(&rig, 1, Duration::from_secs(20)).await;
        let audit = audit_actions(&rig).await;
        let entry = audit
            .iter()
            .find(|e| e["action"] == "poller.scanned" && e["details"]["head"] == big["head"])
            .expect("the big push is finished, not retried forever");
        assert_eq!(entry["details"]["truncated"], true, "{backend}: {entry}");
        assert_eq!(
            entry["details"]["skipped"][0]["reason"], "budget",
            "{backend}: {entry}"
        );
        rig.stop().await;
    }
}

/// Seed 001: a data connector's deployment tarball, pushed to a public repository, carries its
/// coordinator token. GitHub shows no patch for a binary file: the poller reads the blob, opens
/// the tarball and revokes the token, locating it at `bundle.tar.gz!var/data/coordinator-token.json`.
#[tokio::test]
async fn a_token_in_a_pushed_tarball_is_found_and_revoked() {
    let (_, url, _dir) = crate::common::fresh_databases().await.remove(0);
    let rig = Rig::start(&url, |_| {}, polling, |_| {}).await;
    faults(&rig, json!({})).await;
    let token = rig.mint("session", None).await;
    let json = format!("{{\n  \"token\": \"{token}\"\n}}\n");
    // A second token, base64-encoded in a Kubernetes Secret beside it.
    let other = rig.mint("user", None).await;
    let secret = format!(
        "kind: Secret\ndata:\n  token: {}\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &other)
    );
    let tarball = crate::common::archives::gzip(&crate::common::archives::tar_of(&[
        ("var/data/coordinator-token.json", json.as_bytes()),
        ("k8s/secret.yaml", secret.as_bytes()),
    ]));
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &tarball);
    fake(
        &rig,
        "/_fake/push",
        json!({
            "repo": "acme/connector",
            "files": [{ "path": "deploy/bundle.tar.gz", "content_base64": b64 }],
        }),
    )
    .await;
    revoked(&rig, 2, Duration::from_secs(20)).await;
    let audit = audit_actions(&rig).await;
    let mut hits: Vec<(String, u64, Value)> = audit
        .iter()
        .filter(|e| e["action"] == "poller.scanned")
        .flat_map(|e| e["details"]["hits"].as_array().cloned().unwrap_or_default())
        .map(|h| {
            (
                h["path"].as_str().unwrap().to_owned(),
                h["line"].as_u64().unwrap(),
                h["decoded"].clone(),
            )
        })
        .collect();
    hits.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        hits,
        [
            (
                "deploy/bundle.tar.gz!k8s/secret.yaml".to_owned(),
                3,
                json!(["base64"])
            ),
            (
                "deploy/bundle.tar.gz!var/data/coordinator-token.json".to_owned(),
                2,
                json!([])
            ),
        ]
    );
    let text = serde_json::to_string(&audit).unwrap();
    assert!(!text.contains(&token) && !text.contains(&other));
    rig.stop().await;
}
