//! Crash points for the crash-resume tests: when `SPILLWAY_CRASH_AT` names a point, the process
//! aborts there (no destructors, no flush: like SIGKILL at that instant). Unset in production, where
//! a check costs one comparison against a value read once.

use std::sync::OnceLock;

fn target() -> Option<&'static str> {
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            std::env::var("SPILLWAY_CRASH_AT")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .as_deref()
}

/// Aborts the process if `SPILLWAY_CRASH_AT` is `point`.
pub fn hit(point: &str) {
    if target() == Some(point) {
        eprintln!("spillway: SPILLWAY_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}
