//! `spillway fake-github` in-process: its published key is in GitHub's exact format, what it signs
//! verifies with that key (by hand and through Spillway's own partner-key verifier), and
//! `/send-alert` delivers a signed alert that the real server accepts.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use spillway::devtools::fake_github::{self, Args};
use spillway::scanner::validate::crc32_base62;
use spillway::sources::listeners::{self, ListenerKind};
use spillway::sources::partner_keys::PartnerKeys;

#[tokio::test]
async fn signed_alerts_verify_with_the_published_pem_key() {
    let github = fake_github::start(&Args::default()).await.unwrap();
    let list: Value = reqwest::get(github.keys_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = list["public_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["key_identifier"], github.key_identifier.as_str());
    assert_eq!(keys[0]["is_current"], true);
    let public = VerifyingKey::from_public_key_pem(keys[0]["key"].as_str().unwrap()).unwrap();

    let body = br#"[{"token":"t","type":"foundry_token","url":"","source":"content"}]"#;
    let signature = github.sign(body);
    let der = STANDARD.decode(&signature).unwrap();
    assert!(
        public
            .verify(body, &Signature::from_der(&der).unwrap())
            .is_ok()
    );
    // Spillway's own verifier, fetching the key list over HTTP, agrees.
    let verifier = PartnerKeys::new(github.keys_url(), reqwest::Client::new());
    assert_eq!(
        verifier
            .verify(&github.key_identifier, &signature, body)
            .await,
        Ok(true)
    );
    assert!(
        verifier
            .verify(&github.key_identifier, &signature, b"[]")
            .await
            .is_err()
    );
    github.shutdown().await;
}

#[tokio::test]
async fn send_alert_delivers_a_signed_alert_the_server_accepts() {
    let github = fake_github::start(&Args::default()).await.unwrap();
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", db.path().join("t.db").display());
    let (server, _keys_dir) = crate::common::start_server(&url, &github.keys_url()).await;
    let (_, endpoint) = listeners::create(&server.state.store, ListenerKind::Github, "gh", "test")
        .await
        .unwrap();
    server.state.directory.reload_now().await.unwrap();
    let endpoint = format!("http://{}{}", server.public_addr, endpoint.path);
    let body = "q".repeat(30);
    let mut broken = format!("ghp_{body}{}", crc32_base62(body.as_bytes()));
    broken.replace_range(39..40, if broken.ends_with('0') { "1" } else { "0" });

    let client = reqwest::Client::new();
    let send = |alerts: Value, endpoint: String| {
        let client = client.clone();
        let url = format!("http://{}/send-alert", github.addr);
        async move {
            let response = client
                .post(url)
                .json(&json!({ "endpoint": endpoint, "alerts": alerts }))
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let alerts = json!([{ "token": broken, "type": "github_personal_access_token", "url": "", "source": "content" }]);
    let (status, answer) = send(alerts, endpoint).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(
        answer["body"],
        json!([{
            "token_hash": hex::encode(Sha256::digest(broken.as_bytes())),
            "token_type": "github_personal_access_token",
            "label": "false_positive",
        }])
    );

    // An endpoint that is not a URL, or that nobody answers at, is named in a JSON error.
    let (status, answer) = send(json!([]), "not a url".into()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("endpoint"));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/l/x", closed.local_addr().unwrap());
    drop(closed);
    let (status, answer) = send(json!([]), dead).await;
    assert_eq!(status, 502, "{answer}");
    server.shutdown().await;
    github.shutdown().await;
}
