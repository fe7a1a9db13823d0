//! Generic signed webhooks (Standard Webhooks, Twilio, GitHub HMAC). A generic listener
//! authenticates the request with its sealed secret over the bytes exactly as sent, reads the body
//! as its sender encoded it (`Content-Encoding: gzip`/`deflate`, JSON string escapes, form values),
//! scans every decoded view, keeps a redacted copy as its output stream (each token replaced by its
//! type and fingerprint, at the raw bytes that encode it) and feeds the tokens it found into the
//! same intake as partner alerts. A body that does not decode as declared is kept as metadata only.
//!
//! Must not import the revocation engine or write SQL: tokens go to `intake`.

use std::borrow::Cow;
use std::io::Read as _;
use std::ops::Range;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::answer_recorded;
use super::directory::Route;
use crate::http::{ApiError, AppState, error};
use crate::intake::{self, ListenerEvent, ReportedToken};
use crate::platform::webhook_auth::{self, AuthError, TwilioAlgorithm};
use crate::scanner::decode::Outer;
use crate::scanner::{DecodeOptions, Finding};
use crate::sources::listeners::ListenerKind;

/// Largest body a `Content-Encoding` may expand to (GitHub's webhook payloads are capped at 25 MB).
pub const MAX_DECODED_BODY: usize = 25 << 20;

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, AuthError> {
    match headers.get(name).map(|v| v.to_str()) {
        None => Err(AuthError::Missing(name)),
        Some(Err(_)) => Err(AuthError::Malformed(name)),
        Some(Ok("")) => Err(AuthError::Missing(name)),
        Some(Ok(v)) => Ok(v),
    }
}

/// The headers a kind's signature needs, checked before the body is read.
fn required_headers(kind: ListenerKind) -> &'static [&'static str] {
    match kind {
        ListenerKind::StandardWebhooks => &["webhook-id", "webhook-timestamp", "webhook-signature"],
        ListenerKind::Twilio => &["x-twilio-signature"],
        ListenerKind::GithubHmac => &["x-hub-signature-256"],
        _ => &[],
    }
}

/// Refuses, before its body is read, a request that lacks a header its signature needs.
pub(super) fn signed_headers(
    state: &AppState,
    kind: ListenerKind,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    for name in required_headers(kind) {
        if let Err(e) = header(headers, name) {
            let reason = match e {
                AuthError::Missing(_) => "missing_header",
                _ => "malformed_header",
            };
            state.metrics.signature_failure(kind.as_str(), reason);
            state.metrics.alert(kind.as_str(), "malformed");
            return Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string()));
        }
    }
    Ok(())
}

/// Authenticates a generic listener's request (Standard Webhooks, Twilio, GitHub HMAC) over the
/// body exactly as sent. Public for the fuzz targets (bench/fuzz).
pub fn authenticate(
    kind: ListenerKind,
    secret: &str,
    public_url: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), AuthError> {
    match kind {
        ListenerKind::StandardWebhooks => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            webhook_auth::standard_webhooks(
                secret,
                header(headers, "webhook-id")?,
                header(headers, "webhook-timestamp")?,
                header(headers, "webhook-signature")?,
                body,
                now,
            )
        }
        ListenerKind::Twilio => {
            let url = format!(
                "{}{}",
                public_url.trim_end_matches('/'),
                uri.path_and_query().map_or("", |p| p.as_str())
            );
            let settings =
                match headers.get("x-twilio-webhooks-signature-settings") {
                    None => None,
                    Some(v) => Some(v.to_str().map_err(|_| {
                        AuthError::Malformed("x-twilio-webhooks-signature-settings")
                    })?),
                };
            let algorithm = TwilioAlgorithm::from_settings(settings)?;
            let signature = header(headers, "x-twilio-signature")?;
            match webhook_auth::twilio_body_sha256(&url) {
                // A JSON body: the URL alone is signed and carries the body's hash.
                Some(expected) => {
                    webhook_auth::twilio(secret, algorithm, &url, &[], signature)?;
                    webhook_auth::twilio_body(&expected, body)
                }
                None => {
                    let params: Vec<(String, String)> = url::form_urlencoded::parse(body)
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    webhook_auth::twilio(secret, algorithm, &url, &params, signature)
                }
            }
        }
        ListenerKind::GithubHmac => {
            webhook_auth::github_hmac(secret, header(headers, "x-hub-signature-256")?, body)
        }
        _ => Err(AuthError::Secret("not a generic listener kind")),
    }
}

/// The idempotency key a request carries, where it is signed: Standard Webhooks' `webhook-id` (a
/// retry keeps it; a new message gets a new one). Twilio's idempotency token and GitHub's delivery
/// GUID are not signed, so anyone replaying a captured request could mint new ones: those kinds are
/// deduplicated by body (Twilio bodies carry a unique `MessageSid`, GitHub's a unique event).
fn delivery_id(kind: ListenerKind, headers: &HeaderMap) -> Option<String> {
    match kind {
        ListenerKind::StandardWebhooks => header(headers, "webhook-id").ok().map(str::to_owned),
        _ => None,
    }
}

/// How a body is encoded, from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Json,
    Form,
    Text,
}

/// Why a body could not be read as its headers declare.
#[derive(Debug)]
enum BodyError {
    /// Decompresses beyond [`MAX_DECODED_BODY`]: 413.
    TooLarge(String),
    /// An encoding we do not read: 415.
    Unsupported(String),
    /// Not what `Content-Encoding` says: 400.
    Undecodable(String),
}

/// A body as its sender encoded it: decompressed, with its declared shape.
struct ReadBody<'b> {
    bytes: Cow<'b, [u8]>,
    shape: Shape,
    content_type: Option<String>,
    content_encoding: Option<String>,
    /// Set when the body does not decode as declared: no copy of it is kept.
    undecodable: Option<String>,
}

fn bounded_inflate(reader: impl std::io::Read, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut out)?;
    Ok((out.len() <= limit).then_some(out))
}

fn read_body<'b>(headers: &HeaderMap, body: &'b [u8]) -> Result<ReadBody<'b>, BodyError> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
    };
    let content_type = text("content-type");
    let content_encoding = text("content-encoding");
    let too_large = || {
        BodyError::TooLarge(format!(
            "content-encoding: body decompresses beyond {MAX_DECODED_BODY} bytes"
        ))
    };
    let bytes: Cow<'b, [u8]> = match content_encoding.as_deref() {
        None | Some("identity") => Cow::Borrowed(body),
        Some("gzip" | "x-gzip") => {
            match bounded_inflate(flate2::read::MultiGzDecoder::new(body), MAX_DECODED_BODY) {
                Ok(Some(out)) => Cow::Owned(out),
                Ok(None) => return Err(too_large()),
                Err(_) => {
                    return Err(BodyError::Undecodable(
                        "content-encoding: body is not valid gzip".into(),
                    ));
                }
            }
        }
        // HTTP's `deflate` is zlib-wrapped; some senders send raw deflate, so that is tried too.
        Some("deflate") => {
            match bounded_inflate(flate2::read::ZlibDecoder::new(body), MAX_DECODED_BODY) {
                Ok(Some(out)) => Cow::Owned(out),
                Ok(None) => return Err(too_large()),
                Err(_) => {
                    match bounded_inflate(flate2::read::DeflateDecoder::new(body), MAX_DECODED_BODY)
                    {
                        Ok(Some(out)) => Cow::Owned(out),
                        Ok(None) => return Err(too_large()),
                        Err(_) => {
                            return Err(BodyError::Undecodable(
                                "content-encoding: body is not valid deflate".into(),
                            ));
                        }
                    }
                }
            }
        }
        Some(other) => {
            return Err(BodyError::Unsupported(format!(
                "content-encoding {other:?} is not supported: send gzip, deflate or identity"
            )));
        }
    };
    let media = content_type
        .as_deref()
        .map(|t| t.split(';').next().unwrap_or("").trim());
    let shape = match media {
        Some("application/x-www-form-urlencoded") => Shape::Form,
        Some(m) if m == "application/json" || m.ends_with("+json") => Shape::Json,
        _ => Shape::Text,
    };
    let undecodable = match shape {
        Shape::Json if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() => {
            Some("body is not valid JSON, as content-type declares: no copy kept".to_owned())
        }
        Shape::Form if !bytes.is_ascii() => Some(
            "body is not a URL-encoded form, as content-type declares: no copy kept".to_owned(),
        ),
        _ => None,
    };
    Ok(ReadBody {
        bytes,
        shape,
        content_type,
        content_encoding,
        undecodable,
    })
}

/// `text` with each span replaced by its mark; overlapping spans are merged, so no part of a token
/// is left between two marks.
fn redact(text: &[u8], mut marks: Vec<(Range<usize>, String)>) -> String {
    marks.sort_by_key(|(span, _)| (span.start, std::cmp::Reverse(span.end)));
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (span, mark) in marks {
        if span.start < copied {
            copied = copied.max(span.end);
            continue;
        }
        out.push_str(&String::from_utf8_lossy(&text[copied..span.start]));
        out.push_str(&mark);
        copied = span.end;
    }
    out.push_str(&String::from_utf8_lossy(&text[copied.min(text.len())..]));
    out
}

/// What scanning a body found: tokens for the intake, the event to keep, and per-rule counts for
/// metrics.
struct Scanned {
    tokens: Vec<ReportedToken>,
    event: ListenerEvent,
    matched: Vec<(String, &'static str)>,
    scanned_bytes: usize,
}

fn scan_body(state: &AppState, kind: ListenerKind, read: &ReadBody<'_>) -> Scanned {
    let kind_name = kind.as_str();
    let text: &[u8] = &read.bytes;
    let options = DecodeOptions {
        outer: if read.shape == Shape::Form {
            Outer::Form
        } else {
            Outer::Text
        },
        ..DecodeOptions::default()
    };
    let mut tokens = Vec::new();
    let mut marks = Vec::new();
    let mut matched = Vec::new();
    state
        .rules
        .scanner()
        .scan_decoded(kind_name, text, &options, &mut |f: Finding<'_>| {
            matched.push((f.rule.id.clone(), f.verdict.as_str()));
            let fingerprint = state.keys.fingerprint(f.secret().expose());
            marks.push((
                f.span.clone(),
                format!("[REDACTED {} {}]", f.rule.token_type, &fingerprint[..16]),
            ));
            if !f.verdict.is_invalid() {
                tokens.push(ReportedToken {
                    token: f.secret().clone(),
                    token_type: f.rule.token_type.clone(),
                    url: None,
                    source: Some(kind_name.to_owned()),
                    context_hosts: intake::hosts_near(text, f.span.clone(), 256),
                });
            }
        });
    let redacted_body = read.undecodable.is_none().then(|| redact(text, marks));
    Scanned {
        tokens,
        event: ListenerEvent {
            redacted_body,
            content_type: read.content_type.clone(),
            content_encoding: read.content_encoding.clone(),
            note: read.undecodable.clone(),
        },
        matched,
        scanned_bytes: text.len(),
    }
}

/// Handles one request to a generic listener.
pub async fn webhook(
    state: &Arc<AppState>,
    route: &Route,
    uri: &Uri,
    headers: &HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (listener_id, kind) = (route.listener_id.as_str(), route.kind);
    let kind_name = kind.as_str();
    let Some(secret) = &route.secret else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this listener has no secret configured",
        );
    };
    if let Err(e) = authenticate(
        kind,
        secret.expose(),
        &state.public_url,
        uri,
        headers,
        &body,
    ) {
        let (status, outcome) = match e {
            AuthError::Missing(_) | AuthError::Malformed(_) => {
                (StatusCode::BAD_REQUEST, "malformed")
            }
            AuthError::Stale => (StatusCode::UNAUTHORIZED, "replay"),
            _ => (StatusCode::UNAUTHORIZED, "bad_signature"),
        };
        let reason = match e {
            AuthError::Missing(_) => "missing_header",
            AuthError::Malformed(_) => "malformed_header",
            AuthError::Stale => "stale_timestamp",
            _ => "bad_signature",
        };
        state.metrics.signature_failure(kind_name, reason);
        state.metrics.alert(kind_name, outcome);
        return error(status, e.to_string());
    }
    let delivery = delivery_id(kind, headers);
    // Decompressing and scanning are CPU work: off the reactor.
    let scanned = {
        let (state, headers, body) = (state.clone(), headers.clone(), body.clone());
        tokio::task::spawn_blocking(move || {
            read_body(&headers, &body).map(|read| scan_body(&state, kind, &read))
        })
        .await
    };
    let scanned = match scanned {
        Ok(Ok(scanned)) => scanned,
        Ok(Err(e)) => {
            state.metrics.alert(kind_name, "malformed");
            let (status, message) = match e {
                BodyError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
                BodyError::Unsupported(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, m),
                BodyError::Undecodable(m) => (StatusCode::BAD_REQUEST, m),
            };
            return error(status, message);
        }
        Err(e) => {
            tracing::error!(error = %e, "scanning a webhook body failed");
            state.metrics.alert(kind_name, "unavailable");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the body could not be scanned: not stored, retry later",
            );
        }
    };
    for (rule, verdict) in &scanned.matched {
        state.metrics.token_matched(rule, verdict);
    }
    state
        .metrics
        .scanned("listener", scanned.scanned_bytes as u64);
    answer_recorded(
        state,
        kind_name,
        state
            .intake
            .record(
                Some(&state.engine.key_cache),
                &intake::IncomingAlert {
                    listener_id,
                    listener_kind: kind_name,
                    body: &body,
                    delivery_id: delivery.as_deref(),
                    key_id: None,
                    key_current: None,
                    tokens: &scanned.tokens,
                    event: Some(&scanned.event),
                },
            )
            .await,
        |recorded| {
            axum::Json(serde_json::json!({ "tokens_found": recorded.token_count })).into_response()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_marks_merge_and_leave_nothing_between() {
        let text = b"a=SECRETTOKEN&b=1";
        let marks = vec![(2..8, "[A]".to_owned()), (5..13, "[B]".to_owned())];
        assert_eq!(redact(text, marks), "a=[A]&b=1");
    }

    #[test]
    fn bodies_read_as_declared() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        let read = read_body(&headers, b"{\"a\":1").unwrap();
        assert!(read.undecodable.is_some());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, b"{\"a\":\"x\"}").unwrap();
        headers.insert("content-encoding", "gzip".parse().unwrap());
        let compressed = gz.finish().unwrap();
        let read = read_body(&headers, &compressed).unwrap();
        assert_eq!(&*read.bytes, b"{\"a\":\"x\"}");
        assert!(read.undecodable.is_none());
        assert!(matches!(
            read_body(&headers, b"not gzip"),
            Err(BodyError::Undecodable(_))
        ));
        headers.insert("content-encoding", "br".parse().unwrap());
        assert!(matches!(
            read_body(&headers, b"x"),
            Err(BodyError::Unsupported(_))
        ));
    }

    #[test]
    fn a_decompression_bomb_is_refused_without_inflating_it_all() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(MAX_DECODED_BODY >> 20) + 2 {
            std::io::Write::write_all(&mut gz, &zeros).unwrap();
        }
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 100 << 10);
        let mut headers = HeaderMap::new();
        headers.insert("content-encoding", "gzip".parse().unwrap());
        assert!(matches!(
            read_body(&headers, &bomb),
            Err(BodyError::TooLarge(_))
        ));
    }
}
