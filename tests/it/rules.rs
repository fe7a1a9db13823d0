//! Every shipped rule is data, and the data is tested: ids, examples (alone and wrapped in the file
//! formats secrets live in), negative examples, and the whole set compiling together. "Shipped" is
//! the default set (compiled in) plus `patterns/extended/` and `patterns/generic/` (loaded with
//! `--rules`).

use std::path::Path;

use spillway::scanner::{Finding, Rule, RuleSet, ScanOptions, rule, rule_check};

fn all_rules() -> Vec<Rule> {
    let mut rules = rule::default_rules().expect("the default rules parse");
    for dir in ["patterns/extended", "patterns/generic"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        rules.extend(rule::load_rules_dir(&dir).expect("the opt-in rules parse"));
    }
    rules
}

/// Default and extended rules, compiled together (so ids must be unique across both).
fn default_set() -> RuleSet {
    RuleSet::new(all_rules(), ScanOptions::default())
        .expect("default and extended rules compile together")
}

/// Secrets that `rule_id` reports in `text` (valid or unvalidated findings only).
fn secrets_of(set: &RuleSet, rule_id: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    set.scanner()
        .scan("example", text.as_bytes(), &mut |f: Finding<'_>| {
            if f.rule.id == rule_id {
                out.push(f.secret().expose().to_owned());
            }
        });
    out
}

#[test]
fn the_default_set_has_at_least_sixty_rules_with_unique_ids() {
    let defaults =
        RuleSet::default_rules(ScanOptions::default()).expect("the default rules compile together");
    assert!(
        defaults.rules().len() >= 60,
        "only {} default rules",
        defaults.rules().len()
    );
    let set = default_set();
    let mut ids: Vec<&str> = set.rules().iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "duplicate ids");
}

/// Every shipped rule passes `spillway rules --check`: metadata, examples found alone and wrapped in
/// JSON, YAML, .env, shell and source code, negatives not found, no example claimed by another
/// token type.
#[test]
fn every_rule_passes_its_own_examples() {
    let set = default_set();
    let problems = rule_check::check(&set, |_| true);
    let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{}", shown.join("\n"));
}

/// The checker is live: a rule whose example does not match, whose negative matches and whose
/// pattern has a Unicode `\b` gets one problem for each.
#[test]
fn the_rule_checker_names_each_broken_rule() {
    let text = r#"
[[rules]]
id = "test.broken"
name = "Broken"
token_type = "broken"
description = "A rule with wrong examples."
regex = '''\b(brk_[a-z]{8})\b'''
keywords = ["brk_"]
examples = ['''brk_ABCDEFGH''']
negative_examples = ['''brk_abcdefgh''']
"#;
    let rules = rule::parse_rule_file("test.toml", text).expect("the rule parses");
    let set = RuleSet::new(rules, ScanOptions::default()).expect("compiles");
    let problems: Vec<String> = rule_check::check(&set, |_| true)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        [
            r"test.broken: a bare \b (Unicode, 1000x slower): write (?-u:\b)",
            "test.broken: example 1 does not match",
            "test.broken: negative example 1 is a finding",
        ]
    );
}

#[test]
fn checksummed_rules_reject_a_corrupted_example() {
    let set = default_set();
    let checksummed: Vec<&Rule> = set
        .rules()
        .iter()
        .filter(|r| {
            r.validators
                .iter()
                .any(|v| format!("{v:?}").starts_with("Crc32"))
        })
        .collect();
    assert!(
        checksummed.len() >= 6,
        "expected GitHub, GitLab and Spillway checksummed rules"
    );
    for r in checksummed {
        let ex = &r.examples[0];
        let secret = &secrets_of(&set, &r.id, ex)[0];
        // Flip one character of the checksummed body (keep the alphabet).
        let pos = secret.len() - 9;
        let mut bytes = secret.clone().into_bytes();
        bytes[pos] = if bytes[pos] == b'a' { b'b' } else { b'a' };
        let corrupted = String::from_utf8(bytes).unwrap();
        assert!(
            secrets_of(&set, &r.id, &corrupted).is_empty(),
            "{}: corrupted checksum accepted",
            r.id
        );
        let lenient = RuleSet::default_rules(ScanOptions {
            include_invalid: true,
        })
        .unwrap();
        let mut verdicts = Vec::new();
        lenient
            .scanner()
            .scan("x", corrupted.as_bytes(), &mut |f: Finding<'_>| {
                if f.rule.id == r.id {
                    verdicts.push(f.verdict.as_str());
                }
            });
        assert_eq!(
            verdicts,
            ["invalid"],
            "{}: --include-invalid should show it, marked",
            r.id
        );
    }
}

#[test]
fn published_github_checksum_vectors_are_honoured() {
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/public_vectors.json")).expect("fixture parses");
    let set = default_set();
    let found = |token: &str| {
        let mut n = 0;
        set.scanner().scan(
            "v",
            format!("token = \"{token}\"").as_bytes(),
            &mut |_: Finding<'_>| n += 1,
        );
        n
    };
    for t in vectors["github_token_checksum"]["valid"]
        .as_array()
        .unwrap()
    {
        assert_eq!(
            found(t.as_str().unwrap()),
            1,
            "published valid token not found"
        );
    }
    for t in vectors["github_token_checksum"]["invalid"]
        .as_array()
        .unwrap()
    {
        assert_eq!(
            found(t.as_str().unwrap()),
            0,
            "published invalid token reported"
        );
    }
}

#[test]
fn foundry_user_and_session_tokens_are_told_apart() {
    let set = default_set();
    let rule = set
        .rules()
        .iter()
        .find(|r| r.token_type == "palantir_jwt")
        .expect("a palantir_jwt rule");
    let mut subtypes = std::collections::BTreeSet::new();
    for ex in &rule.examples {
        set.scanner()
            .scan("x", ex.as_bytes(), &mut |f: Finding<'_>| {
                if f.rule.id == rule.id {
                    subtypes.insert(f.subtype().unwrap_or("none").to_owned());
                }
            });
    }
    assert_eq!(
        subtypes.into_iter().collect::<Vec<_>>(),
        ["session", "user-generated"]
    );
}

/// `follows` gates a rule per keyword hit: only hits followed by a match of it are searched, and
/// the gate never hides a match the rule's own regex would report there.
#[test]
fn follows_gates_each_keyword_hit_and_names_itself_when_broken() {
    let file = |follows: &str| {
        format!(
            r#"
[[rules]]
id = "test.url-password"
name = "URL password"
token_type = "url_password"
regex = '''[a-z]+://[a-z]+:([A-Za-z0-9]{{8,}})@[a-z.]+'''
keywords = ["://"]
follows = '''{follows}'''
"#
        )
    };
    let set = |follows: &str| {
        let rules = rule::parse_rule_file("test.toml", &file(follows)).expect("the rule parses");
        RuleSet::new(rules, ScanOptions::default()).expect("compiles")
    };
    let text = "see https://example.com/a and\npostgres://app:Zq8wTn3vLp2x@db.example.com\n";
    // A gate matching what the regex needs after "://": the credential is still found.
    let gated = set("[a-z]+:[A-Za-z0-9]{8,}@");
    assert_eq!(
        secrets_of(&gated, "test.url-password", text),
        ["Zq8wTn3vLp2x"]
    );
    // A gate that no hit passes: the rule never searches, so nothing is found (the gate is live).
    let closed = set("NEVER");
    assert!(secrets_of(&closed, "test.url-password", text).is_empty());
    // A gate that does not compile is an error naming the rule and the field.
    let err = rule::parse_rule_file("test.toml", &file("(unclosed"))
        .expect_err("a broken follows regex is refused")
        .to_string();
    assert!(
        err.contains("test.url-password") && err.contains("follows"),
        "{err}"
    );
}

/// GitLab's names (patterns/integrations/gitlab-revocation.toml): each is a name GitLab's client
/// produces from one of its rule IDs, each maps to token types the default rules issue, and none is
/// listed twice.
#[test]
fn gitlab_revocation_names_are_gitlabs_and_map_to_shipped_types() {
    let ids = include_str!("fixtures/gitlab_detected_secrets_ids.txt");
    // GitLab: (identifier.type + "_" + identifier.value.tr(" ", "_")).downcase
    let producible: std::collections::BTreeSet<String> = ids
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|id| format!("gitleaks_rule_id_{}", id.replace(' ', "_")).to_lowercase())
        .collect();
    assert!(producible.contains("gitleaks_rule_id_gitlab_personal_access_token"));
    let mapping: toml::Value = toml::from_str(include_str!(
        "../../patterns/integrations/gitlab-revocation.toml"
    ))
    .unwrap();
    let rules = RuleSet::default_rules(ScanOptions::default()).unwrap();
    let shipped: std::collections::BTreeSet<&str> = rules
        .rules()
        .iter()
        .map(|r| r.token_type.as_str())
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let entries = mapping["types"].as_array().unwrap();
    assert!(entries.len() >= 50, "{}", entries.len());
    for entry in entries {
        let name = entry["gitlab"].as_str().unwrap();
        assert!(
            producible.contains(name),
            "{name}: not a name GitLab produces"
        );
        assert!(seen.insert(name), "{name} listed twice");
        let types = entry["token_types"].as_array().unwrap();
        assert!(!types.is_empty(), "{name}");
        for t in types {
            let t = t.as_str().unwrap();
            assert!(
                shipped.contains(t),
                "{name}: {t} is not a default token type"
            );
        }
    }
    let served = spillway::sources::gitlab_types::GitlabTypes::load(&rules).unwrap();
    assert_eq!(served.names().count(), entries.len());
}
