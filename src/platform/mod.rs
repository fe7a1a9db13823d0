//! What every part of Spillway stands on, none of it specific to tokens or installations: storage
//! (SQLite / PostgreSQL), the hash-chained audit log, layered settings, Spillway's own keys and
//! sealing, the guarded outbound HTTP client, ES256 JWTs, webhook signature schemes, logging and
//! crash points for tests. Must not import any other module of the crate but `scanner`'s secret
//! type and the contract's JWK shape (`jwt` verifies against it).

pub mod audit;
pub mod config;
pub mod ecdsa;
pub mod failpoint;
pub mod jwt;
pub mod keyring;
pub mod logging;
pub mod outbound;
pub mod seal;
pub mod store;
pub mod webhook_auth;
