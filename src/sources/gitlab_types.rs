//! GitLab's names for token types (`gitleaks_rule_id_*`, as GitLab's Token Revocation API and
//! partner alerts send them) and the Spillway token types they stand for, from the shipped
//! `patterns/integrations/gitlab-revocation.toml`; and [`classify`], which names a token's type by
//! the rule that matches it whole. No HTTP here.
//!
//! Must not import anything but the scanner.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::scanner::{Finding, RuleSet, Scanner};

const MAPPING: &str = include_str!("../../patterns/integrations/gitlab-revocation.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    types: Vec<MappingEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingEntry {
    gitlab: String,
    token_types: Vec<String>,
}

/// GitLab's type names for the token types the rule set can act on.
#[derive(Debug, Clone, Default)]
pub struct GitlabTypes {
    by_name: BTreeMap<String, Vec<String>>,
}

impl GitlabTypes {
    /// The shipped mapping, limited to types `rules` issues. Fails on a malformed mapping file
    /// (tests/it/rules.rs keeps it well formed).
    pub fn load(rules: &RuleSet) -> anyhow::Result<Self> {
        let file: MappingFile = toml::from_str(MAPPING)
            .map_err(|e| anyhow::anyhow!("patterns/integrations/gitlab-revocation.toml: {e}"))?;
        let known = |t: &String| rules.rules().iter().any(|r| &r.token_type == t);
        let mut by_name = BTreeMap::new();
        for entry in file.types {
            let types: Vec<String> = entry.token_types.into_iter().filter(known).collect();
            if !types.is_empty() {
                by_name.insert(entry.gitlab, types);
            }
        }
        Ok(GitlabTypes { by_name })
    }

    /// Every name GitLab may send us, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The Spillway token types a GitLab name stands for.
    pub fn token_types(&self, name: &str) -> Option<&[String]> {
        self.by_name.get(name).map(Vec::as_slice)
    }

    /// The Spillway token type of a token reported under `name`: the mapped type the token matches
    /// whole (or the only mapped type); for a name not in the mapping, a Spillway type name as is,
    /// else the type of the default rule that matches the token whole. `None`: unsupported.
    pub fn resolve<'r>(
        &self,
        rules: &'r RuleSet,
        scanner: &mut Scanner<'r>,
        name: &str,
        token: &str,
    ) -> Option<String> {
        let classified = classify(scanner, token);
        match self.by_name.get(name) {
            Some(types) => Some(
                classified
                    .filter(|t| types.contains(t))
                    .unwrap_or_else(|| types[0].clone()),
            ),
            None if rules.rules().iter().any(|r| r.token_type == name) => Some(name.to_owned()),
            None => classified,
        }
    }
}

/// The token type of the rule that matches `token` whole, if any (one whose validators pass
/// first; a failed checksum still says what the token claims to be).
pub fn classify(scanner: &mut Scanner<'_>, token: &str) -> Option<String> {
    let (mut valid, mut invalid) = (None, None);
    scanner.scan("alert", token.as_bytes(), &mut |f: Finding<'_>| {
        if f.span == (0..token.len()) {
            let slot = if f.verdict.is_invalid() {
                &mut invalid
            } else {
                &mut valid
            };
            slot.get_or_insert_with(|| f.rule.token_type.clone());
        }
    });
    valid.or(invalid)
}
