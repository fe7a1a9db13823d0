//! Generic listeners (Standard Webhooks, Twilio, GitHub HMAC) against the published vectors, and
//! end to end over HTTP with their redacted output stream; the GitLab Token Revocation API.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use spillway::platform::webhook_auth::{self, AuthError};
use spillway::scanner::TokenSecret;
use spillway::scanner::validate::crc32_base62;
use spillway::sources::listeners::{self, ListenerKind};

use crate::common::senders::{standard_webhooks_headers, twilio_signature};

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
    let sha1 = webhook_auth::TwilioAlgorithm::HmacSha1;
    assert_eq!(webhook_auth::twilio(token, sha1, url, &params, sig), Ok(()));
    assert!(webhook_auth::twilio(token, sha1, &format!("{url}&x=1"), &params, sig).is_err());
}

fn github_token(seed: u8) -> String {
    let body: String = (0..30)
        .map(|i| (b'A' + ((i * 5 + seed as usize * 11) % 26) as u8) as char)
        .collect();
    format!("ghp_{body}{}", crc32_base62(body.as_bytes()))
}

async fn listener(
    running: &spillway::service::Running,
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
    s.directory.reload_now().await.unwrap();
    (l.id, e.path)
}

#[tokio::test]
async fn generic_webhooks_feed_the_intake_and_keep_a_redacted_stream() {
    let v = vectors();
    let whsec = v["standard_webhooks"]["v1_hmac_sha256"]["secret"]
        .as_str()
        .unwrap();
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let (running, _keep) = crate::common::start_server(&url, "http://127.0.0.1:9/unused").await;
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
async fn gitlab_token_revocation_api_speaks_gitlabs_names_and_wants_the_secret_on_both_calls() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let (running, _keep) = crate::common::start_server(&url, "http://127.0.0.1:9/unused").await;
        let (_, path) = listener(&running, ListenerKind::GitlabRevocation, "shared-secret").await;
        let client = reqwest::Client::new();
        let base = format!("http://{}{path}", running.public_addr);
        let get_types = |auth: Option<&'static str>| {
            let mut req = client
                .get(format!("{base}/v1/revocable_token_types"))
                .header("content-type", "application/json");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            req.send()
        };
        for auth in [None, Some("wrong"), Some("Bearer shared-secret")] {
            let resp = get_types(auth).await.unwrap();
            assert_eq!(resp.status(), 401, "{backend}: {auth:?}");
            assert!(resp.json::<Value>().await.unwrap()["error"].is_string());
        }
        let types: Value = get_types(Some("shared-secret"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let types: Vec<&str> = types["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().expect("types are strings"))
            .collect();
        for expected in [
            "gitleaks_rule_id_gitlab_personal_access_token",
            "gitleaks_rule_id_github_personal_access_token",
            "gitleaks_rule_id_aws",
            "gitleaks_rule_id_slack_token",
        ] {
            assert!(types.contains(&expected), "{backend}: {expected} missing");
        }
        assert!(types.iter().all(|t| t.starts_with("gitleaks_rule_id_")));

        let post = |auth: &'static str, body: String| {
            client
                .post(format!("{base}/v1/revoke_tokens"))
                .header("content-type", "application/json")
                .header("authorization", auth)
                .body(body)
                .send()
        };
        // GitLab's documented example body, under its own type names.
        let example = r#"[{
    "type": "gitleaks_rule_id_gitlab_personal_access_token",
    "token": "glpat--8GMtG8Mf4EnMJzmAWDU",
    "location": "https://example.com/some-repo/blob/abcdefghijklmnop/compromisedfile1.java"
},
{
    "type": "gitleaks_rule_id_gitlab_personal_access_token",
    "token": "glpat--tG84EGK33nMLLDE70zU",
    "location": "https://example.com/some-repo/blob/abcdefghijklmnop/compromisedfile2.java"
}]"#;
        let resp = post("wrong", example.to_owned()).await.unwrap();
        assert_eq!(resp.status(), 401, "{backend}");
        let resp = client
            .post(format!("{base}/v1/revoke_tokens"))
            .header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(b"shared-secr\xe9t").unwrap(),
            )
            .body(example)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{backend}");
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("header authorization is malformed (not visible ASCII)"),
            "{backend}: {text}"
        );
        let resp = post("shared-secret", example.to_owned()).await.unwrap();
        assert_eq!(resp.status(), 204, "{backend}");
        // A GitLab name, a name unknown to the mapping (classified by scanning the token), and
        // GitLab's extra fields, which are ignored.
        let body = serde_json::json!([
            { "type": "gitleaks_rule_id_github_personal_access_token", "token": github_token(4), "location": "https://gitlab.com/x" },
            { "type": "my_custom_rule", "token": github_token(5), "location": "https://gitlab.com/y", "vulnerability": { "id": 7 } },
        ]);
        let resp = post("shared-secret", body.to_string()).await.unwrap();
        assert_eq!(resp.status(), 204, "{backend}");
        let types: Vec<String> =
            sqlx::query_scalar("SELECT token_type FROM candidates ORDER BY id")
                .fetch_all(running.state.store.pool())
                .await
                .unwrap();
        assert_eq!(
            types,
            [
                "gitlab_access_token",
                "gitlab_access_token",
                "github_personal_access_token",
                "github_personal_access_token"
            ],
            "{backend}"
        );

        // 400s name the field, never echo the token, and store nothing.
        let refusals = [
            (
                serde_json::json!([{ "type": "gitleaks_rule_id_adafruitiokey", "token": "not-a-known-token-format-x" }]).to_string(),
                "element 0: field `type`: unsupported token type \"gitleaks_rule_id_adafruitiokey\"",
            ),
            (
                format!(r#"[{{"type":"gitleaks_rule_id_aws","token":"{}","token":"{}"}}]"#, github_token(6), github_token(7)),
                "duplicate field `token`",
            ),
            (
                format!(r#"[{{"token":"{}","location":"x"}}]"#, github_token(8)),
                "missing field `type`",
            ),
            ("{}".to_owned(), "expected an array of {type, token, location}"),
            (
                serde_json::json!([{ "type": "gitleaks_rule_id_aws", "token": "" }]).to_string(),
                "element 0: field `token` must be non-empty",
            ),
        ];
        for (body, message) in refusals {
            let resp = post("shared-secret", body.clone()).await.unwrap();
            assert_eq!(resp.status(), 400, "{backend}: {body}");
            let text = resp.text().await.unwrap();
            let error: Value = serde_json::from_str(&text).unwrap();
            assert!(
                error["error"].as_str().unwrap().contains(message),
                "{backend}: {text}"
            );
            for n in 6..=8 {
                assert!(!text.contains(&github_token(n)), "{backend}: token echoed");
            }
        }
        let candidates: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM candidates")
            .fetch_one(running.state.store.pool())
            .await
            .unwrap();
        assert_eq!(candidates, 4, "{backend}");
        running.shutdown().await;
        assert_no_token_in_database_files(
            &url,
            &[github_token(4), github_token(5), "shared-secret".to_owned()],
        );
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

#[tokio::test]
async fn twilio_requests_verify_as_the_official_validators_accept_them() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let (running, _keep) = crate::common::start_server(&url, "http://127.0.0.1:9/unused").await;
        let (_, path) = listener(&running, ListenerKind::Twilio, "twilio-auth-token").await;
        let client = reqwest::Client::new();
        let local = format!("http://{}{path}", running.public_addr);
        let public = format!("https://hooks.example.test{path}");
        let public_with_port = format!("https://hooks.example.test:443{path}");
        let post =
            |target: String, sig: String, body: String, json: bool, settings: Option<&str>| {
                let mut req = client
                    .post(target)
                    .header("x-twilio-signature", sig)
                    .header(
                        "content-type",
                        if json {
                            "application/json"
                        } else {
                            "application/x-www-form-urlencoded"
                        },
                    )
                    .body(body);
                if let Some(s) = settings {
                    req = req.header("x-twilio-webhooks-signature-settings", s.to_owned());
                }
                req.send()
            };
        let form = |params: &[(&str, &str)]| {
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params)
                .finish()
        };

        // Signed over the URL with the default port, and with a repeated identical value.
        let t = github_token(11);
        let body_value = format!("deploy key\n{t}");
        let params = [
            ("Body", body_value.as_str()),
            ("MessageSid", "SM1"),
            ("MediaUrl", "https://x.test/a"),
            ("MediaUrl", "https://x.test/a"),
            ("MediaUrl", "https://x.test/0"),
        ];
        let sig = twilio_signature("twilio-auth-token", &public_with_port, &params, false);
        let resp = post(local.clone(), sig, form(&params), false, None)
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "{backend}: {}",
            resp.text().await.unwrap()
        );
        assert_eq!(
            resp.json::<Value>().await.unwrap()["tokens_found"],
            1,
            "{backend}"
        );
        // A wrong signature is still refused.
        let resp = post(local.clone(), "AAAA".into(), form(&params), false, None)
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{backend}");

        // A JSON body: the URL alone is signed, and carries the body's SHA-256.
        let t2 = github_token(12);
        let json_body = format!(r#"{{"MessageSid":"SM2","Body":"x\n{t2}"}}"#);
        let hash = hex::encode(<Sha256 as sha2::Digest>::digest(json_body.as_bytes()));
        let query = format!("?bodySHA256={hash}");
        let sig = twilio_signature("twilio-auth-token", &format!("{public}{query}"), &[], false);
        let resp = post(
            format!("{local}{query}"),
            sig.clone(),
            json_body.clone(),
            true,
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "{backend}: {}",
            resp.text().await.unwrap()
        );
        assert_eq!(
            resp.json::<Value>().await.unwrap()["tokens_found"],
            1,
            "{backend}"
        );
        let tampered = json_body.replace("SM2", "SM3");
        let resp = post(format!("{local}{query}"), sig, tampered, true, None)
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{backend}");
        assert!(
            resp.text().await.unwrap().contains("bodySHA256"),
            "{backend}"
        );

        // A SharedKey webhook signed with HMAC-SHA256, as its settings header names.
        let params = [("Body", "hello"), ("MessageSid", "SM4")];
        let sig = twilio_signature("twilio-auth-token", &public, &params, true);
        let settings = "key=webhooks_sharedkey_x,algorithm=HMAC_SHA256";
        let resp = post(
            local.clone(),
            sig.clone(),
            form(&params),
            false,
            Some(settings),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200, "{backend}");
        let resp = post(local.clone(), sig, form(&params), false, None)
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            401,
            "{backend}: SHA-256 signature read as SHA-1"
        );
        let resp = post(
            local.clone(),
            "AAAA".into(),
            form(&params),
            false,
            Some("algorithm=MD5"),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 400, "{backend}");
        running.shutdown().await;
        assert_no_token_in_database_files(&url, &[t, t2]);
    }
}

#[tokio::test]
async fn standard_webhooks_take_every_secret_form_and_deduplicate_by_webhook_id() {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    let key = b"a key of 23 bytes, oddly";
    let forms = [
        format!("whsec_{}", STANDARD.encode(key)),
        STANDARD.encode(key),
        format!("whsec_{}", STANDARD_NO_PAD.encode(key)),
        STANDARD_NO_PAD.encode(key),
    ];
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let (running, _keep) = crate::common::start_server(&url, "http://127.0.0.1:9/unused").await;
        let client = reqwest::Client::new();
        let send = |path: &str, headers: Vec<(&'static str, String)>, body: String| {
            let mut req = client
                .post(format!("http://{}{path}", running.public_addr))
                .header("content-type", "application/json")
                .body(body);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req.send()
        };
        for (i, secret) in forms.iter().enumerate() {
            let (_, path) = listener(&running, ListenerKind::StandardWebhooks, secret).await;
            let body = format!(r#"{{"n":{i}}}"#);
            let resp = send(
                &path,
                standard_webhooks_headers(key, &format!("msg_form{i}"), body.as_bytes()),
                body,
            )
            .await
            .unwrap();
            assert_eq!(resp.status(), 200, "{backend}: secret form {i}");
        }

        let (id, path) = listener(&running, ListenerKind::StandardWebhooks, &forms[0]).await;
        let t = github_token(21);
        let body = format!(r#"{{"type":"config.changed","data":{{"value":"\t{t}"}}}}"#);
        let alerts = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM alerts WHERE listener_id = $1")
                .bind(&id)
                .fetch_one(running.state.store.pool())
                .await
                .unwrap()
        };
        // The same webhook-id twice (a retry, re-signed at a later timestamp): one record, one answer.
        let mut answers = Vec::new();
        for _ in 0..2 {
            let resp = send(
                &path,
                standard_webhooks_headers(key, "msg_retry", body.as_bytes()),
                body.clone(),
            )
            .await
            .unwrap();
            assert_eq!(resp.status(), 200, "{backend}");
            answers.push(resp.json::<Value>().await.unwrap());
        }
        assert_eq!(answers[0], answers[1], "{backend}");
        assert_eq!(answers[0]["tokens_found"], 1, "{backend}");
        assert_eq!(alerts().await, 1, "{backend}");
        // A new id with an identical body is a new message.
        let resp = send(
            &path,
            standard_webhooks_headers(key, "msg_new", body.as_bytes()),
            body.clone(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200, "{backend}");
        assert_eq!(alerts().await, 2, "{backend}");
        // A gzip bomb: refused with 413 before it is inflated past the cap; not recorded.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..30 {
            std::io::Write::write_all(&mut gz, &zeros).unwrap();
        }
        let bomb = gz.finish().unwrap();
        let mut request = client
            .post(format!("http://{}{path}", running.public_addr))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(bomb.clone());
        for (k, v) in standard_webhooks_headers(key, "msg_bomb", &bomb) {
            request = request.header(k, v);
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 413, "{backend}");
        assert!(
            resp.json::<Value>().await.unwrap()["error"]
                .as_str()
                .unwrap()
                .contains("content-encoding")
        );
        assert_eq!(alerts().await, 2, "{backend}");
        running.shutdown().await;
        assert_no_token_in_database_files(&url, &[t]);
    }
}

#[test]
fn listener_secrets_the_sender_could_never_use_are_refused_at_creation() {
    let sw = ListenerKind::StandardWebhooks;
    for bad in ["whsec_", "not base64!", "whsec_***", "whpk_AAAA", "  "] {
        let e = sw.new_listener_secret(Some(TokenSecret::new(bad)));
        assert!(e.is_err(), "{bad:?} accepted");
    }
    assert!(
        sw.new_listener_secret(Some(TokenSecret::new(webhook_auth::generate_whsec())))
            .is_ok()
    );
    let gl = ListenerKind::GitlabRevocation;
    assert!(
        gl.new_listener_secret(Some(TokenSecret::new("two words")))
            .is_err()
    );
    // Every kind that takes a secret gets one generated, except Twilio, whose auth token is given.
    for kind in [ListenerKind::StandardWebhooks, ListenerKind::GithubHmac, gl] {
        let (_, generated) = kind.new_listener_secret(None).unwrap().unwrap();
        assert!(generated, "{kind:?}");
    }
    assert!(ListenerKind::Twilio.new_listener_secret(None).is_err());
    assert!(
        ListenerKind::Github
            .new_listener_secret(Some(TokenSecret::new("x")))
            .is_err()
    );
}
