//! Time to revoke, end to end (driven by `bench/time-to-revoke`): the release `spillway serve`
//! binary on a temporary database, the reference installation and a fake GitHub on free loopback
//! ports. Mints `ALERTS` Foundry-style session tokens, sends one signed GitHub alert per token at
//! `RATE` per second (open loop), waits until every finding is decided, and prints
//!
//! `time-to-revoke p50_ms=<x> p99_ms=<y> revoked=<done>/<expected> duplicate_effects=<k> rate_limit_exceeded=<v>`
//!
//! Time to revoke is the service's own record: alert received (intake) to revoke acknowledged by
//! the installation. Duplicates and rate-limit violations are counted by the reference
//! installation.
//!
//! Environment: SPILLWAY_BIN (the binary), SPILLWAY_BENCH_ALERTS, SPILLWAY_BENCH_RATE,
//! SPILLWAY_BENCH_FAIL_RATE, SPILLWAY_BENCH_TIMEOUT_RATE, SPILLWAY_BENCH_DATABASE_URL (default: a
//! temporary SQLite file), SPILLWAY_BENCH_INSTALLATION_RATE (declared calls/s, default 1000).

use std::time::{Duration, Instant};

use serde_json::json;
use spillway::devtools::process::Setup;
use spillway::devtools::{fake_github, reference_installation};
use spillway::findings;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run() {
    let alerts: usize = env("SPILLWAY_BENCH_ALERTS", 500);
    let rate: f64 = env("SPILLWAY_BENCH_RATE", 100.0);
    let installation_rate: f64 = env("SPILLWAY_BENCH_INSTALLATION_RATE", 1000.0);
    let github = fake_github::start(&fake_github::Args::default())
        .await
        .unwrap();
    let mut service = Setup::new(
        github.keys_url(),
        std::env::var("SPILLWAY_BENCH_DATABASE_URL").ok().as_deref(),
    );
    service.env = [
        ("SPILLWAY_OUTBOUND_ALLOW_HTTP", "true"),
        ("SPILLWAY_OUTBOUND_ALLOW_PRIVATE", "true"),
        ("SPILLWAY_CALL_TIMEOUT_MS", "2000"),
        ("SPILLWAY_LOG", "warn"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    let secret_file = service.dir.path().join("ri.whsec");
    let installation = reference_installation::start(&reference_installation::Args {
        secret_file: secret_file.clone(),
        rate_limit: installation_rate,
        burst: 200,
        fail_rate: env("SPILLWAY_BENCH_FAIL_RATE", 0.0),
        timeout_rate: env("SPILLWAY_BENCH_TIMEOUT_RATE", 0.0),
        hang_secs: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    let database_url = service.database_url.clone();
    spillway::platform::keyring::Keys::load(&service.dir.path().join("spillway.keys"), true)
        .unwrap();
    let endpoint = service
        .run(&["listener", "create", "--kind", "github"])
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let base = installation.url();
    let declared = installation_rate.to_string();
    service.run(&[
        "installation",
        "register",
        "--name",
        "reference",
        "--token-type",
        "palantir_jwt",
        "--jwks-url",
        &format!("{base}/jwks.json"),
        "--revoke-url",
        &format!("{base}/revoke"),
        "--notify-url",
        &format!("{base}/notify"),
        "--rate-limit",
        &declared,
        "--burst",
        "200",
        "--concurrency",
        "64",
        "--secret-file",
        &secret_file.display().to_string(),
    ]);
    let mut child = service.start(0);

    let client = reqwest::Client::new();
    let mut bodies = Vec::with_capacity(alerts);
    for _ in 0..alerts {
        let minted: serde_json::Value = client
            .post(format!("{base}/tokens"))
            .json(&json!({"kind": "session"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let body = serde_json::to_vec(&json!([{
            "token": minted["token"], "type": "palantir_jwt", "url": "https://github.com/o/r/blob/main/.env"
        }]))
        .unwrap();
        let signature = github.sign(&body);
        bodies.push((body, signature));
    }

    // Open loop: alert i leaves at start + i / rate, whatever happened to the ones before.
    let start = tokio::time::Instant::now();
    let mut sends = Vec::with_capacity(alerts);
    for (i, (body, signature)) in bodies.into_iter().enumerate() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let (client, endpoint, key_id) = (
            client.clone(),
            endpoint.clone(),
            github.key_identifier.clone(),
        );
        sends.push(tokio::spawn(async move {
            client
                .post(&endpoint)
                .header("Github-Public-Key-Identifier", key_id)
                .header("Github-Public-Key-Signature", signature)
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    let mut refused = std::collections::BTreeMap::new();
    for s in sends {
        let status = s.await.unwrap();
        if status != 200 {
            *refused.entry(status).or_insert(0) += 1;
        }
    }
    if !refused.is_empty() {
        eprintln!("alerts not acknowledged, by status (0: no answer): {refused:?}");
    }

    let store = spillway::platform::store::Store::connect(&database_url)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let all = loop {
        let all = findings::list(&store, &Default::default(), 0, 1_000_000)
            .await
            .unwrap();
        let settled = all.len() >= alerts
            && all.iter().all(|f| {
                !["verifying", "revoking", "notifying", "awaiting_pull"].contains(&f.state.as_str())
            });
        if settled || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut ttr: Vec<i64> = all
        .iter()
        .filter(|f| f.outcome.as_deref() == Some("revoked"))
        .filter_map(|f| f.decided_at.map(|d| d - f.received_at))
        .collect();
    ttr.sort_unstable();
    let stats = installation.stats();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "time-to-revoke p50_ms={} p99_ms={} revoked={}/{} duplicate_effects={} rate_limit_exceeded={}",
        percentile(&ttr, 50.0),
        percentile(&ttr, 99.0),
        ttr.len(),
        alerts,
        stats.duplicate_effects,
        stats.rate_limit_exceeded
    );
}

fn main() {
    // `cargo test --benches` runs bench targets without `--bench`: only run when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
