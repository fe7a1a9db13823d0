//! Spillway's shipped rules (default and `patterns/extended/`) against examples other projects wrote
//! for their own rules: Nosey Parker's and Gitleaks' (vendored with their licences in
//! `fixtures/outside/`, made by `fixtures/outside/extract.py`).
//!
//! A positive counts as found only when a rule of the right issuer reports it (the rule id's first
//! part is the provider the corpus names): revocation is routed by type, so a Paystack key reported
//! as Stripe is a miss. Checksummed formats count when the format is recognised even if the checksum
//! fails (Gitleaks generates `ghp_` + 36 random characters, which no real token is); those are
//! counted apart. Examples of no issuer (`generic`) count when any generic rule reports them, and
//! are reported beside, not in, the real-format recall. Public identifiers and password hashes from
//! Nosey Parker's non-default rule sets are left out, and so are positives whose value is a
//! placeholder rather than a token of the format (see [`Example::placeholder`]; counted apart). A negative is flagged when any rule reports
//! anything in it, unless the same text is another rule's positive in that corpus (Gitleaks and Nosey
//! Parker test one rule against another's tokens: Spillway should find those), Gitleaks rejects it
//! only by its file path (the examples carry none), or it is in [`DISPUTED`]: negatives that are real
//! tokens by the upstream's own comment or another rule's format. Both figures are printed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use spillway::scanner::{Finding, RuleSet, ScanOptions, rule};

/// Upstream negatives Spillway reports on purpose, each with the evidence: (source, rule, a piece of
/// the text, why).
const DISPUTED: &[(&str, &str, &str, &str)] = &[
    (
        "noseyparker",
        "np.auth0.1",
        "wsxY2eUG78qKGTyUpAOUbwCDCwc8mZ",
        "a real client secret: NP's file says 'this one unfortunately doesn't match'",
    ),
    (
        "noseyparker",
        "np.gitalk.1",
        "ca6819a54657af0d87960af15315319f8a628a53",
        "a Gitalk config's GitHub OAuth client secret, the very format np.gitalk.1 is for",
    ),
    (
        "noseyparker",
        "np.gitalk.1",
        "d151c7bc86d545dafe2c1de75e3a174623230a2a",
        "a Gitalk config's GitHub OAuth client secret, the very format np.gitalk.1 is for",
    ),
    (
        "noseyparker",
        "np.generic.1",
        "5pX8Q~MmTI8OMBJFVqMlFR4DE3Spz6Qm",
        "an Entra ID client secret (the Q~ format): a negative only for NP's generic rule",
    ),
    (
        "noseyparker",
        "np.newrelic.2",
        "033f2f2072ca3f2cb2ec39019fa9e49cd640NRAL",
        "a New Relic license key in np.newrelic.1's format: a negative only for np.newrelic.2",
    ),
    (
        "gitleaks",
        "mailchimp-api-key",
        "MailchimpSDK.initialize(token: 3012a5754bbd716926f99c028f7ea428-us18)",
        "a real key: Gitleaks' own comment calls this fp a false negative of its regex",
    ),
    (
        "gitleaks",
        "anthropic-api-key",
        "sk-ant-admin01-",
        "an Anthropic admin key: a negative only for the api-key rule, reported as an admin key",
    ),
];

#[derive(Deserialize)]
struct Corpus {
    source: String,
    examples: Vec<Example>,
}

#[derive(Deserialize)]
struct Example {
    rule: String,
    provider: String,
    positive: bool,
    text: String,
    #[serde(default)]
    note: Option<String>,
}

impl Example {
    /// A value no issuer hands out: a run of 12 or more of one character (`aaaa…`, `xxxx…`,
    /// `0000…`), the password `secret` in a URL (`user:secret@`), or a value its author named fake.
    fn placeholder(&self) -> bool {
        let bytes = self.text.as_bytes();
        let run = bytes
            .chunk_by(|a, b| a == b)
            .any(|r| r.len() >= 12 && r[0].is_ascii_alphanumeric());
        run || self.text.contains(":secret@")
            || self.text.to_ascii_lowercase().contains("fakevalue")
    }

    /// Why Spillway may report this upstream negative, if it is disputed.
    fn disputed(&self, source: &str) -> Option<&'static str> {
        DISPUTED
            .iter()
            .find(|(s, rule, piece, _)| {
                *s == source && *rule == self.rule && self.text.contains(piece)
            })
            .map(|d| d.3)
    }

    /// A Gitleaks negative only by its file path, which a text example cannot carry.
    fn path_dependent(&self) -> bool {
        self.note
            .as_deref()
            .is_some_and(|n| n.starts_with("upstream file path"))
    }

    /// Nosey Parker's asset and hash rule sets: not secrets in its own default set.
    fn outside_default_set(&self) -> bool {
        self.note
            .as_deref()
            .is_some_and(|n| n.starts_with("np.assets") || n.starts_with("np.hashes"))
    }
}

/// The default rules plus the opt-in directories named.
fn shipped(include_invalid: bool, dirs: &[&str]) -> RuleSet {
    let mut rules = rule::default_rules().expect("default rules parse");
    for dir in dirs {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        rules.extend(rule::load_rules_dir(&dir).expect("opt-in rules parse"));
    }
    RuleSet::new(rules, ScanOptions { include_invalid }).expect("shipped rules compile")
}

/// (provider slug, generic, valid) of every finding in `text`.
fn findings(set: &RuleSet, text: &str) -> Vec<(String, bool, bool)> {
    let mut out = Vec::new();
    set.scanner().scan_decoded(
        "example",
        text.as_bytes(),
        &Default::default(),
        &mut |f: Finding<'_>| {
            let slug = f.rule.id.split('.').next().unwrap_or_default().to_owned();
            out.push((slug, f.rule.generic, f.verdict.as_str() != "invalid"));
        },
    );
    out
}

#[derive(Default)]
struct Tally {
    real: (usize, usize),
    real_invalid_checksum: usize,
    /// Real-format positives left out as placeholders (found or not).
    placeholders: usize,
    generic: (usize, usize),
    negatives: (usize, usize),
    /// Negatives that are another rule's positive, or negatives only by their path: not counted.
    cross_rule: usize,
    /// Negatives in [`DISPUTED`], left out of `negatives`.
    disputed: usize,
    /// Every counted negative, the disputed ones included.
    negatives_as_given: (usize, usize),
    missed: BTreeMap<String, (usize, usize)>,
    flagged: BTreeMap<String, usize>,
}

fn measure(corpus: &Corpus, lenient: &RuleSet, strict: &RuleSet) -> Tally {
    let mut t = Tally::default();
    let positives: Vec<&Example> = corpus.examples.iter().filter(|e| e.positive).collect();
    let another_rules_positive = |ex: &Example| {
        positives
            .iter()
            .any(|p| p.rule != ex.rule && (p.text.contains(&ex.text) || ex.text.contains(&p.text)))
    };
    for ex in corpus.examples.iter().filter(|e| !e.outside_default_set()) {
        if ex.positive && ex.provider != "generic" && ex.placeholder() {
            t.placeholders += 1;
        } else if ex.positive {
            let found = findings(lenient, &ex.text);
            let hit = |(slug, generic, _): &&(String, bool, bool)| {
                if ex.provider == "generic" {
                    *generic
                } else {
                    *slug == ex.provider
                }
            };
            let ok = found.iter().any(|f| hit(&f));
            let tally = if ex.provider == "generic" {
                &mut t.generic
            } else {
                if ok && !found.iter().filter(hit).any(|f| f.2) {
                    t.real_invalid_checksum += 1;
                }
                &mut t.real
            };
            tally.1 += 1;
            let per_rule = t.missed.entry(ex.rule.clone()).or_default();
            per_rule.1 += 1;
            if ok {
                tally.0 += 1;
            } else {
                per_rule.0 += 1;
            }
        } else if another_rules_positive(ex) || ex.path_dependent() {
            t.cross_rule += 1;
        } else {
            let flagged = !findings(strict, &ex.text).is_empty();
            t.negatives_as_given.1 += 1;
            t.negatives_as_given.0 += usize::from(flagged);
            if ex.disputed(&corpus.source).is_some() {
                t.disputed += 1;
                continue;
            }
            t.negatives.1 += 1;
            if flagged {
                t.negatives.0 += 1;
                *t.flagged.entry(ex.rule.clone()).or_default() += 1;
            }
        }
    }
    t.missed.retain(|_, (missed, _)| *missed > 0);
    let _ = &corpus.source;
    t
}

fn load(name: &str) -> Corpus {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures/outside")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).expect("corpus present")).expect("corpus parses")
}

fn pct(n: usize, d: usize) -> f64 {
    100.0 * n as f64 / d.max(1) as f64
}

/// With the default and extended rules: recall >= 95% on each source's real-format examples,
/// <= 1% of its negatives flagged. The issuer-less rules (`patterns/generic/`, opt-in) are measured
/// beside them on the examples of no issuer, and their figures printed.
#[test]
fn outside_examples_are_found_under_their_issuer_and_negatives_are_not() {
    let lenient = shipped(true, &["patterns/extended"]);
    let strict = shipped(false, &["patterns/extended"]);
    let with_generic = (
        shipped(true, &["patterns/extended", "patterns/generic"]),
        shipped(false, &["patterns/extended", "patterns/generic"]),
    );
    let mut failures = Vec::new();
    for name in ["noseyparker.json", "gitleaks.json"] {
        let corpus = load(name);
        let g = measure(&corpus, &with_generic.0, &with_generic.1);
        eprintln!(
            "{} with patterns/generic too: issuer-less recall {}/{}; negatives flagged {}/{} = {:.2}%",
            corpus.source,
            g.generic.0,
            g.generic.1,
            g.negatives.0,
            g.negatives.1,
            pct(g.negatives.0, g.negatives.1)
        );
        for (rule, n) in &g.flagged {
            eprintln!("  with generic, flagged negative of {rule}: {n}");
        }
        let t = measure(&corpus, &lenient, &strict);
        let recall = pct(t.real.0, t.real.1);
        let flagged = pct(t.negatives.0, t.negatives.1);
        eprintln!(
            "{}: real-format recall {}/{} = {recall:.1}% ({} only with a failing checksum; {} \
             placeholders left out); \
             issuer-less {}/{}; negatives flagged {}/{} = {flagged:.2}% ({}/{} as given, {} disputed; \
             {} more are another rule's positive or a path's)",
            corpus.source,
            t.real.0,
            t.real.1,
            t.real_invalid_checksum,
            t.placeholders,
            t.generic.0,
            t.generic.1,
            t.negatives.0,
            t.negatives.1,
            t.negatives_as_given.0,
            t.negatives_as_given.1,
            t.disputed,
            t.cross_rule
        );
        for (rule, (missed, of)) in &t.missed {
            eprintln!("  missed {rule}: {missed}/{of}");
        }
        for (rule, n) in &t.flagged {
            eprintln!("  flagged negative of {rule}: {n}");
        }
        if recall < 95.0 {
            failures.push(format!("{}: recall {recall:.1}% < 95%", corpus.source));
        }
        if flagged > 1.0 {
            failures.push(format!(
                "{}: {flagged:.2}% of negatives flagged > 1%",
                corpus.source
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
}
