//! Issuers as installations the engine knows without a registry row: `issuer:github` (GitHub's
//! Credential Revocation API) and `issuer:NAME` for each self-revocation family the operator
//! enabled (`[issuers.NAME]`). A token no installation claims goes to the issuer of its type
//! ([`super::attribute`]); its finding then runs through the same durable steps, limits, breaker,
//! audit and metrics as an installation's, and the worker calls the issuer's driver
//! (`crate::issuers`) where it would make a signed contract call.
//!
//! Must not import HTTP or write SQL.

use std::sync::OnceLock;

use crate::installations::{ISSUER_PREFIX, Installation};
use crate::issuers::Outcome;
use crate::issuers::github::{self, BatchOptions, Batcher};
use crate::issuers::self_revoke::Spec;
use crate::platform::config::Settings;
use crate::platform::outbound::Outbound;
use crate::scanner::TokenSecret;

enum Driver {
    /// Started on first use (the batcher is a task, and this is built outside the runtime).
    Github {
        client: github::Client,
        options: BatchOptions,
        batcher: OnceLock<Batcher>,
    },
    SelfRevoke {
        spec: Box<Spec>,
        base_url: String,
        outbound: Outbound,
    },
}

struct Entry {
    installation: Installation,
    driver: Driver,
}

/// The issuers enabled by the settings.
#[derive(Default)]
pub struct Issuers {
    entries: Vec<Entry>,
}

fn virtual_installation(
    name: &str,
    token_types: &[String],
    revoke_url: &str,
    rate: f64,
    concurrency: u32,
) -> anyhow::Result<Installation> {
    let id = format!("{ISSUER_PREFIX}{name}");
    let spec = serde_json::from_value(serde_json::json!({
        "name": id,
        "token_types": token_types,
        "revoke_url": revoke_url,
        "rate_per_sec": rate,
        "burst": concurrency,
        "concurrency": concurrency,
        // An issuer is sent the token itself: it has no hash to look it up by.
        "delivery": "raw",
    }))?;
    Ok(Installation {
        id,
        spec,
        created_at: 0,
        updated_at: 0,
        secret_created_at: 0,
        live_secrets: 0,
    })
}

impl Issuers {
    /// The issuers `settings` enables; an `[issuers.NAME]` naming no issuer is an error that names it.
    pub fn from_settings(settings: &Settings, outbound: &Outbound) -> anyhow::Result<Issuers> {
        let specs = Spec::shipped().map_err(|e| anyhow::anyhow!(e))?;
        for name in settings.issuers.keys() {
            anyhow::ensure!(
                name == "github" || specs.iter().any(|s| &s.name == name),
                "issuers.{name}: no such issuer (github, or one of patterns/issuers/: {})",
                specs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let mut entries = Vec::new();
        let github = settings.issuers.get("github").cloned().unwrap_or_default();
        if github.enabled.unwrap_or(true) {
            let base = github
                .base_url
                .unwrap_or_else(|| "https://api.github.com".into());
            let limit = github.hourly_limit.unwrap_or(github::HOURLY_LIMIT);
            let types: Vec<String> = github::TOKEN_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect();
            entries.push(Entry {
                // The batcher sets the pace: the engine may hand it a full batch at once.
                installation: virtual_installation(
                    "github",
                    &types,
                    &format!("{}{}", base.trim_end_matches('/'), github::PATH),
                    1_000.0,
                    github::MAX_BATCH as u32,
                )?,
                driver: Driver::Github {
                    client: github::Client::new(outbound.clone(), &base),
                    options: BatchOptions {
                        hourly_limit: limit,
                        ..BatchOptions::default()
                    },
                    batcher: OnceLock::new(),
                },
            });
        }
        for spec in specs {
            let Some(s) = settings.issuers.get(&spec.name) else {
                continue;
            };
            if !s.enabled.unwrap_or(false) {
                continue;
            }
            let base = s.base_url.clone().unwrap_or_else(|| spec.base_url.clone());
            entries.push(Entry {
                installation: virtual_installation(
                    &spec.name,
                    &spec.token_types,
                    &format!("{}{}", base.trim_end_matches('/'), spec.revoke.path),
                    10.0,
                    16,
                )?,
                driver: Driver::SelfRevoke {
                    spec: Box::new(spec),
                    base_url: base,
                    outbound: outbound.clone(),
                },
            });
        }
        Ok(Issuers { entries })
    }

    /// The issuers, as the installations the engine schedules work for.
    pub fn installations(&self) -> impl Iterator<Item = &Installation> {
        self.entries.iter().map(|e| &e.installation)
    }

    /// Revokes `token` with the issuer `installation_id` names; None if it names none.
    pub async fn revoke(&self, installation_id: &str, token: &TokenSecret) -> Option<Outcome> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.installation.id == installation_id)?;
        Some(match &entry.driver {
            Driver::Github {
                client,
                options,
                batcher,
            } => {
                batcher
                    .get_or_init(|| Batcher::spawn(client.clone(), options.clone()))
                    .submit(token.clone())
                    .await
            }
            Driver::SelfRevoke {
                spec,
                base_url,
                outbound,
            } => spec.revoke(outbound, base_url, token).await,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::outbound::Policy;

    fn issuers(toml: &str, env: &[(&str, &str)]) -> anyhow::Result<Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spillway.toml");
        std::fs::write(&file, toml).unwrap();
        let settings = Settings::load_with(Some(&file), |name| {
            env.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })?;
        let outbound = Outbound::new(Policy::default(), std::time::Duration::from_secs(1))?;
        Ok(Issuers::from_settings(&settings, &outbound)?
            .installations()
            .map(|i| i.id.clone())
            .collect())
    }

    #[test]
    fn github_is_on_unless_turned_off_and_others_only_when_turned_on() {
        assert_eq!(issuers("", &[]).unwrap(), ["issuer:github"]);
        assert_eq!(
            issuers(
                "[issuers.gitlab]\nenabled = true\n[issuers.slack]\nenabled = false\n",
                &[]
            )
            .unwrap(),
            ["issuer:github", "issuer:gitlab"]
        );
        assert!(
            issuers("[issuers.github]\nenabled = false\n", &[])
                .unwrap()
                .is_empty()
        );
        assert!(
            issuers("", &[("SPILLWAY_ISSUERS_GITHUB_ENABLED", "no")])
                .unwrap()
                .is_empty()
        );
        let err = issuers("[issuers.acme]\nenabled = true\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("issuers.acme: no such issuer"), "{err}");
    }
}
