//! Crash points for the crash-resume tests: when `SPILLWAY_CRASH_AT` names a point, the process
//! aborts there (no destructors, no flush: like SIGKILL at that instant); when `SPILLWAY_PANIC_AT`
//! names it, the task running there panics (what a bug would do). Unset in production, where a
//! check costs one comparison against a value read once.
//!
//! Must not import anything of the crate.

use std::sync::OnceLock;

fn read(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn target() -> Option<&'static str> {
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    TARGET.get_or_init(|| read("SPILLWAY_CRASH_AT")).as_deref()
}

fn panic_target() -> Option<&'static str> {
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    TARGET.get_or_init(|| read("SPILLWAY_PANIC_AT")).as_deref()
}

/// Aborts the process if `SPILLWAY_CRASH_AT` is `point`; panics if `SPILLWAY_PANIC_AT` is.
pub fn hit(point: &str) {
    if target() == Some(point) {
        eprintln!("spillway: SPILLWAY_CRASH_AT={point}: aborting");
        std::process::abort();
    }
    if panic_target() == Some(point) {
        panic!("SPILLWAY_PANIC_AT={point}");
    }
}
