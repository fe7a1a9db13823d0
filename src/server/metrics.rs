//! Prometheus metrics, declared in one place. Names follow `spillway_<noun>_<unit>[_total]`; labels
//! are bounded (listener kind, outcome), never a token, hash or id.

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
    alerts: Family<AlertLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    call_seconds: Family<StepLabels, Histogram>,
    time_to_revoke: Histogram,
    failed: Family<StepLabels, Counter>,
    rate_limit_waits: Family<InstallationLabels, Counter>,
    scanned_bytes: Family<SourceLabels, Counter>,
    poller: PollerMetrics,
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
        let time_to_revoke = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        registry.register(
            "time_to_revoke_seconds",
            "From alert received to revocation acknowledged by the installation",
            time_to_revoke.clone(),
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
        Metrics {
            scanned_bytes,
            poller,
            registry,
            alerts,
            calls,
            call_seconds,
            time_to_revoke,
            failed,
            rate_limit_waits,
        }
    }
}

impl Metrics {
    /// Counts an alert: outcome is accepted, replay, malformed, bad_signature or unavailable.
    pub fn alert(&self, listener_kind: &'static str, outcome: &'static str) {
        self.alerts
            .get_or_create(&AlertLabels {
                listener_kind,
                outcome,
            })
            .inc();
    }

    /// Counts bytes scanned for tokens from `source` (poller, listener).
    pub fn scanned(&self, source: &'static str, bytes: u64) {
        self.scanned_bytes
            .get_or_create(&SourceLabels { source })
            .inc_by(bytes);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
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

    fn revoked(&self, _installation: &str, time_to_revoke: std::time::Duration) {
        self.time_to_revoke.observe(time_to_revoke.as_secs_f64());
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
}

impl crate::poller::github::RateObserver for Metrics {
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

impl crate::poller::Observer for Metrics {
    fn leader(&self, leading: bool) {
        self.poller.leader.set(i64::from(leading));
    }

    fn polled(&self, lag: Option<std::time::Duration>) {
        if let Some(lag) = lag {
            self.poller.lag.set(lag.as_secs_f64());
        }
        self.poller
            .last_poll
            .set(crate::store::now_ms() as f64 / 1000.0);
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

    fn alert(&self, outcome: &'static str) {
        Metrics::alert(self, crate::poller::LISTENER, outcome);
    }
}

const SOURCE_POLLER: &str = "poller";

pub async fn serve(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
