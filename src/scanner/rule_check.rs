//! Checks rules against their own data: metadata present, every example found (alone and wrapped in
//! the file formats secrets live in), no negative example found, and no example claimed by a rule of
//! another token type. `spillway rules --check` and the rule tests both call [`check`], so a rule
//! author gets the test suite's verdict without compiling anything.
//!
//! Scanner core: no async, database, HTTP or CLI imports.

use super::{Finding, Rule, RuleSet};

/// One thing wrong with one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub rule: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.message)
    }
}

/// The contexts Gitleaks-style tests wrap secrets in: JSON, YAML, .env, shell, source code.
pub fn wrappings(example: &str) -> Vec<(&'static str, String)> {
    let json = serde_json::to_string(example).expect("a string serialises");
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

/// What each rule reports in `text`: (rule id, token type, secret).
pub fn findings_in(set: &RuleSet, text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    set.scanner()
        .scan("example", text.as_bytes(), &mut |f: Finding<'_>| {
            out.push((
                f.rule.id.clone(),
                f.rule.token_type.clone(),
                f.secret().expose().to_owned(),
            ));
        });
    out
}

fn secrets_of(found: &[(String, String, String)], rule: &Rule) -> Vec<String> {
    found
        .iter()
        .filter(|(id, _, _)| *id == rule.id)
        .map(|(_, _, s)| s.clone())
        .collect()
}

/// A `\b` not inside `(?-u:...)`: the 1000x cliff.
pub fn has_unicode_word_boundary(pattern: &str) -> bool {
    pattern
        .replace(r"(?-u:\b)", "")
        .replace(r"(?-u:\B)", "")
        .contains(r"\b")
}

/// Checks the rules of `set` whose id `select` accepts (the whole set still scans, so an example
/// another rule claims is seen).
pub fn check(set: &RuleSet, select: impl Fn(&Rule) -> bool) -> Vec<Problem> {
    let mut problems = Vec::new();
    for r in set.rules().iter().filter(|r| select(r)) {
        let mut problem = |message: String| {
            problems.push(Problem {
                rule: r.id.clone(),
                message,
            })
        };
        if r.examples.is_empty() {
            problem("no examples".into());
        }
        if r.negative_examples.is_empty() {
            problem("no negative examples".into());
        }
        if r.keywords.is_empty() {
            problem("no keywords".into());
        }
        if r.description.trim().is_empty() {
            problem("no description".into());
        }
        if has_unicode_word_boundary(&r.pattern) {
            problem(r"a bare \b (Unicode, 1000x slower): write (?-u:\b)".into());
        }
        for (i, ex) in r.examples.iter().enumerate() {
            let found = findings_in(set, ex);
            let expected = secrets_of(&found, r);
            if expected.is_empty() {
                problem(format!("example {} does not match", i + 1));
                continue;
            }
            let lower = ex.to_ascii_lowercase();
            if !r
                .keywords
                .iter()
                .any(|k| lower.contains(&k.to_ascii_lowercase()))
            {
                problem(format!("example {} contains none of its keywords", i + 1));
            }
            for (_, other_type, secret) in &found {
                if *other_type != r.token_type && expected.iter().any(|s| s == secret) {
                    problem(format!(
                        "example {}: its secret is also reported as {other_type} (a token must name one issuer)",
                        i + 1
                    ));
                }
            }
            for (context, text) in wrappings(ex) {
                let got = secrets_of(&findings_in(set, &text), r);
                let ok = if ex.contains('\n') || context == "json" && ex.contains(['"', '\\']) {
                    !got.is_empty()
                } else {
                    got == expected
                };
                if !ok {
                    problem(format!(
                        "example {} in {context}: expected {} secrets, got {}",
                        i + 1,
                        expected.len(),
                        got.len()
                    ));
                }
            }
        }
        for (i, ex) in r.negative_examples.iter().enumerate() {
            if !secrets_of(&findings_in(set, ex), r).is_empty() {
                problem(format!("negative example {} is a finding", i + 1));
            }
        }
    }
    problems
}
