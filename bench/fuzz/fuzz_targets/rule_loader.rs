//! Rule files (Spillway's TOML and Gitleaks' TOML) from arbitrary text: rules or an error naming
//! the problem, never a panic; rules that load also compile into a scanner that runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway::scanner::{Finding, RuleSet, ScanOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for rules in [
        spillway::scanner::rule::parse_rule_file("fuzz.toml", text),
        spillway::scanner::gitleaks::parse_gitleaks_file("fuzz.toml", text),
    ] {
        if let Ok(rules) = rules {
            if let Ok(set) = RuleSet::new(
                rules,
                ScanOptions {
                    include_invalid: true,
                },
            ) {
                set.scanner().scan("fuzz", data, &mut |_: Finding<'_>| {});
            }
        }
    }
});
