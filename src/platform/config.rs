//! One settings tree, layered by figment: built-in defaults, then `spillway.toml` (or `--config
//! FILE`), then `SPILLWAY_*` environment variables, with the same strictness in every layer: a
//! value that does not parse stops start-up with a message naming the file key or the variable
//! (the environment layer used to ignore what it could not parse, so `SPILLWAY_MAX_ATTEMPTS=abc`
//! silently meant the default). Booleans take true/false, 1/0, yes/no, on/off in any case.
//!
//! Unknown `SPILLWAY_*` variables are left alone: Kubernetes defines `SPILLWAY_SERVICE_HOST` and the
//! like for a service named spillway. Secrets are not settings (`keys`), except the database URL,
//! which carries a password: it is held as a [`SecretSetting`]. Every secret read from the
//! environment also has a `*_FILE` variant ([`secret_from_env`]).
//!
//! Must not import anything of the crate: every module reads its settings from here.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use figment::Figment;
use figment::providers::{Format as _, Toml};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Deserializer};

pub const DEFAULT_GITHUB_KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";

/// A setting that is a secret (the database URL carries a password): `Debug` shows nothing, and
/// the value is read only through [`SecretSetting::expose`].
pub struct SecretSetting(SecretString);

impl SecretSetting {
    pub fn new(value: impl Into<String>) -> SecretSetting {
        SecretSetting(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl Clone for SecretSetting {
    fn clone(&self) -> Self {
        SecretSetting::new(self.expose())
    }
}

impl PartialEq for SecretSetting {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl std::fmt::Debug for SecretSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<'de> Deserialize<'de> for SecretSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretSetting::new)
    }
}

impl From<&str> for SecretSetting {
    fn from(s: &str) -> Self {
        SecretSetting::new(s)
    }
}

/// A boolean as operators write it: true/false, 1/0, yes/no, on/off, in any case.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Int(i64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bool(b) => Ok(b),
        Raw::Int(1) => Ok(true),
        Raw::Int(0) => Ok(false),
        Raw::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            other => Err(serde::de::Error::custom(format!(
                "expected a boolean (true/false, 1/0, yes/no, on/off), found {other:?}"
            ))),
        },
        Raw::Int(n) => Err(serde::de::Error::custom(format!(
            "expected a boolean (true/false, 1/0, yes/no, on/off), found {n}"
        ))),
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `sqlite://PATH` (default `sqlite://spillway.db`) or `postgres://...` (a secret: it carries
    /// the password; `SPILLWAY_DATABASE_URL_FILE` reads it from a file).
    pub database_url: SecretSetting,
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
    /// How often `serve` signs a checkpoint of the audit log (milliseconds): every entry older
    /// than this is witnessed outside the database (a checkpoint is written only when entries were
    /// added).
    pub audit_checkpoint_interval_ms: u64,
    /// A client must send a complete request head within this many seconds of connecting or of
    /// its previous response (slowloris guard; also closes idle connections).
    pub header_read_timeout_secs: u64,
    /// Once a request's body is read, it is answered within this many seconds (else 503 and nothing
    /// acknowledged; GitHub gives a partner 30 s).
    pub request_timeout_secs: u64,
    /// Installations' URLs may be plain http (tests and the local demo; never in production).
    #[serde(deserialize_with = "lenient_bool")]
    pub outbound_allow_http: bool,
    /// Installations' URLs may resolve to loopback, private, link-local or metadata addresses.
    #[serde(deserialize_with = "lenient_bool")]
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
    /// Issuers whose tokens Spillway revokes where they were issued (`[issuers.NAME]`): `github`
    /// (the Credential Revocation API, on unless `enabled = false`) and the self-revocation
    /// families of `patterns/issuers/` (off unless `enabled = true`).
    pub issuers: std::collections::BTreeMap<String, IssuerSettings>,
    /// When the console's cookies carry `Secure`: `auto` (default) unless the admin address is a
    /// loopback one reached over plain http, `always`, or `never` (plain http on a private network).
    pub console_secure_cookies: CookieSecurity,
}

/// `console_secure_cookies`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CookieSecurity {
    /// `Secure` when the request came over https (a proxy's `X-Forwarded-Proto` or `Forwarded`
    /// says so) or the admin address is not loopback.
    #[default]
    Auto,
    Always,
    Never,
}

/// `[issuers.NAME]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerSettings {
    /// Unset: GitHub on, every other issuer off.
    #[serde(deserialize_with = "lenient_opt_bool")]
    pub enabled: Option<bool>,
    /// The issuer's API base (GitHub Enterprise Server, a self-hosted GitLab, a test's fake).
    pub base_url: Option<String>,
    /// GitHub only: calls an hour, at most (60 by default, GitHub's limit).
    pub hourly_limit: Option<u32>,
    /// Self-revoking issuers: the pace of findings' calls to the issuer, and the burst (10 and 16
    /// by default), shared by all replicas like an installation's declared rate (each takes its
    /// share, kept 10% under). A lookup and its revoke are two HTTP calls on one step's permit.
    pub rate_per_sec: Option<f64>,
    pub burst: Option<u32>,
}

fn lenient_opt_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    lenient_bool(d).map(Some)
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
    #[serde(deserialize_with = "lenient_bool")]
    pub enabled: bool,
    /// REST API base: `https://api.github.com`, or `https://HOST/api/v3` for Enterprise Server.
    pub api_url: String,
    /// Web base for the public URL of a hit (`{html_url}/{repo}/blob/{sha}/{path}#L{line}`).
    pub html_url: String,
    /// Poll the public timeline (`/events`); off to watch only `orgs` and `repos`.
    #[serde(deserialize_with = "lenient_bool")]
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
            audit_checkpoint_interval_ms: 1_000,
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
            issuers: Default::default(),
            console_secure_cookies: CookieSecurity::Auto,
        }
    }
}

/// Environment variables and the settings they set (dotted figment key paths).
const ENV: &[(&str, &str)] = &[
    ("SPILLWAY_DATABASE_URL", "database_url"),
    ("SPILLWAY_LISTEN_ADDR", "listen_addr"),
    ("SPILLWAY_ADMIN_ADDR", "admin_addr"),
    ("SPILLWAY_GITHUB_KEYS_URL", "github_keys_url"),
    ("SPILLWAY_GITLAB_KEYS_URL", "gitlab_keys_url"),
    ("SPILLWAY_DEPSDEV_KEYS_URL", "depsdev_keys_url"),
    ("SPILLWAY_KEY_FILE", "key_file"),
    ("SPILLWAY_AUDIT_CHECKPOINT_FILE", "audit_checkpoint_file"),
    (
        "SPILLWAY_AUDIT_CHECKPOINT_INTERVAL_MS",
        "audit_checkpoint_interval_ms",
    ),
    ("SPILLWAY_PUBLIC_URL", "public_url"),
    ("SPILLWAY_CONSOLE_SECURE_COOKIES", "console_secure_cookies"),
    ("SPILLWAY_ISSUERS_GITHUB_ENABLED", "issuers.github.enabled"),
    (
        "SPILLWAY_ISSUERS_GITHUB_BASE_URL",
        "issuers.github.base_url",
    ),
    (
        "SPILLWAY_HEADER_READ_TIMEOUT_SECS",
        "header_read_timeout_secs",
    ),
    ("SPILLWAY_REQUEST_TIMEOUT_SECS", "request_timeout_secs"),
    ("SPILLWAY_OUTBOUND_ALLOW_HTTP", "outbound_allow_http"),
    ("SPILLWAY_OUTBOUND_ALLOW_PRIVATE", "outbound_allow_private"),
    ("SPILLWAY_CALL_TIMEOUT_MS", "call_timeout_ms"),
    ("SPILLWAY_MAX_IN_FLIGHT", "max_in_flight"),
    ("SPILLWAY_MAX_ATTEMPTS", "max_attempts"),
    ("SPILLWAY_MAX_AGE_HOURS", "max_age_hours"),
    ("SPILLWAY_FANOUT_MAX", "fanout_max"),
    ("SPILLWAY_WORK_POLL_MS", "work_poll_ms"),
    ("SPILLWAY_REPLICAS", "replicas"),
    ("SPILLWAY_MAX_CONNECTIONS", "ingress.max_connections"),
    (
        "SPILLWAY_MAX_CONNECTIONS_PER_IP",
        "ingress.max_connections_per_ip",
    ),
    ("SPILLWAY_BODY_MEMORY_BYTES", "ingress.body_memory_bytes"),
    ("SPILLWAY_MAX_BODY_BYTES", "ingress.max_body_bytes"),
    ("SPILLWAY_POLLER_ENABLED", "poller.enabled"),
    ("SPILLWAY_POLLER_API_URL", "poller.api_url"),
    ("SPILLWAY_POLLER_HTML_URL", "poller.html_url"),
    ("SPILLWAY_POLLER_PUBLIC_EVENTS", "poller.public_events"),
    ("SPILLWAY_POLLER_INTERVAL_MS", "poller.interval_ms"),
    ("SPILLWAY_POLLER_MIN_INTERVAL_MS", "poller.min_interval_ms"),
    ("SPILLWAY_POLLER_CALL_BUDGET", "poller.call_budget"),
    (
        "SPILLWAY_POLLER_ELECTION_INTERVAL_MS",
        "poller.election_interval_ms",
    ),
];

/// A secret from the environment: `NAME`, or the contents of the file `NAME_FILE` names (systemd
/// credentials, Kubernetes secret files, secret-manager agents), trailing newlines trimmed. Both
/// set is an error, as is an empty value or an unreadable file: a secret never silently falls back
/// to another source.
pub fn secret_from_env(name: &str) -> anyhow::Result<Option<SecretString>> {
    secret_from(name, |n| std::env::var(n).ok())
}

pub(crate) fn secret_from(
    name: &str,
    var: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<SecretString>> {
    let file_var = format!("{name}_FILE");
    match (var(name), var(&file_var)) {
        (Some(_), Some(_)) => {
            anyhow::bail!("{name} and {file_var} are both set: set one of them")
        }
        (Some(v), None) if v.trim().is_empty() => anyhow::bail!("{name} is set but empty"),
        (Some(v), None) => Ok(Some(SecretString::from(v))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{file_var}: cannot read {path}"))?;
            let value = text.trim_end_matches(['\n', '\r']);
            anyhow::ensure!(!value.is_empty(), "{file_var}: {path} is empty");
            Ok(Some(SecretString::from(value.to_owned())))
        }
        (None, None) => Ok(None),
    }
}

impl Settings {
    /// Defaults, then `file` (or `./spillway.toml` when present), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        Self::load_with(file, |name| std::env::var(name).ok())
    }

    /// [`Settings::load`] with the environment given as a lookup (tests).
    pub fn load_with(
        file: Option<&Path>,
        var: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Settings> {
        let default_file = Path::new("spillway.toml");
        let file = file.or_else(|| default_file.exists().then_some(default_file));
        let mut figment = Figment::new();
        if let Some(path) = file {
            anyhow::ensure!(path.exists(), "{}: no such settings file", path.display());
            figment = figment.merge(Toml::file_exact(path));
        }
        // The environment as figment sees it: only the variables in ENV, each under its key.
        let mut env: Vec<(&str, String)> = Vec::new();
        for (name, key) in ENV {
            if let Some(value) = var(name) {
                env.push((key, value));
            }
        }
        if let Some(url) = secret_from("SPILLWAY_DATABASE_URL", &var)? {
            env.retain(|(k, _)| *k != "database_url");
            env.push(("database_url", url.expose_secret().to_owned()));
        }
        for (key, value) in &env {
            figment = figment.merge(figment::providers::Serialized::global(
                key,
                env_value(value),
            ));
        }
        let settings: Settings = figment.extract().map_err(|e| describe(e, file, &env))?;
        settings.check()?;
        Ok(settings)
    }

    /// What a type cannot say.
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.replicas >= 1, "replicas: must be at least 1");
        anyhow::ensure!(
            self.database_url.expose().starts_with("sqlite:")
                || self.database_url.expose().starts_with("postgres://")
                || self.database_url.expose().starts_with("postgresql://"),
            "database_url (SPILLWAY_DATABASE_URL): must start with sqlite:// or postgres://"
        );
        Ok(())
    }
    /// True for a database that is not the embedded default: keys must then be provided.
    pub fn is_production(&self) -> bool {
        self.database_url.expose().starts_with("postgres")
    }
}

/// An environment value as a settings value: a number when it reads as one, else the text (so a
/// typed field that gets text fails with the variable named, and a text field gets it as written).
fn env_value(value: &str) -> figment::value::Value {
    use figment::value::{Num, Value};
    let tag = figment::value::Tag::Default;
    if let Ok(n) = value.trim().parse::<u64>() {
        return Value::Num(tag, Num::U64(n));
    }
    if let Ok(n) = value.trim().parse::<f64>()
        && value.trim().contains('.')
    {
        return Value::Num(tag, Num::F64(n));
    }
    Value::String(tag, value.to_owned())
}

/// A figment error as a message naming the file key or the environment variable.
fn describe(e: figment::Error, file: Option<&Path>, env: &[(&str, String)]) -> anyhow::Error {
    let mut messages = Vec::new();
    for error in e {
        let key = error.path.join(".");
        let from_env = env.iter().any(|(k, _)| *k == key);
        let name = match ENV.iter().find(|(_, k)| *k == key) {
            Some((var, _)) if from_env => var.to_string(),
            _ => match file {
                Some(path) if !key.is_empty() => format!("{}: {key}", path.display()),
                Some(path) => path.display().to_string(),
                None => key.clone(),
            },
        };
        // Never echo a value: it may be a secret (the database URL).
        let kind = match &error.kind {
            figment::error::Kind::InvalidType(found, expected) => {
                format!("expected {expected}, found {found}")
            }
            figment::error::Kind::UnknownField(field, _) => format!("unknown setting `{field}`"),
            figment::error::Kind::Message(m) => m.clone(),
            other => other.to_string(),
        };
        messages.push(format!("{name}: {kind}"));
    }
    anyhow::anyhow!("invalid settings: {}", messages.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn layers_apply_in_order() {
        let f = file("listen_addr = \"0.0.0.0:8000\"\nadmin_addr = \"127.0.0.1:9999\"\n");
        let s = Settings::load_with(
            Some(f.path()),
            env(&[("SPILLWAY_ADMIN_ADDR", "127.0.0.1:7000")]),
        )
        .unwrap();
        assert_eq!(
            s.database_url.expose(),
            "sqlite://spillway.db",
            "default kept"
        );
        assert_eq!(
            (s.listen_addr.as_str(), s.admin_addr.as_str()),
            ("0.0.0.0:8000", "127.0.0.1:7000")
        );
    }

    #[test]
    fn a_bad_value_in_either_layer_stops_start_up_naming_it() {
        let err = Settings::load_with(None, env(&[("SPILLWAY_MAX_ATTEMPTS", "abc")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SPILLWAY_MAX_ATTEMPTS"), "{err}");
        assert!(!err.contains("abc") || err.contains("\"abc\""), "{err}");
        let f = file("max_attempts = \"abc\"\n");
        let err = Settings::load_with(Some(f.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_attempts"), "{err}");
        let f = file("listen_adr = \"x\"\n");
        let err = Settings::load_with(Some(f.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_adr"), "{err}");
        let err = Settings::load_with(None, env(&[("SPILLWAY_OUTBOUND_ALLOW_HTTP", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SPILLWAY_OUTBOUND_ALLOW_HTTP"), "{err}");
        let err = Settings::load_with(None, env(&[("SPILLWAY_DATABASE_URL", "mysql://u:pw@x")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SPILLWAY_DATABASE_URL") && !err.contains("pw"),
            "{err}"
        );
    }

    #[test]
    fn booleans_take_the_usual_spellings_in_any_case() {
        for (text, want) in [
            ("TRUE", true),
            ("yes", true),
            ("On", true),
            ("1", true),
            ("False", false),
            ("NO", false),
            ("off", false),
            ("0", false),
        ] {
            let s = Settings::load_with(None, env(&[("SPILLWAY_POLLER_ENABLED", text)])).unwrap();
            assert_eq!(s.poller.enabled, want, "{text}");
        }
        let f = file("outbound_allow_private = \"Yes\"\n");
        assert!(
            Settings::load_with(Some(f.path()), env(&[]))
                .unwrap()
                .outbound_allow_private
        );
    }

    #[test]
    fn secrets_come_from_the_variable_or_its_file_never_both() {
        let f = file("postgres://spillway:pw@db/spillway\n");
        let path = f.path().to_str().unwrap();
        let s = Settings::load_with(None, env(&[("SPILLWAY_DATABASE_URL_FILE", path)])).unwrap();
        assert_eq!(
            s.database_url.expose(),
            "postgres://spillway:pw@db/spillway"
        );
        assert!(!format!("{s:?}").contains("pw@"), "the URL is a secret");
        let err = Settings::load_with(
            None,
            env(&[
                ("SPILLWAY_DATABASE_URL_FILE", path),
                ("SPILLWAY_DATABASE_URL", "sqlite://x.db"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("both set"), "{err}");
        let err = Settings::load_with(None, env(&[("SPILLWAY_DATABASE_URL_FILE", "/nonexistent")]))
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("SPILLWAY_DATABASE_URL_FILE"),
            "{err:#}"
        );
    }

    #[test]
    fn unknown_variables_are_left_alone() {
        // Kubernetes defines these for a service named spillway.
        let s = Settings::load_with(
            None,
            env(&[
                ("SPILLWAY_SERVICE_HOST", "10.0.0.1"),
                ("SPILLWAY_PORT", "tcp://10.0.0.1:80"),
            ]),
        )
        .unwrap();
        assert_eq!(s, Settings::default());
    }
}
