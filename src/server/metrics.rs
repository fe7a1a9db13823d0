//! Prometheus metrics, declared in one place. Names follow `spillway_<noun>_<unit>[_total]`; labels
//! are bounded (listener kind, outcome), never a token, hash or id.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub listener_kind: &'static str,
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    alerts: Family<AlertLabels, Counter>,
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
        Metrics { registry, alerts }
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

pub async fn serve(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
