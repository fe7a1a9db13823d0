//! `spillway serve` as an operator runs it: the real binary, embedded SQLite, no set-up beyond a
//! listener created from the command line. It is SIGKILLed in the middle of a stream of signed alerts
//! and restarted: every alert it acknowledged must be in the database and the audit log, and no raw
//! token may appear in its logs, its responses or any file it wrote (the canary).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use sha2::{Digest, Sha256};
use spillway::scanner::validate::crc32_base62;

use crate::common::process::Setup;

fn token(n: u32) -> String {
    let body = format!("{:0>30}", format!("canary{n}x")).replace('0', "q");
    format!("ghp_{body}{}", crc32_base62(body.as_bytes()))
}

async fn fake_github(key: &p256::ecdsa::SigningKey) -> String {
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let list = serde_json::json!({ "public_keys": [{ "key_identifier": "k1", "key": pem, "is_current": true }] }).to_string();
    let app = Router::new().route(
        "/keys",
        get(move || async move { ([("content-type", "application/json")], list) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/keys")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_alerts_survive_sigkill_and_no_token_leaks_anywhere() {
    let key = Arc::new(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng));
    let setup = Setup::new(fake_github(&key).await, None);
    let created = setup
        .command(&["listener", "create", "--kind", "github"])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let url = String::from_utf8(created.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut acked: Vec<String> = Vec::new();
    let mut tokens: Vec<String> = Vec::new();
    let mut responses = Vec::new();
    let mut n = 0u32;
    for run in 0..3 {
        let started = Instant::now();
        let mut child = setup.start(run);
        eprintln!("run {run}: started in {:?}", started.elapsed());
        let kill_after = Instant::now() + Duration::from_millis(300 + 200 * run as u64);
        loop {
            n += 1;
            let t = [token(n * 3), token(n * 3 + 1), token(n * 3 + 2)];
            tokens.extend(t.iter().cloned());
            let body = serde_json::to_vec(
                &t.iter().map(|t| serde_json::json!({ "token": t, "type": "github_personal_access_token", "url": "" })).collect::<Vec<_>>(),
            )
            .unwrap();
            let sig: p256::ecdsa::Signature = key.sign(&body);
            let sent = client
                .post(&url)
                .header("Github-Public-Key-Identifier", "k1")
                .header(
                    "Github-Public-Key-Signature",
                    STANDARD.encode(sig.to_der().as_bytes()),
                )
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    acked.push(hex::encode(Sha256::digest(&body)));
                    responses.push(resp.text().await.unwrap());
                }
                Ok(resp) => panic!("unexpected status {}", resp.status()),
                Err(_) => break, // the server is gone: not acknowledged
            }
            if Instant::now() > kill_after {
                if run < 2 {
                    // SIGKILL mid-stream: no chance to flush anything.
                    child.kill().unwrap();
                } else {
                    Command::new("kill")
                        .args(["-TERM", &child.id().to_string()])
                        .status()
                        .unwrap();
                }
                break;
            }
        }
        let waited = Instant::now();
        let status = child.wait().unwrap();
        eprintln!(
            "run {run}: {} acked so far, exit after {:?}",
            acked.len(),
            waited.elapsed()
        );
        if run == 2 {
            assert!(status.success(), "graceful shutdown exits 0: {status:?}");
        }
    }
    assert!(
        acked.len() >= 5,
        "the stream was too short to mean anything: {}",
        acked.len()
    );

    let db = setup.dir.path().join("spillway.db");
    let store = spillway::platform::store::Store::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT body_sha256 FROM alerts")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let audited: Vec<String> =
        sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'alert.received'")
            .fetch_all(store.pool())
            .await
            .unwrap();
    for hash in &acked {
        assert!(stored.contains(hash), "acknowledged alert {hash} lost");
        assert!(
            audited.iter().any(|d| d.contains(hash.as_str())),
            "acknowledged alert {hash} missing from the audit log"
        );
    }
    drop(store);
    let verify = setup.command(&["audit", "verify"]).output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // Canary: no raw token in any response, log or file the service wrote.
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(setup.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p: std::path::PathBuf| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.push(("responses".into(), responses.join("\n").into_bytes()));
    assert!(
        files
            .iter()
            .any(|(name, bytes)| name.ends_with("stderr.0.log") && !bytes.is_empty()),
        "debug logs were written"
    );
    let any_token = aho_corasick::AhoCorasick::new(&tokens).unwrap();
    for (name, bytes) in &files {
        assert!(!any_token.is_match(bytes), "raw token found in {name}");
    }
    // The search itself finds a planted token.
    assert!(any_token.is_match(format!("x {} y", tokens[0]).as_bytes()));
    assert!(Path::new(&setup.dir.path().join("spillway.db")).exists());
}
