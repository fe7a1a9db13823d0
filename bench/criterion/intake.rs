//! Intake latency: `cargo bench --bench intake` (or `bench/intake`, which also starts PostgreSQL).
//!
//! Starts the real server in-process on loopback with a fake GitHub key endpoint, then
//! 1. acknowledges one signed 5,000-token alert and reports how long the 200 took;
//! 2. sends signed 10-token alerts open-loop at `SPILLWAY_BENCH_RATE` per second (default 200) for
//!    `SPILLWAY_BENCH_SECS` seconds (default 10); latency is measured from each request's scheduled
//!    send time, so a stall is not hidden by the generator waiting (no coordinated omission).
//!
//! Runs on SQLite, and on PostgreSQL when `SPILLWAY_BENCH_POSTGRES_URL` names a server;
//! `SPILLWAY_BENCH_CHECKPOINT_MS` sets the audit checkpoint interval (default: the service's). The load
//! generator shares the machine's two cores with the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use spillway::platform::config::Settings;
use spillway::scanner::validate::crc32_base62;
use spillway::sources::listeners::{self, ListenerKind};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn token(n: u64) -> String {
    const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let body: String = (0..30)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALNUM[(x % 62) as usize] as char
        })
        .collect();
    format!("ghp_{body}{}", crc32_base62(body.as_bytes()))
}

fn alert_body(first: u64, count: u64) -> Vec<u8> {
    let items: Vec<_> = (first..first + count)
        .map(|n| serde_json::json!({ "token": token(n), "type": "github_personal_access_token", "url": "https://github.com/o/r", "source": "content" }))
        .collect();
    serde_json::to_vec(&items).unwrap()
}

struct Target {
    url: String,
    key: Arc<p256::ecdsa::SigningKey>,
    client: reqwest::Client,
}

impl Target {
    /// The signature header for `body` (computed before the timed run, off the load path).
    fn sign(&self, body: &[u8]) -> String {
        let sig: p256::ecdsa::Signature = self.key.sign(body);
        STANDARD.encode(sig.to_der().as_bytes())
    }

    async fn send(&self, body: Vec<u8>) -> u16 {
        let signature = self.sign(&body);
        self.send_signed(body, signature).await
    }

    async fn send_signed(&self, body: Vec<u8>, signature: String) -> u16 {
        let resp = self
            .client
            .post(&self.url)
            .header("Github-Public-Key-Identifier", "bench")
            .header("Github-Public-Key-Signature", signature)
            .body(body)
            .send()
            .await
            .expect("request completes");
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        status
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn run(backend: &str, database_url: &str) {
    let key = Arc::new(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng));
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let list = serde_json::json!({ "public_keys": [{ "key_identifier": "bench", "key": pem, "is_current": true }] }).to_string();
    let app = Router::new().route(
        "/keys",
        get(move || async move { ([("content-type", "application/json")], list) }),
    );
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let keys_url = format!("http://{}/keys", fake.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(fake, app).await });

    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        database_url: database_url.into(),
        listen_addr: "127.0.0.1:0".into(),
        admin_addr: "127.0.0.1:0".into(),
        github_keys_url: keys_url,
        key_file: dir.path().join("keys"),
        audit_checkpoint_file: dir.path().join("checkpoints"),
        audit_checkpoint_interval_ms: env_or(
            "SPILLWAY_BENCH_CHECKPOINT_MS",
            Settings::default().audit_checkpoint_interval_ms,
        ),
        ..Settings::default()
    };
    spillway::platform::keyring::Keys::load(&settings.key_file, true).unwrap();
    let running = spillway::service::start(&settings).await.unwrap();
    let (_, endpoint) =
        listeners::create(&running.state.store, ListenerKind::Github, "bench", "bench")
            .await
            .unwrap();
    running.state.directory.reload_now().await.unwrap();
    let target = Arc::new(Target {
        url: format!("http://{}{}", running.public_addr, endpoint.path),
        key,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap(),
    });
    // Warm up (first key fetch, connections).
    assert_eq!(target.send(alert_body(u64::MAX / 2, 1)).await, 200);

    let big = alert_body(1 << 40, 5000);
    let started = Instant::now();
    let status = target.send(big).await;
    let big_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(status, 200);

    let rate: u64 = env_or("SPILLWAY_BENCH_RATE", 200);
    let secs: u64 = env_or("SPILLWAY_BENCH_SECS", 10);
    let total = rate * secs;
    let bodies: Vec<(Vec<u8>, String)> = (0..total)
        .map(|i| {
            let body = alert_body(i * 10, 10);
            let signature = target.sign(&body);
            (body, signature)
        })
        .collect();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for (i, (body, signature)) in bodies.into_iter().enumerate() {
        let scheduled = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let status = target.send_signed(body, signature).await;
            (status, scheduled.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for t in tasks {
        let (status, latency) = t.await.unwrap();
        if status != 200 {
            failed += 1;
        }
        latencies.push(latency);
    }
    latencies.sort();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM alerts")
        .fetch_one(running.state.store.pool())
        .await
        .unwrap();
    println!(
        "intake backend={backend} big_alert_tokens=5000 big_alert_ack_ms={big_ms:.0} rate={rate}/s tokens_per_alert=10 \
         sent={total} non_200={failed} stored_alerts={stored} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    running.shutdown().await;
}

fn main() {
    // `cargo test --benches` runs bench targets with no arguments other than harness flags; only run
    // the load when asked to benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        run(
            "sqlite",
            &format!("sqlite://{}", dir.path().join("bench.db").display()),
        )
        .await;
        if let Ok(base) = std::env::var("SPILLWAY_BENCH_POSTGRES_URL") {
            let admin = spillway::platform::store::Store::connect_admin(&base)
                .await
                .unwrap();
            let name = format!("spillway_bench_{:08x}", rand::random::<u32>());
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(admin.pool())
                .await
                .unwrap();
            let cut = base.rfind('/').unwrap();
            run("postgres", &format!("{}/{name}", &base[..cut])).await;
        }
    });
}
