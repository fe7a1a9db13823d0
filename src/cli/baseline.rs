//! Baselines: a file of known findings (`--write-baseline`) that later scans suppress (`--baseline`).
//! Entries are keyed by the finding's fingerprint, which never contains the secret.
//!
//! Must not import anything but the scanner: the scan CLI needs no database.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::report::ReportedFinding;

#[derive(Debug, Serialize, Deserialize)]
pub struct Baseline {
    pub version: u32,
    pub findings: Vec<BaselineEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BaselineEntry {
    pub fingerprint: String,
    pub rule_id: String,
    pub path: String,
    pub line: usize,
    /// How it was reached inside its file (see `ReportedFinding::decoded`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decoded: Vec<String>,
}

impl Baseline {
    pub fn from_findings(findings: &[ReportedFinding]) -> Self {
        let findings = findings
            .iter()
            .map(|f| BaselineEntry {
                fingerprint: f.fingerprint.clone(),
                rule_id: f.rule_id.clone(),
                path: f.location.path.clone(),
                line: f.line,
                decoded: f.decoded.iter().map(|d| (*d).to_owned()).collect(),
            })
            .collect();
        Baseline {
            version: 1,
            findings,
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read baseline", path.display()))?;
        let baseline: Baseline = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a spillway baseline file", path.display()))?;
        anyhow::ensure!(
            baseline.version == 1,
            "{}: unsupported baseline version {}",
            path.display(),
            baseline.version
        );
        Ok(baseline)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("{}: cannot write baseline", path.display()))
    }

    pub fn fingerprints(&self) -> BTreeSet<&str> {
        self.findings
            .iter()
            .map(|e| e.fingerprint.as_str())
            .collect()
    }
}
