//! What the security team administers Spillway with, beyond the registries: admin API keys
//! ([`api_keys`]) and the `doctor` checks ([`doctor`]). The HTTP admin API is in `http`.
//!
//! Must not import HTTP or the revocation engine.

pub mod api_keys;
pub mod doctor;
pub mod sessions;
