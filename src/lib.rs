//! Spillway: finds leaked tokens, proves them live with the installation that issued them, revokes
//! and records them.
//!
//! - [`scanner`]: rules as data and the multi-pattern engine (no I/O).
//! - [`cli`]: the `spillway` command line (scan files, directories, stdin and git history).

pub mod cli;
pub mod scanner;
