//! `spillway fake-github`: a stand-in for GitHub's secret-scanning side, for the README demo and
//! benchmarks. It publishes one P-256 key exactly as GitHub does
//! (`GET /meta/public_keys/secret_scanning`) and, on `POST /send-alert`, signs an alert body the
//! way GitHub signs partner alerts and delivers it to a Spillway listener endpoint.
//!
//! Signature: standard base64 of the DER ECDSA P-256 signature over SHA-256 of the raw body, in
//! `Github-Public-Key-Signature`, with the key's id in `Github-Public-Key-Identifier`.
//!
//! It also serves GitHub's public REST side for the poller (event feeds, compares, commits,
//! blobs), with pushes and faults driven by a test: see [`public`]; and the Credential Revocation
//! API with its batch size and hourly limit: see [`revocation`].
//!
//! **A test tool:** `/send-alert` is unauthenticated and posts wherever it is told. Bind it to
//! loopback. It never logs the alerts it forwards (they carry raw tokens).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use rand::RngCore as _;
use serde::Deserialize;
use serde_json::{Value, json};

pub mod public;
pub mod revocation;

use super::Served;
use crate::http::error;

/// Where GitHub publishes its secret-scanning keys (path only).
pub const KEYS_PATH: &str = "/meta/public_keys/secret_scanning";
/// How long a delivery to the endpoint may take (GitHub allows partners 30 s).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `spillway fake-github`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "fake-github")]
pub struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Calls to POST /credentials/revoke allowed in an hour (GitHub's limit is 60).
    #[arg(long, value_name = "N", default_value_t = 60)]
    pub revocation_limit: usize,
}

impl Default for Args {
    fn default() -> Self {
        <Args as clap::Parser>::parse_from(["fake-github"])
    }
}

/// `Github-Public-Key-Signature` for `body`: base64 of the DER ECDSA signature over SHA-256 of it.
pub fn sign_alert(key: &SigningKey, body: &[u8]) -> String {
    let signature: Signature = key.sign(body);
    STANDARD.encode(signature.to_der().as_bytes())
}

/// GitHub's key list for one current key: `{"public_keys":[{key_identifier, key, is_current}]}`.
pub fn key_list(key: &SigningKey, key_identifier: &str) -> anyhow::Result<Value> {
    let pem = key.verifying_key().to_public_key_pem(LineEnding::LF)?;
    Ok(json!({
        "public_keys": [{ "key_identifier": key_identifier, "key": pem, "is_current": true }]
    }))
}

struct FakeGithub {
    key: SigningKey,
    key_identifier: String,
    key_list: Value,
    client: reqwest::Client,
}

/// Body of `POST /send-alert`; the answer is `{status, body, body_sha256}`: the endpoint's status
/// and body, and the SHA-256 of the alert body delivered (what Spillway records it under).
#[derive(Debug, Deserialize)]
struct SendAlert {
    /// A Spillway listener endpoint URL.
    endpoint: String,
    /// Sent as the exact request body, in GitHub's shape `[{token, type, url, source}]`.
    alerts: Vec<Value>,
}

impl FakeGithub {
    /// Signs `alerts` and posts them; answers the endpoint's status and body.
    async fn deliver(&self, request: SendAlert) -> Response {
        let url = match url::Url::parse(&request.endpoint) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            _ => return error(StatusCode::BAD_REQUEST, "endpoint must be an http(s) URL"),
        };
        let body = match serde_json::to_vec(&request.alerts) {
            Ok(body) => body,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("alerts: {e}")),
        };
        let body_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("Github-Public-Key-Identifier", &self.key_identifier)
            .header("Github-Public-Key-Signature", sign_alert(&self.key, &body))
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    format!("cannot deliver to endpoint: {}", e.without_url()),
                );
            }
        };
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
        axum::Json(json!({ "status": status, "body": body, "body_sha256": body_sha256 }))
            .into_response()
    }
}

async fn keys(State(g): State<Arc<FakeGithub>>) -> Response {
    axum::Json(g.key_list.clone()).into_response()
}

/// `POST /sign`: the signature headers GitHub would send with this exact body, for load
/// generators that replay pre-signed alerts (`{key_identifier, signature}`).
async fn sign(State(g): State<Arc<FakeGithub>>, body: Bytes) -> Response {
    axum::Json(json!({
        "key_identifier": g.key_identifier,
        "signature": sign_alert(&g.key, &body),
    }))
    .into_response()
}

async fn send_alert(State(g): State<Arc<FakeGithub>>, body: Bytes) -> Response {
    match serde_json::from_slice::<SendAlert>(&body) {
        Ok(request) => g.deliver(request).await,
        Err(e) => error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    }
}

/// A running fake GitHub.
pub struct Running {
    pub addr: SocketAddr,
    /// The published key's identifier (`Github-Public-Key-Identifier`).
    pub key_identifier: String,
    key: SigningKey,
    served: Served,
    /// What `POST /credentials/revoke` was sent.
    pub revocation: Arc<revocation::Revocation>,
}

impl Running {
    /// The URL Spillway's `github_keys_url` setting should name.
    pub fn keys_url(&self) -> String {
        format!("http://{}{KEYS_PATH}", self.addr)
    }

    /// The REST API base the poller's `api_url` should name (event feeds, compares, blobs).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Signs `body` with the published key, as a delivered alert would be.
    pub fn sign(&self, body: &[u8]) -> String {
        sign_alert(&self.key, body)
    }

    pub async fn shutdown(self) {
        self.served.shutdown().await;
    }
}

/// Generates a key with a random identifier and serves on `--listen`.
pub async fn start(args: &Args) -> anyhow::Result<Running> {
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let mut id = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let key_identifier = hex::encode(id);
    let revocations = Arc::new(revocation::Revocation::new(args.revocation_limit));
    let state = Arc::new(FakeGithub {
        key_list: key_list(&key, &key_identifier)?,
        key: key.clone(),
        key_identifier: key_identifier.clone(),
        client: reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .user_agent("GitHub-Hookshot/fake")
            .build()?,
    });
    let app = Router::new()
        .route(KEYS_PATH, get(keys))
        .route("/send-alert", post(send_alert))
        .route("/sign", post(sign))
        .with_state(state)
        .merge(public::routes(Arc::new(public::Public::new())))
        .merge(revocation::routes(revocations.clone()))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") });
    let served = Served::bind(&args.listen, app).await?;
    Ok(Running {
        addr: served.addr,
        key_identifier,
        key,
        served,
        revocation: revocations,
    })
}

/// The command: prints where it listens and its keys URL, serves until SIGINT/SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let signals = super::StopSignals::install()?;
    let running = start(&args).await?;
    println!(
        "fake-github: listening on http://{}, keys at {}, REST API (poller api_url) at {}",
        running.addr,
        running.keys_url(),
        running.api_url()
    );
    signals.wait().await;
    running.shutdown().await;
    Ok(())
}
