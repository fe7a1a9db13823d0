//! The reference installation over real HTTP, in-process on a free loopback port: the tokens it
//! issues verify against its JWKS, contract calls are signed, revocation is idempotent per key,
//! and its rate limit and failure injection behave as docs/INSTALLATIONS.md says. One test runs
//! the real binary as the README demo does.

use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use spillway::devtools::reference_installation::{self, Args, MintedToken, Revocation, Stats};
use spillway::installations::contract::{Jwks, RevokeStatus};
use spillway::platform::webhook_auth::{generate_whsec, sign_standard_webhooks};

struct Harness {
    ri: reference_installation::Running,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

/// The installation with `tune` applied to the defaults; its secret file is created in a fresh
/// directory.
async fn start(tune: impl FnOnce(&mut Args)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut args = Args {
        secret_file: dir.path().join("whsec"),
        ..Args::default()
    };
    tune(&mut args);
    let ri = reference_installation::start(&args)
        .await
        .expect("reference installation starts");
    Harness {
        ri,
        client: reqwest::Client::new(),
        dir,
    }
}

/// An HTTP answer: status, content type, body.
struct Answer {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("JSON: {}", self.body))
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn revoke_body(token_sha256: &str) -> Value {
    json!({
        "finding_id": "f-1",
        "token_type": "foundry_user_token",
        "token_sha256": token_sha256,
        "found_at": "https://github.com/o/r/blob/main/.env",
        "source": "github",
        "received_at": "2025-01-01T00:00:00.000Z",
    })
}

fn verify_body(token_sha256: &str) -> Value {
    json!({ "finding_id": "f-1", "token_type": "foundry_user_token", "token_sha256": token_sha256 })
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.ri.url())
    }

    async fn mint(&self, request: Value) -> MintedToken {
        let response = self
            .client
            .post(self.url("/tokens"))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn stats(&self) -> Stats {
        self.get("/stats").await
    }

    /// A contract call signed with the installation's own secrets.
    async fn call(&self, path: &str, body: &Value, key: Option<&str>) -> Answer {
        let secrets: Vec<&str> = self.ri.secrets.iter().map(String::as_str).collect();
        self.call_signed(path, body, key, &secrets, now_secs())
            .await
    }

    async fn call_signed(
        &self,
        path: &str,
        body: &Value,
        key: Option<&str>,
        secrets: &[&str],
        timestamp: i64,
    ) -> Answer {
        let body = body.to_string();
        let id = format!("msg_{:016x}", rand::random::<u64>());
        let signature = sign_standard_webhooks(secrets, &id, timestamp, body.as_bytes()).unwrap();
        let mut request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        answer(request.send().await.unwrap()).await
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_owned())
    };
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    Answer {
        status: response.status().as_u16(),
        content_type,
        retry_after,
        body: response.text().await.unwrap(),
    }
}

#[tokio::test]
async fn issued_tokens_verify_against_the_published_jwks_and_answer_active() {
    let h = start(|_| {}).await;
    let session = h.mint(json!({ "kind": "session" })).await;
    let user = h.mint(json!({ "kind": "user", "sub": "alice" })).await;
    let jwks: Jwks = h.get("/jwks.json").await;
    assert_eq!(jwks.keys.len(), 1);
    let jwk = &jwks.keys[0];
    assert_eq!(jwk.kid.as_deref(), Some(h.ri.plntr.as_str()));
    let public = spillway::platform::jwt::key_from_jwk(jwk).unwrap();
    for minted in [&session, &user] {
        assert!(minted.token.starts_with("eyJwbG50ciI6"), "Foundry header");
        let decoded = spillway::platform::jwt::decode(&minted.token).unwrap();
        assert_eq!(decoded.key_id(), Some(h.ri.plntr.as_str()));
        assert!(spillway::platform::jwt::verify(
            &minted.token,
            &decoded,
            &public
        ));
        for claim in ["sub", "jti", "org", "iat"] {
            assert!(decoded.claims.get(claim).is_some(), "claim {claim}");
        }
        let answer = h
            .call("/verify", &verify_body(&sha(&minted.token)), None)
            .await;
        assert_eq!(
            (answer.status, answer.json()),
            (200, json!({"status": "active"}))
        );
    }
    // Session tokens carry exp = iat + 16 h; user tokens carry none but go inactive after 30 days.
    let s = spillway::platform::jwt::decode(&session.token).unwrap();
    let iat = s.claims["iat"].as_i64().unwrap();
    assert_eq!(s.expires_at(), Some(iat + 16 * 3600));
    assert_eq!(session.expires_at, Some(iat + 16 * 3600));
    let u = spillway::platform::jwt::decode(&user.token).unwrap();
    assert_eq!(u.expires_at(), None);
    assert_eq!(u.claims["sub"], "alice");
    assert_eq!(user.expires_at, None);
    assert_eq!(
        user.inactive_after,
        u.claims["iat"].as_i64().unwrap() + 30 * 86400
    );

    // Past its TTL a token is inactive; a token never issued is unknown.
    let expired = h.mint(json!({ "kind": "user", "ttl_secs": 0 })).await;
    let answer = h
        .call("/verify", &verify_body(&sha(&expired.token)), None)
        .await;
    assert_eq!(answer.json(), json!({"status": "inactive"}));
    let answer = h.call("/verify", &verify_body(&sha("nope")), None).await;
    assert_eq!(answer.json(), json!({"status": "unknown_token"}));
    assert_eq!(h.stats().await.tokens_issued, 3);
}

#[tokio::test]
async fn revocation_is_idempotent_per_key_and_a_new_key_counts_a_duplicate_effect() {
    let h = start(|_| {}).await;
    let token = h.mint(json!({ "kind": "session" })).await.token;
    let body = revoke_body(&sha(&token));
    let first = h.call("/revoke", &body, Some("K")).await;
    assert_eq!(
        (first.status, first.json()),
        (200, json!({"status": "revoked"}))
    );
    let again = h.call("/revoke", &body, Some("K")).await;
    assert_eq!(
        (again.status, again.body.as_str()),
        (200, first.body.as_str())
    );
    assert_eq!(h.stats().await.duplicate_effects, 0);

    let other = h.call("/revoke", &body, Some("K2")).await;
    assert_eq!(other.json(), json!({"status": "already_revoked"}));
    let stats = h.stats().await;
    assert_eq!((stats.revocations, stats.duplicate_effects), (1, 1));
    assert_eq!(stats.revoke_calls, 3);

    let revocations: Vec<Revocation> = h.get("/revocations").await;
    assert_eq!(revocations.len(), 1);
    assert_eq!(revocations[0].token_sha256, sha(&token));
    assert_eq!(revocations[0].idempotency_key, "K");
    let verified = h.call("/verify", &verify_body(&sha(&token)), None).await;
    assert_eq!(verified.json(), json!({"status": "revoked"}));

    // Unknown tokens are terminal too; a key reused for another token is refused.
    let unknown = h.call("/revoke", &revoke_body(&sha("x")), Some("K3")).await;
    assert_eq!(
        unknown.json()["status"],
        RevokeStatus::UnknownToken.as_str()
    );
    let reused = h.call("/revoke", &revoke_body(&sha("y")), Some("K")).await;
    assert_eq!(reused.status, 422, "{}", reused.body);
    assert!(reused.body.contains("Idempotency-Key"), "{}", reused.body);
    assert_eq!(h.ri.revocations().len(), 1);
}

#[tokio::test]
async fn malformed_calls_get_400_naming_the_field_or_header() {
    let h = start(|_| {}).await;
    let no_key = h.call("/revoke", &revoke_body(&sha("t")), None).await;
    assert_eq!(no_key.status, 400);
    assert!(
        no_key.json()["error"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    let mut body = revoke_body(&sha("t"));
    body.as_object_mut().unwrap().remove("token_sha256");
    let missing = h.call("/revoke", &body, Some("K")).await;
    assert_eq!(missing.status, 400);
    assert!(missing.body.contains("token_sha256"), "{}", missing.body);
    let short = h.call("/verify", &verify_body("abc"), None).await;
    assert_eq!(short.status, 400);
    assert!(short.body.contains("token_sha256"), "{}", short.body);
    let bad_kind = h
        .client
        .post(h.url("/tokens"))
        .json(&json!({"kind": "robot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_kind.status(), 400);
    assert!(bad_kind.text().await.unwrap().contains("robot"));
}

#[tokio::test]
async fn unsigned_or_badly_signed_calls_are_refused_401_with_no_effect() {
    let h = start(|_| {}).await;
    let token = h.mint(json!({ "kind": "user" })).await.token;
    let body = revoke_body(&sha(&token));
    let unsigned = answer(
        h.client
            .post(h.url("/revoke"))
            .header("Idempotency-Key", "K")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(unsigned.status, 401);
    assert_eq!(
        unsigned.json(),
        json!({"error": "missing header webhook-id"})
    );
    let stranger = generate_whsec();
    let forged = h
        .call_signed("/revoke", &body, Some("K"), &[&stranger], now_secs())
        .await;
    assert_eq!(forged.status, 401);
    assert!(forged.body.contains("webhook-signature"), "{}", forged.body);
    let own: Vec<&str> = h.ri.secrets.iter().map(String::as_str).collect();
    let stale = h
        .call_signed("/revoke", &body, Some("K"), &own, now_secs() - 3600)
        .await;
    assert_eq!(stale.status, 401);
    assert!(stale.body.contains("webhook-timestamp"), "{}", stale.body);
    let stats = h.stats().await;
    assert_eq!((stats.bad_signatures, stats.revocations), (3, 0));
}

#[tokio::test]
async fn a_missing_secret_file_is_created_private_and_both_rotation_secrets_verify() {
    let h = start(|_| {}).await;
    let path = h.dir.path().join("whsec");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim(), h.ri.secrets[0]);
    assert!(text.starts_with("whsec_"));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let (old, new) = (generate_whsec(), generate_whsec());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rotating");
    std::fs::write(&file, format!("{old}\n{new}\n")).unwrap();
    let rotating = start(|a| a.secret_file = file).await;
    assert_eq!(rotating.ri.secrets, [old.clone(), new.clone()]);
    for secret in [&old, &new] {
        let answer = rotating
            .call_signed(
                "/verify",
                &verify_body(&sha("t")),
                None,
                &[secret],
                now_secs(),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
}

#[tokio::test]
async fn calls_over_the_declared_rate_get_429_with_retry_after_and_no_effect() {
    let h = start(|a| {
        a.rate_limit = 1.0;
        a.burst = 1;
    })
    .await;
    let token = h.mint(json!({ "kind": "user" })).await.token;
    let body = revoke_body(&sha(&token));
    let first = h.call("/verify", &verify_body(&sha(&token)), None).await;
    let second = h.call("/revoke", &body, Some("K")).await;
    assert_eq!((first.status, second.status), (200, 429), "{}", second.body);
    let retry_after: u64 = second.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let stats = h.stats().await;
    assert_eq!((stats.rate_limit_exceeded, stats.revocations), (1, 0));
    assert_eq!(stats.revoke_calls, 1);
}

#[tokio::test]
async fn injected_failures_are_unknown_answers_that_never_revoke() {
    let h = start(|a| {
        a.fail_rate = 1.0;
        a.seed = Some(7);
        a.burst = 100;
    })
    .await;
    let token = h.mint(json!({ "kind": "session" })).await.token;
    let body = revoke_body(&sha(&token));
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..24 {
        let answer = h.call("/revoke", &body, Some(&format!("K{i}"))).await;
        match answer.status {
            503 => assert!(answer.json()["error"].is_string()),
            500 => assert!(answer.content_type.starts_with("text/plain")),
            403 | 200 => assert!(answer.content_type.starts_with("text/html")),
            other => panic!("unexpected status {other}: {}", answer.body),
        }
        seen.insert(answer.status);
    }
    assert_eq!(seen.len(), 4, "every kind of failure occurs: {seen:?}");
    let stats = h.stats().await;
    assert_eq!((stats.injected_failures, stats.revocations), (24, 0));
    assert!(h.ri.revocations().is_empty());
}

#[tokio::test]
async fn a_timed_out_revoke_retried_with_its_key_takes_effect_once() {
    let h = start(|a| {
        a.timeout_rate = 1.0;
        a.hang_secs = 1;
    })
    .await;
    let token = h.mint(json!({ "kind": "session" })).await.token;
    let body = revoke_body(&sha(&token));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let secrets: Vec<&str> = h.ri.secrets.iter().map(String::as_str).collect();
    let ts = now_secs();
    let text = body.to_string();
    let signature = sign_standard_webhooks(&secrets, "msg_t", ts, text.as_bytes()).unwrap();
    let gave_up = impatient
        .post(h.url("/revoke"))
        .header("webhook-id", "msg_t")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .header("Idempotency-Key", "K")
        .body(text)
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    // The retry repeats the key: whether the first call's effect landed before or after its hang,
    // the answer is `revoked` and the token is revoked once.
    let retry = h.call("/revoke", &body, Some("K")).await;
    assert_eq!(retry.json(), json!({"status": "revoked"}));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stats = h.stats().await;
    assert_eq!(stats.injected_timeouts, 2);
    assert_eq!((stats.revocations, stats.duplicate_effects), (1, 0));
}

#[tokio::test]
async fn notifications_are_recorded_once_per_idempotency_key() {
    let h = start(|_| {}).await;
    let notification = json!({
        "event": "token.revoked",
        "finding_id": "f-1",
        "token_type": "foundry_user_token",
        "token_sha256": sha("t"),
        "found_at": null,
        "source": "github",
        "received_at": "2025-01-01T00:00:00.000Z",
        "outcome": "revoked",
        "decided_at": "2025-01-01T00:00:01.000Z",
    });
    for _ in 0..2 {
        let answer = h.call("/notify", &notification, Some("N1")).await;
        assert_eq!(answer.status, 204, "{}", answer.body);
    }
    let recorded: Vec<Value> = h.get("/notifications").await;
    assert_eq!(recorded, [notification]);
    let stats = h.stats().await;
    assert_eq!(
        (
            stats.notify_calls,
            stats.notifications,
            stats.duplicate_notifications
        ),
        (2, 1, 1)
    );
}

#[test]
fn the_command_prints_its_address_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["reference-installation", "--secret-file"])
        .arg(dir.path().join("whsec"))
        .args(["--rate-limit", "5", "--burst", "2", "--seed", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("reference-installation: listening on http://")
        .unwrap_or_else(|| panic!("first line: {line}"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let jwks: Jwks = runtime.block_on(async {
        reqwest::get(format!("http://{url}/jwks.json"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(jwks.keys.len(), 1);
    assert!(
        std::fs::read_to_string(dir.path().join("whsec"))
            .unwrap()
            .starts_with("whsec_")
    );
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("reference-installation: stats {"),
        "{stderr}"
    );
}

#[test]
fn the_openapi_schemas_name_exactly_the_contract_fields() {
    use spillway::installations::contract::*;
    let doc: Value =
        serde_json::from_str(include_str!("../../docs/openapi/installation.json")).unwrap();
    let schemas = &doc["components"]["schemas"];
    let fields = |v: Value| -> Vec<String> {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let documented = |name: &str| -> Vec<String> { fields(schemas[name]["properties"].clone()) };
    let raw = Some(spillway::scanner::TokenSecret::new("t"));
    let examples = [
        (
            "VerifyRequest",
            serde_json::to_value(VerifyRequest {
                finding_id: "f".into(),
                token_type: "t".into(),
                token_sha256: sha("t"),
                token: raw.clone(),
            }),
        ),
        (
            "RevokeRequest",
            serde_json::to_value(RevokeRequest {
                finding_id: "f".into(),
                token_type: "t".into(),
                token_sha256: sha("t"),
                token: raw.clone(),
                found_at: None,
                source: "github".into(),
                received_at: rfc3339_ms(0),
            }),
        ),
        (
            "Notification",
            serde_json::to_value(Notification {
                event: "token.revoked".into(),
                finding_id: "f".into(),
                token_type: "t".into(),
                token_sha256: sha("t"),
                found_at: None,
                source: "github".into(),
                received_at: rfc3339_ms(0),
                outcome: "revoked".into(),
                decided_at: rfc3339_ms(0),
            }),
        ),
        (
            "PullPage",
            serde_json::to_value(PullPage {
                revocations: vec![],
                next_cursor: 0,
            }),
        ),
        (
            "PullItem",
            serde_json::to_value(PullItem {
                finding_id: "f".into(),
                cursor: 1,
                idempotency_key: "k".into(),
                token_type: "t".into(),
                token_sha256: sha("t"),
                token: raw,
                found_at: None,
                source: "github".into(),
                received_at: rfc3339_ms(0),
            }),
        ),
        (
            "PullAck",
            serde_json::to_value(PullAck {
                status: RevokeStatus::Revoked,
            }),
        ),
    ];
    for (name, value) in examples {
        assert_eq!(fields(value.unwrap()), documented(name), "{name}");
    }
    let jwk = serde_json::to_value(spillway::platform::jwt::jwk_of(
        p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng).verifying_key(),
        "k",
    ))
    .unwrap();
    assert_eq!(fields(jwk), documented("Jwk"));
    // The status enums list exactly what the contract types serialise to, in order.
    let verify = [
        VerifyStatus::Active,
        VerifyStatus::Inactive,
        VerifyStatus::Revoked,
        VerifyStatus::UnknownToken,
    ];
    let revoke = [
        RevokeStatus::Revoked,
        RevokeStatus::AlreadyRevoked,
        RevokeStatus::UnknownToken,
    ];
    assert_eq!(schemas["VerifyStatus"]["enum"], json!(verify));
    assert_eq!(schemas["RevokeStatus"]["enum"], json!(revoke));
}
