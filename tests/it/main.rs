//! Spillway's integration tests, one binary (linking one test binary instead of one per feature
//! saves most of an edit-test cycle on this machine). A module per feature; shared helpers in
//! `common` (fresh databases on every backend, the server in-process and as a real process, fakes
//! of outside services that speak their real wire formats).

mod admin_api;
mod admin_cli;
mod canary;
mod common;
mod conformance;
mod console;
mod crash_resume;
mod doctor;
mod fake_github;
mod generic_listeners;
mod hostile;
mod installations;
mod intake;
mod issuers;
mod operations;
mod outside_examples;
mod poller;
mod poller_replicas;
mod reference_installation;
mod revocation;
mod rules;
mod scan_cli;
mod scan_habits;
mod serve_process;
mod storage;
mod trust;
