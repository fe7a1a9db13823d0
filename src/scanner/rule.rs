//! Rules as data: the TOML schema of `patterns/*.toml`, parsed in two stages (raw, close to the file
//! and validated; then compiled into a [`Rule`] with its regex and its place in the engine).
//!
//! Owns loading and checking rule files. It does not scan: the engine decides how rules run together.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex_automata::meta;
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Hir, HirKind};
use serde::Deserialize;

use super::allowlist::Allowlist;
use super::validate::{JwtSpec, Validator};

include!(concat!(env!("OUT_DIR"), "/default_rules.rs"));

/// Default distance (bytes) between a keyword hit and a match for keyword-anchored rules.
pub const DEFAULT_WINDOW: usize = 256;
/// Largest window derived from a bounded regex's longest match; larger needs an explicit `window`.
const MAX_AUTO_WINDOW: usize = 16 << 10;
/// How far past a keyword an imported rule whose regex puts its keyword at a fixed place, with no
/// bound after it, is searched: Gitleaks' generic rule ends in an unbounded base64 run, and 16 KB
/// after every `key = ` cost (docs/BENCHMARKS.md). A secret longer than this after its keyword is
/// not found; none is on the benchmark corpus.
const ANCHORED_UNBOUNDED_AFTER: usize = 1 << 10;
/// Most memory one rule's lazy DFA may take per thread before it starts over. regex's 2 MB default
/// kept Gitleaks' generic rules (bounded repeats under `(?i)`) rebuilding states: 8 MB scanned the
/// corpus with Gitleaks' config in 1.1-1.3 s instead of 2.0 s; peak RSS stayed near 100 MB. It is a
/// ceiling, reached only by regexes that need it.
const HYBRID_CACHE: usize = 8 << 20;
/// Keywords are found by their first this-many bytes (the prefilter's fingerprint), so none may be
/// shorter.
pub const MIN_KEYWORD_LEN: usize = 3;

/// An error in a rule file; always names the file and, where known, the rule.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: not a valid rule file: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: rule `{id}`: {message}")]
    Invalid {
        file: String,
        id: String,
        message: String,
    },
    #[error("rule id `{id}` is defined twice ({first} and {second})")]
    Duplicate {
        id: String,
        first: String,
        second: String,
    },
}

/// One rule file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleFile {
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

/// One rule as written, before compilation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    pub name: String,
    pub token_type: String,
    #[serde(default)]
    pub description: String,
    pub regex: String,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub validators: Vec<Validator>,
    /// What a leak of this token puts at risk (default: judged from the token type, see
    /// [`Severity::judge`]).
    pub severity: Option<Severity>,
    pub min_entropy: Option<f64>,
    pub window: Option<usize>,
    /// How far before a keyword hit a match may start (default: `window`).
    pub window_before: Option<usize>,
    /// A regex that must match right after a keyword hit (anchored there) for the rule to search
    /// around that hit: a cheap first check for rules whose keyword is common, e.g. `://`.
    pub follows: Option<String>,
    pub context: Option<RawContext>,
    pub jwt: Option<JwtSpec>,
    /// A rule for credentials of any issuer (URL passwords, generic assignments): its finding gives
    /// way to a specific rule's on the same line whose secret holds it, so a token names one issuer.
    #[serde(default)]
    pub generic: bool,
    #[serde(default)]
    pub examples: Vec<String>,
    #[serde(default)]
    pub negative_examples: Vec<String>,
    /// Imported rules only: which capture group holds the secret (default: the only one).
    #[serde(skip)]
    pub secret_group: Option<usize>,
    /// Imported rules only: matches not to report.
    #[serde(skip)]
    pub allowlists: Vec<Arc<Allowlist>>,
    /// Imported rules only: the rule applies only to sources (paths) this regex matches.
    #[serde(skip)]
    pub path: Option<String>,
    #[serde(skip)]
    pub dialect: Dialect,
}

/// What a leaked token puts at risk, as code scanning ranks alerts (`security-severity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Whole accounts, clouds or money: cloud root keys, private keys, live payment keys, admin keys.
    Critical,
    /// An account's or service's data and actions (most API tokens).
    High,
    /// Test or sandbox environments, send-only webhooks, scoped read access.
    Medium,
    /// Identifiers and public parts that help an attack but grant nothing alone.
    Low,
}

impl Severity {
    /// The default from a rule's id and token type, read as words (`delivery` is not `live`).
    pub fn judge(id: &str, token_type: &str) -> Severity {
        let words: Vec<String> = format!("{id} {token_type}")
            .to_ascii_lowercase()
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        let has = |w: &str| words.iter().any(|x| x == w);
        let pair = |a: &str, b: &str| words.windows(2).any(|p| p[0] == a && p[1] == b);
        let identifier = words.last().is_some_and(|w| w == "id")
            || pair("client", "id")
            || pair("account", "id")
            || pair("key", "id");
        if identifier || has("public") || has("publishable") || has("recipient") {
            Severity::Low
        } else if has("test") || has("sandbox") || has("staging") || has("webhook") || has("feed") {
            Severity::Medium
        } else if pair("private", "key")
            || pair("access", "key") && has("secret")
            || pair("service", "account")
            || ["admin", "root", "live", "production", "organization", "org"]
                .iter()
                .any(|w| has(w))
        {
            Severity::Critical
        } else {
            Severity::High
        }
    }

    /// GitHub's `security-severity`: over 9.0 critical, 7.0 to 8.9 high, 4.0 to 6.9 medium, below low.
    pub fn score(self) -> &'static str {
        match self {
            Severity::Critical => "9.5",
            Severity::High => "8.0",
            Severity::Medium => "5.5",
            Severity::Low => "3.0",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

/// Whose semantics a rule follows where Spillway and Gitleaks differ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    #[default]
    Spillway,
    /// Imported from a Gitleaks file, judged as Gitleaks 8.30 does: keywords shorter than three bytes
    /// are grown from the regex, with no `secretGroup` the first non-empty group is the secret, the
    /// entropy must exceed (not reach) the threshold, a `gitleaks:allow` on the line silences it, and
    /// a generic rule's finding inside another rule's secret on the same line is dropped.
    Gitleaks,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContext {
    pub keywords: Vec<String>,
    pub within: usize,
}

/// How the engine runs a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Runs only in windows around hits of its keywords (every Spillway rule).
    Keyword,
    /// No keywords at all (imported rules only): a separate whole-buffer pass.
    Unanchored,
    /// No regex: a finding on every source whose path matches (Gitleaks path-only rules).
    Path,
}

/// A keyword that must appear near a match.
#[derive(Debug, Clone)]
pub struct Context {
    /// Lower-cased ASCII keywords.
    pub keywords: Vec<String>,
    pub within: usize,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub name: String,
    pub token_type: String,
    pub description: String,
    pub pattern: String,
    pub(crate) regex: meta::Regex,
    /// The capture group holding the secret; 0: the first group that matched something.
    pub(crate) secret_group: usize,
    pub keywords: Vec<String>,
    pub validators: Vec<Validator>,
    pub severity: Severity,
    pub min_entropy: Option<f64>,
    pub window: usize,
    pub window_before: usize,
    /// Must match, anchored, right after a keyword hit for the rule to search around it.
    pub(crate) follows: Option<meta::Regex>,
    pub context: Option<Context>,
    pub jwt: JwtSpec,
    pub allowlists: Vec<Arc<Allowlist>>,
    /// Applies only to sources (paths) this matches.
    pub path: Option<meta::Regex>,
    pub dialect: Dialect,
    /// Gives way to a specific rule's finding that holds its secret (see [`RawRule::generic`];
    /// Gitleaks rules whose id says "generic" are generic, as Gitleaks judges them).
    pub generic: bool,
    pub pass: Pass,
    /// Length of the shortest literal every secret starts with (0 if none); shown in previews.
    pub prefix_len: usize,
    /// Bytes in the shortest match the regex can make (`usize::MAX` for one that matches nothing).
    pub min_match_len: usize,
    pub examples: Vec<String>,
    pub negative_examples: Vec<String>,
    /// Where the rule came from (file name), for messages.
    pub origin: String,
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.split(['.', '-']).all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// The length of the shortest literal every secret starts with (0 if none), for previews: what
/// the secret group starts with (`ghp_`), or the whole match where the secret is whichever group
/// matched (`secret_group` 0). A secret after a key name (`aws_secret_access_key = ...`) starts with
/// no literal, so its preview shows none of it.
fn literal_prefix_len(hir: &Hir, secret_group: usize) -> usize {
    let secret = match u32::try_from(secret_group) {
        Ok(0) => Some(hir),
        Ok(group) => capture(hir, group),
        Err(_) => None,
    };
    secret.map_or(0, |secret| {
        Extractor::new()
            .kind(ExtractKind::Prefix)
            .extract(secret)
            .min_literal_len()
            .unwrap_or(0)
    })
}

/// The expression of capture group `index` in `hir`.
fn capture(hir: &Hir, index: u32) -> Option<&Hir> {
    match hir.kind() {
        HirKind::Capture(c) if c.index == index => Some(&c.sub),
        HirKind::Capture(c) => capture(&c.sub, index),
        HirKind::Repetition(r) => capture(&r.sub, index),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => {
            subs.iter().find_map(|sub| capture(sub, index))
        }
        _ => None,
    }
}

impl RawRule {
    /// Checks the rule and compiles it. `file` names the origin in errors.
    pub fn compile(self, file: &str) -> Result<Rule, RuleError> {
        let invalid = |message: String| RuleError::Invalid {
            file: file.to_owned(),
            id: self.id.clone(),
            message,
        };
        if !is_valid_id(&self.id) {
            return Err(invalid("id must match [a-z0-9]+([.-][a-z0-9]+)*".into()));
        }
        if self.token_type.trim().is_empty() {
            return Err(invalid("token_type is empty".into()));
        }
        // Rules match bytes, with ASCII classes and case folding: tokens are ASCII, and Unicode
        // `(?i)` adds the Kelvin sign and the long s to every `k` and `s` class, multi-byte states
        // that made Gitleaks' generic-api-key rebuild its lazy DFA all through a scan and made
        // start-up with the default rules a seventh slower.
        let hir = regex_syntax::ParserBuilder::new()
            .unicode(false)
            .utf8(false)
            .build()
            .parse(&self.regex)
            .map_err(|e| invalid(format!("regex does not parse: {e}")))?;
        let mut keywords = Vec::with_capacity(self.keywords.len());
        for k in &self.keywords {
            if !k.is_ascii() || k.is_empty() {
                return Err(invalid(format!(
                    "keyword {k:?} must be ASCII and not empty"
                )));
            }
            if k.len() >= MIN_KEYWORD_LEN {
                keywords.push(k.clone());
                continue;
            }
            // Gitleaks accepts any keyword; a short one is grown from where the regex spells it.
            let grown = (self.dialect == Dialect::Gitleaks)
                .then(|| super::literals::extend_short_keyword(&hir, k, MIN_KEYWORD_LEN))
                .flatten()
                .ok_or_else(|| {
                    invalid(format!(
                        "keyword {k:?} is shorter than {MIN_KEYWORD_LEN} bytes{}",
                        if self.dialect == Dialect::Gitleaks {
                            " and the regex has no fixed bytes next to it to lengthen it with"
                        } else {
                            ""
                        }
                    ))
                })?;
            keywords.extend(grown);
        }
        keywords.sort();
        keywords.dedup();
        let groups = hir.properties().explicit_captures_len();
        let secret_group = match self.secret_group {
            Some(g) if g <= groups => g,
            None if self.dialect == Dialect::Gitleaks => 0,
            Some(g) => {
                return Err(invalid(format!(
                    "secretGroup {g} but the regex has {groups} groups"
                )));
            }
            None if groups == 1 => 1,
            None => {
                return Err(invalid(format!(
                    "regex must have exactly one capture group, found {groups}"
                )));
            }
        };
        let builder = || {
            let mut b = meta::Builder::new();
            b.configure(meta::Config::new().hybrid_cache_capacity(HYBRID_CACHE))
                .syntax(
                    regex_automata::util::syntax::Config::new()
                        .unicode(false)
                        .utf8(false),
                );
            b
        };
        let regex = builder()
            .build(&self.regex)
            .map_err(|e| invalid(format!("regex does not compile: {e}")))?;
        // An imported rule names only keywords: where its regex puts them bounds the search around a
        // hit, and what must follow one is checked first.
        let anchor = (self.dialect == Dialect::Gitleaks && self.follows.is_none())
            .then(|| super::literals::keyword_anchor(&hir, &keywords))
            .flatten();
        let follows_text = self
            .follows
            .clone()
            .or_else(|| anchor.as_ref().and_then(|a| a.follows.clone()));
        let follows = follows_text
            .as_deref()
            .map(|f| {
                builder()
                    .build(f)
                    .map_err(|e| invalid(format!("follows does not compile: {e}")))
            })
            .transpose()?;
        let path = self
            .path
            .as_deref()
            .map(|p| {
                meta::Regex::new(p).map_err(|e| invalid(format!("path does not compile: {e}")))
            })
            .transpose()?;
        if follows.is_some() && keywords.is_empty() {
            return Err(invalid("follows needs keywords to follow".into()));
        }
        if self.validators.contains(&Validator::Jwt) != self.jwt.is_some() {
            return Err(invalid(
                "the `jwt` validator and the `jwt` table go together".into(),
            ));
        }
        let prefix_len = literal_prefix_len(&hir, secret_group);
        let min_match_len = hir.properties().minimum_len().unwrap_or(usize::MAX);
        // A bounded regex gets a window that fits its longest match.
        // Gitleaks runs a rule over the whole file once a keyword is in it: an unbounded imported
        // regex gets the largest window.
        let unbounded = match self.dialect {
            Dialect::Spillway => DEFAULT_WINDOW,
            Dialect::Gitleaks => MAX_AUTO_WINDOW,
        };
        let window = self.window.unwrap_or_else(|| {
            hir.properties()
                .maximum_len()
                .map_or(unbounded, |m| m.clamp(DEFAULT_WINDOW, MAX_AUTO_WINDOW))
        });
        let (window, window_before) = match &anchor {
            Some(a) => (
                a.after
                    .map_or(ANCHORED_UNBOUNDED_AFTER, |m| m.min(MAX_AUTO_WINDOW)),
                a.before.map_or(window, |m| m.min(MAX_AUTO_WINDOW)),
            ),
            None => (window, self.window_before.unwrap_or(window)),
        };
        let pass = if keywords.is_empty() {
            Pass::Unanchored
        } else {
            Pass::Keyword
        };
        let context = self.context.map(|c| Context {
            keywords: c.keywords.iter().map(|k| k.to_ascii_lowercase()).collect(),
            within: c.within,
        });
        let severity = self
            .severity
            .unwrap_or_else(|| Severity::judge(&self.id, &self.token_type));
        let generic = self.generic
            || (self.dialect == Dialect::Gitleaks
                && self.token_type.to_ascii_lowercase().contains("generic"));
        Ok(Rule {
            id: self.id,
            name: self.name,
            token_type: self.token_type,
            description: self.description,
            pattern: self.regex,
            regex,
            secret_group,
            keywords,
            severity,
            validators: self.validators,
            min_entropy: self.min_entropy,
            window,
            window_before,
            follows,
            context,
            jwt: self.jwt.unwrap_or_default(),
            allowlists: self.allowlists,
            path,
            generic,
            dialect: self.dialect,
            pass,
            prefix_len,
            min_match_len,
            examples: self.examples,
            negative_examples: self.negative_examples,
            origin: file.to_owned(),
        })
    }
}

/// Parses one Spillway rule file.
pub fn parse_rule_file(file: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    compile_all(read_rule_file(file, text)?)
}

/// The rules of one Spillway rule file as written, each with its file's name.
fn read_rule_file(file: &str, text: &str) -> Result<Vec<(String, RawRule)>, RuleError> {
    let raw: RawRuleFile = toml::from_str(text).map_err(|e| RuleError::Parse {
        file: file.to_owned(),
        message: e.to_string(),
    })?;
    Ok(raw
        .rules
        .into_iter()
        .map(|r| (file.to_owned(), r))
        .collect())
}

/// Compiles rules on every core: building the regexes is most of a scanner's start-up (a quarter
/// of the instructions of a 37 MB scan with the default rules), and each rule builds alone. The
/// rules come back in their order; the first compile error in that order is the one answered.
pub fn compile_all(raws: Vec<(String, RawRule)>) -> Result<Vec<Rule>, RuleError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(8);
    if threads <= 1 || raws.len() < 16 {
        return raws.into_iter().map(|(f, r)| r.compile(&f)).collect();
    }
    // Interleaved shares (rule i to thread i % threads), so the slow rules of one file spread out.
    let mut shares: Vec<Vec<(usize, String, RawRule)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, (file, raw)) in raws.into_iter().enumerate() {
        shares[i % threads].push((i, file, raw));
    }
    let mut done: Vec<(usize, Result<Rule, RuleError>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .into_iter()
            .map(|share| {
                scope.spawn(move || {
                    share
                        .into_iter()
                        .map(|(i, file, raw)| (i, raw.compile(&file)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, rule)| rule).collect()
}

/// The names of the rule files compiled into the binary (`stripe.toml`...).
pub fn default_rule_file_names() -> impl Iterator<Item = &'static str> {
    DEFAULT_RULE_FILES.iter().map(|(name, _)| *name)
}

/// The rules compiled into the binary from `patterns/`.
pub fn default_rules() -> Result<Vec<Rule>, RuleError> {
    let mut raws = Vec::new();
    for (name, text) in DEFAULT_RULE_FILES {
        raws.extend(read_rule_file(name, text)?);
    }
    compile_all(raws)
}

/// Loads every `.toml` file in `dir` (sorted by name): Spillway rule files, or Gitleaks files
/// (recognised by their schema).
pub fn load_rules_dir(dir: &Path) -> Result<Vec<Rule>, RuleError> {
    let read_err = |source| RuleError::Read {
        file: dir.display().to_string(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(RuleError::Parse {
            file: dir.display().to_string(),
            message: "no .toml rule files in directory".into(),
        });
    }
    // Spillway files' rules are compiled together (on every core); a Gitleaks file compiles as
    // one config, in its place.
    let mut rules = Vec::new();
    let mut raws = Vec::new();
    for path in files {
        let (file, text) = read_file(&path)?;
        if super::gitleaks::looks_like_gitleaks(&text) {
            rules.extend(compile_all(std::mem::take(&mut raws))?);
            rules.extend(super::gitleaks::parse_gitleaks_file(&file, &text)?);
        } else {
            raws.extend(read_rule_file(&file, &text)?);
        }
    }
    rules.extend(compile_all(raws)?);
    Ok(rules)
}

fn read_file(path: &Path) -> Result<(String, String), RuleError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RuleError::Read {
        file: file.clone(),
        source,
    })?;
    Ok((file, text))
}

/// Loads one rule file, Spillway or Gitleaks format.
pub fn load_rule_file(path: &Path) -> Result<Vec<Rule>, RuleError> {
    let (file, text) = read_file(path)?;
    if super::gitleaks::looks_like_gitleaks(&text) {
        super::gitleaks::parse_gitleaks_file(&file, &text)
    } else {
        parse_rule_file(&file, &text)
    }
}

/// Fails on duplicate ids across all rules.
pub fn check_unique_ids(rules: &[Rule]) -> Result<(), RuleError> {
    let mut seen = std::collections::HashMap::new();
    for r in rules {
        if let Some(first) = seen.insert(r.id.as_str(), r.origin.as_str()) {
            return Err(RuleError::Duplicate {
                id: r.id.clone(),
                first: first.to_owned(),
                second: r.origin.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(is_valid_id("github.pat-classic"));
        assert!(is_valid_id("aws"));
        for bad in ["", "GitHub", "a..b", "a-", "-a", "a_b", "a b"] {
            assert!(!is_valid_id(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn severity_is_judged_from_whole_words() {
        for (id, token_type, expected) in [
            (
                "stripe.secret-key-live",
                "stripe_api_key",
                Severity::Critical,
            ),
            (
                "contentful.delivery-api-token",
                "contentful_delivery_api_token",
                Severity::High,
            ),
            (
                "dropbox.short-lived-token",
                "dropbox_short_lived_access_token",
                Severity::High,
            ),
            (
                "google.service-account-key-id",
                "google_cloud_private_key_id",
                Severity::Low,
            ),
            ("private-key.pem", "private_key", Severity::Critical),
            (
                "aws.secret-access-key-assigned",
                "aws_secret_access_key",
                Severity::Critical,
            ),
            (
                "stripe.secret-key-test",
                "stripe_test_secret_key",
                Severity::Medium,
            ),
            (
                "github.pat-classic",
                "github_personal_access_token",
                Severity::High,
            ),
        ] {
            assert_eq!(Severity::judge(id, token_type), expected, "{id}");
        }
    }

    fn raw(regex: &str, keywords: &[&str]) -> RawRule {
        RawRule {
            id: "t".into(),
            name: "t".into(),
            token_type: "t".into(),
            regex: regex.into(),
            keywords: keywords.iter().map(|s| s.to_string()).collect(),
            ..RawRule::default()
        }
    }

    #[test]
    fn rules_compiled_together_keep_their_order_and_the_first_error() {
        let numbered = |i: usize, regex: &str| {
            let mut r = raw(regex, &["key"]);
            r.id = format!("r{i}");
            (format!("f{i}.toml"), r)
        };
        let good: Vec<_> = (0..40).map(|i| numbered(i, r"key([a-z]{8})")).collect();
        let ids: Vec<String> = compile_all(good)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, (0..40).map(|i| format!("r{i}")).collect::<Vec<_>>());
        let mut bad: Vec<_> = (0..40).map(|i| numbered(i, r"key([a-z]{8})")).collect();
        bad[25] = numbered(25, r"key([a-z]{8}");
        bad[30] = numbered(30, r"key[a-z]{8}");
        let err = compile_all(bad).unwrap_err().to_string();
        assert!(err.contains("f25.toml"), "{err}");
    }

    /// Previews show what the secret starts with: a token's prefix, nothing of a secret after a
    /// key name.
    #[test]
    fn the_preview_prefix_is_the_secrets_own() {
        let prefix =
            |regex, keywords: &[&str]| raw(regex, keywords).compile("f").unwrap().prefix_len;
        assert_eq!(prefix(r"(?-u:\b)(ghp_[A-Za-z0-9]{36})", &["ghp_"]), 4);
        assert_eq!(prefix(r"(?i)api_key\s*=\s*([a-z0-9]{32})", &["api_key"]), 0);
        assert_eq!(prefix(r"token=(?:x|y)(tok_[a-z]{20})", &["token="]), 4);
    }

    /// Regexes read bytes: ASCII classes and case folding, whatever the text's encoding.
    #[test]
    fn rules_match_ascii_bytes() {
        let rule = raw(r"(?i)(sk_[a-z]{4}\w)(?:[^a-z]|$)", &["sk_"])
            .compile("f")
            .unwrap();
        let matches = |text: &str| rule.regex.is_match(text.as_bytes());
        assert!(matches("SK_abcdE!"));
        // The Kelvin sign folds to `k` only in Unicode.
        assert!(!matches("S\u{212A}_abcdE!"));
        // `\w` is ASCII.
        assert!(!matches("sk_abcdé"));
        // A byte that is not UTF-8 ends a match as any other byte does.
        assert!(rule.regex.is_match(b"sk_abcde\xff"));
    }

    #[test]
    fn rules_without_keywords_run_unanchored() {
        let rule = raw(r"(?-u:\b)(ghp_[A-Za-z0-9]{36})", &["ghp_"])
            .compile("f")
            .unwrap();
        assert_eq!((rule.pass, rule.prefix_len), (Pass::Keyword, 4));
        assert_eq!(
            raw(r"([a-z]{20})", &[]).compile("f").unwrap().pass,
            Pass::Unanchored
        );
        let err = raw(r"(ab[a-z]{20})", &["ab"])
            .compile("f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("shorter than 3 bytes"), "{err}");
    }

    #[test]
    fn a_rule_needs_exactly_one_capture() {
        let err = raw(r"ghp_[a-z]{4}", &["ghp_"])
            .compile("f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("f.toml") && err.contains("exactly one capture group"),
            "{err}"
        );
        let err = raw(r"(ghp_)([a-z]{4})", &["ghp_"])
            .compile("f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("found 2"), "{err}");
    }
}
