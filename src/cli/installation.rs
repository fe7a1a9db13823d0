//! `spillway installation register|list|update|rotate-secret|remove`: the installation registry,
//! directly on the configured database (like `listener`), audited as `cli`.
//!
//! Must not import HTTP or the revocation engine: it calls the registry.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::admin::{LOCAL_ACTOR, finish, open, runtime};
use crate::installations::contract::Jwks;
use crate::installations::{self, Delivery, Patch, Spec};
use crate::platform::outbound::Policy;
use crate::scanner::TokenSecret;

#[derive(Debug, Subcommand)]
pub enum InstallationCommand {
    /// Register an installation. Its shared secret (for verifying Spillway's signed calls) comes
    /// from --secret-file when that file exists, else is generated: written to --secret-file
    /// (mode 0600) when given, printed once as the last line otherwise.
    Register {
        #[command(flatten)]
        spec: SpecArgs,
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
    /// List installations.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Change the given fields of an installation.
    Update {
        /// Installation id or name.
        installation: String,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Add a new shared secret beside the current one (both sign Spillway's calls until the old
    /// one is retired), or with --retire-old, retire the old one once the installation verifies
    /// with the new.
    RotateSecret {
        installation: String,
        #[arg(long, value_name = "FILE", conflicts_with = "retire_old")]
        secret_file: Option<PathBuf>,
        #[arg(long)]
        retire_old: bool,
    },
    /// Remove an installation; its findings still in progress fail (audited).
    Remove { installation: String },
}

/// Registration fields; on `update`, only those given change.
#[derive(Debug, Args)]
pub struct SpecArgs {
    #[arg(long)]
    name: Option<String>,
    /// A hostname of the installation (repeatable), e.g. acme.palantirfoundry.com.
    #[arg(long = "hostname", value_name = "HOST")]
    hostnames: Vec<String>,
    /// A token type it issues (repeatable), e.g. palantir_jwt.
    #[arg(long = "token-type", value_name = "TYPE")]
    token_types: Vec<String>,
    #[arg(long, value_name = "URL")]
    jwks_url: Option<String>,
    /// A JWKS JSON file whose keys are stored inline.
    #[arg(long, value_name = "FILE")]
    jwks_file: Option<PathBuf>,
    #[arg(long, value_name = "URL")]
    verify_url: Option<String>,
    #[arg(long, value_name = "URL")]
    revoke_url: Option<String>,
    #[arg(long, value_name = "URL")]
    notify_url: Option<String>,
    /// The installation pulls its revocations (no verify or revoke URL).
    #[arg(long, value_name = "BOOL")]
    pull_mode: Option<bool>,
    /// Requests per second Spillway may send it.
    #[arg(long, value_name = "RPS")]
    rate_limit: Option<f64>,
    #[arg(long)]
    burst: Option<u32>,
    /// Calls in flight at once.
    #[arg(long)]
    concurrency: Option<u32>,
    #[arg(long, value_parser = ["sha256", "raw"])]
    delivery: Option<String>,
    /// Remove a field (repeatable; update only): verify-url, revoke-url, notify-url, jwks-url,
    /// inline-jwks, hostnames.
    #[arg(long, value_name = "FIELD", value_parser = ["verify-url", "revoke-url", "notify-url", "jwks-url", "inline-jwks", "hostnames"])]
    clear: Vec<String>,
}

impl SpecArgs {
    fn into_patch(self) -> anyhow::Result<Patch> {
        let inline_jwks = match &self.jwks_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read --jwks-file", path.display()))?;
                let jwks: Jwks = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{}: not a JWKS (expected {{\"keys\": [...]}})",
                        path.display()
                    )
                })?;
                Some(Some(jwks))
            }
            None => None,
        };
        let cleared = |f: &str| self.clear.iter().any(|c| c == f);
        let url = |given: Option<String>, field: &str| match given {
            Some(u) => Some(Some(u)),
            None if cleared(field) => Some(None),
            None => None,
        };
        Ok(Patch {
            jwks_url: url(self.jwks_url.clone(), "jwks-url"),
            verify_url: url(self.verify_url.clone(), "verify-url"),
            revoke_url: url(self.revoke_url.clone(), "revoke-url"),
            notify_url: url(self.notify_url.clone(), "notify-url"),
            inline_jwks: if cleared("inline-jwks") {
                Some(None)
            } else {
                inline_jwks
            },
            hostnames: if cleared("hostnames") {
                Some(Vec::new())
            } else {
                (!self.hostnames.is_empty()).then_some(self.hostnames.clone())
            },
            name: self.name,
            token_types: (!self.token_types.is_empty()).then_some(self.token_types),
            pull_mode: self.pull_mode,
            rate_per_sec: self.rate_limit,
            burst: self.burst,
            concurrency: self.concurrency,
            delivery: self.delivery.map(|d| {
                if d == "raw" {
                    Delivery::Raw
                } else {
                    Delivery::Sha256
                }
            }),
        })
    }
}

/// Reads a secret from `path` if it exists.
fn read_secret(path: &Path) -> anyhow::Result<Option<TokenSecret>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(TokenSecret::new(text.trim().to_owned()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read --secret-file", path.display())),
    }
}

/// Creates `path` (0600) for a secret about to be generated: before anything is stored, so a
/// secret is never committed without a place to hand it over.
fn create_secret_file(path: &Path) -> anyhow::Result<std::fs::File> {
    crate::platform::keyring::create_private_file(path)
        .with_context(|| format!("{}: cannot create --secret-file", path.display()))
}

/// Writes a generated secret to the file made by [`create_secret_file`], or prints it.
fn hand_over(secret: &TokenSecret, target: Option<(&Path, std::fs::File)>) -> anyhow::Result<()> {
    match target {
        Some((path, mut file)) => {
            writeln!(file, "{}", secret.expose())?;
            println!("shared secret written to {}", path.display());
        }
        None => {
            println!(
                "shared secret (shown once; the installation verifies Spillway's calls with it):"
            );
            println!("{}", secret.expose());
        }
    }
    Ok(())
}

pub fn installation(config: Option<&PathBuf>, command: InstallationCommand) -> u8 {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let ctx = open(config).await?;
            let policy = Policy {
                allow_http: ctx.settings.outbound_allow_http,
                allow_private: ctx.settings.outbound_allow_private,
            };
            let code = match command {
                InstallationCommand::Register { spec, secret_file } => {
                    let patch = spec.into_patch()?;
                    let name = patch
                        .name
                        .clone()
                        .context("--name is required to register an installation")?;
                    let mut spec: Spec = serde_json::from_value(serde_json::json!({
                        "name": name, "token_types": []
                    }))?;
                    patch.apply(&mut spec);
                    let given = match &secret_file {
                        Some(p) => read_secret(p)?,
                        None => None,
                    };
                    let target = match (&secret_file, &given) {
                        (Some(p), None) => Some((p.as_path(), create_secret_file(p)?)),
                        _ => None,
                    };
                    let registered = installations::register(
                        &ctx.store,
                        &ctx.keys.sealing,
                        &policy,
                        spec,
                        given,
                        LOCAL_ACTOR,
                    )
                    .await;
                    let (installation, generated) = match registered {
                        Ok(r) => r,
                        Err(e) => {
                            if let Some((p, _)) = &target {
                                let _ = std::fs::remove_file(p);
                            }
                            return Err(e.into());
                        }
                    };
                    println!(
                        "registered installation {} ({})",
                        installation.id, installation.spec.name
                    );
                    if let Some(secret) = generated {
                        hand_over(&secret, target)?;
                    }
                    0
                }
                InstallationCommand::List { json } => {
                    let all = installations::list(&ctx.store).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&all)?);
                    } else {
                        for i in all {
                            let mode = if i.spec.pull_mode { "pull" } else { "push" };
                            println!(
                                "{}\t{}\t{}\t{}\t{}/s burst {}\tsecrets {}",
                                i.id,
                                i.spec.name,
                                i.spec.token_types.join(","),
                                mode,
                                i.spec.rate_per_sec,
                                i.spec.burst,
                                i.live_secrets
                            );
                        }
                    }
                    0
                }
                InstallationCommand::Update { installation, spec } => {
                    let updated = installations::update(
                        &ctx.store,
                        &policy,
                        &installation,
                        spec.into_patch()?,
                        LOCAL_ACTOR,
                    )
                    .await?;
                    println!(
                        "updated installation {} ({})",
                        updated.id, updated.spec.name
                    );
                    0
                }
                InstallationCommand::RotateSecret {
                    installation,
                    secret_file,
                    retire_old,
                } => {
                    if retire_old {
                        installations::retire_old_secret(&ctx.store, &installation, LOCAL_ACTOR)
                            .await?;
                        println!("old shared secret retired; one secret is live");
                    } else {
                        let given = match &secret_file {
                            Some(p) => read_secret(p)?,
                            None => None,
                        };
                        let target = match (&secret_file, &given) {
                            (Some(p), None) => Some((p.as_path(), create_secret_file(p)?)),
                            _ => None,
                        };
                        let rotated = installations::rotate_secret(
                            &ctx.store,
                            &ctx.keys.sealing,
                            &installation,
                            given,
                            LOCAL_ACTOR,
                        )
                        .await;
                        let generated = match rotated {
                            Ok(g) => g,
                            Err(e) => {
                                if let Some((p, _)) = &target {
                                    let _ = std::fs::remove_file(p);
                                }
                                return Err(e.into());
                            }
                        };
                        println!("new shared secret added; both sign until --retire-old");
                        if let Some(secret) = generated {
                            hand_over(&secret, target)?;
                        }
                    }
                    0
                }
                InstallationCommand::Remove { installation } => {
                    let stopped =
                        installations::remove(&ctx.store, &installation, LOCAL_ACTOR).await?;
                    println!(
                        "removed installation {installation}; {stopped} findings in progress failed"
                    );
                    0
                }
            };
            ctx.checkpoint().await?;
            Ok(code)
        })
    });
    finish("installation", result)
}
