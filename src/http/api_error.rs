//! [`ApiError`]: every error answer of both addresses, so handlers return `Result<_, ApiError>`
//! and use `?`. The body is always `{"error": "<message>"}`, and the message names the field,
//! header or setting that was wrong; it never carries a token or a secret (callers build messages
//! from names, never from values).
//!
//! Must not import anything of the crate.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: Cow<'static, str>,
    /// `Retry-After` seconds, for 429 and 503.
    retry_after: Option<u32>,
    /// `Connection: close`: the request's body was not read.
    close: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
            close: false,
        }
    }

    /// The connection is closed after the answer (the rest of the request is not read).
    pub fn closing(mut self) -> ApiError {
        self.close = true;
        self
    }

    pub fn retry_after(mut self, secs: u32) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        let headers = response.headers_mut();
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
