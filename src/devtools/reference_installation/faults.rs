//! Failure injection for the contract calls: what to answer instead of the truth (5xx, 403 or
//! a login page served with 200, all "unknown" to the caller and with no effect), and timeouts
//! that hang before answering, some of them after the effect already happened.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng as _;

use super::{Call, Installation};
use crate::http::error;

/// What failure injection decided for one call.
#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    None,
    Failure(InjectedFailure),
    /// Hang, then answer; `effect_first` applies the effect before hanging (an ambiguous timeout).
    Timeout {
        effect_first: bool,
    },
}

/// Answers the contract calls "unknown", with no effect.
#[derive(Debug, Clone, Copy)]
pub(super) enum InjectedFailure {
    UnavailableJson,
    InternalText,
    ForbiddenHtml,
    OkHtml,
}

impl InjectedFailure {
    const ALL: [InjectedFailure; 4] = [
        InjectedFailure::UnavailableJson,
        InjectedFailure::InternalText,
        InjectedFailure::ForbiddenHtml,
        InjectedFailure::OkHtml,
    ];

    pub(super) fn response(self) -> Response {
        let html = |status: StatusCode, page: &'static str| {
            (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                page,
            )
                .into_response()
        };
        match self {
            InjectedFailure::UnavailableJson => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "injected failure: temporarily unavailable",
            ),
            InjectedFailure::InternalText => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "injected failure: internal server error\n",
            )
                .into_response(),
            InjectedFailure::ForbiddenHtml => html(
                StatusCode::FORBIDDEN,
                "<!doctype html><html><head><title>403 Forbidden</title></head>\
                 <body><h1>Forbidden</h1><p>Request blocked by the edge proxy.</p></body></html>\n",
            ),
            InjectedFailure::OkHtml => html(
                StatusCode::OK,
                "<!doctype html><html><head><title>Sign in</title></head>\
                 <body><form action=\"/login\"><input name=\"user\"></form></body></html>\n",
            ),
        }
    }
}

impl Installation {
    pub(super) fn draw_fault(&self) -> Fault {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let r: f64 = rng.r#gen();
        if r < self.behaviour.fail_rate {
            Fault::Failure(InjectedFailure::ALL[rng.gen_range(0..InjectedFailure::ALL.len())])
        } else if r < self.behaviour.fail_rate + self.behaviour.timeout_rate {
            Fault::Timeout {
                effect_first: rng.gen_bool(0.5),
            }
        } else {
            Fault::None
        }
    }
}

/// Hangs for `--hang-secs`, then answers. The work runs in its own task, so a caller that gives
/// up does not cancel it: with `effect_first` the effect lands before the hang, otherwise after
/// it, either way whether or not anyone is still waiting.
pub(super) async fn hang_then_answer(
    installation: Arc<Installation>,
    call: Call,
    effect_first: bool,
) -> Response {
    let hang = installation.behaviour.hang;
    let work = tokio::spawn(async move {
        let early = effect_first.then(|| installation.apply(&call));
        tokio::time::sleep(hang).await;
        early.unwrap_or_else(|| installation.apply(&call))
    });
    work.await.unwrap_or_else(|_| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the delayed answer was lost",
        )
    })
}
