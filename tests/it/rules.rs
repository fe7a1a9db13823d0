//! Every shipped rule is data, and the data is tested: ids, examples (alone and wrapped in the file
//! formats secrets live in), negative examples, and the whole set compiling together. "Shipped" is
//! the default set (compiled in) plus `patterns/extended/` (loaded with `--rules`).

use std::path::Path;

use spillway::scanner::{Finding, Rule, RuleSet, ScanOptions, rule};

fn all_rules() -> Vec<Rule> {
    let mut rules = rule::default_rules().expect("the default rules parse");
    let extended = Path::new(env!("CARGO_MANIFEST_DIR")).join("patterns/extended");
    rules.extend(rule::load_rules_dir(&extended).expect("the extended rules parse"));
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

/// The contexts Gitleaks-style tests wrap secrets in: JSON, YAML, .env, shell, source code.
fn wrappings(example: &str) -> Vec<(&'static str, String)> {
    let json = serde_json::to_string(example).unwrap();
    let yaml = if example.contains('\n') {
        format!(
            "config:\n  key: |\n    {}\n",
            example.replace('\n', "\n    ")
        )
    } else {
        format!("config:\n  key: {example}\n")
    };
    vec![
        (
            "json",
            format!("{{\n  \"name\": \"svc\",\n  \"key\": {json}\n}}\n"),
        ),
        ("yaml", yaml),
        ("env", format!("# settings\nAPI_KEY={example}\nOTHER=1\n")),
        (
            "shell",
            format!("#!/bin/sh\nexport API_KEY='{example}'\ncurl -s https://example.com\n"),
        ),
        (
            "source",
            format!("fn main() {{\n    let key = \"{example}\";\n    println!(\"{{key}}\");\n}}\n"),
        ),
    ]
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

#[test]
fn every_rule_carries_examples_keywords_and_metadata() {
    for r in default_set().rules() {
        assert!(!r.examples.is_empty(), "{}: no examples", r.id);
        assert!(
            !r.negative_examples.is_empty(),
            "{}: no negative examples",
            r.id
        );
        assert!(!r.keywords.is_empty(), "{}: no keywords", r.id);
        assert!(!r.description.trim().is_empty(), "{}: no description", r.id);
        assert!(
            !r.pattern.contains(r"\b") || !has_unicode_word_boundary(&r.pattern),
            "{}: Unicode \\b",
            r.id
        );
    }
}

/// A `\b` not inside `(?-u:...)`: the 1000x cliff.
fn has_unicode_word_boundary(pattern: &str) -> bool {
    pattern
        .replace(r"(?-u:\b)", "")
        .replace(r"(?-u:\B)", "")
        .contains(r"\b")
}

#[test]
fn every_example_matches_and_contains_a_keyword() {
    let set = default_set();
    let mut failures = Vec::new();
    for r in set.rules() {
        for ex in &r.examples {
            if secrets_of(&set, &r.id, ex).is_empty() {
                failures.push(format!("{}: example does not match: {}", r.id, ex.len()));
            }
            let lower = ex.to_ascii_lowercase();
            if !r
                .keywords
                .iter()
                .any(|k| lower.contains(&k.to_ascii_lowercase()))
            {
                failures.push(format!("{}: example contains none of its keywords", r.id));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_example_matches_inside_json_yaml_env_shell_and_source() {
    let set = default_set();
    let mut failures = Vec::new();
    for r in set.rules() {
        for ex in &r.examples {
            let expected = secrets_of(&set, &r.id, ex);
            for (context, text) in wrappings(ex) {
                let got = secrets_of(&set, &r.id, &text);
                let ok = if ex.contains('\n') || context == "json" && ex.contains(['"', '\\']) {
                    !got.is_empty()
                } else {
                    got == expected
                };
                if !ok {
                    failures.push(format!(
                        "{}: in {context}: expected {} secrets, got {}",
                        r.id,
                        expected.len(),
                        got.len()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn no_negative_example_is_a_finding() {
    let set = default_set();
    let mut failures = Vec::new();
    for r in set.rules() {
        for ex in &r.negative_examples {
            if !secrets_of(&set, &r.id, ex).is_empty() {
                failures.push(format!("{}: negative example matched", r.id));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
