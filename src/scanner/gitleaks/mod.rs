//! Gitleaks configuration files, loaded whole, so a team's `.gitleaks.toml` (or Gitleaks' own default
//! config) runs unchanged: rules, per-rule and global allowlists, `[extend]`, path rules.
//!
//! Owns the file schema and its merge rules (as Gitleaks 8.30.1's `config` package has them); regex
//! syntax is [`translate`]'s, judging matches is the engine's and [`super::allowlist`]'s. Reads files
//! only for `[extend] path`; no async, database or HTTP.
//!
//! Where Gitleaks is silent and lenient (unknown keys, a bad regex that panics), Spillway refuses with
//! an error naming the rule and the field: a typo must not quietly disable a rule.

pub mod translate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex_automata::meta;
use serde::Deserialize;

use super::allowlist::{AllowTarget, Allowlist, Condition};
use super::rule::{Dialect, Pass, RawRule, Rule, RuleError};

/// Gitleaks' own default configuration (v8.30.1, MIT licence in `patterns/gitleaks/LICENSE`): what
/// `[extend] useDefault = true` extends, and `--rules builtin:gitleaks` loads.
pub const DEFAULT_CONFIG: &str = include_str!("../../../patterns/gitleaks/gitleaks.toml");
/// The name `DEFAULT_CONFIG` goes by in messages.
pub const DEFAULT_CONFIG_NAME: &str = "gitleaks-default.toml";
/// How many configs deep `[extend]` may go (Gitleaks' `maxExtendDepth`).
const MAX_EXTEND_DEPTH: usize = 2;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GitleaksFile {
    #[allow(dead_code)]
    title: Option<String>,
    #[allow(dead_code)]
    description: Option<String>,
    #[allow(dead_code)]
    min_version: Option<String>,
    extend: Option<Extend>,
    #[serde(default)]
    rules: Vec<GitleaksRule>,
    /// The deprecated single global allowlist.
    allowlist: Option<GitleaksAllowlist>,
    #[serde(default)]
    allowlists: Vec<GitleaksAllowlist>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Extend {
    #[serde(default)]
    use_default: bool,
    path: Option<String>,
    url: Option<String>,
    #[serde(default)]
    disabled_rules: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GitleaksRule {
    id: String,
    #[serde(default)]
    description: String,
    regex: Option<String>,
    path: Option<String>,
    #[serde(default)]
    secret_group: usize,
    #[serde(default)]
    entropy: f64,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    allowlist: Option<GitleaksAllowlist>,
    #[serde(default)]
    allowlists: Vec<GitleaksAllowlist>,
    /// Composite rules (`[[rules.required]]`) and `skipReport`: refused by name, not ignored.
    required: Option<toml::Value>,
    skip_report: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GitleaksAllowlist {
    #[allow(dead_code)]
    description: Option<String>,
    condition: Option<String>,
    #[serde(default)]
    commits: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    regex_target: Option<String>,
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(default)]
    stopwords: Vec<String>,
    /// Global allowlists only: the rules it belongs to instead of all of them.
    #[serde(default)]
    target_rules: Vec<String>,
}

/// A config after `[extend]` is resolved: rules in file order, and the global allowlists.
struct Merged {
    rules: Vec<GitleaksRule>,
    global: Vec<GitleaksAllowlist>,
}

/// A Gitleaks file has `[[rules]]` tables without Spillway's `token_type`, or only `[extend]` or
/// global allowlists.
pub fn looks_like_gitleaks(text: &str) -> bool {
    let Ok(value) = toml::from_str::<toml::Table>(text) else {
        return false;
    };
    let rules = value.get("rules").and_then(|r| r.as_array());
    let gitleaks_only = ["extend", "allowlist", "allowlists", "minVersion"]
        .iter()
        .any(|k| value.contains_key(*k));
    match rules {
        Some(rules) if !rules.is_empty() => rules.iter().all(|r| r.get("token_type").is_none()),
        _ => gitleaks_only,
    }
}

/// Parses a Gitleaks file (`file` names it in errors and resolves a relative `[extend] path`) into
/// Spillway rules with ids prefixed `gitleaks.`.
pub fn parse_gitleaks_file(file: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    let merged = load(file, text, 0)?;
    compile(file, merged)
}

/// Gitleaks' default configuration as rules.
pub fn default_config_rules() -> Result<Vec<Rule>, RuleError> {
    parse_gitleaks_file(DEFAULT_CONFIG_NAME, DEFAULT_CONFIG)
}

fn parse_error(file: &str, message: impl Into<String>) -> RuleError {
    RuleError::Parse {
        file: file.to_owned(),
        message: message.into(),
    }
}

fn invalid(file: &str, id: &str, message: impl Into<String>) -> RuleError {
    RuleError::Invalid {
        file: file.to_owned(),
        id: id.to_owned(),
        message: message.into(),
    }
}

/// Reads one config and the configs it extends, merged as Gitleaks merges them.
fn load(file: &str, text: &str, depth: usize) -> Result<Merged, RuleError> {
    let parsed: GitleaksFile =
        toml::from_str(text).map_err(|e| parse_error(file, e.to_string()))?;
    if parsed.allowlist.is_some() && !parsed.allowlists.is_empty() {
        return Err(parse_error(
            file,
            "[allowlist] is deprecated and cannot be used alongside [[allowlists]]",
        ));
    }
    let mut global: Vec<GitleaksAllowlist> = parsed.allowlist.into_iter().collect();
    global.extend(parsed.allowlists);
    let mut rules = parsed.rules;
    for rule in &mut rules {
        if rule.allowlist.is_some() && !rule.allowlists.is_empty() {
            return Err(invalid(
                file,
                &rule.id,
                "[rules.allowlist] is deprecated and cannot be used alongside [[rules.allowlists]]",
            ));
        }
        rule.allowlists.splice(0..0, rule.allowlist.take());
    }
    let Some(extend) = parsed.extend else {
        return Ok(Merged { rules, global });
    };
    if depth >= MAX_EXTEND_DEPTH {
        return Err(parse_error(
            file,
            format!("[extend] nests deeper than {MAX_EXTEND_DEPTH} configs"),
        ));
    }
    let base = match (extend.use_default, extend.path, extend.url) {
        (_, _, Some(_)) => {
            return Err(parse_error(
                file,
                "[extend] url is not supported (Gitleaks ignores it too): download the file and use [extend] path",
            ));
        }
        (true, Some(_), _) => {
            return Err(parse_error(
                file,
                "[extend] useDefault and path cannot be used together",
            ));
        }
        (true, None, _) => load(DEFAULT_CONFIG_NAME, DEFAULT_CONFIG, depth + 1)?,
        (false, Some(path), _) => {
            let resolved = resolve_extend_path(file, &path);
            let label = resolved.display().to_string();
            let text = std::fs::read_to_string(&resolved).map_err(|source| RuleError::Read {
                file: format!("{label} ([extend] path of {file})"),
                source,
            })?;
            load(&label, &text, depth + 1)?
        }
        (false, None, None) => {
            return Err(parse_error(
                file,
                "[extend] needs useDefault = true or path",
            ));
        }
    };
    Ok(merge(base, rules, global, &extend.disabled_rules))
}

/// `[extend] path` relative to the extending file's directory when it exists there, else to the
/// working directory (where Gitleaks looks).
fn resolve_extend_path(file: &str, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        return path.to_owned();
    }
    match Path::new(file).parent().map(|dir| dir.join(path)) {
        Some(beside) if beside.exists() => beside,
        _ => path.to_owned(),
    }
}

/// The child's rules merged into the base's: a base rule the child redefines takes the child's
/// non-empty description, entropy, secretGroup, regex and path, and both sets of keywords, tags and
/// allowlists. The child's global allowlists come first.
fn merge(
    base: Merged,
    child_rules: Vec<GitleaksRule>,
    child_global: Vec<GitleaksAllowlist>,
    disabled: &[String],
) -> Merged {
    let mut child: HashMap<String, GitleaksRule> = HashMap::new();
    let mut child_order = Vec::new();
    for rule in child_rules {
        child_order.push(rule.id.clone());
        child.insert(rule.id.clone(), rule);
    }
    let mut rules = Vec::new();
    for mut b in base.rules {
        if disabled.contains(&b.id) {
            continue;
        }
        if let Some(c) = child.remove(&b.id) {
            if !c.description.is_empty() {
                b.description = c.description;
            }
            if c.entropy != 0.0 {
                b.entropy = c.entropy;
            }
            if c.secret_group != 0 {
                b.secret_group = c.secret_group;
            }
            if c.regex.is_some() {
                b.regex = c.regex;
            }
            if c.path.is_some() {
                b.path = c.path;
            }
            b.tags.extend(c.tags);
            b.keywords.extend(c.keywords);
            b.allowlists.extend(c.allowlists);
        }
        rules.push(b);
    }
    rules.extend(child_order.iter().filter_map(|id| child.remove(id)));
    let mut global = child_global;
    global.extend(base.global);
    Merged { rules, global }
}

/// Joins patterns as Gitleaks does, `(?:a|b)`, after translating each. An inline flag at the start of
/// one pattern then reaches the later ones, in Gitleaks and here alike.
fn join_patterns(
    file: &str,
    id: &str,
    what: &str,
    patterns: &[String],
) -> Result<Option<meta::Regex>, RuleError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut translated = Vec::with_capacity(patterns.len());
    for p in patterns {
        let rust = translate::translate(p);
        regex_syntax::parse(&rust).map_err(|e| {
            invalid(
                file,
                id,
                format!("allowlist {what} {p:?} does not compile: {e}"),
            )
        })?;
        translated.push(rust);
    }
    let joined = format!("(?:{})", translated.join("|"));
    meta::Regex::new(&joined).map(Some).map_err(|e| {
        invalid(
            file,
            id,
            format!("allowlist {what} do not compile together: {e}"),
        )
    })
}

fn convert_allowlist(
    file: &str,
    id: &str,
    list: &GitleaksAllowlist,
) -> Result<Allowlist, RuleError> {
    let condition = match list
        .condition
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("" | "OR" | "||") => Condition::Or,
        Some("AND" | "&&") => Condition::And,
        Some(_) => {
            return Err(invalid(
                file,
                id,
                format!(
                    "allowlist condition must be OR or AND, not {:?}",
                    list.condition.as_deref().unwrap_or("")
                ),
            ));
        }
    };
    let target = match list.regex_target.as_deref() {
        None | Some("" | "secret") => AllowTarget::Secret,
        Some("match") => AllowTarget::Match,
        Some("line") => AllowTarget::Line,
        Some(other) => {
            return Err(invalid(
                file,
                id,
                format!("allowlist regexTarget must be secret, match or line, not {other:?}"),
            ));
        }
    };
    if list.commits.is_empty()
        && list.paths.is_empty()
        && list.regexes.is_empty()
        && list.stopwords.is_empty()
    {
        return Err(invalid(
            file,
            id,
            "an allowlist needs at least one of commits, paths, regexes or stopwords",
        ));
    }
    Ok(Allowlist {
        condition,
        target,
        regexes: join_patterns(file, id, "regexes", &list.regexes)?,
        stopwords: list.stopwords.iter().map(|s| s.to_lowercase()).collect(),
        paths: join_patterns(file, id, "paths", &list.paths)?,
        commits: list
            .commits
            .iter()
            .map(|c| c.trim().to_ascii_lowercase())
            .collect(),
    })
}

/// Gitleaks ids are free text; Spillway's are `[a-z0-9]+([.-][a-z0-9]+)*` under `gitleaks.`.
fn spillway_id(gitleaks_id: &str) -> String {
    let mut id = String::from("gitleaks.");
    let mut last_sep = true;
    for c in gitleaks_id.trim().chars() {
        if c.is_ascii_alphanumeric() {
            id.push(c.to_ascii_lowercase());
            last_sep = false;
        } else if !last_sep {
            id.push('-');
            last_sep = true;
        }
    }
    while id.ends_with('-') {
        id.pop();
    }
    id
}

fn compile(file: &str, merged: Merged) -> Result<Vec<Rule>, RuleError> {
    let mut global = Vec::new();
    let mut targeted: HashMap<&str, Vec<Arc<Allowlist>>> = HashMap::new();
    for (i, list) in merged.global.iter().enumerate() {
        let label = format!("<global allowlist {}>", i + 1);
        let converted = Arc::new(convert_allowlist(file, &label, list)?);
        if list.target_rules.is_empty() {
            global.push(converted);
            continue;
        }
        for target in &list.target_rules {
            if !merged.rules.iter().any(|r| &r.id == target) {
                return Err(invalid(
                    file,
                    &label,
                    format!("targetRules names {target:?}, which is not a rule of this config"),
                ));
            }
            targeted
                .entry(target.as_str())
                .or_default()
                .push(converted.clone());
        }
    }
    let written: Vec<(RawRule, bool)> = merged
        .rules
        .iter()
        .map(|g| {
            let id = spillway_id(&g.id);
            if g.id.trim().is_empty() {
                return Err(invalid(file, "", "a rule needs an id"));
            }
            if g.required.is_some() {
                return Err(invalid(
                    file,
                    &id,
                    "[[rules.required]] (composite rules) is not supported",
                ));
            }
            if g.skip_report.is_some() {
                return Err(invalid(
                    file,
                    &id,
                    "skipReport (for composite rules) is not supported",
                ));
            }
            let mut allowlists = global.clone();
            for list in &g.allowlists {
                allowlists.push(Arc::new(convert_allowlist(file, &id, list)?));
            }
            allowlists.extend(targeted.get(g.id.as_str()).into_iter().flatten().cloned());
            let path = g
                .path
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(translate::translate);
            let regex = g.regex.as_deref().filter(|r| !r.is_empty());
            let path_only = regex.is_none();
            if path_only && path.is_none() {
                return Err(invalid(file, &id, "a rule needs a regex, a path or both"));
            }
            let regex = regex.map_or_else(|| "()".to_owned(), translate::translate);
            // A rule without a group reports the whole match: wrap it so there is one.
            let groups = regex_syntax::parse(&regex)
                .map(|h| h.properties().explicit_captures_len())
                .map_err(|e| invalid(file, &id, format!("regex does not compile: {e}")))?;
            let regex = if groups == 0 {
                format!("({regex})")
            } else {
                regex
            };
            let rule = RawRule {
                id,
                name: g.id.clone(),
                token_type: g.id.clone(),
                description: g.description.clone(),
                regex,
                keywords: g.keywords.iter().map(|k| k.to_lowercase()).collect(),
                min_entropy: (g.entropy != 0.0).then_some(g.entropy),
                secret_group: (g.secret_group != 0).then_some(g.secret_group),
                allowlists,
                path,
                dialect: Dialect::Gitleaks,
                ..RawRule::default()
            };
            Ok((rule, path_only))
        })
        .collect::<Result<_, RuleError>>()?;
    let path_only: Vec<bool> = written.iter().map(|(_, p)| *p).collect();
    let mut rules = crate::scanner::rule::compile_all(
        written
            .into_iter()
            .map(|(rule, _)| (file.to_owned(), rule))
            .collect(),
    )?;
    for (rule, path_only) in rules.iter_mut().zip(path_only) {
        if path_only {
            rule.pass = Pass::Path;
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_gitleaks_files() {
        assert!(looks_like_gitleaks(
            "[[rules]]\nid = \"x\"\nregex = \"y\"\n"
        ));
        assert!(!looks_like_gitleaks(
            "[[rules]]\nid = \"x\"\ntoken_type = \"t\"\n"
        ));
        assert!(!looks_like_gitleaks("title = \"no rules\"\n"));
        assert!(looks_like_gitleaks("[extend]\nuseDefault = true\n"));
    }

    #[test]
    fn ids_become_spillway_ids() {
        assert_eq!(spillway_id("aws-access-token"), "gitleaks.aws-access-token");
        assert_eq!(spillway_id("My_Rule 2"), "gitleaks.my-rule-2");
        assert_eq!(spillway_id("x--y_"), "gitleaks.x-y");
    }

    #[test]
    fn the_default_config_loads_whole() {
        let rules = default_config_rules().unwrap();
        assert_eq!(rules.len(), 222);
        let pkcs = rules
            .iter()
            .find(|r| r.id == "gitleaks.pkcs12-file")
            .unwrap();
        assert_eq!(pkcs.pass, Pass::Path);
        let jwt = rules.iter().find(|r| r.id == "gitleaks.jwt").unwrap();
        assert!(
            jwt.keywords.iter().all(|k| k.len() >= 3),
            "{:?}",
            jwt.keywords
        );
        // The global allowlist (25 paths, 13 regexes, 2 stopwords) reaches every rule.
        assert!(rules.iter().all(|r| {
            r.allowlists
                .first()
                .is_some_and(|a| a.paths.is_some() && a.regexes.is_some() && a.stopwords.len() == 2)
        }));
    }

    #[test]
    fn extend_merges_as_gitleaks_does() {
        let child = r#"
[extend]
useDefault = true
disabledRules = ["jwt"]

[[rules]]
id = "github-pat"
keywords = ["extra_kw"]
entropy = 4.5

[[rules]]
id = "myco-key"
regex = '''myco_[a-z0-9]{16}'''
keywords = ["myco_"]

[[allowlists]]
targetRules = ["myco-key"]
stopwords = ["example"]
"#;
        let rules = parse_gitleaks_file("child.toml", child).unwrap();
        assert_eq!(rules.len(), 222 - 1 + 1);
        assert!(!rules.iter().any(|r| r.id == "gitleaks.jwt"));
        let pat = rules
            .iter()
            .find(|r| r.id == "gitleaks.github-pat")
            .unwrap();
        assert_eq!(pat.min_entropy, Some(4.5));
        assert!(
            pat.keywords.contains(&"extra_kw".to_string())
                && pat.keywords.contains(&"ghp_".to_string())
        );
        let myco = rules.iter().find(|r| r.id == "gitleaks.myco-key").unwrap();
        // The default's global allowlist, then the targeted one.
        assert_eq!(myco.allowlists.len(), 2);
        assert_eq!(myco.allowlists[1].stopwords, ["example"]);
    }

    #[test]
    fn refusals_name_the_rule_and_field() {
        let cases = [
            (
                "[[rules]]\nid = \"a\"\nregex = \"x\"\nrequired = [{id = \"b\"}]\n",
                "gitleaks.a",
                "composite",
            ),
            (
                "[[rules]]\nid = \"a\"\nregex = \"x\"\nkeywords=[\"ab\"]\n",
                "gitleaks.a",
                "keyword \"ab\"",
            ),
            (
                "[[rules]]\nid = \"a\"\nregex = \"(x\"\n",
                "gitleaks.a",
                "regex",
            ),
            (
                "[[rules]]\nid = \"a\"\nregex = \"x\"\n[[rules.allowlists]]\ncondition = \"XOR\"\nstopwords=[\"s\"]\n",
                "gitleaks.a",
                "condition",
            ),
            (
                "[[rules]]\nid = \"a\"\nregex = \"x\"\n[[rules.allowlists]]\nregexTarget = \"Secret\"\nstopwords=[\"s\"]\n",
                "gitleaks.a",
                "regexTarget",
            ),
            (
                "[[rules]]\nid = \"a\"\nregx = \"x\"\n",
                "regx",
                "unknown field",
            ),
            ("[extend]\nurl = \"https://x\"\n", "url", "not supported"),
            ("[[rules]]\nid = \"a\"\n", "gitleaks.a", "a regex, a path"),
        ];
        for (text, who, what) in cases {
            let err = parse_gitleaks_file("f.toml", text).unwrap_err().to_string();
            assert!(
                err.contains("f.toml") && err.contains(who) && err.contains(what),
                "{text}\n=> {err}"
            );
        }
    }
}
