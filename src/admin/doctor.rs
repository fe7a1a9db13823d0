//! `spillway doctor`: Spillway's own credential hygiene (seed 002). Reads the configuration and
//! the database and reports what a security team should fix: admin keys that are old, live too
//! long, hold too much or serve several uses at once; installation secrets not rotated; listener
//! endpoints past expiry but not deleted; development keys or settings in a production
//! configuration. Nothing is changed.
//!
//! Reads through the registries' own functions (no SQL here); must not import HTTP or the
//! revocation engine.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::admin::api_keys::Scope;
use crate::platform::config::Settings;
use crate::platform::store::{Store, now_ms};

const DAY_MS: i64 = 24 * 3600 * 1000;
/// Credentials older than this are due for rotation.
pub const ROTATE_AFTER_DAYS: i64 = 90;
/// An admin key living longer than this has, in effect, no TTL.
pub const NO_TTL_DAYS: i64 = 365;
/// A rotation (two live installation secrets) left unfinished longer than this.
pub const ROTATION_OPEN_DAYS: i64 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Severe,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Severe => "severe",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable name of the check, e.g. `admin_key.over_broad`.
    pub check: &'static str,
    /// What it is about: a key id, an installation id, an endpoint id, a setting.
    pub subject: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub production: bool,
    pub findings: Vec<Finding>,
    pub severe: usize,
    pub warnings: usize,
}

fn finding(
    severity: Severity,
    check: &'static str,
    subject: impl Into<String>,
    message: impl Into<String>,
) -> Finding {
    Finding {
        severity,
        check,
        subject: subject.into(),
        message: message.into(),
    }
}

/// The uses an admin key's scopes serve: listeners, installations, audit, keys.
fn uses(scopes: &BTreeSet<Scope>) -> BTreeSet<&'static str> {
    scopes
        .iter()
        .filter_map(|s| s.as_str().split(':').next())
        .collect()
}

/// Checks one admin key (not yet expired).
pub fn check_admin_key(
    id: &str,
    scopes: &BTreeSet<Scope>,
    created_at: i64,
    expires_at: i64,
    now: i64,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let age_days = (now - created_at) / DAY_MS;
    if age_days > ROTATE_AFTER_DAYS {
        out.push(finding(
            Severity::Warning,
            "admin_key.age",
            id,
            format!("created {age_days} days ago (rotate after {ROTATE_AFTER_DAYS}): create a new key, then let this one expire"),
        ));
    }
    let ttl_days = (expires_at - created_at) / DAY_MS;
    if ttl_days > NO_TTL_DAYS {
        out.push(finding(
            Severity::Severe,
            "admin_key.no_ttl",
            id,
            format!(
                "lives {ttl_days} days: in effect no TTL (keep keys under {ROTATE_AFTER_DAYS} days)"
            ),
        ));
    } else if ttl_days > ROTATE_AFTER_DAYS {
        out.push(finding(
            Severity::Warning,
            "admin_key.long_ttl",
            id,
            format!("lives {ttl_days} days (keep keys under {ROTATE_AFTER_DAYS} days)"),
        ));
    }
    let all = Scope::ALL.iter().all(|s| scopes.contains(s));
    let grants_and_writes = scopes.contains(&Scope::KeysWrite)
        && scopes
            .iter()
            .any(|s| s.as_str().ends_with(":write") && *s != Scope::KeysWrite);
    if all || grants_and_writes {
        out.push(finding(
            Severity::Severe,
            "admin_key.over_broad",
            id,
            format!(
                "holds {}: a key that mints keys should do nothing else",
                scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let served = uses(scopes);
    if served.len() >= 3 {
        out.push(finding(
            Severity::Warning,
            "admin_key.shared",
            id,
            format!(
                "serves {} uses ({}): issue one key per use, so one leak exposes one use",
                served.len(),
                served.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    out
}

/// Checks the configuration alone.
pub fn check_settings(settings: &Settings, development_keys: Option<bool>) -> Vec<Finding> {
    let mut out = Vec::new();
    if !settings.is_production() {
        return out;
    }
    match development_keys {
        Some(true) => out.push(finding(
            Severity::Severe,
            "keys.development",
            settings.key_file.display().to_string(),
            "a production database with keys Spillway generated for development: provide \
             SPILLWAY_FINGERPRINT_KEY, SPILLWAY_SEALING_KEY and SPILLWAY_AUDIT_SIGNING_KEY from a secret store",
        )),
        None => out.push(finding(
            Severity::Severe,
            "keys.missing",
            settings.key_file.display().to_string(),
            "no keys configured: serve will refuse to start",
        )),
        Some(false) => {}
    }
    for (on, name) in [
        (settings.outbound_allow_http, "outbound_allow_http"),
        (settings.outbound_allow_private, "outbound_allow_private"),
    ] {
        if on {
            out.push(finding(
                Severity::Severe,
                "config.development_setting",
                name,
                format!("{name} is on with a production database: installations' URLs may be plain http or private addresses (tests and demos only)"),
            ));
        }
    }
    if !settings.public_url.starts_with("https://") {
        out.push(finding(
            Severity::Warning,
            "config.public_url",
            "public_url",
            format!(
                "{} is not https: platforms would send alerts in clear text",
                settings.public_url
            ),
        ));
    }
    out
}

/// Runs every check.
pub async fn run(settings: &Settings, store: &Store) -> anyhow::Result<Report> {
    let now = now_ms();
    let development_keys = crate::platform::keyring::Keys::load(&settings.key_file, false)
        .ok()
        .map(|k| k.development);
    let mut findings = check_settings(settings, development_keys);
    if settings.poller.enabled
        && std::env::var_os("SPILLWAY_GITHUB_TOKEN").is_none()
        && std::env::var_os("SPILLWAY_GITHUB_TOKEN_FILE").is_none()
    {
        findings.push(finding(
            Severity::Warning,
            "config.poller_unauthenticated",
            "SPILLWAY_GITHUB_TOKEN",
            "the poller runs without a GitHub token: 60 requests an hour instead of 5,000",
        ));
    }

    // Key ids published by more than one installation: inline ones in the registry (registration
    // refuses new ones), and the JWKS conflicts serve found and audited.
    let mut conflicts: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    let installations = crate::installations::list(store).await?;
    let mut owners: std::collections::HashMap<String, BTreeSet<String>> = Default::default();
    for i in &installations {
        for kid in i
            .spec
            .inline_jwks
            .iter()
            .flat_map(|j| j.keys.iter().filter_map(|k| k.kid.clone()))
        {
            owners.entry(kid).or_default().insert(i.id.clone());
        }
    }
    for (kid, ids) in owners.into_iter().filter(|(_, ids)| ids.len() > 1) {
        conflicts.entry(kid).or_default().extend(ids);
    }
    let live: std::collections::HashSet<&str> =
        installations.iter().map(|i| i.id.as_str()).collect();
    for entry in crate::platform::audit::with_action(store, "installation.key_conflict").await? {
        let (Some(kid), Some(ids)) = (
            entry.details["kid"].as_str(),
            entry.details["installations"].as_array(),
        ) else {
            continue;
        };
        let ids: BTreeSet<String> = ids
            .iter()
            .filter_map(|v| v.as_str())
            .filter(|id| live.contains(id))
            .map(str::to_owned)
            .collect();
        if ids.len() > 1 {
            conflicts.entry(kid.to_owned()).or_default().extend(ids);
        }
    }
    for (kid, ids) in conflicts {
        findings.push(finding(
            Severity::Severe,
            "key_id.ambiguous",
            &kid,
            format!(
                "published by more than one installation ({}): its tokens get no offline verdict and are verified online; remove it from every installation but its owner",
                ids.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }

    for key in crate::admin::api_keys::list(store).await? {
        if key.revoked_at.is_some() {
            continue;
        }
        if key.expires_at <= now {
            findings.push(finding(
                Severity::Info,
                "admin_key.expired",
                &key.id,
                "expired (unusable); kept for the record",
            ));
            continue;
        }
        findings.extend(check_admin_key(
            &key.id,
            &key.scopes,
            key.created_at,
            key.expires_at,
            now,
        ));
    }

    for crate::installations::SecretAges {
        installation_id: id,
        live,
        newest,
        oldest,
    } in crate::installations::secret_ages(store).await?
    {
        let age = (now - newest) / DAY_MS;
        if age > ROTATE_AFTER_DAYS {
            findings.push(finding(
                Severity::Warning,
                "installation_secret.not_rotated",
                &id,
                format!("newest shared secret is {age} days old (rotate after {ROTATE_AFTER_DAYS}): `spillway installation rotate-secret`"),
            ));
        }
        let open = (now - newest) / DAY_MS;
        if live > 1 && open > ROTATION_OPEN_DAYS {
            findings.push(finding(
                Severity::Warning,
                "installation_secret.rotation_unfinished",
                &id,
                format!(
                    "two secrets live for {open} days (the older from {} days ago): retire the old one with `rotate-secret --retire-old`",
                    (now - oldest) / DAY_MS
                ),
            ));
        }
    }

    for crate::sources::listeners::ExpiredEndpoint {
        id,
        listener_id: listener,
        expires_at: expired,
    } in crate::sources::listeners::expired_endpoints(store, now).await?
    {
        findings.push(finding(
            Severity::Warning,
            "endpoint.expired_not_deleted",
            &id,
            format!(
                "endpoint of listener {listener} expired {} days ago and still exists: delete it (`spillway listener delete {id}`)",
                (now - expired) / DAY_MS
            ),
        ));
    }

    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.check.cmp(b.check)));
    let severe = findings
        .iter()
        .filter(|f| f.severity == Severity::Severe)
        .count();
    let warnings = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    Ok(Report {
        production: settings.is_production(),
        findings,
        severe,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(list: &[&str]) -> BTreeSet<Scope> {
        list.iter().map(|s| Scope::parse(s).unwrap()).collect()
    }

    #[test]
    fn a_narrow_young_key_is_fine_and_a_broad_old_one_is_not() {
        let now = 1_000 * DAY_MS;
        let fine = check_admin_key(
            "adm_a",
            &scopes(&["audit:read"]),
            now - DAY_MS,
            now + 29 * DAY_MS,
            now,
        );
        assert!(fine.is_empty(), "{fine:?}");
        let bad = check_admin_key(
            "adm_b",
            &Scope::ALL.into_iter().collect(),
            now - 200 * DAY_MS,
            now + 400 * DAY_MS,
            now,
        );
        let checks: Vec<&str> = bad.iter().map(|f| f.check).collect();
        assert_eq!(
            checks,
            vec![
                "admin_key.age",
                "admin_key.no_ttl",
                "admin_key.over_broad",
                "admin_key.shared"
            ]
        );
        // Minting keys together with another write is over-broad even without every scope.
        let minting = check_admin_key(
            "adm_c",
            &scopes(&["keys:write", "listeners:write"]),
            now,
            now + DAY_MS,
            now,
        );
        assert_eq!(minting.len(), 1);
        assert_eq!(minting[0].severity, Severity::Severe);
    }

    #[test]
    fn development_settings_matter_only_in_production() {
        let mut s = Settings {
            outbound_allow_http: true,
            ..Settings::default()
        };
        assert!(
            check_settings(&s, Some(true)).is_empty(),
            "SQLite: development"
        );
        s.database_url = "postgres://db/spillway".into();
        let checks: Vec<&str> = check_settings(&s, Some(true))
            .iter()
            .map(|f| f.check)
            .collect();
        assert_eq!(
            checks,
            vec![
                "keys.development",
                "config.development_setting",
                "config.public_url"
            ]
        );
    }
}
