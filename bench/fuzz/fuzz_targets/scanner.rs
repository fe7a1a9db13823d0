//! The engine with the default rules over arbitrary bytes: every finding's span lies inside the
//! buffer and is the secret it reports, lines and columns are 1-based.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spillway::scanner::{Finding, RuleSet, ScanOptions};

fn rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        RuleSet::default_rules(ScanOptions {
            include_invalid: true,
        })
        .expect("default rules")
    })
}

fuzz_target!(|data: &[u8]| {
    rules().scanner().scan("fuzz", data, &mut |f: Finding<'_>| {
        assert!(f.span.start <= f.span.end && f.span.end <= data.len());
        assert_eq!(f.secret().expose().as_bytes(), &data[f.span.clone()]);
        assert!(f.line >= 1 && f.column >= 1);
    });
});
