//! `spillway reference-installation`: the installation side of the contract in
//! docs/INSTALLATIONS.md, runnable in-process ([`start`]) or as a command. Tests, benchmarks and
//! the README demo use it as the installation Spillway checks and revokes tokens at.
//!
//! It issues Foundry-style ES256 tokens (`POST /tokens`; user tokens carry no `exp` and count as
//! inactive after their TTL, session tokens carry `exp`), publishes its key (`GET /jwks.json`, `kid`
//! = the tokens' `plntr`), answers the signed contract calls (`POST /verify`, `/revoke`,
//! `/notify`) and records what it revoked and was told (`GET /stats`, `/revocations`,
//! `/notifications`). Every contract call passes, in this order: the declared rate limit (429 with
//! `Retry-After`), the configured latency, the Standard Webhooks signature (401), the body and
//! headers (400), then failure injection (5xx, 403, HTML or a hang, all "unknown" to the caller).
//!
//! **A test tool, not a product:** `/tokens`, `/stats` and the record endpoints are
//! unauthenticated, and all state is in memory. Bind it to loopback. It keeps tokens by sha256
//! only and logs at most a sha256 prefix.

mod faults;
mod ledger;
mod limit;
mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::SigningKey;
use rand::rngs::{OsRng, StdRng};
use rand::{RngCore as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};

pub use ledger::{Revocation, Stats};
pub use limit::{Limit, RateError};
pub use tokens::{MintedToken, SESSION_TTL_SECS, TokenKind, TokenRequest, USER_TTL_SECS};

use super::{Served, now_ms};
use crate::http::error;
use crate::installations::contract::{
    self, Jwks, Notification, RevokeRequest, VerifyRequest, VerifyResponse,
};
use crate::platform::webhook_auth::{self, AuthError};
use faults::{Fault, hang_then_answer};

/// Options of `spillway reference-installation`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "reference-installation")]
pub struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Shared secrets (`whsec_...`), one a line; two during a rotation. Created with one new
    /// secret (mode 0600) when the file does not exist.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "reference-installation.whsec"
    )]
    pub secret_file: PathBuf,
    /// Declared rate limit for contract calls, in calls a second.
    #[arg(long, value_name = "RPS", default_value_t = 50.0)]
    pub rate_limit: f64,
    /// Calls admitted at once before the rate limit applies.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub burst: u32,
    /// Share of contract calls answered with an injected failure (503, 500, 403 HTML, 200 HTML).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of contract calls that hang for --hang-secs before answering.
    #[arg(long, value_name = "T", default_value_t = 0.0)]
    pub timeout_rate: f64,
    /// Latency added to every contract call, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub slow_ms: u64,
    /// How long an injected timeout hangs, in seconds.
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub hang_secs: u64,
    /// Seed for failure injection (default: random), so a run can be repeated.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

impl Default for Args {
    fn default() -> Self {
        <Args as clap::Parser>::parse_from(["reference-installation"])
    }
}

/// Failure injection and latency, validated.
#[derive(Debug, Clone, Copy)]
struct Behaviour {
    fail_rate: f64,
    timeout_rate: f64,
    slow: Duration,
    hang: Duration,
}

impl Behaviour {
    fn from_args(args: &Args) -> anyhow::Result<Behaviour> {
        let share = |v: f64, name: &str| {
            anyhow::ensure!((0.0..=1.0).contains(&v), "{name} must be between 0 and 1");
            Ok(v)
        };
        let fail_rate = share(args.fail_rate, "--fail-rate")?;
        let timeout_rate = share(args.timeout_rate, "--timeout-rate")?;
        anyhow::ensure!(
            fail_rate + timeout_rate <= 1.0,
            "--fail-rate and --timeout-rate together must not exceed 1"
        );
        Ok(Behaviour {
            fail_rate,
            timeout_rate,
            slow: Duration::from_millis(args.slow_ms),
            hang: Duration::from_secs(args.hang_secs),
        })
    }
}

/// Reads the shared secrets, or creates the file with one new secret when it does not exist.
fn load_or_create_secrets(path: &Path) -> anyhow::Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_secrets(&text).with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = webhook_auth::generate_whsec();
            write_private(path, &format!("{secret}\n"))
                .with_context(|| format!("cannot create {}", path.display()))?;
            Ok(vec![secret])
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Non-empty lines not starting with `#`, each a usable `whsec_` secret.
fn parse_secrets(text: &str) -> anyhow::Result<Vec<String>> {
    let mut secrets = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        webhook_auth::sign_standard_webhooks(&[line], "check", 0, b"")
            .map_err(|_| anyhow::anyhow!("line {}: expected whsec_<base64>", n + 1))?;
        secrets.push(line.to_owned());
    }
    anyhow::ensure!(!secrets.is_empty(), "no whsec_ secret in the file");
    Ok(secrets)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    crate::platform::keyring::create_private_file(path)?.write_all(contents.as_bytes())
}

/// The installation: its signing key, secrets, limits and records.
struct Installation {
    signing_key: SigningKey,
    plntr: String,
    org: String,
    secrets: Vec<String>,
    behaviour: Behaviour,
    limit: Limit,
    rng: Mutex<StdRng>,
    ledger: Mutex<ledger::Ledger>,
}

impl Installation {
    /// Validates the options before reading (or creating) the secret file.
    fn new(args: &Args) -> anyhow::Result<Installation> {
        let behaviour = Behaviour::from_args(args)?;
        let limit = Limit::new(args.rate_limit, args.burst)?;
        let secrets = load_or_create_secrets(&args.secret_file)?;
        let rng = match args.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Ok(Installation {
            signing_key: SigningKey::random(&mut OsRng),
            plntr: STANDARD.encode(random_bytes::<16>()),
            org: format!("ri.organization.{}", hex::encode(random_bytes::<4>())),
            secrets,
            behaviour,
            limit,
            rng: Mutex::new(rng),
            ledger: Mutex::new(ledger::Ledger::default()),
        })
    }

    /// The records; a panic elsewhere cannot wedge a test tool, so poisoning is ignored.
    fn ledger(&self) -> MutexGuard<'_, ledger::Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, bump: impl FnOnce(&mut Stats)) {
        bump(&mut self.ledger().stats);
    }

    /// Checks the Standard Webhooks signature against every live secret.
    fn authenticate(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), AuthError> {
        let id = header_value(headers, "webhook-id")?;
        let timestamp = header_value(headers, "webhook-timestamp")?;
        let signature = header_value(headers, "webhook-signature")?;
        let now = now_ms() / 1000;
        let mut last = AuthError::BadSignature("webhook-signature");
        for secret in &self.secrets {
            match webhook_auth::standard_webhooks(secret, id, timestamp, signature, body, now) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Carries out a checked contract call and answers it.
    fn apply(&self, call: &Call) -> Response {
        match call {
            Call::Verify(sha) => {
                let status = self.ledger().verify(sha, now_ms() / 1000);
                tracing::info!(token_sha256 = short(sha), ?status, "verify");
                axum::Json(VerifyResponse { status }).into_response()
            }
            Call::Revoke { key, sha } => match self.ledger().revoke(key, sha, now_ms()) {
                Ok(answer) => {
                    tracing::info!(
                        token_sha256 = short(sha),
                        status = answer.status.as_str(),
                        "revoke"
                    );
                    axum::Json(answer).into_response()
                }
                Err(conflict) => error(StatusCode::UNPROCESSABLE_ENTITY, conflict.to_string()),
            },
            Call::Notify { key, notification } => {
                let sha = &notification.token_sha256;
                let new = self.ledger().notify(key, notification.clone());
                tracing::info!(token_sha256 = short(sha), new, "notify");
                StatusCode::NO_CONTENT.into_response()
            }
        }
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

/// At most this much of a token's sha256 goes into a log line.
fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn header_value<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, AuthError> {
    let value = headers.get(name).ok_or(AuthError::Missing(name))?;
    value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(AuthError::Malformed(name))
}

/// The three contract URLs.
#[derive(Debug, Clone, Copy)]
enum Operation {
    Verify,
    Revoke,
    Notify,
}

/// A contract call whose signature, headers and body were checked.
#[derive(Debug)]
enum Call {
    Verify(String),
    Revoke {
        key: String,
        sha: String,
    },
    Notify {
        key: String,
        notification: Notification,
    },
}

impl Call {
    /// Parses the body and headers of `op`; the error names the field or header at fault.
    fn parse(op: Operation, headers: &HeaderMap, body: &[u8]) -> Result<Call, String> {
        match op {
            Operation::Verify => {
                let req: VerifyRequest = parse_body(body)?;
                Ok(Call::Verify(checked_sha(
                    &req.token_sha256,
                    req.token.as_ref().map(crate::scanner::TokenSecret::expose),
                )?))
            }
            Operation::Revoke => {
                let key = idempotency_key(headers)?;
                let req: RevokeRequest = parse_body(body)?;
                let sha = checked_sha(
                    &req.token_sha256,
                    req.token.as_ref().map(crate::scanner::TokenSecret::expose),
                )?;
                Ok(Call::Revoke { key, sha })
            }
            Operation::Notify => {
                let key = idempotency_key(headers)?;
                let mut notification: Notification = parse_body(body)?;
                notification.token_sha256 = checked_sha(&notification.token_sha256, None)?;
                Ok(Call::Notify { key, notification })
            }
        }
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, String> {
    let name = contract::IDEMPOTENCY_KEY;
    let value = headers
        .get(name)
        .ok_or_else(|| format!("missing header {name}"))?;
    match value.to_str() {
        Ok(v) if !v.trim().is_empty() && v.len() <= 255 => Ok(v.trim().to_owned()),
        _ => Err(format!(
            "header {name} must be 1 to 255 visible ASCII characters"
        )),
    }
}

/// `token_sha256` in lowercase; when the raw `token` came too (delivery `raw`), it must match.
fn checked_sha(token_sha256: &str, token: Option<&str>) -> Result<String, String> {
    if token_sha256.len() != 64 || !token_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("token_sha256 must be 64 hex digits".into());
    }
    let sha = token_sha256.to_ascii_lowercase();
    if let Some(token) = token
        && hex::encode(Sha256::digest(token.as_bytes())) != sha
    {
        return Err("token does not hash to token_sha256".into());
    }
    Ok(sha)
}

/// Every contract call: rate limit, latency, signature, parsing, then injection or the effect.
async fn contract_call(
    installation: Arc<Installation>,
    op: Operation,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    installation.count(|s| match op {
        Operation::Verify => s.verify_calls += 1,
        Operation::Revoke => s.revoke_calls += 1,
        Operation::Notify => s.notify_calls += 1,
    });
    if let Err(wait) = installation.limit.check() {
        installation.count(|s| s.rate_limit_exceeded += 1);
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, limit::retry_after_secs(wait).into());
        return response;
    }
    if !installation.behaviour.slow.is_zero() {
        tokio::time::sleep(installation.behaviour.slow).await;
    }
    if let Err(e) = installation.authenticate(&headers, &body) {
        installation.count(|s| s.bad_signatures += 1);
        return error(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let call = match Call::parse(op, &headers, &body) {
        Ok(call) => call,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match installation.draw_fault() {
        Fault::None => installation.apply(&call),
        Fault::Failure(failure) => {
            installation.count(|s| s.injected_failures += 1);
            failure.response()
        }
        Fault::Timeout { effect_first } => {
            installation.count(|s| s.injected_timeouts += 1);
            hang_then_answer(installation, call, effect_first).await
        }
    }
}

async fn verify(State(i): State<Arc<Installation>>, headers: HeaderMap, body: Bytes) -> Response {
    contract_call(i, Operation::Verify, headers, body).await
}

async fn revoke(State(i): State<Arc<Installation>>, headers: HeaderMap, body: Bytes) -> Response {
    contract_call(i, Operation::Revoke, headers, body).await
}

async fn notify(State(i): State<Arc<Installation>>, headers: HeaderMap, body: Bytes) -> Response {
    contract_call(i, Operation::Notify, headers, body).await
}

async fn jwks(State(i): State<Arc<Installation>>) -> axum::Json<Jwks> {
    axum::Json(Jwks {
        keys: vec![crate::platform::jwt::jwk_of(
            i.signing_key.verifying_key(),
            &i.plntr,
        )],
    })
}

async fn stats(State(i): State<Arc<Installation>>) -> axum::Json<Stats> {
    axum::Json(i.ledger().stats.clone())
}

async fn revocations(State(i): State<Arc<Installation>>) -> axum::Json<Vec<Revocation>> {
    axum::Json(i.ledger().revocations().to_vec())
}

async fn notifications(State(i): State<Arc<Installation>>) -> axum::Json<Vec<Notification>> {
    axum::Json(i.ledger().notifications().to_vec())
}

fn router(installation: Arc<Installation>) -> Router {
    Router::new()
        .route("/jwks.json", get(jwks))
        .route("/tokens", post(tokens::issue_token))
        .route("/verify", post(verify))
        .route("/revoke", post(revoke))
        .route("/notify", post(notify))
        .route("/stats", get(stats))
        .route("/revocations", get(revocations))
        .route("/notifications", get(notifications))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(installation)
}

/// A running reference installation.
pub struct Running {
    pub addr: SocketAddr,
    /// The live shared secrets, as read from (or written to) the secret file.
    pub secrets: Vec<String>,
    /// The key id of its tokens (`plntr` header, `kid` in the JWKS).
    pub plntr: String,
    installation: Arc<Installation>,
    served: Served,
}

impl Running {
    /// `http://ADDR`, the base of every endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.installation.ledger().stats.clone()
    }

    pub fn revocations(&self) -> Vec<Revocation> {
        self.installation.ledger().revocations().to_vec()
    }

    /// Stops serving (a hanging call is dropped after a short grace).
    pub async fn shutdown(self) {
        self.served.shutdown().await;
    }
}

/// Checks the options, reads or creates the secrets, makes a signing key and serves on `--listen`.
pub async fn start(args: &Args) -> anyhow::Result<Running> {
    let installation = Arc::new(Installation::new(args)?);
    let served = Served::bind(&args.listen, router(installation.clone())).await?;
    tracing::info!(addr = %served.addr, plntr = %installation.plntr, "reference installation serving");
    Ok(Running {
        addr: served.addr,
        secrets: installation.secrets.clone(),
        plntr: installation.plntr.clone(),
        installation,
        served,
    })
}

/// The command: prints where it listens, serves until SIGINT/SIGTERM, then prints its `/stats`
/// to stderr.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let signals = super::StopSignals::install()?;
    let running = start(&args).await?;
    println!("reference-installation: listening on {}", running.url());
    signals.wait().await;
    let stats = running.stats();
    running.shutdown().await;
    eprintln!(
        "reference-installation: stats {}",
        serde_json::to_string(&stats)?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_files_hold_one_or_more_whsec_lines() {
        let (a, b) = (
            webhook_auth::generate_whsec(),
            webhook_auth::generate_whsec(),
        );
        let text = format!("# rotation in progress\n{a}\n\n  {b}  \n");
        assert_eq!(parse_secrets(&text).unwrap(), [a.clone(), b]);
        let err = parse_secrets(&format!("{a}\nnot-a-secret\n")).unwrap_err();
        assert!(format!("{err}").contains("line 2"), "{err}");
        assert!(parse_secrets("# nothing\n").is_err());
    }

    #[test]
    fn sha_checks_name_the_field() {
        let token = "eyJwbG50ciI6.x.y";
        let sha = hex::encode(Sha256::digest(token));
        assert_eq!(checked_sha(&sha.to_uppercase(), None).unwrap(), sha);
        assert_eq!(checked_sha(&sha, Some(token)).unwrap(), sha);
        assert_eq!(
            checked_sha(&sha, Some("other")).unwrap_err(),
            "token does not hash to token_sha256"
        );
        assert!(
            checked_sha("abc", None)
                .unwrap_err()
                .contains("token_sha256")
        );
    }

    #[test]
    fn failure_and_timeout_shares_are_validated() {
        let args = |fail: f64, timeout: f64| Args {
            fail_rate: fail,
            timeout_rate: timeout,
            ..Args::default()
        };
        assert!(Behaviour::from_args(&args(0.5, 0.5)).is_ok());
        assert!(Behaviour::from_args(&args(1.5, 0.0)).is_err());
        assert!(Behaviour::from_args(&args(0.0, -0.1)).is_err());
        assert!(Behaviour::from_args(&args(0.7, 0.7)).is_err());
        assert!(Behaviour::from_args(&args(f64::NAN, 0.0)).is_err());
    }
}
