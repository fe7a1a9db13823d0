//! Issuers: the companies whose tokens Spillway finds but did not issue, and the calls they offer
//! to end a leaked token where it was issued. Each driver speaks one issuer's documented wire
//! format and says what the answer means ([`Outcome`]); it never stores anything and never logs a
//! token. The first is GitHub's Credential Revocation API ([`github`]): anyone who finds a GitHub
//! token in public may report it, in batches of up to 1,000, 60 calls an hour. The others are issuers
//! whose tokens revoke themselves, declared as data ([`self_revoke`], `patterns/issuers/`).
//!
//! Must not import storage or the revocation engine: the engine calls drivers, not the reverse.

pub mod github;
pub mod self_revoke;

use std::time::Duration;

/// What an issuer's answer means for the tokens sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The issuer took the tokens (GitHub: `202 Accepted`; it then revokes those that are live and
    /// tells their owners).
    Accepted,
    /// The issuer says the token no longer works (revoked before, expired or never valid).
    Gone,
    /// Nothing is known yet: try again, not before `retry_after` when the issuer (or the hourly
    /// budget) says when. `reason` is safe to store: a status or an error kind, never a body.
    RetryLater {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The call cannot succeed as made (an outbound policy refusal, a request the issuer called
    /// invalid): retrying the same call would not help.
    Refused { reason: String },
}
