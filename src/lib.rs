//! Spillway: finds leaked tokens, proves them live with the installation that issued them, revokes
//! and records them. The modules read as the pipeline (DESIGN.md, "Architecture"):
//!
//! - [`sources`]: where tokens come from (partner alerts, signed webhooks, GitLab's revocation
//!   API on rotatable listener endpoints, the public-repository poller).
//! - [`intake`]: an accepted alert, one candidate per token and the queued work, committed durably
//!   before the sender is answered.
//! - [`scanner`]: rules as data, decoders and the multi-pattern engine (no I/O).
//! - [`revocation`]: from candidate to outcome: attribution, offline and online verification,
//!   revoke and notify calls under each installation's limits.
//! - [`findings`]: the finding lifecycle (states, outcomes, allowed transitions) and its table.
//! - [`installations`]: the registry of issuers, their signing keys and the contract they speak.
//! - [`admin`]: admin API keys and `doctor`.
//! - [`http`]: the HTTP edge (routers, ingress rules, admin API, metrics).
//! - [`platform`]: storage, the audit log, settings, Spillway's own keys, sealing, outbound calls,
//!   logging.
//! - [`service`]: the composition root of `spillway serve`; [`cli`]: the command line.
//! - [`devtools`]: the reference installation and a fake GitHub, for tests, benchmarks and demos.

pub mod admin;
pub mod cli;
pub mod devtools;
pub mod findings;
pub mod http;
pub mod installations;
pub mod intake;
pub mod issuers;
pub mod platform;
pub mod revocation;
pub mod scanner;
pub mod service;
pub mod sources;
