//! Generic listeners (Standard Webhooks, Twilio, GitHub HMAC) against the published vectors, and
//! end to end over HTTP with their redacted output stream; the GitLab Token Revocation API.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use spillway::listeners::{self, ListenerKind};
use spillway::scanner::TokenSecret;
use spillway::scanner::validate::crc32_base62;
use spillway::webhook_auth::{self, AuthError};

fn vectors() -> Value {
    serde_json::from_str(include_str!("fixtures/public_vectors.json")).unwrap()
}

#[test]
fn standard_webhooks_published_vectors() {
    let v = vectors();
    for key in ["v1_hmac_sha256", "v1a_ed25519"] {
        let t = &v["standard_webhooks"][key];
        let secret = t
            .get("secret")
            .or(t.get("public_key"))
            .unwrap()
            .as_str()
            .unwrap();
        let (id, ts, body, sig) = (
            t["id"].as_str().unwrap(),
            t["timestamp"].as_str().unwrap(),
            t["body"].as_str().unwrap(),
            t["signature"].as_str().unwrap(),
        );
        let now: i64 = ts.parse().unwrap();
        assert_eq!(
            webhook_auth::standard_webhooks(secret, id, ts, sig, body.as_bytes(), now),
            Ok(()),
            "{key}"
        );
        // Rotation: several signatures, one of them right.
        let list = format!("v1,AAAA v1a,AAAA {sig}");
        assert_eq!(
            webhook_auth::standard_webhooks(secret, id, ts, &list, body.as_bytes(), now + 299),
            Ok(()),
            "{key}"
        );
        let tampered = format!("{body} ");
        assert!(
            webhook_auth::standard_webhooks(secret, id, ts, sig, tampered.as_bytes(), now).is_err(),
            "{key}"
        );
        assert_eq!(
            webhook_auth::standard_webhooks(secret, id, ts, sig, body.as_bytes(), now + 301),
            Err(AuthError::Stale),
            "{key}"
        );
        for reject in v["standard_webhooks"]["must_reject"].as_array().unwrap() {
            let r = webhook_auth::standard_webhooks(
                secret,
                id,
                ts,
                reject.as_str().unwrap(),
                body.as_bytes(),
                now,
            );
            assert_eq!(
                r,
                Err(AuthError::BadSignature("webhook-signature")),
                "{key}: {reject}"
            );
        }
    }
}

#[test]
fn twilio_published_vector() {
    let t = &vectors()["twilio"];
    let params: Vec<(String, String)> = t["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let (token, url, sig) = (
        t["auth_token"].as_str().unwrap(),
        t["url"].as_str().unwrap(),
        t["signature"].as_str().unwrap(),
    );
    assert_eq!(webhook_auth::twilio_signature(token, url, &params), sig);
    assert_eq!(webhook_auth::twilio(token, url, &params, sig), Ok(()));
    assert!(webhook_auth::twilio(token, &format!("{url}&x=1"), &params, sig).is_err());
}

fn github_token(seed: u8) -> String {
    let body: String = (0..30)
        .map(|i| (b'A' + ((i * 5 + seed as usize * 11) % 26) as u8) as char)
        .collect();
    format!("ghp_{body}{}", crc32_base62(body.as_bytes()))
}

async fn listener(
    running: &spillway::server::Running,
    kind: ListenerKind,
    secret: &str,
) -> (String, String) {
    let s = &running.state;
    let secret = TokenSecret::new(secret);
    let (l, e) = listeners::create_with_secret(
        &s.store,
        kind,
        "generic",
        "test",
        Some((&s.keys.sealing, &secret)),
    )
    .await
    .unwrap();
    (l.id, e.path)
}

#[tokio::test]
async fn generic_webhooks_feed_the_intake_and_keep_a_redacted_stream() {
    let v = vectors();
    let whsec = v["standard_webhooks"]["v1_hmac_sha256"]["secret"]
        .as_str()
        .unwrap();
    for (backend, url, _dir) in common::fresh_databases().await {
        let (running, _keep) = common::start_server(&url, "http://127.0.0.1:9/unused").await;
        let client = reqwest::Client::new();
        let base = format!("http://{}", running.public_addr);
        let token = github_token(1);

        // Standard Webhooks, signed now.
        let (sw_id, sw_path) = listener(&running, ListenerKind::StandardWebhooks, whsec).await;
        let body = format!(r#"{{"event":"config.changed","value":"GITHUB_TOKEN={token}"}}"#);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(
            &STANDARD.decode(whsec.trim_start_matches("whsec_")).unwrap(),
        )
        .unwrap();
        mac.update(format!("msg_1.{ts}.{body}").as_bytes());
        let sig = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        let send = |headers: Vec<(&'static str, String)>, body: String, path: &str| {
            let mut req = client.post(format!("{base}{path}")).body(body);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req.send()
        };
        let resp = send(
            vec![
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", ts.clone()),
            ],
            body.clone(),
            &sw_path,
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 400, "{backend}");
        assert!(
            resp.text()
                .await
                .unwrap()
                .contains("missing header webhook-signature"),
            "{backend}"
        );
        let resp = send(
            vec![
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", ts.clone()),
                ("webhook-signature", "v1,AAAA".into()),
            ],
            body.clone(),
            &sw_path,
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 401, "{backend}");
        let resp = send(
            vec![
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", ts.clone()),
                ("webhook-signature", sig),
            ],
            body.clone(),
            &sw_path,
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200, "{backend}");
        assert_eq!(
            resp.json::<Value>().await.unwrap()["tokens_found"],
            1,
            "{backend}"
        );

        // GitHub HMAC.
        let (_, gh_path) = listener(&running, ListenerKind::GithubHmac, "hmac-secret").await;
        let body2 = format!(r#"{{"commits":[{{"message":"add {}"}}]}}"#, github_token(2));
        let mut mac = Hmac::<Sha256>::new_from_slice(b"hmac-secret").unwrap();
        mac.update(body2.as_bytes());
        let resp = send(
            vec![(
                "x-hub-signature-256",
                format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
            )],
            body2,
            &gh_path,
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200, "{backend}");

        // Twilio: the signature covers the public URL Twilio called.
        let (_, tw_path) = listener(&running, ListenerKind::Twilio, "twilio-auth-token").await;
        let params = vec![
            ("Body".to_owned(), format!("key {}", github_token(3))),
            ("From".to_owned(), "+15550000".to_owned()),
        ];
        let sig = webhook_auth::twilio_signature(
            "twilio-auth-token",
            &format!("https://hooks.example.test{tw_path}"),
            &params,
        );
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        let resp = send(
            vec![
                ("x-twilio-signature", sig),
                ("content-type", "application/x-www-form-urlencoded".into()),
            ],
            form,
            &tw_path,
        )
        .await
        .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "{backend}: {}",
            resp.text().await.unwrap()
        );

        let candidates: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM candidates")
            .fetch_one(running.state.store.pool())
            .await
            .unwrap();
        assert_eq!(candidates, 3, "{backend}");
        // The output stream holds the request with the token replaced by its type and fingerprint.
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT redacted_body FROM listener_events WHERE listener_id = $1")
                .bind(&sw_id)
                .fetch_all(running.state.store.pool())
                .await
                .unwrap();
        assert_eq!(stored.len(), 1, "{backend}");
        assert!(
            stored[0].contains("GITHUB_TOKEN=[REDACTED github_personal_access_token "),
            "{backend}: {}",
            stored[0]
        );
        assert!(
            !stored[0].contains(&token),
            "{backend}: token left in the stream"
        );
        running.shutdown().await;
        assert_no_token_in_database_files(&url, &[token.clone(), github_token(2), github_token(3)]);
    }
}

#[tokio::test]
async fn gitlab_token_revocation_api() {
    for (backend, url, _dir) in common::fresh_databases().await {
        let (running, _keep) = common::start_server(&url, "http://127.0.0.1:9/unused").await;
        let (_, path) = listener(&running, ListenerKind::GitlabRevocation, "shared-secret").await;
        let client = reqwest::Client::new();
        let base = format!("http://{}{path}", running.public_addr);
        let types: Value = client
            .get(format!("{base}/v1/revocable_token_types"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            types["types"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["type"] == "github_personal_access_token"),
            "{backend}"
        );
        let body = serde_json::json!([{ "type": "github_personal_access_token", "token": github_token(4), "location": "https://gitlab.com/x" }]);
        let resp = client
            .post(format!("{base}/v1/revoke_tokens"))
            .header("authorization", "wrong")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{backend}");
        let resp = client
            .post(format!("{base}/v1/revoke_tokens"))
            .header("authorization", "shared-secret")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "{backend}");
        let candidates: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM candidates")
            .fetch_one(running.state.store.pool())
            .await
            .unwrap();
        assert_eq!(candidates, 1, "{backend}");
        running.shutdown().await;
        assert_no_token_in_database_files(&url, &[github_token(4), "shared-secret".to_owned()]);
    }
}

/// The canary for these paths: no raw token in the SQLite database, its WAL or its shm file.
fn assert_no_token_in_database_files(url: &str, tokens: &[String]) {
    let Some(path) = url.strip_prefix("sqlite://") else {
        return;
    };
    let dir = std::path::Path::new(path).parent().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // SQLite removes its -wal and -shm files when the last connection closes (the revocation
        // engine's may close while this runs): a file that is gone holds nothing.
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        for t in tokens {
            assert!(
                !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                "raw token in {}",
                path.display()
            );
        }
    }
}
