//! From alert to revoked, over real HTTP, on every backend: the real server, the reference
//! installation (the installation side of the contract) and a fake GitHub signing alerts.

use std::time::Duration;

use crate::common::revocation::Rig;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sha2::{Digest, Sha256};
use spillway::devtools::reference_installation;
use spillway::scanner::TokenSecret;

fn sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The same token with its signature's first byte changed: still well formed, no longer valid.
fn forge(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    bytes[0] ^= 0x55;
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[tokio::test]
async fn tokens_are_attributed_verified_revoked_and_notified_exactly_once() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let rig = Rig::start(&url, |_| {}, |_| {}, |_| {}).await;
        let session = rig.mint("session", None).await;
        let user = rig.mint("user", None).await;
        let expired = rig.mint("session", Some(1)).await;
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        let forged = forge(&rig.mint("session", None).await);
        let alerts = json!([
            {"token": session, "type": "palantir_jwt", "url": "https://github.com/o/r/blob/1/a.env", "source": "commit"},
            {"token": user, "type": "palantir_jwt", "url": "", "source": "content"},
            {"token": expired, "type": "palantir_jwt", "url": ""},
            {"token": forged, "type": "palantir_jwt", "url": ""},
            {"token": "sk_acme_not_issued_by_anyone_0123456789", "type": "acme_secret", "url": ""}
        ]);
        let (status, body) = rig.alert(&alerts).await;
        assert_eq!(status, 200, "{backend}: {body}");
        // The same token reported again, in another alert: no second finding, no second effect.
        let (status, _) = rig
            .alert(&json!([{"token": session, "type": "palantir_jwt", "url": "https://gist.github.com/x"}]))
            .await;
        assert_eq!(status, 200);

        let findings = rig.settled(5, Duration::from_secs(20)).await;
        let state_of = |token: &str| {
            let fp = rig.server.state.keys.fingerprint(token);
            findings
                .iter()
                .filter(|f| f.fingerprint == fp)
                .map(|f| (f.state.clone(), f.attribution.clone(), f.label.clone()))
                .collect::<Vec<_>>()
        };
        let revoked = || {
            (
                "revoked".to_owned(),
                "key_id".to_owned(),
                Some("true_positive".to_owned()),
            )
        };
        assert_eq!(
            state_of(&session),
            vec![revoked()],
            "{backend}: {findings:#?}"
        );
        assert_eq!(state_of(&user), vec![revoked()], "{backend}");
        assert_eq!(
            state_of(&expired),
            vec![(
                "expired".to_owned(),
                "key_id".to_owned(),
                Some("true_positive".to_owned())
            )],
            "{backend}: an expired token is labelled, not revoked"
        );
        assert_eq!(
            state_of(&forged),
            vec![(
                "invalid".to_owned(),
                "key_id".to_owned(),
                Some("false_positive".to_owned())
            )],
            "{backend}: a bad signature under a known key is a false positive"
        );
        let unattributed = state_of("sk_acme_not_issued_by_anyone_0123456789");
        assert_eq!(unattributed.len(), 1, "{backend}: recorded, never dropped");
        assert_eq!(unattributed[0].0, "unattributed");

        let stats = rig.installation.stats();
        assert_eq!(stats.revocations, 2, "{backend}: {stats:?}");
        assert_eq!(stats.duplicate_effects, 0, "{backend}: {stats:?}");
        assert_eq!(stats.rate_limit_exceeded, 0, "{backend}: {stats:?}");
        assert_eq!(stats.bad_signatures, 0, "{backend}: {stats:?}");
        // Each revocation was notified, with the token's hash and never the token.
        let notes: serde_json::Value = rig
            .client
            .get(format!("{}/notifications", rig.installation.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let notes = notes.as_array().unwrap();
        assert_eq!(notes.len(), 2, "{backend}: {notes:?}");
        let hashes: Vec<&str> = notes
            .iter()
            .map(|n| n["token_sha256"].as_str().unwrap())
            .collect();
        assert!(
            hashes.contains(&sha256(&session).as_str()) && hashes.contains(&sha256(&user).as_str())
        );
        let text = serde_json::to_string(notes).unwrap();
        assert!(
            !text.contains(&session) && !text.contains(&user),
            "{backend}: no raw token"
        );
        let with_url = notes
            .iter()
            .find(|n| n["token_sha256"] == sha256(&session))
            .unwrap();
        assert_eq!(with_url["found_at"], "https://github.com/o/r/blob/1/a.env");
        assert_eq!(with_url["outcome"], "revoked");

        // Idempotency keys are deterministic: one per token, each used once.
        let revs = rig.installation.revocations();
        assert_eq!(revs.len(), 2);
        assert!(
            revs.iter()
                .all(|r| r.idempotency_key.starts_with("spw_revoke_"))
        );

        // Sealed copies are gone once terminal; the audit log verifies.
        let store = &rig.server.state.store;
        let (left,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM findings WHERE sealed_token IS NOT NULL")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(left, 0, "{backend}");
        // The repeated report is decided on its own (it adds no finding, so `settled` does not
        // wait for it): its sealed copy goes once it is.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (left,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM candidates WHERE sealed_token IS NOT NULL")
                    .fetch_one(store.pool())
                    .await
                    .unwrap();
            if left == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{backend}: {left} candidates still sealed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let verdict = rig.audit_verdict().await;
        assert!(
            matches!(verdict, spillway::platform::audit::Verdict::Intact { .. }),
            "{backend}: {verdict:?}"
        );
        let actions: Vec<(String, String)> =
            sqlx::query_as("SELECT action, details FROM audit_log")
                .fetch_all(store.pool())
                .await
                .unwrap();
        let count = |a: &str| actions.iter().filter(|(x, _)| x == a).count();
        let decided: usize = actions
            .iter()
            .filter(|(x, _)| x == "candidates.decided")
            .map(|(_, d)| {
                serde_json::from_str::<serde_json::Value>(d).unwrap()["decisions"]
                    .as_array()
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(decided, 6, "{backend}: every decision audited");
        assert_eq!(count("finding.notifying"), 2, "{backend}");
        assert_eq!(count("finding.revoked"), 2, "{backend}");

        // With the installation's keys now cached, the alert's answer already labels a JWT whose
        // signature verifies against its key id's one owner (GitHub's feedback), and it is still
        // revoked. A signature that does not verify is not labelled at intake (another issuer's JWKS,
        // not fetched yet, may publish the same key id): the decision fetches first, then calls it
        // invalid.
        let fresh = rig.mint("session", None).await;
        let forged_again = forge(&rig.mint("user", None).await);
        let (status, body) = rig
            .alert(&json!([
                {"token": fresh, "type": "palantir_jwt", "url": ""},
                {"token": forged_again, "type": "palantir_jwt", "url": ""}
            ]))
            .await;
        assert_eq!(status, 200);
        let feedback: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            feedback,
            json!([
                {"token_hash": sha256(&fresh), "token_type": "palantir_jwt", "label": "true_positive"},
            ]),
            "{backend}"
        );
        let findings = rig.settled(7, Duration::from_secs(20)).await;
        let state_of = |token: &str| {
            let fp = rig.server.state.keys.fingerprint(token);
            findings
                .iter()
                .filter(|f| f.fingerprint == fp)
                .map(|f| f.state.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(state_of(&fresh), ["revoked"], "{backend}: {findings:#?}");
        assert_eq!(state_of(&forged_again), ["invalid"], "{backend}");
        assert_eq!(findings.len(), 7, "{backend}: {findings:#?}");
        assert_eq!(rig.installation.stats().revocations, 3);
        rig.stop().await;
    }
}

#[tokio::test]
async fn flaky_slow_and_rate_limited_installations_still_get_every_token_revoked_once() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let rig = Rig::start(
            &url,
            |a| {
                a.fail_rate = 0.4;
                a.timeout_rate = 0.1;
                a.hang_secs = 3;
                a.rate_limit = 20.0;
                a.burst = 4;
            },
            |s| s.call_timeout_ms = 500,
            |spec| {
                spec.rate_per_sec = 20.0;
                spec.burst = 4;
                spec.concurrency = 8;
            },
        )
        .await;
        let mut alerts = Vec::new();
        for _ in 0..12 {
            alerts.push(json!({"token": rig.mint("session", None).await, "type": "palantir_jwt", "url": ""}));
        }
        let (status, _) = rig.alert(&json!(alerts)).await;
        assert_eq!(status, 200);
        // A liveness bound, not a speed goal (the full suite shares two cores).
        let findings = rig.settled(12, Duration::from_secs(120)).await;
        assert!(
            findings.iter().all(|f| f.state == "revoked"),
            "{backend}: {findings:#?}"
        );
        let stats = rig.installation.stats();
        assert_eq!(stats.revocations, 12, "{backend}: {stats:?}");
        assert_eq!(stats.duplicate_effects, 0, "{backend}: {stats:?}");
        assert_eq!(stats.rate_limit_exceeded, 0, "{backend}: {stats:?}");
        assert!(
            stats.injected_failures + stats.injected_timeouts > 0,
            "{backend}: faults were injected"
        );
        rig.stop().await;
    }
}

#[tokio::test]
async fn an_installation_that_always_fails_makes_the_finding_fail_loudly() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let rig = Rig::start(&url, |a| a.fail_rate = 1.0, |s| s.max_attempts = 3, |_| {}).await;
        let token = rig.mint("session", None).await;
        rig.alert(&json!([{"token": token, "type": "palantir_jwt", "url": ""}]))
            .await;
        let findings = rig.settled(1, Duration::from_secs(30)).await;
        assert_eq!(findings[0].state, "failed", "{backend}: {findings:#?}");
        assert_eq!(findings[0].outcome.as_deref(), Some("failed_revoke"));
        assert!(
            findings[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("revoke_url")
        );
        assert_eq!(rig.installation.stats().revocations, 0);
        let metrics = rig.server.state.metrics.encode();
        assert!(
            metrics.contains("spillway_findings_failed_total{installation=\"")
                && metrics.contains("step=\"revoke\"} 1"),
            "{backend}: {metrics}"
        );
        let (failed,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM audit_log WHERE action = 'finding.failed'")
                .fetch_one(rig.server.state.store.pool())
                .await
                .unwrap();
        assert_eq!(failed, 1, "{backend}");
        rig.stop().await;
    }
}

#[tokio::test]
async fn online_verification_decides_tokens_without_a_signature() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        // An installation without JWKS: tokens are attributed by type and verified online.
        let rig = Rig::start(&url, |_| {}, |_| {}, |spec| spec.jwks_url = None).await;
        let live = rig.mint("session", None).await;
        rig.alert(&json!([
            {"token": live, "type": "palantir_jwt", "url": ""},
            {"token": forge(&rig.mint("user", None).await), "type": "palantir_jwt", "url": ""}
        ]))
        .await;
        let findings = rig.settled(2, Duration::from_secs(20)).await;
        let live_fp = rig.server.state.keys.fingerprint(&live);
        for f in &findings {
            assert_eq!(f.attribution, "token_type", "{backend}");
            let expected = if f.fingerprint == live_fp {
                "revoked"
            } else {
                "unknown_token"
            };
            assert_eq!(f.state, expected, "{backend}: {f:?}");
        }
        let stats = rig.installation.stats();
        assert_eq!(
            (stats.verify_calls, stats.revocations),
            (2, 1),
            "{backend}: {stats:?}"
        );
        rig.stop().await;
    }
}

#[tokio::test]
async fn pull_mode_installations_fetch_and_acknowledge_their_revocations() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let rig = Rig::start(
            &url,
            |_| {},
            |_| {},
            |spec| {
                spec.pull_mode = true;
                spec.verify_url = None;
                spec.revoke_url = None;
                spec.notify_url = None;
            },
        )
        .await;
        let tokens = [
            rig.mint("session", None).await,
            rig.mint("user", None).await,
        ];
        rig.alert(&json!([
            {"token": tokens[0], "type": "palantir_jwt", "url": "https://github.com/o/r"},
            {"token": tokens[1], "type": "palantir_jwt", "url": ""}
        ]))
        .await;
        let base = format!(
            "http://{}/installations/v1/{}/revocations",
            rig.server.public_addr, rig.installation_id
        );
        let secret = rig.installation.secrets[0].clone();
        // Wait for the decisions.
        let page = loop {
            let r = rig
                .client
                .get(format!("{base}?after=0&limit=1"))
                .bearer_auth(&secret)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let page: spillway::installations::contract::PullPage = r.json().await.unwrap();
            if !page.revocations.is_empty() {
                break page;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(page.revocations.len(), 1, "limit honoured");
        let first = &page.revocations[0];
        assert!(first.token.is_none(), "sha256 delivery by default");
        assert!(tokens.iter().any(|t| sha256(t) == first.token_sha256));
        let second_page: spillway::installations::contract::PullPage = rig
            .client
            .get(format!("{base}?after={}", page.next_cursor))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            second_page.revocations.len(),
            1,
            "{backend}: the cursor moves on"
        );

        // Authentication and input errors are named.
        let r = rig
            .client
            .get(&base)
            .bearer_auth("whsec_wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = rig
            .client
            .get(format!("{base}?limit=0"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("limit"));

        let ack = |id: &str, status: &str| {
            rig.client
                .post(format!("{base}/{id}/ack"))
                .bearer_auth(&secret)
                .json(&json!({ "status": status }))
                .send()
        };
        let r = ack(&first.finding_id, "revoked").await.unwrap();
        assert_eq!(r.status(), 200);
        let r = ack(&first.finding_id, "revoked").await.unwrap();
        assert_eq!(
            r.status(),
            200,
            "{backend}: acknowledging twice is idempotent"
        );
        let r = ack(&first.finding_id, "unknown_token").await.unwrap();
        assert_eq!(r.status(), 409, "{backend}: a conflicting acknowledgement");
        let r = ack(&second_page.revocations[0].finding_id, "already_revoked")
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = ack("fnd_999999", "revoked").await.unwrap();
        assert_eq!(r.status(), 404);

        let findings = rig.settled(2, Duration::from_secs(5)).await;
        let mut states: Vec<&str> = findings.iter().map(|f| f.state.as_str()).collect();
        states.sort();
        assert_eq!(states, ["already_revoked", "revoked"], "{backend}");
        let (acks,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM audit_log WHERE actor LIKE 'installation:%' AND action LIKE 'finding.%'",
        )
        .fetch_one(rig.server.state.store.pool())
        .await
        .unwrap();
        assert_eq!(acks, 2, "{backend}: each acknowledgement is audited once");
        rig.stop().await;
    }
}

#[tokio::test]
async fn a_hostname_next_to_the_token_attributes_it_and_fanout_is_bounded() {
    use hmac::{Hmac, Mac};
    use spillway::installations;
    use spillway::scanner::TokenSecret;
    use spillway::sources::listeners::{self, ListenerKind};
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        // Two installations issue the type and neither publishes keys: only context can tell.
        let rig = Rig::start(
            &url,
            |_| {},
            |s| s.fanout_max = 1,
            |spec| spec.jwks_url = None,
        )
        .await;
        let store = &rig.server.state.store;
        let mut other = crate::common::revocation::spec(&rig.installation.url(), "other");
        other.hostnames = vec!["other.example.com".into()];
        other.jwks_url = None;
        let policy = spillway::platform::outbound::Policy {
            allow_http: true,
            allow_private: true,
        };
        installations::register(
            store,
            &rig.server.state.keys.sealing,
            &policy,
            other,
            None,
            "test",
        )
        .await
        .unwrap();
        let (_, endpoint) = listeners::create_with_secret(
            store,
            ListenerKind::GithubHmac,
            "hooks",
            "test",
            Some((
                &rig.server.state.keys.sealing,
                &TokenSecret::new("hook-secret"),
            )),
        )
        .await
        .unwrap();
        rig.server.state.directory.reload_now().await.unwrap();
        let near = rig.mint("session", None).await;
        let alone = rig.mint("session", None).await;
        let body = format!(
            "{{\"config\": \"FOUNDRY_URL=https://acme.palantirfoundry.com\\nFOUNDRY_TOKEN={near}\"}}"
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"hook-secret").unwrap();
        mac.update(body.as_bytes());
        let r = rig
            .client
            .post(format!(
                "http://{}{}",
                rig.server.public_addr, endpoint.path
            ))
            .header(
                "X-Hub-Signature-256",
                format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{backend}: {}",
            r.text().await.unwrap()
        );
        rig.alert(&json!([{"token": alone, "type": "palantir_jwt", "url": ""}]))
            .await;

        let findings = rig.settled(2, Duration::from_secs(20)).await;
        let (near_fp, alone_fp) = (
            rig.server.state.keys.fingerprint(&near),
            rig.server.state.keys.fingerprint(&alone),
        );
        let near_f: Vec<_> = findings
            .iter()
            .filter(|f| f.fingerprint == near_fp)
            .collect();
        assert_eq!(
            near_f.len(),
            1,
            "{backend}: only the installation named next to it: {findings:#?}"
        );
        assert_eq!(
            (
                near_f[0].attribution.as_str(),
                near_f[0].state.as_str(),
                near_f[0].installation_id.as_deref()
            ),
            ("hostname", "revoked", Some(rig.installation_id.as_str())),
            "{backend}"
        );
        let alone_f: Vec<_> = findings
            .iter()
            .filter(|f| f.fingerprint == alone_fp)
            .collect();
        assert_eq!(alone_f.len(), 1, "{backend}");
        assert_eq!(
            alone_f[0].state, "unattributed",
            "{backend}: more issuers than fanout_max"
        );
        assert!(
            alone_f[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("fanout_max 1"),
            "{backend}"
        );
        rig.stop().await;
    }
}

#[tokio::test]
async fn replicas_on_one_database_share_the_work_and_revoke_each_token_once() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        if backend != "postgres" {
            continue; // several replicas is the PostgreSQL deployment
        }
        let rig = Rig::start(&url, |_| {}, |_| {}, |_| {}).await;
        let (second, _keep) =
            crate::common::start_server_tuned(&url, &rig.github.keys_url(), |s| {
                crate::common::revocation::local(s);
                s.key_file = rig.key_file();
            })
            .await;
        let mut alerts = Vec::new();
        for _ in 0..30 {
            alerts.push(json!({"token": rig.mint("session", None).await, "type": "palantir_jwt", "url": ""}));
        }
        rig.alert(&json!(alerts)).await;
        let findings = rig.settled(30, Duration::from_secs(30)).await;
        assert!(
            findings.iter().all(|f| f.state == "revoked"),
            "{findings:#?}"
        );
        let stats = rig.installation.stats();
        assert_eq!(
            (stats.revocations, stats.duplicate_effects),
            (30, 0),
            "{stats:?}"
        );
        assert_eq!(stats.notifications, 30, "{stats:?}");
        second.shutdown().await;
        rig.stop().await;
    }
}

/// Accepts connections and resets them at once (SO_LINGER 0), forever.
async fn resetting_listener() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    addr
}

#[tokio::test]
async fn installations_that_hang_reset_or_answer_html_do_not_hold_up_the_others() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let rig = Rig::start(&url, |_| {}, |s| s.call_timeout_ms = 1_000, |_| {}).await;
        let policy = spillway::platform::outbound::Policy {
            allow_http: true,
            allow_private: true,
        };
        let store = &rig.server.state.store;
        // Three broken installations, each issuing its own tokens (attributed by key id):
        // one hangs on every call, one answers every call with an HTML page, one whose revoke URL
        // resets every connection.
        let dir = tempfile::tempdir().unwrap();
        let mut broken = Vec::new();
        let reset = resetting_listener().await;
        for (name, timeout_rate, fail_rate) in [
            ("hangs", 1.0, 0.0),
            ("html", 0.0, 1.0),
            ("resets", 0.0, 0.0),
        ] {
            let installation = reference_installation::start(&reference_installation::Args {
                secret_file: dir.path().join(format!("{name}.whsec")),
                timeout_rate,
                fail_rate,
                hang_secs: 60,
                rate_limit: 200.0,
                burst: 50,
                ..Default::default()
            })
            .await
            .unwrap();
            let mut spec = crate::common::revocation::spec(&installation.url(), name);
            spec.verify_url = None;
            if name == "resets" {
                spec.revoke_url = Some(format!("http://{reset}/revoke"));
            }
            spillway::installations::register(
                store,
                &rig.server.state.keys.sealing,
                &policy,
                spec,
                Some(TokenSecret::new(installation.secrets[0].clone())),
                "test",
            )
            .await
            .unwrap();
            broken.push(installation);
        }
        // Forty tokens of the broken ones first, then ten of the healthy one.
        let mut alerts = Vec::new();
        for installation in &broken {
            for _ in 0..14 {
                let token = crate::common::revocation::mint_at(
                    &rig.client,
                    &installation.url(),
                    "session",
                    None,
                )
                .await;
                alerts.push(json!({"token": token, "type": "palantir_jwt", "url": ""}));
            }
        }
        let (status, _) = rig.alert(&json!(alerts)).await;
        assert_eq!(status, 200);
        let mut healthy = Vec::new();
        for _ in 0..10 {
            healthy.push(json!({"token": rig.mint("session", None).await, "type": "palantir_jwt", "url": ""}));
        }
        let sent = tokio::time::Instant::now();
        let (status, _) = rig.alert(&json!(healthy)).await;
        assert_eq!(status, 200);
        // The healthy installation's tokens are revoked (and recorded so) while every broken call
        // is still out or backing off (a liveness bound well under the 60 s hang, not a speed
        // goal).
        let deadline = sent + Duration::from_secs(20);
        let healthy_id = rig.installation_id.clone();
        loop {
            let findings = rig.findings().await;
            let done = findings
                .iter()
                .filter(|f| f.installation_id.as_deref() == Some(healthy_id.as_str()))
                .filter(|f| matches!(f.state.as_str(), "notifying" | "revoked"))
                .count();
            if done == 10 {
                let stuck = findings
                    .iter()
                    .filter(|f| f.installation_id.as_deref() != Some(healthy_id.as_str()))
                    .filter(|f| f.state == "revoking")
                    .count();
                assert_eq!(
                    stuck, 42,
                    "{backend}: the broken installations' findings wait, none is lost"
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{backend}: healthy installation starved: {:?}",
                rig.installation.stats()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(rig.installation.stats().revocations, 10, "{backend}");
        for installation in broken {
            installation.shutdown().await;
        }
        rig.stop().await;
    }
}
