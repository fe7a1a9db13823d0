//! Prometheus metrics, declared in one place. Names follow `spillway_<noun>_<unit>[_total]`; labels
//! are bounded (listener kind, outcome), never a token, hash or id.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

pub struct Metrics {
    registry: Registry,
    alerts: Family<AlertLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    call_seconds: Family<StepLabels, Histogram>,
    time_to_revoke: Histogram,
    failed: Family<StepLabels, Counter>,
    rate_limit_waits: Family<InstallationLabels, Counter>,
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
        Metrics {
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

pub async fn serve(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
