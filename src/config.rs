//! One settings tree, layered: built-in defaults, then `spillway.toml` (or `--config FILE`), then
//! `SPILLWAY_*` environment variables. Secrets are not settings: see `keys`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

pub const DEFAULT_GITHUB_KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `sqlite://PATH` (default `sqlite://spillway.db`) or `postgres://...`.
    pub database_url: String,
    /// Public ingress: listener endpoints.
    pub listen_addr: String,
    /// Admin API, `/metrics`, health and readiness.
    pub admin_addr: String,
    /// Where GitHub's secret-scanning public keys are fetched.
    pub github_keys_url: String,
    /// Where GitLab's partner-alert verifying keys are fetched (same format as GitHub's); empty:
    /// GitLab alerts are refused with 503 naming this setting.
    pub gitlab_keys_url: String,
    /// The same for deps.dev.
    pub depsdev_keys_url: String,
    /// Key file (used when the keys are not in the environment; generated in development).
    pub key_file: PathBuf,
    /// Signed audit checkpoints, kept outside the database.
    pub audit_checkpoint_file: PathBuf,
    /// Base URL printed with new endpoint paths.
    pub public_url: String,
    /// How often `serve` signs a checkpoint of the audit log (seconds).
    pub audit_checkpoint_interval_secs: u64,
    /// A client must send a complete request head within this many seconds of connecting or of
    /// its previous response (slowloris guard; also closes idle connections).
    pub header_read_timeout_secs: u64,
    /// Once a request's body is read, it is answered within this many seconds (else 503 and nothing
    /// acknowledged; GitHub gives a partner 30 s).
    pub request_timeout_secs: u64,
    /// Installations' URLs may be plain http (tests and the local demo; never in production).
    pub outbound_allow_http: bool,
    /// Installations' URLs may resolve to loopback, private, link-local or metadata addresses.
    pub outbound_allow_private: bool,
    /// Deadline of one call to an installation (milliseconds).
    pub call_timeout_ms: u64,
    /// Calls to installations in flight at once, across all installations (per replica).
    pub max_in_flight: usize,
    /// A finding fails loudly after this many unsuccessful calls at one step...
    pub max_attempts: u32,
    /// ...or once it is this many hours old without an outcome.
    pub max_age_hours: u64,
    /// Without a key id or hostname to attribute a token, at most this many installations issuing
    /// its type are asked; more than that and the finding is recorded as unattributed.
    pub fanout_max: usize,
    /// How often workers look for due work when nothing wakes them (milliseconds).
    pub work_poll_ms: u64,
    /// Replicas sharing one database: each paces its calls to an installation at this share of
    /// the installation's declared rate and burst, so together they stay within it.
    pub replicas: u32,
    /// The public-events poller (`[poller]`).
    pub poller: PollerSettings,
    /// Bounds on what internet clients may make the public address hold (`[ingress]`).
    pub ingress: IngressSettings,
}

/// `[ingress]`: everything a client controls on the public address is bounded before it is
/// authenticated.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngressSettings {
    /// Largest body a listener endpoint takes (GitHub's webhook payloads are capped at 25 MB).
    pub max_body_bytes: usize,
    /// Request body bytes buffered at once, all requests together; over it `503` + `Retry-After`.
    pub body_memory_bytes: usize,
    /// After `body_grace_secs`, a body must keep arriving at this many bytes per second.
    pub body_min_rate: u64,
    pub body_grace_secs: u64,
    /// A whole body within this many seconds, however fast it arrives.
    pub body_timeout_secs: u64,
    /// Connections open at once on the public address.
    pub max_connections: usize,
    /// Connections open at once from one address; 0 turns the limit off (behind a load balancer,
    /// which hides client addresses).
    pub max_connections_per_ip: usize,
}

impl Default for IngressSettings {
    fn default() -> Self {
        IngressSettings {
            max_body_bytes: 25 << 20,
            body_memory_bytes: 128 << 20,
            body_min_rate: 16 << 10,
            body_grace_secs: 5,
            body_timeout_secs: 60,
            max_connections: 10_000,
            max_connections_per_ip: 256,
        }
    }
}

/// `[poller]`: watching GitHub's public events (or a GitHub Enterprise Server's) for pushed
/// tokens. The API token, if any, is a secret: `SPILLWAY_GITHUB_TOKEN`, never a setting.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PollerSettings {
    pub enabled: bool,
    /// REST API base: `https://api.github.com`, or `https://HOST/api/v3` for Enterprise Server.
    pub api_url: String,
    /// Web base for the public URL of a hit (`{html_url}/{repo}/blob/{sha}/{path}#L{line}`).
    pub html_url: String,
    /// Poll the public timeline (`/events`); off to watch only `orgs` and `repos`.
    pub public_events: bool,
    /// Organisations watched through `/orgs/{org}/events`.
    pub orgs: Vec<String>,
    /// Repositories (`owner/name`) watched through `/repos/{owner}/{name}/events`.
    pub repos: Vec<String>,
    /// Wait between polls when GitHub sends no `X-Poll-Interval` (milliseconds).
    pub interval_ms: u64,
    /// Never poll more often than this, whatever `X-Poll-Interval` says (milliseconds).
    pub min_interval_ms: u64,
    /// GitHub calls spent on scanning pushes (compares, commits, blobs) per poll; the rest of
    /// the listed pushes wait, durably, for the next poll.
    pub call_budget: u32,
    /// Pushes waiting beyond this many: the oldest are skipped (recorded), not fetched.
    pub max_backlog: u32,
    /// Pages of 100 events read per feed and poll (GitHub keeps 300 events per feed).
    pub max_pages: u32,
    /// Files without a patch are fetched as blobs, at most this many per push...
    pub max_blobs_per_push: u32,
    /// ...and each at most this large (bytes).
    pub max_blob_bytes: u64,
    /// Deadline of one GitHub request (milliseconds).
    pub request_timeout_ms: u64,
    /// How often a replica that is not polling tries to become the poller (milliseconds).
    pub election_interval_ms: u64,
}

impl Default for PollerSettings {
    fn default() -> Self {
        PollerSettings {
            enabled: false,
            api_url: "https://api.github.com".into(),
            html_url: "https://github.com".into(),
            public_events: true,
            orgs: Vec::new(),
            repos: Vec::new(),
            interval_ms: 60_000,
            min_interval_ms: 1_000,
            call_budget: 60,
            max_backlog: 2_000,
            max_pages: 3,
            max_blobs_per_push: 10,
            max_blob_bytes: 1 << 20,
            request_timeout_ms: 10_000,
            election_interval_ms: 2_000,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database_url: "sqlite://spillway.db".into(),
            listen_addr: "127.0.0.1:8080".into(),
            admin_addr: "127.0.0.1:9090".into(),
            github_keys_url: DEFAULT_GITHUB_KEYS_URL.into(),
            gitlab_keys_url: String::new(),
            depsdev_keys_url: String::new(),
            key_file: "spillway.keys".into(),
            audit_checkpoint_file: "spillway-audit.checkpoints".into(),
            public_url: "http://127.0.0.1:8080".into(),
            audit_checkpoint_interval_secs: 60,
            header_read_timeout_secs: 10,
            request_timeout_secs: 25,
            outbound_allow_http: false,
            outbound_allow_private: false,
            call_timeout_ms: 5_000,
            max_in_flight: 256,
            max_attempts: 30,
            max_age_hours: 24,
            fanout_max: 5,
            work_poll_ms: 200,
            replicas: 1,
            poller: PollerSettings::default(),
            ingress: IngressSettings::default(),
        }
    }
}

impl Settings {
    /// Defaults, then `file` (or `./spillway.toml` when present), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        let default_file = Path::new("spillway.toml");
        let file = file.or_else(|| default_file.exists().then_some(default_file));
        let mut settings = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("{}: invalid settings", path.display()))?
            }
            None => Settings::default(),
        };
        settings.apply_env(|name| std::env::var(name).ok());
        Ok(settings)
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        let set = |target: &mut String, name: &str| {
            if let Some(v) = var(name).filter(|v| !v.is_empty()) {
                *target = v;
            }
        };
        set(&mut self.database_url, "SPILLWAY_DATABASE_URL");
        set(&mut self.listen_addr, "SPILLWAY_LISTEN_ADDR");
        set(&mut self.admin_addr, "SPILLWAY_ADMIN_ADDR");
        set(&mut self.github_keys_url, "SPILLWAY_GITHUB_KEYS_URL");
        set(&mut self.gitlab_keys_url, "SPILLWAY_GITLAB_KEYS_URL");
        set(&mut self.depsdev_keys_url, "SPILLWAY_DEPSDEV_KEYS_URL");
        set(&mut self.public_url, "SPILLWAY_PUBLIC_URL");
        let flag = |target: &mut bool, name: &str| {
            if let Some(v) = var(name) {
                *target = matches!(v.as_str(), "1" | "true" | "yes");
            }
        };
        flag(
            &mut self.outbound_allow_http,
            "SPILLWAY_OUTBOUND_ALLOW_HTTP",
        );
        flag(
            &mut self.outbound_allow_private,
            "SPILLWAY_OUTBOUND_ALLOW_PRIVATE",
        );
        macro_rules! number {
            ($($field:ident).+, $name:literal) => {
                if let Some(v) = var($name).and_then(|v| v.parse().ok()) {
                    self.$($field).+ = v;
                }
            };
        }
        number!(call_timeout_ms, "SPILLWAY_CALL_TIMEOUT_MS");
        number!(work_poll_ms, "SPILLWAY_WORK_POLL_MS");
        number!(max_attempts, "SPILLWAY_MAX_ATTEMPTS");
        number!(max_in_flight, "SPILLWAY_MAX_IN_FLIGHT");
        number!(replicas, "SPILLWAY_REPLICAS");
        number!(ingress.max_connections, "SPILLWAY_MAX_CONNECTIONS");
        number!(
            ingress.max_connections_per_ip,
            "SPILLWAY_MAX_CONNECTIONS_PER_IP"
        );
        number!(ingress.body_memory_bytes, "SPILLWAY_BODY_MEMORY_BYTES");
        flag(&mut self.poller.enabled, "SPILLWAY_POLLER_ENABLED");
        set(&mut self.poller.api_url, "SPILLWAY_POLLER_API_URL");
        set(&mut self.poller.html_url, "SPILLWAY_POLLER_HTML_URL");
        number!(poller.interval_ms, "SPILLWAY_POLLER_INTERVAL_MS");
        number!(poller.min_interval_ms, "SPILLWAY_POLLER_MIN_INTERVAL_MS");
        number!(poller.call_budget, "SPILLWAY_POLLER_CALL_BUDGET");
        number!(
            poller.election_interval_ms,
            "SPILLWAY_POLLER_ELECTION_INTERVAL_MS"
        );
        if let Some(v) = var("SPILLWAY_KEY_FILE").filter(|v| !v.is_empty()) {
            self.key_file = v.into();
        }
        if let Some(v) = var("SPILLWAY_AUDIT_CHECKPOINT_FILE").filter(|v| !v.is_empty()) {
            self.audit_checkpoint_file = v.into();
        }
    }

    /// True for a database that is not the embedded default: keys must then be provided.
    pub fn is_production(&self) -> bool {
        self.database_url.starts_with("postgres")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let mut s: Settings =
            toml::from_str("listen_addr = \"0.0.0.0:8000\"\nadmin_addr = \"127.0.0.1:9999\"\n")
                .unwrap();
        assert_eq!(s.database_url, "sqlite://spillway.db", "default kept");
        s.apply_env(|n| (n == "SPILLWAY_ADMIN_ADDR").then(|| "127.0.0.1:7000".to_owned()));
        assert_eq!(
            (s.listen_addr.as_str(), s.admin_addr.as_str()),
            ("0.0.0.0:8000", "127.0.0.1:7000")
        );
    }

    #[test]
    fn unknown_settings_are_named() {
        let err = toml::from_str::<Settings>("listen_adr = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_adr"), "{err}");
    }
}
