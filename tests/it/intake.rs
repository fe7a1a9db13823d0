//! GitHub partner-alert intake, end to end over real HTTP: a fake GitHub key endpoint (speaking the
//! real wire format), the real server on free loopback ports, and every backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use sha2::{Digest, Sha256};
use spillway::scanner::validate::crc32_base62;
use spillway::sources::listeners::{self, ListenerKind};

/// A fake `GET /meta/public_keys/secret_scanning` that counts how often it is asked.
struct FakeGithub {
    url: String,
    hits: Arc<AtomicUsize>,
}

async fn fake_github(body: String) -> FakeGithub {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/meta/public_keys/secret_scanning",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeGithub {
        url: format!("http://{addr}/meta/public_keys/secret_scanning"),
        hits,
    }
}

struct Signer {
    id: String,
    key: p256::ecdsa::SigningKey,
}

impl Signer {
    fn new(id: &str) -> Signer {
        Signer {
            id: id.into(),
            key: p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng),
        }
    }

    fn key_list(&self) -> String {
        let pem = self
            .key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        serde_json::json!({ "public_keys": [{ "key_identifier": self.id, "key": pem, "is_current": true }] }).to_string()
    }

    fn sign(&self, body: &[u8]) -> String {
        let sig: p256::ecdsa::Signature = self.key.sign(body);
        STANDARD.encode(sig.to_der().as_bytes())
    }
}

struct Service {
    running: spillway::service::Running,
    endpoint: String,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

async fn service(database_url: &str, keys_url: &str) -> Service {
    service_for(database_url, keys_url, ListenerKind::Github).await
}

/// The server with all three partner platforms' key URLs pointed at `keys_url`, and one listener
/// of `kind`.
async fn service_for(database_url: &str, keys_url: &str, kind: ListenerKind) -> Service {
    let (running, dir) = crate::common::start_server(database_url, keys_url).await;
    let (_, endpoint) = listeners::create(&running.state.store, kind, "partner", "test")
        .await
        .unwrap();
    running.state.directory.reload_now().await.unwrap();
    let endpoint = format!("http://{}{}", running.public_addr, endpoint.path);
    Service {
        running,
        endpoint,
        dir,
        client: reqwest::Client::new(),
    }
}

impl Service {
    async fn post(
        &self,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        self.post_as(
            "GITHUB-PUBLIC-KEY-IDENTIFIER",
            "Github-Public-Key-Signature",
            key_id,
            signature,
            body,
        )
        .await
    }

    async fn post_as(
        &self,
        key_header: &str,
        signature_header: &str,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        let mut req = self.client.post(&self.endpoint).body(body.to_vec());
        if let Some(k) = key_id {
            req = req.header(key_header, k);
        }
        if let Some(s) = signature {
            req = req.header(signature_header, s);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(self.running.state.store.pool())
            .await
            .unwrap()
    }
}

fn github_token(seed: u8) -> String {
    let body: String = (0..30)
        .map(|i| (b'a' + ((i * 7 + seed as usize * 13) % 26) as u8) as char)
        .collect();
    format!("ghp_{body}{}", crc32_base62(body.as_bytes()))
}

#[tokio::test]
async fn published_github_vectors_verify_including_high_s_and_raw_bytes() {
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/public_vectors.json")).unwrap();
    let gh = &vectors["github_partner"];
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let fake = fake_github(gh["keys"].to_string()).await;
        let svc = service(&url, &fake.url).await;
        for v in gh["vectors"].as_array().unwrap() {
            let (status, body) = svc
                .post(
                    v["key_id"].as_str(),
                    v["signature"].as_str(),
                    v["body"].as_str().unwrap().as_bytes(),
                )
                .await;
            if v["valid"].as_bool().unwrap() {
                assert_eq!(status, 200, "{backend}: {} {body}", v["note"]);
                assert_eq!(
                    body, "[]",
                    "{backend}: an unknown token type is left undecided"
                );
            } else {
                assert_eq!(status, 401, "{backend}: {} {body}", v["note"]);
                assert!(body.contains("does not verify"), "{backend}: {body}");
            }
        }
        assert_eq!(svc.count("alerts").await, 1, "{backend}");
        svc.running.shutdown().await;
    }
}

#[tokio::test]
async fn an_alert_is_recorded_once_and_answered_with_offline_feedback() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let signer = Signer::new("k1");
        let fake = fake_github(signer.key_list()).await;
        let svc = service(&url, &fake.url).await;
        let valid = github_token(1);
        let mut broken = github_token(2);
        broken.replace_range(39..40, if broken.ends_with('0') { "1" } else { "0" });
        let body = serde_json::json!([
            { "token": valid, "type": "github_personal_access_token", "url": "https://github.com/o/r/blob/x/a.env", "source": "CONTENT" },
            { "token": broken, "type": "github_personal_access_token", "url": "" },
        ])
        .to_string();
        let (status, answer) = svc
            .post(
                Some("k1"),
                Some(&signer.sign(body.as_bytes())),
                body.as_bytes(),
            )
            .await;
        assert_eq!(status, 200, "{backend}: {answer}");
        let feedback: serde_json::Value = serde_json::from_str(&answer).unwrap();
        let expected_hash = hex::encode(Sha256::digest(broken.as_bytes()));
        assert_eq!(
            feedback,
            serde_json::json!([{ "token_hash": expected_hash, "token_type": "github_personal_access_token", "label": "false_positive" }]),
            "{backend}"
        );
        // Replay: same answer, nothing new.
        let (status, again) = svc
            .post(
                Some("k1"),
                Some(&signer.sign(body.as_bytes())),
                body.as_bytes(),
            )
            .await;
        assert_eq!(
            (status, again.as_str()),
            (200, answer.as_str()),
            "{backend}"
        );
        assert_eq!(svc.count("alerts").await, 1, "{backend}");
        assert_eq!(svc.count("candidates").await, 2, "{backend}");
        // Queued or already decided (a decided work item is deleted), never both, in one snapshot.
        let queued: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM work_queue) + (SELECT COUNT(DISTINCT candidate_id) FROM findings)",
        )
        .fetch_one(svc.running.state.store.pool())
        .await
        .unwrap();
        assert_eq!(queued, 1, "{backend}: only the undecided token is queued");
        let details: String =
            sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'alert.received'")
                .fetch_one(svc.running.state.store.pool())
                .await
                .unwrap();
        assert!(
            details.contains(&hex::encode(Sha256::digest(body.as_bytes()))),
            "{backend}: audit records the body hash"
        );

        // Canary: the raw tokens are nowhere in the database files.
        svc.running.shutdown().await;
        if backend == "sqlite" {
            let db_dir = url
                .trim_start_matches("sqlite://")
                .rsplit_once('/')
                .unwrap()
                .0
                .to_owned();
            for entry in std::fs::read_dir(db_dir).unwrap() {
                // SQLite removes its -wal and -shm files when the last connection closes, which
                // may happen while this loop runs: a file that is gone holds nothing.
                let Ok(bytes) = std::fs::read(entry.unwrap().path()) else {
                    continue;
                };
                for t in [&valid, &broken] {
                    assert!(
                        !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                        "raw token in a database file"
                    );
                }
            }
        }
        let _ = &svc.dir;
    }
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_store_nothing() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let signer = Signer::new("k1");
        let fake = fake_github(signer.key_list()).await;
        let svc = service(&url, &fake.url).await;
        let body = br#"[{"token":"x","url":""}]"#;
        let sig = signer.sign(body);

        let (s, b) = svc.post(None, Some(&sig), body).await;
        assert_eq!(s, 400, "{backend}");
        assert!(
            b.contains("missing header github-public-key-identifier"),
            "{backend}: {b}"
        );
        let (s, b) = svc.post(Some("k1"), None, body).await;
        assert!(
            s == 400 && b.contains("missing header github-public-key-signature"),
            "{backend}: {b}"
        );
        // A header with bytes beyond visible ASCII is there, and malformed, not missing.
        let resp = svc
            .client
            .post(&svc.endpoint)
            .header(
                "Github-Public-Key-Identifier",
                reqwest::header::HeaderValue::from_bytes(b"k\xe9").unwrap(),
            )
            .header("Github-Public-Key-Signature", &sig)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{backend}");
        let b = resp.text().await.unwrap();
        assert!(
            b.contains("header github-public-key-identifier is malformed (not visible ASCII)"),
            "{backend}: {b}"
        );
        let (s, b) = svc.post(Some("k1"), Some("not base64!"), body).await;
        assert!(
            s == 400 && b.contains("not base64 of a DER ECDSA signature"),
            "{backend}: {b}"
        );
        let (s, b) = svc.post(Some("k1"), Some(&sig), body).await;
        assert!(
            s == 400 && b.contains("missing field `type`"),
            "{backend}: {b}"
        );
        let forged = Signer::new("k1").sign(body);
        let (s, b) = svc.post(Some("k1"), Some(&forged), body).await;
        assert!(s == 401 && b.contains("does not verify"), "{backend}: {b}");

        // Forged key ids cannot make us hammer GitHub: one refresh per interval.
        let before = fake.hits.load(Ordering::SeqCst);
        for i in 0..5 {
            let (s, b) = svc
                .post(Some(&format!("forged-{i}")), Some(&sig), body)
                .await;
            assert!(
                s == 401 && b.contains("unknown public key identifier"),
                "{backend}: {b}"
            );
        }
        assert!(
            fake.hits.load(Ordering::SeqCst) - before <= 1,
            "{backend}: key refreshes were not rate limited"
        );

        let big =
            vec![b' '; spillway::platform::config::IngressSettings::default().max_body_bytes + 1];
        let (s, b) = svc.post(Some("k1"), Some(&sig), &big).await;
        assert_eq!(s, 413, "{backend}");
        assert!(b.contains("body: larger than"), "{backend}: {b}");
        let resp = svc
            .client
            .post(format!(
                "http://{}/l/not-an-endpoint",
                svc.running.public_addr
            ))
            .body("[]")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{backend}");
        assert_eq!(
            resp.json::<serde_json::Value>().await.unwrap()["error"],
            "no such endpoint"
        );
        assert_eq!(svc.count("alerts").await, 0, "{backend}");
        svc.running.shutdown().await;
    }
}

#[tokio::test]
async fn gitlab_and_depsdev_alerts_use_their_own_headers_and_shapes() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let signer = Signer::new("k1");
        let fake = fake_github(signer.key_list()).await;

        let gitlab = service_for(&url, &fake.url, ListenerKind::Gitlab).await;
        let body = serde_json::json!([{ "type": "gitlab_personal_access_token", "token": "glpat-0123456789abcdefghij", "url": "https://gitlab.com/x" }]).to_string();
        let sig = signer.sign(body.as_bytes());
        let (s, b) = gitlab.post(Some("k1"), Some(&sig), body.as_bytes()).await;
        assert!(
            s == 400 && b.contains("missing header gitlab-public-key-identifier"),
            "{backend}: {b}"
        );
        let (s, b) = gitlab
            .post_as(
                "Gitlab-Public-Key-Identifier",
                "Gitlab-Public-Key-Signature",
                Some("k1"),
                Some(&sig),
                body.as_bytes(),
            )
            .await;
        assert_eq!(s, 200, "{backend}: {b}");
        assert_eq!(gitlab.count("candidates").await, 1, "{backend}");
        gitlab.running.shutdown().await;
    }
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let signer = Signer::new("k1");
        let fake = fake_github(signer.key_list()).await;
        let depsdev = service_for(&url, &fake.url, ListenerKind::Depsdev).await;
        let mut broken = github_token(5);
        broken.replace_range(39..40, if broken.ends_with('0') { "1" } else { "0" });
        let body =
            serde_json::json!([{ "token": broken, "url": "https://deps.dev/x" }]).to_string();
        let sig = signer.sign(body.as_bytes());
        let (s, b) = depsdev
            .post_as(
                "DepsDev-Public-Key-Identifier",
                "DepsDev-Public-Key-Signature",
                Some("k1"),
                Some(&sig),
                body.as_bytes(),
            )
            .await;
        assert_eq!(s, 200, "{backend}: {b}");
        // No type on the wire: inferred from the token's format, and labelled from its checksum.
        let feedback: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            feedback[0]["token_type"], "github_personal_access_token",
            "{backend}: {b}"
        );
        assert_eq!(feedback[0]["label"], "false_positive", "{backend}: {b}");
        depsdev.running.shutdown().await;
    }
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_never_hold_the_server() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (backend, url, _dir) = crate::common::fresh_databases().await.remove(0);
    let (running, _keep) =
        crate::common::start_server_tuned(&url, "http://127.0.0.1:9/unused", |s| {
            s.header_read_timeout_secs = 1;
            s.request_timeout_secs = 1;
            s.ingress.body_grace_secs = 1;
        })
        .await;
    let addr = running.public_addr;
    let (_, endpoint) = listeners::create(&running.state.store, ListenerKind::Github, "gh", "test")
        .await
        .unwrap();
    running.state.directory.reload_now().await.unwrap();
    let closed_within = |mut stream: tokio::net::TcpStream| {
        let backend = backend.clone();
        async move {
            let started = std::time::Instant::now();
            let mut buf = Vec::new();
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                stream.read_to_end(&mut buf),
            )
            .await;
            assert!(read.is_ok(), "{backend}: the connection was kept open");
            (
                started.elapsed(),
                String::from_utf8_lossy(&buf).into_owned(),
            )
        }
    };

    // Nothing sent at all, and headers that never finish: the connection is closed.
    let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (took, _) = closed_within(idle).await;
    assert!(
        took < std::time::Duration::from_secs(5),
        "{backend}: {took:?}"
    );
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /l/x HTTP/1.1\r\nHost: spillway\r\n")
        .await
        .unwrap();
    let (took, _) = closed_within(slow).await;
    assert!(
        took < std::time::Duration::from_secs(5),
        "{backend}: {took:?}"
    );

    // A made-up endpoint: 404 before a body byte is read, and the connection closed.
    let mut unknown = tokio::net::TcpStream::connect(addr).await.unwrap();
    unknown
        .write_all(b"POST /l/x HTTP/1.1\r\nHost: spillway\r\nContent-Length: 8000000\r\n\r\n[")
        .await
        .unwrap();
    let (took, answer) = closed_within(unknown).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{backend}: {answer}");
    assert!(answer.contains("no such endpoint"), "{backend}: {answer}");
    assert!(
        took < std::time::Duration::from_millis(500),
        "{backend}: {took:?}"
    );

    // A real endpoint whose body trickles: 408 once the grace is over.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        format!(
            "POST {} HTTP/1.1\r\nHost: spillway\r\nGithub-Public-Key-Identifier: k\r\n\
             Github-Public-Key-Signature: c2ln\r\nContent-Length: 1000\r\n\r\n[{{\"tok",
            endpoint.path
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (took, answer) = closed_within(slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{backend}: {answer}");
    assert!(
        took < std::time::Duration::from_secs(5),
        "{backend}: {took:?}"
    );

    // Meanwhile the server still answers others.
    let resp = reqwest::get(format!("http://{}/healthz", running.admin_addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{backend}");
    running.shutdown().await;
}

/// `n` distinct valid GitHub tokens as a partner alert body.
fn many_tokens_body(n: usize, seed: u64) -> Vec<u8> {
    let items: Vec<_> = (0..n)
        .map(|i| {
            let body = format!("{:030}", seed * 1_000_000 + i as u64).replace('0', "Z");
            let token = format!("ghp_{body}{}", crc32_base62(body.as_bytes()));
            serde_json::json!({ "token": token, "type": "github_personal_access_token", "url": "", "source": "content" })
        })
        .collect();
    serde_json::to_vec(&items).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_alerts_are_committed_in_groups_and_each_is_acknowledged_after_its_commit() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let signer = Signer::new("k1");
        let fake = fake_github(signer.key_list()).await;
        let svc = Arc::new(service(&url, &fake.url).await);
        let signer = Arc::new(signer);
        let mut sends = Vec::new();
        for i in 0..64u64 {
            let (svc, signer) = (svc.clone(), signer.clone());
            sends.push(tokio::spawn(async move {
                let body = many_tokens_body(3, 100 + i);
                let sig = signer.sign(&body);
                svc.post(Some("k1"), Some(&sig), &body).await
            }));
        }
        for s in sends {
            let (status, body) = s.await.unwrap();
            assert_eq!(status, 200, "{backend}: {body}");
        }
        assert_eq!(svc.count("alerts").await, 64, "{backend}");
        assert_eq!(svc.count("candidates").await, 192, "{backend}");
        let metrics = reqwest::get(format!("http://{}/metrics", svc.running.admin_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let sum = |name: &str| -> f64 {
            metrics
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let (jobs, groups) = (
            sum("spillway_intake_group_jobs_sum"),
            sum("spillway_intake_group_jobs_count"),
        );
        assert_eq!(jobs, 64.0, "{backend}: {metrics}");
        assert!(
            groups < 64.0,
            "{backend}: {groups} groups for 64 alerts: nothing was grouped"
        );
        let key = svc.running.state.keys.audit_signing_key();
        let verdict = spillway::platform::audit::verify(
            &svc.running.state.store,
            &svc.dir.path().join("no-checkpoints-yet"),
            &key.verifying_key(),
        )
        .await
        .unwrap();
        assert!(
            matches!(verdict, spillway::platform::audit::Verdict::Intact { entries, .. } if entries >= 64),
            "{backend}: {verdict:?}"
        );
        Arc::try_unwrap(svc).ok().unwrap().running.shutdown().await;
    }
}

#[tokio::test]
async fn a_big_alert_is_written_in_slices_and_a_retry_finishes_an_interrupted_one() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let signer = Signer::new("k1");
        let fake = fake_github(signer.key_list()).await;
        let svc = service(&url, &fake.url).await;
        let n = 2 * spillway::intake::SLICE + 500;
        let body = many_tokens_body(n, 7);
        let sig = signer.sign(&body);
        let (s, b) = svc.post(Some("k1"), Some(&sig), &body).await;
        assert_eq!(s, 200, "{backend}: {b}");
        let pool = svc.running.state.store.pool();
        let slices: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'alert.slice'")
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(slices, 2, "{backend}");
        let positions: (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(DISTINCT position), MIN(position), MAX(position) FROM candidates",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(positions, (n as i64, 0, n as i64 - 1), "{backend}");

        // Interrupt it after its first slice (as a crash between slices would), then retry.
        let first = spillway::intake::SLICE as i64;
        sqlx::query("UPDATE alerts SET recorded_tokens = $1")
            .bind(first)
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("DELETE FROM work_queue WHERE candidate_id IN (SELECT id FROM candidates WHERE position >= $1)")
            .bind(first)
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("DELETE FROM candidates WHERE position >= $1")
            .bind(first)
            .execute(pool)
            .await
            .unwrap();
        let (s, b) = svc.post(Some("k1"), Some(&sig), &body).await;
        assert_eq!(s, 200, "{backend}: {b}");
        let positions: (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT position) FROM candidates")
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(
            positions,
            (n as i64, n as i64),
            "{backend}: every token once"
        );
        assert_eq!(svc.count("alerts").await, 1, "{backend}");
        // A complete alert sent again is a replay: nothing new.
        let (s, _) = svc.post(Some("k1"), Some(&sig), &body).await;
        assert_eq!(s, 200, "{backend}");
        assert_eq!(svc.count("candidates").await, n as i64, "{backend}");
        svc.running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_behind_a_huge_alert_is_decided_before_the_rest_of_it() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let signer = Signer::new("k1");
        let fake = fake_github(signer.key_list()).await;
        let svc = service(&url, &fake.url).await;
        let big = many_tokens_body(6_000, 9);
        let (s, _) = svc.post(Some("k1"), Some(&signer.sign(&big)), &big).await;
        assert_eq!(s, 200, "{backend}");
        let lone = many_tokens_body(1, 10);
        let (s, _) = svc.post(Some("k1"), Some(&signer.sign(&lone)), &lone).await;
        assert_eq!(s, 200, "{backend}");
        let pool = svc.running.state.store.pool();
        let lone_alert: i64 = sqlx::query_scalar("SELECT MAX(id) FROM alerts")
            .fetch_one(pool)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let decided_before: i64 = loop {
            let done: Option<i64> = sqlx::query_scalar(
                "SELECT f.id FROM findings f JOIN candidates c ON c.id = f.candidate_id \
                 WHERE c.alert_id = $1",
            )
            .bind(lone_alert)
            .fetch_optional(pool)
            .await
            .unwrap();
            if done.is_some() {
                break sqlx::query_scalar(
                    "SELECT COUNT(*) FROM findings f JOIN candidates c ON c.id = f.candidate_id \
                     WHERE c.alert_id <> $1",
                )
                .bind(lone_alert)
                .fetch_one(pool)
                .await
                .unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{backend}: never decided"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        assert!(
            decided_before < 3_000,
            "{backend}: {decided_before} of the big alert's 6,000 tokens were decided first"
        );
        svc.running.shutdown().await;
    }
}
