//! Operator commands that work directly on the configured database (applying migrations first), so
//! an operator can bootstrap before the server first starts: `listener`, `admin-key`, `audit`.
//!
//! Must not import HTTP or the revocation engine: it calls the registries.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;

use crate::admin::api_keys as admin_keys;
use crate::platform::audit;
use crate::platform::config::Settings;
use crate::platform::keyring::Keys;
use crate::platform::store::{Store, now_ms};
use crate::sources::listeners::{self, ListenerKind, OldEndpoint};

/// Who the audit log names for local commands.
pub(super) const LOCAL_ACTOR: &str = "cli";

#[derive(Debug, Subcommand)]
pub enum ListenerCommand {
    /// Create a listener; the last line of output is its endpoint URL (shown only now).
    Create {
        #[arg(long, value_enum)]
        kind: ListenerKind,
        #[arg(long, default_value = "")]
        name: String,
        /// File holding the listener's secret (standard-webhooks: whsec_/whpk_; twilio: the auth
        /// token, required; github-hmac and gitlab-revocation: the shared secret). Generated and
        /// printed once when omitted, where the protocol allows.
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
    /// List listeners and their endpoints.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create a new endpoint; the old one expires after --expire-in, or is deleted with --delete-old.
    Rotate {
        listener: String,
        #[arg(long, value_parser = parse_duration, conflicts_with = "delete_old", required_unless_present = "delete_old")]
        expire_in: Option<Duration>,
        #[arg(long)]
        delete_old: bool,
    },
    /// Move an expiring endpoint's expiry to now + --expire-in (only before it has passed).
    Extend {
        endpoint: String,
        #[arg(long, value_parser = parse_duration)]
        expire_in: Duration,
    },
    /// Delete an expiring or expired endpoint.
    Delete { endpoint: String },
}

#[derive(Debug, Subcommand)]
pub enum AdminKeyCommand {
    /// Create an admin API key (printed once, as the last line).
    Create {
        /// Comma-separated: listeners:read, listeners:write, installations:read, installations:write,
        /// audit:read, keys:read, keys:write.
        #[arg(long)]
        scopes: String,
        /// Lifetime, e.g. 30d or 12h.
        #[arg(long, value_parser = parse_duration)]
        ttl: Duration,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List every admin key (id, scopes, created, expires, last used, revoked), never a secret.
    List {
        #[arg(long, value_enum, default_value = "text")]
        format: ListFormat,
    },
    /// Revoke a key, and every key it minted (a revoked key gets 401 everywhere).
    Revoke {
        id: String,
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ListFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and the signed checkpoints; exit 1 naming the first bad entry.
    Verify,
    /// Print entries.
    Export {
        #[arg(long, value_parser = ["jsonl"], default_value = "jsonl")]
        format: String,
    },
    /// Sign the newest entry now (the server does this periodically).
    Checkpoint,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration (examples: 30d, 12h, 90m): {e}"))
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn format_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(super) struct Context {
    pub(super) settings: Settings,
    pub(super) store: Store,
    pub(super) keys: Keys,
}

pub(super) async fn open(config: Option<&PathBuf>) -> anyhow::Result<Context> {
    let settings = Settings::load(config.map(PathBuf::as_path))?;
    let store = Store::connect(settings.database_url.expose()).await?;
    let keys = Keys::load(&settings.key_file, !settings.is_production())?;
    Ok(Context {
        settings,
        store,
        keys,
    })
}

impl Context {
    /// Signs the newest audit entry (after every local change, so changes made before the server
    /// first starts are covered too). Returns the entry signed, if any was new.
    pub(super) async fn checkpoint(&self) -> anyhow::Result<Option<i64>> {
        let c = audit::write_checkpoint(
            &self.store,
            &self.settings.audit_checkpoint_file,
            &self.keys.audit_signing_key(),
        )
        .await?;
        Ok(c.map(|c| c.seq))
    }
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs a command and turns its error into exit code 2 with a message.
pub(super) fn finish(name: &str, result: anyhow::Result<u8>) -> u8 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spillway {name}: error: {e:#}");
            2
        }
    }
}

pub fn listener(config: Option<&PathBuf>, command: ListenerCommand) -> u8 {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let ctx = open(config).await?;
            match command {
                ListenerCommand::Create {
                    kind,
                    name,
                    secret_file,
                } => {
                    let given = match &secret_file {
                        Some(path) => Some(crate::scanner::TokenSecret::new(
                            std::fs::read_to_string(path)
                                .with_context(|| {
                                    format!("{}: cannot read --secret-file", path.display())
                                })?
                                .trim()
                                .to_owned(),
                        )),
                        None => None,
                    };
                    let (secret, generated) = match kind
                        .new_listener_secret(given)
                        .map_err(|e| anyhow::anyhow!("--secret-file: {e}"))?
                    {
                        Some((secret, generated)) => (Some(secret), generated),
                        None => (None, false),
                    };
                    let sealing = secret.as_ref().map(|s| (&ctx.keys.sealing, s));
                    let (listener, endpoint) = listeners::create_with_secret(
                        &ctx.store,
                        kind,
                        &name,
                        LOCAL_ACTOR,
                        sealing,
                    )
                    .await?;
                    ctx.checkpoint().await?;
                    println!(
                        "listener {} ({}) endpoint {}",
                        listener.id, listener.kind, endpoint.endpoint.id
                    );
                    if let (true, Some(secret)) = (generated, &secret) {
                        println!(
                            "secret (shown once; configure the sender with it): {}",
                            secret.expose()
                        );
                    }
                    println!(
                        "{}{}",
                        ctx.settings.public_url.trim_end_matches('/'),
                        endpoint.path
                    );
                }
                ListenerCommand::List { json } => {
                    let all = listeners::list(&ctx.store).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&all)?);
                    } else {
                        let now = now_ms();
                        for l in all {
                            println!("{}\t{}\t{}", l.id, l.kind, l.name);
                            for e in l.endpoints {
                                let state = match e.expires_at {
                                    None => "active".to_owned(),
                                    Some(at) if at <= now => format!("expired {}", format_time(at)),
                                    Some(at) => format!("expires {}", format_time(at)),
                                };
                                println!("  {}\t{state}", e.id);
                            }
                        }
                    }
                }
                ListenerCommand::Rotate {
                    listener,
                    expire_in,
                    delete_old,
                } => {
                    let old = match (expire_in, delete_old) {
                        (_, true) => OldEndpoint::Delete,
                        (Some(d), false) => OldEndpoint::ExpireAt(now_ms() + duration_ms(d)),
                        (None, false) => {
                            anyhow::bail!("rotate needs --expire-in DURATION or --delete-old")
                        }
                    };
                    let endpoint =
                        listeners::rotate(&ctx.store, &listener, old, LOCAL_ACTOR).await?;
                    ctx.checkpoint().await?;
                    println!("new endpoint {}", endpoint.endpoint.id);
                    println!(
                        "{}{}",
                        ctx.settings.public_url.trim_end_matches('/'),
                        endpoint.path
                    );
                }
                ListenerCommand::Extend {
                    endpoint,
                    expire_in,
                } => {
                    let e = listeners::extend(
                        &ctx.store,
                        &endpoint,
                        now_ms() + duration_ms(expire_in),
                        LOCAL_ACTOR,
                    )
                    .await?;
                    ctx.checkpoint().await?;
                    println!(
                        "{} expires {}",
                        e.id,
                        format_time(e.expires_at.unwrap_or_default())
                    );
                }
                ListenerCommand::Delete { endpoint } => {
                    listeners::delete_endpoint(&ctx.store, &endpoint, LOCAL_ACTOR).await?;
                    ctx.checkpoint().await?;
                    println!("deleted {endpoint}");
                }
            }
            Ok(0)
        })
    });
    finish("listener", result)
}

pub fn admin_key(config: Option<&PathBuf>, command: AdminKeyCommand) -> u8 {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let ctx = open(config).await?;
            match command {
                AdminKeyCommand::Create { scopes, ttl, name } => {
                    let scopes = admin_keys::parse_scopes(&scopes)?;
                    let (key, secret) = admin_keys::create(
                        &ctx.store,
                        &name,
                        &scopes,
                        duration_ms(ttl),
                        admin_keys::Creator::Local(LOCAL_ACTOR),
                    )
                    .await?;
                    ctx.checkpoint().await?;
                    eprintln!(
                        "admin key {} expires {} (shown once; store it in a secret manager)",
                        key.id,
                        format_time(key.expires_at)
                    );
                    println!("{}", secret.expose());
                }
                AdminKeyCommand::List { format } => {
                    let keys = admin_keys::list(&ctx.store).await?;
                    match format {
                        ListFormat::Json => println!("{}", serde_json::to_string_pretty(&keys)?),
                        ListFormat::Text => {
                            for k in &keys {
                                let state = match (
                                    k.revoked_at,
                                    k.expires_at <= crate::platform::store::now_ms(),
                                ) {
                                    (Some(at), _) => format!("revoked {}", format_time(at)),
                                    (None, true) => "expired".to_owned(),
                                    (None, false) => "live".to_owned(),
                                };
                                let scopes: Vec<&str> =
                                    k.scopes.iter().map(|s| s.as_str()).collect();
                                println!(
                                    "{}\t{}\t{}\tcreated {}\texpires {}\tlast used {}\t{}",
                                    k.id,
                                    k.name,
                                    scopes.join(","),
                                    format_time(k.created_at),
                                    format_time(k.expires_at),
                                    k.last_used_at.map_or("never".to_owned(), format_time),
                                    state
                                );
                            }
                        }
                    }
                }
                AdminKeyCommand::Revoke { id, reason } => {
                    let revoked = admin_keys::revoke(&ctx.store, &id, LOCAL_ACTOR, &reason).await?;
                    ctx.checkpoint().await?;
                    println!("revoked {}", revoked.join(", "));
                }
            }
            Ok(0)
        })
    });
    finish("admin-key", result)
}

pub fn audit(config: Option<&PathBuf>, command: AuditCommand) -> u8 {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let ctx = open(config).await?;
            match command {
                AuditCommand::Verify => {
                    let key = ctx.keys.audit_signing_key().verifying_key();
                    match audit::verify(&ctx.store, &ctx.settings.audit_checkpoint_file, &key).await? {
                        audit::Verdict::Intact { entries, checkpoints, unwitnessed } => {
                            println!(
                                "audit log intact: {entries} entries, {checkpoints} signed checkpoints, \
                                 {unwitnessed} newest entries not yet witnessed by a checkpoint"
                            );
                            Ok(0)
                        }
                        audit::Verdict::Broken { seq, reason } => {
                            println!("audit log BROKEN at entry {seq}: {reason}");
                            Ok(1)
                        }
                    }
                }
                AuditCommand::Export { .. } => {
                    let mut out = std::io::stdout().lock();
                    audit::export_jsonl(&ctx.store, &mut out).await?;
                    Ok(0)
                }
                AuditCommand::Checkpoint => {
                    match ctx.checkpoint().await? {
                        Some(seq) => println!("checkpoint at entry {seq}"),
                        None => println!("nothing new to checkpoint"),
                    }
                    Ok(0)
                }
            }
        })
    });
    finish("audit", result)
}
