//! Output of `spillway scan`: findings as text, JSON or SARIF 2.1.0 (as GitHub code scanning takes it).
//!
//! A [`ReportedFinding`] is the owned, printable form of a scanner finding. It holds the raw secret
//! only when `--show-secrets` asked for it.
//!
//! Must not import anything but the scanner: the scan CLI needs no database.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::json;

use crate::scanner::{Finding, Rule};

/// Where a finding was seen.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// A path (relative to the scan root when possible), or `-` for stdin.
    pub path: String,
    /// For `--git`: the commit that introduced the blob.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportedFinding {
    #[serde(flatten)]
    pub location: Location,
    pub line: usize,
    pub column: usize,
    #[serde(skip)]
    pub column_utf16: usize,
    pub start: usize,
    pub end: usize,
    pub rule_id: String,
    pub rule_name: String,
    pub token_type: String,
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    pub preview: String,
    pub fingerprint: String,
    /// How the finding was reached inside its file, outermost first (`escape`, `percent`, `form`,
    /// `base64`, `inflate`); a container is in the path instead (`a.tar.gz!inner`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub decoded: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl ReportedFinding {
    pub fn new(f: &Finding<'_>, location: Location, haystack: &[u8], show_secret: bool) -> Self {
        // Line and column describe `located_at` (a path rule's finding has neither: 0 and 0).
        let at = f.located_at();
        let line_start = (at + 1).saturating_sub(f.column).min(at);
        let prefix = String::from_utf8_lossy(&haystack[line_start..at]);
        ReportedFinding {
            location,
            line: f.line,
            column: f.column,
            column_utf16: if f.line == 0 {
                0
            } else {
                prefix.encode_utf16().count() + 1
            },
            start: f.span.start,
            end: f.span.end,
            rule_id: f.rule.id.clone(),
            rule_name: f.rule.name.clone(),
            token_type: f.rule.token_type.clone(),
            verdict: f.verdict.as_str(),
            invalid_reason: match f.verdict {
                crate::scanner::Verdict::Invalid(why) => Some(why.to_string()),
                _ => None,
            },
            subtype: f.subtype().map(str::to_owned),
            expires_at: f.jwt.as_ref().and_then(|j| j.expires_at),
            preview: f.preview(),
            fingerprint: f.fingerprint(),
            decoded: f.decoded.iter().map(|d| d.as_str()).collect(),
            secret: show_secret.then(|| f.secret().expose().to_owned()),
        }
    }

    fn sort_key(&self) -> (&Location, usize, usize, &str) {
        (&self.location, self.line, self.column, &self.rule_id)
    }
}

/// Sorts findings so output is the same on every run, whatever the thread interleaving.
pub fn sort(findings: &mut [ReportedFinding]) {
    findings.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Sarif,
}

/// What a SARIF run says about itself beyond its results.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// `automationDetails.id`: `spillway/files/` or `spillway/git/`, so code scanning keeps the two
    /// kinds of scan apart.
    pub category: &'static str,
    /// `versionControlProvenance`, for `--git`: one entry per repository.
    pub provenance: Vec<Provenance>,
}

/// One repository a `--git` scan read.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// The `origin` remote's URL, or the repository's `file://` URI when it has none.
    pub repository_uri: String,
    /// The commit HEAD names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_id: Option<String>,
    /// The branch HEAD names (`refs/heads/...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// `{"uriBaseId": "SRCROOT"}`: result paths are relative to the repository's root.
    pub mapped_to: serde_json::Value,
}

pub fn write(
    out: &mut dyn Write,
    format: Format,
    findings: &[ReportedFinding],
    rules: &[Rule],
    context: &RunContext,
) -> io::Result<()> {
    match format {
        Format::Text => write_text(out, findings),
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, findings)?;
            writeln!(out)
        }
        Format::Sarif => {
            serde_json::to_writer_pretty(&mut *out, &sarif(findings, rules, context))?;
            writeln!(out)
        }
    }
}

fn write_text(out: &mut dyn Write, findings: &[ReportedFinding]) -> io::Result<()> {
    for f in findings {
        let commit = f
            .location
            .commit
            .as_deref()
            .map(|c| format!(" (commit {c})"))
            .unwrap_or_default();
        let via = (!f.decoded.is_empty()).then(|| format!("via {}", f.decoded.join(" > ")));
        let detail = [
            f.subtype.as_deref(),
            f.invalid_reason.as_deref(),
            via.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", detail.join(", "))
        };
        let shown = f.secret.as_deref().unwrap_or(&f.preview);
        writeln!(
            out,
            "{}:{}:{}{commit}: {} [{}] {}{detail} {shown}",
            f.location.path, f.line, f.column, f.rule_id, f.token_type, f.verdict
        )?;
    }
    Ok(())
}

/// Where the rules are published, for `helpUri`.
const RULES_URI: &str = "https://github.com/spillway/spillway/blob/main/patterns";

/// A rule's `help`: what the token is and what to do about a leak, as text and Markdown.
fn rule_help(r: &Rule) -> serde_json::Value {
    let what = if r.description.is_empty() {
        &r.name
    } else {
        &r.description
    };
    let todo = "Revoke or rotate it at its issuer now, then replace it with a secret from a secret \
                store. Deleting it from the file is not enough: it stays in the history, in clones \
                and in caches.";
    json!({
        "text": format!("{} ({}). {what}\n\n{todo}\n\nRule {} ({}), severity {}.",
            r.name, r.token_type, r.id, r.origin, r.severity.as_str()),
        "markdown": format!("**{}** (`{}`)\n\n{what}\n\n**What to do.** {todo}\n\nRule `{}` (`{}`), severity {}.",
            r.name, r.token_type, r.id, r.origin, r.severity.as_str()),
    })
}

/// A link to the rule's definition when it is one of Spillway's shipped rule files.
fn rule_help_uri(r: &Rule) -> Option<String> {
    let file = r.origin.rsplit('/').next()?;
    if r.dialect == crate::scanner::rule::Dialect::Gitleaks {
        return Some(format!("{RULES_URI}/gitleaks/gitleaks.toml"));
    }
    let dir = ["extended/", "generic/"]
        .into_iter()
        .find(|d| r.origin.contains(&format!("patterns/{d}")));
    match dir {
        Some(dir) => Some(format!("{RULES_URI}/{dir}{file}")),
        None => crate::scanner::rule::default_rule_file_names()
            .any(|n| n == file)
            .then(|| format!("{RULES_URI}/{file}")),
    }
}

/// A fingerprint of where a finding is (rule, file, commit) and what it is, with its occurrence
/// among the same secret's in that file: the same token in two files is two alerts, and an edit
/// that moves the line keeps the alert (code scanning reopens an alert whose fingerprint changes).
fn location_fingerprint(f: &ReportedFinding, occurrence: usize) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        f.rule_id.as_str(),
        f.location.path.as_str(),
        f.location.commit.as_deref().unwrap_or(""),
        f.fingerprint.as_str(),
        &occurrence.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// SARIF 2.1.0 with what GitHub code scanning reads: rules with `help`, `helpUri` and
/// `security-severity`, `ruleId`/`ruleIndex`, a message, `physicalLocation` with
/// `artifactLocation.uri` and a 1-based `region`, `partialFingerprints` (the secret, and the secret
/// at its location), `automationDetails` and, for `--git`, `versionControlProvenance`.
pub fn sarif(
    findings: &[ReportedFinding],
    rules: &[Rule],
    context: &RunContext,
) -> serde_json::Value {
    let mut used: Vec<&Rule> = rules
        .iter()
        .filter(|r| findings.iter().any(|f| f.rule_id == r.id))
        .collect();
    used.sort_by(|a, b| a.id.cmp(&b.id));
    let sarif_rules: Vec<_> = used
        .iter()
        .map(|r| {
            let mut rule = json!({
                "id": r.id,
                "name": r.token_type,
                "shortDescription": { "text": r.name },
                "fullDescription": { "text": if r.description.is_empty() { &r.name } else { &r.description } },
                "help": rule_help(r),
                "defaultConfiguration": { "level": "error" },
                "properties": {
                    "tags": ["security", "secret", r.token_type],
                    "precision": if r.validators.is_empty() { "high" } else { "very-high" },
                    "security-severity": r.severity.score()
                }
            });
            if let Some(uri) = rule_help_uri(r) {
                rule["helpUri"] = json!(uri);
            }
            rule
        })
        .collect();
    let mut seen: std::collections::HashMap<(&str, &str, Option<&str>, &str), usize> =
        std::collections::HashMap::new();
    let results: Vec<_> = findings
        .iter()
        .map(|f| {
            let index = used.iter().position(|r| r.id == f.rule_id).unwrap_or(0);
            let occurrence = {
                let n = seen
                    .entry((
                        f.rule_id.as_str(),
                        f.location.path.as_str(),
                        f.location.commit.as_deref(),
                        f.fingerprint.as_str(),
                    ))
                    .or_default();
                *n += 1;
                *n
            };
            // A path rule reports a whole file (line 0): no region, which SARIF wants 1-based.
            let region = (f.line > 0).then(|| {
                json!({
                    "startLine": f.line,
                    "startColumn": f.column_utf16,
                    "endLine": f.line,
                    "endColumn": f.column_utf16 + f.end - f.start
                })
            });
            let mut result = json!({
                "ruleId": f.rule_id,
                "ruleIndex": index,
                "level": if f.verdict == "invalid" { "note" } else { "error" },
                "message": { "text": format!("{} found: {} ({}) in {}", f.rule_name, f.preview, f.verdict, f.location.path) },
                "locations": [{
                    "physicalLocation": {
                        // A member of an archive is located at the archive (code scanning opens
                        // files, not members); the member path is in the properties.
                        "artifactLocation": artifact_location(&f.location.path, context),
                        "region": region
                    }
                }],
                "partialFingerprints": {
                    "spillwaySecret/v1": f.fingerprint,
                    "spillwaySecretLocation/v1": location_fingerprint(f, occurrence)
                }
            });
            let mut properties = serde_json::Map::new();
            if region.is_none() {
                result["locations"][0]["physicalLocation"]
                    .as_object_mut()
                    .expect("an object")
                    .remove("region");
            }
            if let Some(commit) = &f.location.commit {
                properties.insert("commitSha".into(), json!(commit));
            }
            if f.location.path.contains('!') {
                properties.insert("memberPath".into(), json!(f.location.path));
            }
            if !f.decoded.is_empty() {
                properties.insert("decodeSteps".into(), json!(f.decoded));
            }
            if !properties.is_empty() {
                result["properties"] = serde_json::Value::Object(properties);
            }
            result
        })
        .collect();
    let mut run = json!({
        "tool": { "driver": {
            "name": "spillway",
            "version": env!("CARGO_PKG_VERSION"),
            "semanticVersion": env!("CARGO_PKG_VERSION"),
            "informationUri": "https://github.com/spillway/spillway",
            "rules": sarif_rules
        }},
        "automationDetails": { "id": if context.category.is_empty() { "spillway/files/" } else { context.category } },
        "columnKind": "utf16CodeUnits",
        "results": results
    });
    if !context.provenance.is_empty() {
        run["versionControlProvenance"] = json!(context.provenance);
    }
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [run]
    })
}

/// A result's file; in a `--git` scan relative to the repository root, named `SRCROOT`.
fn artifact_location(path: &str, context: &RunContext) -> serde_json::Value {
    let uri = sarif_uri(outer_file(path));
    if context.provenance.is_empty() {
        json!({ "uri": uri })
    } else {
        json!({ "uri": uri, "uriBaseId": SRCROOT })
    }
}

/// The `uriBaseId` of a repository's root.
pub const SRCROOT: &str = "SRCROOT";

/// The file a path names: the archive itself for a member (`a.tar.gz!inner` names `a.tar.gz`).
fn outer_file(path: &str) -> &str {
    path.split_once('!').map_or(path, |(outer, _)| outer)
}

/// A relative URI with forward slashes and percent-encoded spaces, as code scanning expects; an
/// absolute path (`scan /src`) becomes a `file://` URI, which SARIF requires of absolute ones.
fn sarif_uri(path: &str) -> String {
    let path = path.strip_prefix("./").unwrap_or(path).replace('\\', "/");
    let (scheme, path) = match path.strip_prefix('/') {
        Some(rest) => ("file:///", rest.to_owned()),
        None => ("", path),
    };
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    format!("{scheme}{out}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sarif_uris_are_relative_and_escaped() {
        assert_eq!(sarif_uri("./src/a b.rs"), "src/a%20b.rs");
        assert_eq!(sarif_uri("dir\\x.env"), "dir/x.env");
        assert_eq!(sarif_uri("/src/a b.rs"), "file:///src/a%20b.rs");
    }
}
