//! Spillway: finds leaked tokens, proves them live with the installation that issued them, revokes
//! and records them.
//!
//! - [`scanner`]: rules as data and the multi-pattern engine (no I/O).
//! - [`cli`]: the `spillway` command line (scan files, directories, stdin and git history).
//! - [`store`]: SQLite / PostgreSQL storage; [`audit`]: the hash-chained audit log;
//!   [`listeners`]: rotatable listener endpoints; [`admin_keys`]; [`keys`]: secrets held outside
//!   the database; [`config`]: layered settings.
//! - [`devtools`]: the reference installation and a fake GitHub, for tests, benchmarks and demos.

pub mod admin_keys;
pub mod audit;
pub mod cli;
pub mod config;
pub mod contract;
pub mod devtools;
pub mod doctor;
pub mod ecdsa;
pub mod failpoint;
pub mod installation_keys;
pub mod installations;
pub mod intake;
pub mod jwt;
pub mod keys;
pub mod listeners;
pub mod logging;
pub mod outbound;
pub mod partner_keys;
pub mod poller;
pub mod revocation;
pub mod scanner;
pub mod seal;
pub mod server;
pub mod store;
pub mod webhook_auth;
