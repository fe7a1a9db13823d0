//! Import of Gitleaks-format rule files, since many teams already keep one.
//!
//! Gitleaks regexes are Go RE2. The differences that matter are translated: Go's `\b` is ASCII, so it
//! becomes `(?-u:\b)` (which also keeps the combined regex off the Unicode word-boundary cliff).
//! Supported keys: `id`, `description`, `regex`, `keywords`, `entropy`, `secretGroup`, and allowlists
//! (`[rules.allowlist]` or `[[rules.allowlists]]`) with `regexes`, `regexTarget`, `stopwords`, `paths`.
//! A rule with only `path` (no `regex`) cannot apply to a byte buffer and is refused with its id.

use regex_automata::meta;
use serde::Deserialize;

use super::rule::{AllowTarget, Allowlist, RawRule, Rule, RuleError};

#[derive(Debug, Deserialize)]
struct GitleaksFile {
    #[serde(default)]
    rules: Vec<GitleaksRule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GitleaksRule {
    id: String,
    #[serde(default)]
    description: String,
    regex: Option<String>,
    #[serde(default)]
    keywords: Vec<String>,
    entropy: Option<f64>,
    secret_group: Option<usize>,
    allowlist: Option<GitleaksAllowlist>,
    #[serde(default)]
    allowlists: Vec<GitleaksAllowlist>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GitleaksAllowlist {
    #[serde(default)]
    regexes: Vec<String>,
    regex_target: Option<String>,
    #[serde(default)]
    stopwords: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
}

/// A Gitleaks file has `[[rules]]` tables with `regex`/`secretGroup`/`entropy` keys and no
/// `token_type`, which every Spillway rule carries.
pub fn looks_like_gitleaks(text: &str) -> bool {
    let Ok(value) = toml::from_str::<toml::Table>(text) else {
        return false;
    };
    let Some(rules) = value.get("rules").and_then(|r| r.as_array()) else {
        return false;
    };
    !rules.is_empty() && rules.iter().all(|r| r.get("token_type").is_none())
}

/// Go RE2 `\b` (ASCII) to Rust's `(?-u:\b)`; everything else passes through. Escapes are walked so
/// that `\\b` (a backslash then `b`) is left alone.
pub fn translate_go_regex(go: &str) -> String {
    let mut out = String::with_capacity(go.len() + 16);
    let mut chars = go.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('b') => out.push_str(r"(?-u:\b)"),
            Some('B') => out.push_str(r"(?-u:\B)"),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn compile_all(
    file: &str,
    id: &str,
    what: &str,
    patterns: &[String],
) -> Result<Vec<meta::Regex>, RuleError> {
    patterns
        .iter()
        .map(|p| {
            meta::Regex::new(&translate_go_regex(p)).map_err(|e| RuleError::Invalid {
                file: file.to_owned(),
                id: id.to_owned(),
                message: format!("allowlist {what} {p:?} does not compile: {e}"),
            })
        })
        .collect()
}

fn convert_allowlist(
    file: &str,
    id: &str,
    lists: Vec<GitleaksAllowlist>,
) -> Result<Allowlist, RuleError> {
    let mut out = Allowlist::default();
    for list in lists {
        out.target = match list.regex_target.as_deref() {
            None | Some("secret") => AllowTarget::Secret,
            Some("match") => AllowTarget::Match,
            Some("line") => AllowTarget::Line,
            Some(other) => {
                return Err(RuleError::Invalid {
                    file: file.to_owned(),
                    id: id.to_owned(),
                    message: format!("regexTarget must be secret, match or line, not {other:?}"),
                });
            }
        };
        out.regexes
            .extend(compile_all(file, id, "regex", &list.regexes)?);
        out.paths
            .extend(compile_all(file, id, "path", &list.paths)?);
        out.stopwords
            .extend(list.stopwords.into_iter().map(|s| s.to_ascii_lowercase()));
    }
    Ok(out)
}

/// Parses a Gitleaks rule file into Spillway rules (ids prefixed `gitleaks.`).
pub fn parse_gitleaks_file(file: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    let parsed: GitleaksFile = toml::from_str(text).map_err(|e| RuleError::Parse {
        file: file.to_owned(),
        message: e.to_string(),
    })?;
    parsed
        .rules
        .into_iter()
        .map(|g| {
            let id = format!("gitleaks.{}", g.id.to_ascii_lowercase().replace('_', "-"));
            let Some(regex) = g.regex else {
                return Err(RuleError::Invalid {
                    file: file.to_owned(),
                    id,
                    message: "path-only rules are not supported: a rule needs `regex`".into(),
                });
            };
            let regex = translate_go_regex(&regex);
            // A Gitleaks rule without a group reports the whole match: wrap it so there is one.
            let groups = regex_syntax::parse(&regex)
                .map(|h| h.properties().explicit_captures_len())
                .unwrap_or(0);
            let (regex, secret_group) = match (groups, g.secret_group) {
                (0, _) => (format!("({regex})"), 1),
                (_, Some(n)) if n > 0 => (regex, n),
                (_, _) => (regex, 1),
            };
            let allowlist = convert_allowlist(
                file,
                &id,
                g.allowlist.into_iter().chain(g.allowlists).collect(),
            )?;
            RawRule {
                id,
                name: g.id.clone(),
                token_type: g.id,
                description: g.description,
                regex,
                keywords: g.keywords,
                validators: vec![],
                min_entropy: g.entropy,
                window: None,
                window_before: None,
                follows: None,
                context: None,
                jwt: None,
                examples: vec![],
                negative_examples: vec![],
                secret_group: Some(secret_group),
                allowlist,
            }
            .compile(file)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_word_boundaries_become_ascii() {
        assert_eq!(
            translate_go_regex(r"\bghp_\w+\b"),
            r"(?-u:\b)ghp_\w+(?-u:\b)"
        );
        assert_eq!(translate_go_regex(r"a\\b"), r"a\\b");
        assert_eq!(translate_go_regex(r"\Bx"), r"(?-u:\B)x");
    }

    #[test]
    fn recognises_gitleaks_files() {
        assert!(looks_like_gitleaks(
            "[[rules]]\nid = \"x\"\nregex = \"y\"\n"
        ));
        assert!(!looks_like_gitleaks(
            "[[rules]]\nid = \"x\"\ntoken_type = \"t\"\n"
        ));
        assert!(!looks_like_gitleaks("title = \"no rules\"\n"));
    }
}
