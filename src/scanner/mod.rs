//! The scanner core: token rules as data ([`rule`]), offline validators ([`validate`]), the
//! multi-pattern engine ([`engine`]) and what it reports ([`finding`]).
//!
//! Everything else in Spillway feeds text through here. This module has no async, database, HTTP or
//! CLI imports; callers pass byte buffers and receive [`Finding`]s through a [`Sink`].

pub mod allowlist;
pub mod decode;
pub mod engine;
pub mod finding;
mod fingerprint;
pub mod gitleaks;
mod literals;
pub mod rule;
pub mod rule_check;
mod trigram_freq;
pub mod validate;

pub use decode::container::{Skip, TreeLimits, TreeSink};
pub use decode::{DecodeOptions, DecodeStep};
pub use engine::{PrefilterStats, RuleSet, ScanOptions, Scanner, Sink};
pub use finding::{Finding, TokenSecret, Verdict, redacted_preview};
pub use rule::{Pass, Rule, RuleError};
