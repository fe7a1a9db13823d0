//! A revocation rig: the real server, a fake GitHub that signs alerts, the reference installation
//! (all on free loopback ports), a GitHub listener and the installation registered.

use std::time::Duration;

use serde_json::{Value, json};
use spillway::devtools::{fake_github, reference_installation};
use spillway::findings::{self, FindingView};
use spillway::installations::{self, Spec};
use spillway::platform::outbound::Policy;
use spillway::scanner::TokenSecret;
use spillway::sources::listeners::{self, ListenerKind};

pub struct Rig {
    pub server: spillway::service::Running,
    pub github: fake_github::Running,
    pub installation: reference_installation::Running,
    pub installation_id: String,
    pub endpoint: String,
    pub client: reqwest::Client,
    database_url: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    _restart_dirs: Vec<tempfile::TempDir>,
}

/// Terminal finding states.
pub const TERMINAL: [&str; 8] = [
    "revoked",
    "already_revoked",
    "unknown_token",
    "inactive",
    "expired",
    "invalid",
    "unattributed",
    "failed",
];

/// Mints a token at the reference installation at `base` (`kind`: user or session).
pub async fn mint_at(
    client: &reqwest::Client,
    base: &str,
    kind: &str,
    ttl_secs: Option<u64>,
) -> String {
    let mut body = json!({ "kind": kind });
    if let Some(ttl) = ttl_secs {
        body["ttl_secs"] = json!(ttl);
    }
    let r: Value = client
        .post(format!("{base}/tokens"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["token"].as_str().unwrap().to_owned()
}

/// Pushes `files` (path, content) as one commit to `repo` on the fake GitHub at `api`; answers
/// the push's record (`event_id`, `before`, `head`, `pushed_at_ms`).
pub async fn fake_push(
    client: &reqwest::Client,
    api: &str,
    repo: &str,
    files: &[(&str, String)],
    no_patch: bool,
) -> Value {
    let files: Vec<Value> = files
        .iter()
        .map(|(p, c)| json!({ "path": p, "content": c }))
        .collect();
    let r = client
        .post(format!("{api}/_fake/push"))
        .json(&json!({ "repo": repo, "files": files, "no_patch": no_patch }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "push to {repo}: {}", r.status());
    r.json().await.unwrap()
}

/// Permissive outbound policy (loopback, http) and quick polling, as tests need.
pub fn local(settings: &mut spillway::platform::config::Settings) {
    settings.outbound_allow_http = true;
    settings.outbound_allow_private = true;
    settings.work_poll_ms = 50;
    settings.call_timeout_ms = 1_000;
}

/// The registration of the reference installation at `base`.
pub fn spec(base: &str, name: &str) -> Spec {
    serde_json::from_value(json!({
        "name": name,
        "hostnames": ["acme.palantirfoundry.com"],
        "token_types": ["palantir_jwt"],
        "jwks_url": format!("{base}/jwks.json"),
        "verify_url": format!("{base}/verify"),
        "revoke_url": format!("{base}/revoke"),
        "notify_url": format!("{base}/notify"),
        "rate_per_sec": 200.0,
        "burst": 50,
        "concurrency": 16
    }))
    .unwrap()
}

impl Rig {
    pub async fn start(
        database_url: &str,
        tune_installation: impl FnOnce(&mut reference_installation::Args),
        tune_server: impl FnOnce(&mut spillway::platform::config::Settings),
        tune_spec: impl FnOnce(&mut Spec),
    ) -> Rig {
        let github = fake_github::start(&fake_github::Args::default())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut args = reference_installation::Args {
            secret_file: dir.path().join("ri.whsec"),
            rate_limit: 200.0,
            burst: 50,
            ..Default::default()
        };
        tune_installation(&mut args);
        let installation = reference_installation::start(&args).await.unwrap();
        let (server, server_dir) =
            super::start_server_tuned(database_url, &github.keys_url(), |s| {
                local(s);
                // The fake GitHub's public side, for tests that enable the poller, and its
                // Credential Revocation API for the GitHub issuer.
                s.poller.api_url = github.api_url();
                s.issuers.insert(
                    "github".into(),
                    spillway::platform::config::IssuerSettings {
                        base_url: Some(github.api_url()),
                        ..Default::default()
                    },
                );
                tune_server(s);
            })
            .await;
        let store = &server.state.store;
        let (_, endpoint) = listeners::create(store, ListenerKind::Github, "github", "test")
            .await
            .unwrap();
        server.state.directory.reload_now().await.unwrap();
        let mut spec = spec(&installation.url(), "reference");
        tune_spec(&mut spec);
        let policy = Policy {
            allow_http: true,
            allow_private: true,
        };
        let (registered, _) = installations::register(
            store,
            &server.state.keys.sealing,
            &policy,
            spec,
            Some(TokenSecret::new(installation.secrets[0].clone())),
            "test",
        )
        .await
        .unwrap();
        Rig {
            endpoint: format!("http://{}{}", server.public_addr, endpoint.path),
            server,
            github,
            installation,
            installation_id: registered.id,
            client: reqwest::Client::new(),
            database_url: database_url.to_owned(),
            _dirs: (dir, server_dir),
            _restart_dirs: Vec::new(),
        }
    }

    /// Stops the server, runs `meanwhile` while it is down (GitHub and the installation keep
    /// running), then starts it again on the same database and keys with `tune_server`.
    pub async fn restart_server(
        self,
        meanwhile: impl AsyncFnOnce(&fake_github::Running, &reference_installation::Running),
        tune_server: impl FnOnce(&mut spillway::platform::config::Settings),
    ) -> Rig {
        let Rig {
            server,
            github,
            installation,
            installation_id,
            endpoint,
            client,
            database_url,
            _dirs,
            mut _restart_dirs,
        } = self;
        let path = endpoint
            .strip_prefix(&format!("http://{}", server.public_addr))
            .expect("endpoint on the server's public address")
            .to_owned();
        server.shutdown().await;
        meanwhile(&github, &installation).await;
        let key_file = _dirs.1.path().join("keys");
        let (server, dir) = super::start_server_tuned(&database_url, &github.keys_url(), |s| {
            local(s);
            s.poller.api_url = github.api_url();
            s.key_file = key_file;
            tune_server(s);
        })
        .await;
        _restart_dirs.push(dir);
        Rig {
            endpoint: format!("http://{}{path}", server.public_addr),
            server,
            github,
            installation,
            installation_id,
            client,
            database_url,
            _dirs,
            _restart_dirs,
        }
    }

    /// Mints a token at the reference installation (`kind`: user or session).
    pub async fn mint(&self, kind: &str, ttl_secs: Option<u64>) -> String {
        mint_at(&self.client, &self.installation.url(), kind, ttl_secs).await
    }

    /// Sends a signed GitHub partner alert; returns status and body.
    pub async fn alert(&self, alerts: &Value) -> (reqwest::StatusCode, String) {
        let body = serde_json::to_vec(alerts).unwrap();
        let r = self
            .client
            .post(&self.endpoint)
            .header("Github-Public-Key-Identifier", &self.github.key_identifier)
            .header("Github-Public-Key-Signature", self.github.sign(&body))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    pub async fn findings(&self) -> Vec<FindingView> {
        findings::list(&self.server.state.store, &Default::default(), 0, 1000)
            .await
            .unwrap()
    }

    /// Waits until `n` findings exist and all are terminal.
    pub async fn settled(&self, n: usize, within: Duration) -> Vec<FindingView> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let all = self.findings().await;
            if all.len() >= n && all.iter().all(|f| TERMINAL.contains(&f.state.as_str())) {
                return all;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "findings did not settle: {all:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's key file (a second replica must share its keys).
    pub fn key_file(&self) -> std::path::PathBuf {
        self._dirs.1.path().join("keys")
    }

    /// Signs a checkpoint now and verifies the whole audit log against it.
    pub async fn audit_verdict(&self) -> spillway::platform::audit::Verdict {
        let store = &self.server.state.store;
        let path = self._dirs.1.path().join("checkpoints");
        let key = self.server.state.keys.audit_signing_key();
        spillway::platform::audit::write_checkpoint(store, &path, &key)
            .await
            .unwrap();
        spillway::platform::audit::verify(store, &path, &key.verifying_key())
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.server.shutdown().await;
        self.installation.shutdown().await;
        self.github.shutdown().await;
    }
}
