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
use crate::issuers::self_revoke::{Liveness, Spec};
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

/// A self-revoking issuer's pace unless `[issuers.NAME] rate_per_sec` / `burst` say otherwise.
const SELF_REVOKE_RATE: f64 = 10.0;
const SELF_REVOKE_BURST: u32 = 16;

/// The issuers enabled by the settings.
#[derive(Default)]
pub struct Issuers {
    entries: Vec<Entry>,
}

/// An issuer as the installation the engine schedules: a `verify_url` (the issuer's "who am I"
/// call) makes its findings start with a liveness check, as an installation's do.
fn virtual_installation(
    name: &str,
    token_types: &[String],
    verify_url: Option<&str>,
    revoke_url: &str,
    rate: f64,
    concurrency: u32,
) -> anyhow::Result<Installation> {
    let id = format!("{ISSUER_PREFIX}{name}");
    let spec = serde_json::from_value(serde_json::json!({
        "name": id,
        "token_types": token_types,
        "verify_url": verify_url,
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
                    None,
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
            if spec.base_url_required && s.base_url.is_none() {
                anyhow::bail!(
                    "issuers.{}.base_url: required to enable this issuer (each customer has its own \
                     host; the example {} is not one)",
                    spec.name,
                    spec.base_url
                );
            }
            let base = s.base_url.clone().unwrap_or_else(|| spec.base_url.clone());
            let url = |path: &str| format!("{}{}", base.trim_end_matches('/'), path);
            entries.push(Entry {
                installation: virtual_installation(
                    &spec.name,
                    &spec.token_types,
                    spec.whoami.as_ref().map(|w| url(&w.path)).as_deref(),
                    &url(&spec.revoke.path),
                    s.rate_per_sec.unwrap_or(SELF_REVOKE_RATE),
                    s.burst.unwrap_or(SELF_REVOKE_BURST),
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

    /// Asks the issuer `installation_id` names whether `token` is live, with its "who am I" call;
    /// None if it names no issuer or the issuer has no such call.
    pub async fn whoami(&self, installation_id: &str, token: &TokenSecret) -> Option<Liveness> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.installation.id == installation_id)?;
        match &entry.driver {
            Driver::Github { .. } => None,
            Driver::SelfRevoke {
                spec,
                base_url,
                outbound,
            } => spec.whoami(outbound, base_url, token).await,
        }
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
        // A "who am I" call becomes the issuer's verify step; without one, findings go straight
        // to the revoke.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spillway.toml");
        std::fs::write(
            &file,
            "[issuers.gitlab]\nenabled = true\nbase_url = \"https://gitlab.example.com/\"\n\
             rate_per_sec = 2.5\nburst = 4\n[issuers.slack]\nenabled = true\n",
        )
        .unwrap();
        let settings = Settings::load_with(Some(&file), |_| None).unwrap();
        let outbound = Outbound::new(Policy::default(), std::time::Duration::from_secs(1)).unwrap();
        let all = Issuers::from_settings(&settings, &outbound).unwrap();
        let verify = |id: &str| {
            all.installations()
                .find(|i| i.id == id)
                .unwrap()
                .spec
                .verify_url
                .clone()
        };
        assert_eq!(
            verify("issuer:gitlab").as_deref(),
            Some("https://gitlab.example.com/api/v4/personal_access_tokens/self")
        );
        assert_eq!(verify("issuer:slack"), None);
        // Each issuer's pace is its own: set for GitLab, the default for Slack.
        let pace = |id: &str| {
            let spec = &all.installations().find(|i| i.id == id).unwrap().spec;
            (spec.rate_per_sec, spec.burst)
        };
        assert_eq!(pace("issuer:gitlab"), (2.5, 4));
        assert_eq!(pace("issuer:slack"), (SELF_REVOKE_RATE, SELF_REVOKE_BURST));
        assert_eq!(verify("issuer:github"), None);
        let err = issuers("[issuers.acme]\nenabled = true\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("issuers.acme: no such issuer"), "{err}");
        // An issuer whose every customer has a host of its own cannot run on the example host.
        let err = issuers("[issuers.okta]\nenabled = true\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("issuers.okta.base_url: required"), "{err}");
        assert_eq!(
            issuers(
                "[issuers.okta]\nenabled = true\nbase_url = \"https://acme.okta.com\"\n",
                &[]
            )
            .unwrap(),
            ["issuer:github", "issuer:okta"]
        );
    }
}
