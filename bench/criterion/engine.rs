//! Engine throughput on real code: `cargo bench --bench engine`.
//!
//! The corpus is real source already on the machine: `SPILLWAY_BENCH_CORPUS` (a directory, e.g. the
//! one `bench/make-corpus` builds), else the cargo registry's crate sources, read up to
//! `SPILLWAY_BENCH_MB` (default 64) MiB into memory, one buffer per file. Single-threaded: this is the
//! per-core figure. The rule sets show that weak-prefix and generic keyword rules do not slow the
//! strong-prefix pass, and what Gitleaks' default config and a thousand rules cost.

use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spillway::scanner::gitleaks::default_config_rules;
use spillway::scanner::rule::{RawRule, RawRuleFile, Rule, default_rules, load_rules_dir};
use spillway::scanner::{Finding, RuleSet, ScanOptions};

fn collect(dir: &Path, budget: &mut usize, out: &mut Vec<Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if *budget == 0 {
            return;
        }
        if p.is_dir() {
            collect(&p, budget, out);
        } else if let Ok(data) = std::fs::read(&p)
            && data.len() <= 1 << 20
            && !data[..data.len().min(8192)].contains(&0)
        {
            *budget = budget.saturating_sub(data.len());
            out.push(data);
        }
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let mb: usize = std::env::var("SPILLWAY_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let dir = std::env::var_os("SPILLWAY_BENCH_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cargo/registry/src")
        });
    let mut out = Vec::new();
    collect(&dir, &mut (mb << 20), &mut out);
    assert!(!out.is_empty(), "no corpus under {}", dir.display());
    out
}

/// A Gitleaks-style generic rule: case-insensitive keywords, no prefix.
const GENERIC: &str = r#"
[[rules]]
id = "bench.generic-assignment"
name = "Generic secret assignment"
token_type = "generic"
description = "key/secret/token = <high entropy>"
regex = '''(?i)(?:key|secret|token|passwd|password)(?-u:\b)["']?\s*[:=]\s*["']?([A-Za-z0-9_\-+/]{24,64})'''
keywords = ["key", "secret", "token", "passw"]
min_entropy = 4.0
"#;

/// A thousand rules: the default and extended sets, and rules for made-up token formats built from
/// the real prefixes of those rules and of Gitleaks' config (`ghp_` -> `ghp_live_`, `xoxb-` ->
/// `xoxb-v2_`, ...): as many distinct prefixes as a large real rule set has, of real shape.
fn thousand_rules(mut rules: Vec<Rule>, more_prefixes: &[Rule]) -> Vec<Rule> {
    let mut prefixes: Vec<String> = rules
        .iter()
        .chain(more_prefixes)
        .flat_map(|r| r.keywords.iter())
        .filter(|k| {
            k.len() >= 4
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
        .map(|k| k.to_ascii_lowercase())
        .collect();
    prefixes.sort();
    prefixes.dedup();
    let suffixes = [
        "live_", "test_", "v2_", "pat_", "sk_", "org_", "svc_", "app_",
    ];
    let mut n = 0;
    'fill: for suffix in suffixes {
        for p in &prefixes {
            if rules.len() >= 1000 {
                break 'fill;
            }
            let prefix = format!("{p}{suffix}");
            let raw = RawRule {
                regex: format!(
                    r"(?-u:\b)({}[A-Za-z0-9]{{32}})(?-u:\b)",
                    regex_syntax::escape(&prefix)
                ),
                keywords: vec![prefix],
                id: format!("synthetic.r{n}"),
                name: format!("synthetic {n}"),
                token_type: format!("synthetic_{n}"),
                ..RawRule::default()
            };
            rules.push(raw.compile("synthetic").unwrap());
            n += 1;
        }
    }
    rules
}

fn bench(c: &mut Criterion) {
    let files = corpus();
    let bytes: usize = files.iter().map(Vec::len).sum();
    let full = default_rules().expect("default rules");
    let strong: Vec<_> = full.iter().filter(|r| r.prefix_len >= 4).cloned().collect();
    let mut with_generic = full.clone();
    let raw: RawRuleFile = toml::from_str(GENERIC).unwrap();
    with_generic.extend(raw.rules.into_iter().map(|r| r.compile("bench").unwrap()));
    let gitleaks = default_config_rules().expect("Gitleaks' default config");
    let mut everything = full.clone();
    everything.extend(load_rules_dir(Path::new("patterns/extended")).expect("extended rules"));
    let thousand = thousand_rules(everything, &gitleaks);
    assert_eq!(thousand.len(), 1000);
    let sets = [
        ("prefix-rules-only", strong),
        ("default", full),
        ("default+generic", with_generic),
        ("gitleaks-default-config", gitleaks),
        ("thousand-rules", thousand),
    ];

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.sample_size(10);
    for (name, rules) in sets {
        let set = RuleSet::new(rules, ScanOptions::default()).unwrap();
        let mut scanner = set.scanner();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0usize;
                for f in &files {
                    scanner.scan("bench", f, &mut |_: Finding<'_>| n += 1);
                }
                n
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
