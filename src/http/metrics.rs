//! Prometheus metrics, declared in one place. Names follow `spillway_<noun>_<unit>[_total]`; labels
//! are bounded (listener kind, outcome), never a token, hash or id.
//!
//! Must not run SQL: queue depths come from the intake and findings stores.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub listener_kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub installation: String,
    pub step: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub installation: String,
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstallationLabels {
    pub installation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignatureLabels {
    pub listener_kind: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub rule: String,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingOutcomeLabels {
    pub installation: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub revision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: &'static str,
    pub state: &'static str,
}

/// Time-to-revoke buckets (seconds): exact boundaries at the objectives alert rules use (60 s).
const TIME_TO_REVOKE_BUCKETS: [f64; 17] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// Work-queue states sampled into `spillway_work_queue_depth` (zero when empty).
const QUEUE_STATES: [(&str, &str); 5] = [
    ("decide", "pending"),
    ("findings", "verifying"),
    ("findings", "revoking"),
    ("findings", "notifying"),
    ("findings", "awaiting_pull"),
];

/// Known label values, created at zero when the process starts (or, per installation, when it
/// is first seen), so `rate()` and `increase()` see the first event rather than a series that
/// starts at 1. Kept in step with docs/OPERATIONS.md.
const ALERT_OUTCOMES: [&str; 5] = [
    "accepted",
    "replay",
    "malformed",
    "bad_signature",
    "unavailable",
];
const SIGNATURE_REASONS: [&str; 5] = [
    "missing_header",
    "malformed_header",
    "unknown_key",
    "bad_signature",
    "stale_timestamp",
];
const INGRESS_REASONS: [&str; 8] = [
    "unknown_endpoint",
    "too_large",
    "over_budget",
    "too_slow",
    "broken",
    "max_connections",
    "max_connections_per_ip",
    "accept_error",
];
const LEAKED_KEY_OUTCOMES: [&str; 3] = ["revoked", "already_revoked", "unknown_token"];
const SCAN_SOURCES: [&str; 2] = ["poller", "listener"];
const CALL_STEPS: [&str; 3] = ["verify", "revoke", "notify"];
const CALL_OUTCOMES: [&str; 2] = ["answered", "unknown"];
const POLLER_PUSH_OUTCOMES: [&str; 5] = [
    "scanned",
    "duplicate",
    "skipped_budget",
    "unavailable",
    "failed",
];
const POLLER_SKIP_REASONS: [&str; 10] = [
    "no_blob",
    "blob_count",
    "budget",
    "blob_size",
    "blob_encoding",
    "binary",
    "expansion_cap",
    "corrupt",
    "depth",
    "unsupported",
];
const GITHUB_LIMIT_KINDS: [&str; 2] = ["primary", "secondary"];

/// The public-events poller's metrics.
#[derive(Default)]
struct PollerMetrics {
    leader: Gauge,
    lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    last_poll: Gauge<f64, std::sync::atomic::AtomicU64>,
    gaps: Counter,
    pushes: Family<OutcomeLabels, Counter>,
    skipped_files: Family<ReasonLabels, Counter>,
    rate_limit_remaining: Gauge,
    rate_limit_waits: Family<KindLabels, Counter>,
}

pub struct Metrics {
    registry: Registry,
    /// The `process_*` metrics, unprefixed as every exporter names them.
    process: Registry,
    /// Installations whose series were created at zero.
    initialised: std::sync::Mutex<std::collections::HashSet<String>>,
    alerts: Family<AlertLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    call_seconds: Family<StepLabels, Histogram>,
    time_to_revoke: Family<InstallationLabels, Histogram>,
    failed: Family<StepLabels, Counter>,
    outcomes: Family<FindingOutcomeLabels, Counter>,
    signature_failures: Family<SignatureLabels, Counter>,
    tokens_matched: Family<TokenLabels, Counter>,
    queue_depth: Family<QueueLabels, Gauge>,
    breaker_state: Family<InstallationLabels, Gauge>,
    checkpoint_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// When the audit log was last checkpointed (or the process started), ms since the epoch.
    checkpointed_at_ms: std::sync::atomic::AtomicI64,
    rate_limit_waits: Family<InstallationLabels, Counter>,
    scanned_bytes: Family<SourceLabels, Counter>,
    poller: PollerMetrics,
    ingress: IngressMetrics,
    admin_keys_leaked: Family<OutcomeLabels, Counter>,
    key_conflicts: Counter,
    worker_panics: Family<InstallationLabels, Counter>,
}

/// What the public address refused before authentication, what it holds, and how intake groups
/// its commits.
struct IngressMetrics {
    group_jobs: Histogram,
    group_seconds: Histogram,
    refusals: Family<ReasonLabels, Counter>,
    connections_open: Gauge,
    body_memory: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("spillway");
        let alerts = Family::<AlertLabels, Counter>::default();
        registry.register(
            "alerts_received",
            "Partner alerts and webhooks received, by listener kind and outcome",
            alerts.clone(),
        );
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "installation_calls",
            "Calls to installations by installation, step (verify, revoke, notify) and outcome (answered, unknown)",
            calls.clone(),
        );
        let call_seconds = Family::<StepLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "installation_call_duration_seconds",
            "Latency of calls to installations, rate-limit waits included",
            call_seconds.clone(),
        );
        let time_to_revoke = Family::<InstallationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(TIME_TO_REVOKE_BUCKETS)
        });
        registry.register(
            "time_to_revoke_seconds",
            "From alert received to revocation acknowledged by the installation",
            time_to_revoke.clone(),
        );
        let outcomes = Family::<FindingOutcomeLabels, Counter>::default();
        registry.register(
            "findings_outcomes",
            "Findings that reached a terminal state, by installation (none: unattributed) and outcome",
            outcomes.clone(),
        );
        let signature_failures = Family::<SignatureLabels, Counter>::default();
        registry.register(
            "signature_failures",
            "Requests to listener endpoints refused for their signature, by listener kind and reason",
            signature_failures.clone(),
        );
        let tokens_matched = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens_matched",
            "Tokens the scanner matched in listener bodies and public pushes, by rule and verdict",
            tokens_matched.clone(),
        );
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "work_queue_depth",
            "Work waiting in the shared database, by queue (decide, findings) and state",
            queue_depth.clone(),
        );
        let breaker_state = Family::<InstallationLabels, Gauge>::default();
        registry.register(
            "circuit_breaker_state",
            "This replica's circuit breaker per installation: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        let checkpoint_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "audit_checkpoint_age_seconds",
            "Time since this replica last checkpointed the audit log (or started)",
            checkpoint_age.clone(),
        );
        let failed = Family::<StepLabels, Counter>::default();
        registry.register(
            "findings_failed",
            "Findings that exhausted their attempts or age at a step, by installation",
            failed.clone(),
        );
        let rate_limit_waits = Family::<InstallationLabels, Counter>::default();
        registry.register(
            "rate_limit_waits",
            "Calls that waited for an installation's rate limit",
            rate_limit_waits.clone(),
        );
        let scanned_bytes = Family::<SourceLabels, Counter>::default();
        registry.register(
            "scanned_bytes",
            "Bytes of text scanned for tokens, by source (poller, listener)",
            scanned_bytes.clone(),
        );
        let poller = PollerMetrics::default();
        registry.register(
            "poller_leader",
            "1 while this replica runs the public-events poller",
            poller.leader.clone(),
        );
        registry.register(
            "poller_lag_seconds",
            "Age of the newest event listed at the last poll that listed any",
            poller.lag.clone(),
        );
        registry.register(
            "poller_last_poll_timestamp_seconds",
            "When the poller last read its feeds (Unix time)",
            poller.last_poll.clone(),
        );
        registry.register(
            "poller_gaps",
            "Polls whose feed did not reach back to the previous poll's newest event",
            poller.gaps.clone(),
        );
        registry.register(
            "poller_pushes",
            "Pushes the poller finished, by outcome",
            poller.pushes.clone(),
        );
        registry.register(
            "poller_skipped_files",
            "Files of scanned pushes left unscanned, by reason",
            poller.skipped_files.clone(),
        );
        registry.register(
            "github_rate_limit_remaining",
            "X-RateLimit-Remaining of GitHub's last answer to the poller",
            poller.rate_limit_remaining.clone(),
        );
        registry.register(
            "github_rate_limit_waits",
            "Times GitHub's rate limit paused the poller, by kind (primary, secondary)",
            poller.rate_limit_waits.clone(),
        );
        let ingress = IngressMetrics {
            group_jobs: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            group_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            refusals: Family::default(),
            connections_open: Gauge::default(),
            body_memory: Gauge::default(),
        };
        registry.register(
            "intake_group_jobs",
            "Alert slices written per intake transaction (group commit)",
            ingress.group_jobs.clone(),
        );
        registry.register(
            "intake_group_duration_seconds",
            "Time to write and commit one intake group",
            ingress.group_seconds.clone(),
        );
        registry.register(
            "ingress_refusals",
            "Requests and connections the public address refused before authentication, by reason \
             (unknown_endpoint, too_large, over_budget, too_slow, broken, max_connections, \
             max_connections_per_ip, accept_error)",
            ingress.refusals.clone(),
        );
        registry.register(
            "ingress_connections_open",
            "Connections open on the public address",
            ingress.connections_open.clone(),
        );
        registry.register(
            "ingress_body_memory_bytes",
            "Request body bytes buffered now (reserved from the body memory budget)",
            ingress.body_memory.clone(),
        );
        let admin_keys_leaked = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "admin_keys_leaked",
            "Spillway admin keys found in public, by outcome (revoked at once, already revoked, \
             unknown: another deployment's)",
            admin_keys_leaked.clone(),
        );
        let key_conflicts = Counter::default();
        registry.register(
            "key_id_conflicts",
            "Key ids found published by more than one installation (each is ambiguous: its tokens \
             are verified online, never offline)",
            key_conflicts.clone(),
        );
        let worker_panics = Family::<InstallationLabels, Counter>::default();
        registry.register(
            "worker_panics",
            "Finding tasks that panicked, by installation (each caught, audited, its finding given \
             back or failed)",
            worker_panics.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "1, labelled with the running build's version and git revision",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                revision: env!("SPILLWAY_REVISION"),
            })
            .set(1);
        #[allow(unused_mut)]
        let mut process = Registry::default();
        #[cfg(target_os = "linux")]
        process.register_collector(Box::new(ProcessCollector));
        let metrics = Metrics {
            process,
            initialised: std::sync::Mutex::default(),
            worker_panics,
            key_conflicts,
            admin_keys_leaked,
            ingress,
            outcomes,
            signature_failures,
            tokens_matched,
            queue_depth,
            breaker_state,
            checkpoint_age,
            checkpointed_at_ms: std::sync::atomic::AtomicI64::new(crate::platform::store::now_ms()),
            scanned_bytes,
            poller,
            registry,
            alerts,
            calls,
            call_seconds,
            time_to_revoke,
            failed,
            rate_limit_waits,
        };
        metrics.initialise_known_labels();
        metrics
    }
}

impl Metrics {
    /// Creates every series whose labels are known in advance, at zero.
    fn initialise_known_labels(&self) {
        // The poller's own pushes are accepted or replays, never refused for a signature.
        for outcome in ["accepted", "replay"] {
            let _ = self.alerts.get_or_create(&AlertLabels {
                listener_kind: crate::sources::poller::LISTENER,
                outcome,
            });
        }
        for listener_kind in crate::sources::listeners::ListenerKind::names() {
            for outcome in ALERT_OUTCOMES {
                let _ = self.alerts.get_or_create(&AlertLabels {
                    listener_kind,
                    outcome,
                });
            }
            for reason in SIGNATURE_REASONS {
                let _ = self.signature_failures.get_or_create(&SignatureLabels {
                    listener_kind,
                    reason,
                });
            }
        }
        for reason in INGRESS_REASONS {
            let _ = self
                .ingress
                .refusals
                .get_or_create(&ReasonLabels { reason });
        }
        for outcome in LEAKED_KEY_OUTCOMES {
            let _ = self
                .admin_keys_leaked
                .get_or_create(&OutcomeLabels { outcome });
        }
        for source in SCAN_SOURCES {
            let _ = self.scanned_bytes.get_or_create(&SourceLabels { source });
        }
    }

    /// Creates the poller's labelled series at zero: called when this process runs a poller, so
    /// a deployment without one shows no poller counters rather than zeros.
    pub fn poller_enabled(&self) {
        for outcome in POLLER_PUSH_OUTCOMES {
            let _ = self.poller.pushes.get_or_create(&OutcomeLabels { outcome });
        }
        for reason in POLLER_SKIP_REASONS {
            let _ = self
                .poller
                .skipped_files
                .get_or_create(&ReasonLabels { reason });
        }
        for kind in GITHUB_LIMIT_KINDS {
            let _ = self
                .poller
                .rate_limit_waits
                .get_or_create(&KindLabels { kind });
        }
    }

    /// Creates an installation's (or issuer's) series at zero, once.
    fn initialise_installation(&self, installation: &str) {
        if !self
            .initialised
            .lock()
            .expect("initialised lock")
            .insert(installation.to_owned())
        {
            return;
        }
        let owned = || installation.to_owned();
        for step in CALL_STEPS {
            for outcome in CALL_OUTCOMES {
                let _ = self.calls.get_or_create(&CallLabels {
                    installation: owned(),
                    step,
                    outcome,
                });
            }
            let _ = self.failed.get_or_create(&StepLabels {
                installation: owned(),
                step,
            });
        }
        for state in crate::findings::FindingState::ALL {
            if state.is_terminal() && state != crate::findings::FindingState::Unattributed {
                let _ = self.outcomes.get_or_create(&FindingOutcomeLabels {
                    installation: owned(),
                    outcome: state.as_str().to_owned(),
                });
            }
        }
        let _ = self.rate_limit_waits.get_or_create(&InstallationLabels {
            installation: owned(),
        });
        let _ = self.worker_panics.get_or_create(&InstallationLabels {
            installation: owned(),
        });
    }

    /// Counts an alert: outcome is accepted, replay, malformed, bad_signature or unavailable.
    pub fn alert(&self, listener_kind: &'static str, outcome: &'static str) {
        self.alerts
            .get_or_create(&AlertLabels {
                listener_kind,
                outcome,
            })
            .inc();
    }

    /// Counts a request refused for its signature: reason is missing_header, malformed_header,
    /// unknown_key, bad_signature or stale_timestamp.
    pub fn signature_failure(&self, listener_kind: &'static str, reason: &'static str) {
        self.signature_failures
            .get_or_create(&SignatureLabels {
                listener_kind,
                reason,
            })
            .inc();
    }

    /// Counts a refusal on the public address before authentication.
    pub fn ingress_refused(&self, reason: &'static str) {
        self.ingress
            .refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Body bytes reserved now.
    pub fn body_memory(&self, bytes: usize) {
        self.ingress.body_memory.set(bytes as i64);
    }

    /// Counts a token the scanner matched.
    pub fn token_matched(&self, rule: &str, verdict: &'static str) {
        self.tokens_matched
            .get_or_create(&TokenLabels {
                rule: rule.to_owned(),
                verdict,
            })
            .inc();
    }

    /// The audit log was checkpointed (or found already checkpointed) now.
    pub fn checkpointed(&self) {
        self.checkpointed_at_ms.store(
            crate::platform::store::now_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Samples what lives in the database and the engine: queue depths and breaker states.
    pub async fn sample(&self, engine: &crate::revocation::Engine) -> anyhow::Result<()> {
        let decide = crate::intake::queue::pending(&engine.store).await?;
        let findings = crate::findings::store::in_progress_counts(&engine.store).await?;
        for (queue, state) in QUEUE_STATES {
            let n = if queue == "decide" {
                decide
            } else {
                crate::findings::FindingState::parse(state)
                    .and_then(|s| findings.get(&s).copied())
                    .unwrap_or(0)
            };
            self.queue_depth
                .get_or_create(&QueueLabels { queue, state })
                .set(n);
        }
        for installation in engine.installations().iter() {
            self.initialise_installation(&installation.id);
        }
        for (installation, state) in engine.limits.breaker_states() {
            let value = match state {
                crate::revocation::limits::BreakerState::Closed => 0,
                crate::revocation::limits::BreakerState::HalfOpen => 1,
                crate::revocation::limits::BreakerState::Open => 2,
            };
            self.breaker_state
                .get_or_create(&InstallationLabels { installation })
                .set(value);
        }
        Ok(())
    }

    /// Counts bytes scanned for tokens from `source` (poller, listener).
    pub fn scanned(&self, source: &'static str, bytes: u64) {
        self.scanned_bytes
            .get_or_create(&SourceLabels { source })
            .inc_by(bytes);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let since = crate::platform::store::now_ms()
            - self
                .checkpointed_at_ms
                .load(std::sync::atomic::Ordering::Relaxed);
        self.checkpoint_age.set(since.max(0) as f64 / 1000.0);
        let mut out = String::new();
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.process))
            .and_then(|()| encode_eof(&mut out))
            .expect("writing to a String");
        out
    }
}

impl crate::revocation::Observer for Metrics {
    fn call(
        &self,
        step: &'static str,
        installation: &str,
        outcome: &str,
        elapsed: std::time::Duration,
    ) {
        let outcome = if outcome == "answered" {
            "answered"
        } else {
            "unknown"
        };
        self.calls
            .get_or_create(&CallLabels {
                installation: installation.to_owned(),
                step,
                outcome,
            })
            .inc();
        self.call_seconds
            .get_or_create(&StepLabels {
                installation: installation.to_owned(),
                step,
            })
            .observe(elapsed.as_secs_f64());
    }

    fn revoked(&self, installation: &str, time_to_revoke: std::time::Duration) {
        self.time_to_revoke
            .get_or_create(&InstallationLabels {
                installation: installation.to_owned(),
            })
            .observe(time_to_revoke.as_secs_f64());
    }

    fn outcome(&self, installation: Option<&str>, outcome: &str) {
        self.outcomes
            .get_or_create(&FindingOutcomeLabels {
                installation: installation.unwrap_or("none").to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    fn failed(&self, installation: &str, step: &'static str) {
        self.failed
            .get_or_create(&StepLabels {
                installation: installation.to_owned(),
                step,
            })
            .inc();
    }

    fn rate_limit_wait(&self, installation: &str, _waited: std::time::Duration) {
        self.rate_limit_waits
            .get_or_create(&InstallationLabels {
                installation: installation.to_owned(),
            })
            .inc();
    }

    fn key_conflict(&self) {
        self.key_conflicts.inc();
    }

    fn panicked(&self, installation: &str) {
        self.worker_panics
            .get_or_create(&InstallationLabels {
                installation: installation.to_owned(),
            })
            .inc();
    }

    fn admin_key_leaked(&self, outcome: &str) {
        // The operator's notification: this counter drives the SpillwayAdminKeyLeaked alert, and
        // the log line says what happened (the audit log says which key).
        let outcome = match outcome {
            "revoked" => "revoked",
            "already_revoked" => "already_revoked",
            _ => "unknown_token",
        };
        self.admin_keys_leaked
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        tracing::error!(
            outcome,
            "a Spillway admin key was found in public; see the audit log (admin_key.revoke)"
        );
    }
}

impl crate::sources::poller::github::RateObserver for Metrics {
    fn remaining(&self, remaining: u64) {
        self.poller
            .rate_limit_remaining
            .set(i64::try_from(remaining).unwrap_or(i64::MAX));
    }

    fn limited(&self, kind: &'static str) {
        self.poller
            .rate_limit_waits
            .get_or_create(&KindLabels { kind })
            .inc();
    }
}

impl crate::sources::poller::Observer for Metrics {
    fn leader(&self, leading: bool) {
        self.poller.leader.set(i64::from(leading));
    }

    fn polled(&self, lag: Option<std::time::Duration>) {
        if let Some(lag) = lag {
            self.poller.lag.set(lag.as_secs_f64());
        }
        self.poller
            .last_poll
            .set(crate::platform::store::now_ms() as f64 / 1000.0);
    }

    fn gap(&self) {
        self.poller.gaps.inc();
    }

    fn push(&self, outcome: &'static str) {
        self.poller
            .pushes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    fn skipped_file(&self, reason: &'static str) {
        self.poller
            .skipped_files
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    fn scanned_bytes(&self, bytes: u64) {
        self.scanned(SOURCE_POLLER, bytes);
    }

    fn token_matched(&self, rule: &str, verdict: &'static str) {
        Metrics::token_matched(self, rule, verdict);
    }

    fn alert(&self, outcome: &'static str) {
        Metrics::alert(self, crate::sources::poller::LISTENER, outcome);
    }
}

const SOURCE_POLLER: &str = "poller";

/// `/metrics`: OpenMetrics when the scraper asks for it (Prometheus does), else the Prometheus
/// text format 0.0.4 (what `promtool check metrics` and plain `curl` read).
pub async fn serve(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let text = state.metrics.encode();
    if openmetrics {
        (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
    } else {
        (
            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            to_prometheus_text(&text),
        )
    }
}

/// OpenMetrics text as Prometheus text 0.0.4: a counter family's HELP and TYPE name its `_total`
/// series, and there is no `# EOF` or `# UNIT`. Nothing else differs for the types used here.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The `process_*` metrics every Prometheus client library exports (CPU seconds, memory, file
/// descriptors, start time, threads), read from procfs at each scrape. Elsewhere than Linux, or
/// when procfs cannot be read, they are left out rather than reported as zero.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct ProcessCollector;

#[cfg(target_os = "linux")]
impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let Ok(stat) = me.stat() else { return Ok(()) };
        let ticks = procfs::ticks_per_second() as f64;
        let page = procfs::page_size();
        let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, Option<f64>); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Some((stat.rss * page) as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                Some(stat.vsize as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                procfs::boot_time_secs()
                    .ok()
                    .map(|boot| boot as f64 + stat.starttime as f64 / ticks),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                me.fd_count().ok().map(|n| n as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                me.limits()
                    .ok()
                    .and_then(|l| match l.max_open_files.soft_limit {
                        procfs::process::LimitValue::Value(v) => Some(v as f64),
                        procfs::process::LimitValue::Unlimited => None,
                    }),
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                Some(stat.num_threads as f64),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

impl crate::intake::GroupObserver for Metrics {
    fn group(&self, jobs: usize, _rows: usize, elapsed: std::time::Duration, _ok: bool) {
        self.ingress.group_jobs.observe(jobs as f64);
        self.ingress.group_seconds.observe(elapsed.as_secs_f64());
    }
}

impl super::ingress::ConnectionObserver for Metrics {
    fn refused(&self, reason: &'static str) {
        self.ingress_refused(reason);
    }

    fn open(&self, open: usize) {
        self.ingress.connections_open.set(open as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn known_series_start_at_zero_and_the_pollers_only_when_it_runs() {
        let metrics = Metrics::default();
        let text = metrics.encode();
        for series in [
            "spillway_alerts_received_total{listener_kind=\"github\",outcome=\"accepted\"} 0",
            "spillway_alerts_received_total{listener_kind=\"poller\",outcome=\"replay\"} 0",
            "spillway_signature_failures_total{listener_kind=\"twilio\",reason=\"bad_signature\"} 0",
            "spillway_ingress_refusals_total{reason=\"too_slow\"} 0",
            "spillway_admin_keys_leaked_total{outcome=\"revoked\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
        assert!(!text.contains("spillway_poller_pushes_total{"), "{text}");
        metrics.poller_enabled();
        let text = metrics.encode();
        assert!(text.contains("spillway_poller_pushes_total{outcome=\"scanned\"} 0"));
        assert!(text.contains("spillway_github_rate_limit_waits_total{kind=\"secondary\"} 0"));
        metrics.initialise_installation("ins_1");
        let text = metrics.encode();
        for series in [
            "spillway_installation_calls_total{installation=\"ins_1\",step=\"revoke\",outcome=\"answered\"} 0",
            "spillway_findings_outcomes_total{installation=\"ins_1\",outcome=\"revoked\"} 0",
            "spillway_findings_failed_total{installation=\"ins_1\",step=\"notify\"} 0",
            "spillway_worker_panics_total{installation=\"ins_1\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
        // A counter that moved keeps its count: initialising again touches nothing.
        crate::revocation::Observer::failed(&metrics, "ins_1", "verify");
        metrics.initialise_installation("ins_1");
        assert!(
            metrics.encode().contains(
                "spillway_findings_failed_total{installation=\"ins_1\",step=\"verify\"} 1"
            )
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn build_info_and_process_metrics_are_exported() {
        let text = Metrics::default().encode();
        let build = format!(
            "spillway_build_info{{version=\"{}\",revision=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            env!("SPILLWAY_REVISION")
        );
        assert!(text.contains(&build), "{text}");
        assert!(!env!("SPILLWAY_REVISION").is_empty());
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_threads") >= 1.0);
        assert!(
            text.contains("# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total "),
            "{text}"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
        // One exposition: the process registry comes before the single end marker.
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.trim_end().ends_with("# EOF"));
    }
    #[test]
    fn counters_are_named_by_their_total_series_in_prometheus_text() {
        let om = "# HELP spillway_x Things.\n# TYPE spillway_x counter\nspillway_x_total 3\n# HELP spillway_g G.\n# TYPE spillway_g gauge\nspillway_g 1\n# EOF\n";
        assert_eq!(
            super::to_prometheus_text(om),
            "# HELP spillway_x_total Things.\n# TYPE spillway_x_total counter\nspillway_x_total 3\n# HELP spillway_g G.\n# TYPE spillway_g gauge\nspillway_g 1\n"
        );
    }
}
