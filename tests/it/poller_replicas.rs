//! Two real `spillway serve` replicas on one PostgreSQL database, both configured to poll: exactly
//! one polls (PostgreSQL advisory lock); when it is SIGKILLed the other takes over within
//! seconds and keeps finding pushed tokens, each revoked once.
//!
//! SQLite is single-process by construction (no election to test), so this runs on PostgreSQL,
//! which CI always provides (`crate::common::fresh_databases` fails the run without it there).

use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::process::Setup;
use serde_json::json;
use spillway::devtools::{fake_github, reference_installation};

async fn leader_metric(client: &reqwest::Client, admin: u16) -> Option<bool> {
    let text = client
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("spillway_poller_leader "))?;
    Some(line.ends_with(" 1"))
}

async fn push(client: &reqwest::Client, api: &str, repo: &str, token: &str) {
    let content = format!("FOUNDRY_URL=https://acme.palantirfoundry.com\nFOUNDRY_TOKEN={token}\n");
    crate::common::revocation::fake_push(client, api, repo, &[(".env", content)], false).await;
}

async fn wait_revoked(installation: &reference_installation::Running, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while installation.stats().revocations < n {
        assert!(Instant::now() < deadline, "token {n} not revoked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_replica_polls_and_another_takes_over_when_it_dies() {
    for (backend, url, _db_dir) in crate::common::fresh_databases().await {
        if backend != "postgres" {
            continue;
        }
        let github = fake_github::start(&fake_github::Args::default())
            .await
            .unwrap();
        let client = reqwest::Client::new();
        client
            .post(format!("{}/_fake/faults", github.api_url()))
            .json(&json!({ "poll_interval_s": 0 }))
            .send()
            .await
            .unwrap();
        let first = Setup::new(github.keys_url(), Some(&url));
        let key_file = first.dir.path().join("spillway.keys");
        spillway::platform::keyring::Keys::load(&key_file, true).unwrap();
        let secret_file = first.dir.path().join("ri.whsec");
        let installation = reference_installation::start(&reference_installation::Args {
            secret_file: secret_file.clone(),
            rate_limit: 100.0,
            burst: 20,
            ..Default::default()
        })
        .await
        .unwrap();
        let base = installation.url();
        let (jwks, revoke) = (format!("{base}/jwks.json"), format!("{base}/revoke"));
        let secret = secret_file.display().to_string();
        let out = first
            .command(&[
                "installation",
                "register",
                "--name",
                "reference",
                "--token-type",
                "palantir_jwt",
                "--jwks-url",
                &jwks,
                "--revoke-url",
                &revoke,
                "--rate-limit",
                "100",
                "--burst",
                "20",
                "--secret-file",
                &secret,
            ])
            .env("SPILLWAY_OUTBOUND_ALLOW_HTTP", "true")
            .env("SPILLWAY_OUTBOUND_ALLOW_PRIVATE", "true")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let mut second = Setup::new(github.keys_url(), Some(&url));
        let api = github.api_url();
        let env: Vec<(String, String)> = [
            ("SPILLWAY_OUTBOUND_ALLOW_HTTP", "true"),
            ("SPILLWAY_OUTBOUND_ALLOW_PRIVATE", "true"),
            ("SPILLWAY_REPLICAS", "2"),
            ("SPILLWAY_POLLER_ENABLED", "true"),
            ("SPILLWAY_POLLER_API_URL", api.as_str()),
            ("SPILLWAY_POLLER_MIN_INTERVAL_MS", "100"),
            ("SPILLWAY_POLLER_ELECTION_INTERVAL_MS", "500"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        second.env = env.clone();
        second
            .env
            .push(("SPILLWAY_KEY_FILE".into(), key_file.display().to_string()));
        let mut first = first;
        first.env = env;
        let mut children: Vec<(Child, u16)> = vec![
            (first.start(0), first.admin),
            (second.start(0), second.admin),
        ];

        // Exactly one polls.
        let deadline = Instant::now() + Duration::from_secs(15);
        let leader = loop {
            let a = leader_metric(&client, children[0].1).await;
            let b = leader_metric(&client, children[1].1).await;
            match (a, b) {
                (Some(true), Some(false)) => break 0,
                (Some(false), Some(true)) => break 1,
                (Some(true), Some(true)) => panic!("two replicas poll at once"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "no replica became the poller");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let t1 = crate::common::revocation::mint_at(&client, &base, "user", None).await;
        push(&client, &api, "acme/one", &t1).await;
        wait_revoked(&installation, 1).await;
        // It stays that way.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            leader_metric(&client, children[1 - leader].1).await,
            Some(false)
        );

        // SIGKILL the poller; the other takes over within seconds.
        let (mut dead, _) = children.remove(leader);
        dead.kill().unwrap();
        dead.wait().unwrap();
        let killed = Instant::now();
        let survivor = children[0].1;
        while leader_metric(&client, survivor).await != Some(true) {
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "the surviving replica did not take over"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("takeover after {:?}", killed.elapsed());
        let t2 = crate::common::revocation::mint_at(&client, &base, "user", None).await;
        push(&client, &api, "acme/two", &t2).await;
        wait_revoked(&installation, 2).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = installation.stats();
        assert_eq!((stats.revocations, stats.duplicate_effects), (2, 0));
        for (mut c, _) in children {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        installation.shutdown().await;
        github.shutdown().await;
    }
}
