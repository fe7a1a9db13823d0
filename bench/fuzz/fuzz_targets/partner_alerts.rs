//! Partner alert bodies (GitHub, GitLab, deps.dev): parsed or refused with a message, never a
//! panic; what is accepted has a non-empty token in every element.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for type_required in [true, false] {
        if let Ok(alerts) = spillway::sources::parse_alerts(data, type_required) {
            assert!(alerts.iter().all(|a| !a.token.is_empty()));
            if type_required {
                assert!(
                    alerts
                        .iter()
                        .all(|a| a.token_type.as_deref().is_some_and(|t| !t.is_empty()))
                );
            }
        }
    }
});
