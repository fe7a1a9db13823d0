//! Generic listeners' authentication (Standard Webhooks, Twilio, GitHub HMAC) on arbitrary
//! headers, secrets, URLs and bodies: an error, never a panic.
#![no_main]

use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use spillway::sources::listeners::ListenerKind;

fuzz_target!(|data: &[u8]| {
    // Fields separated by 0xff: secret, id, timestamp, signature, path, body.
    let mut parts = data.splitn(6, |b| *b == 0xff);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (secret, id, timestamp, signature, path) = (next(), next(), next(), next(), next());
    let body = data.rsplit(|b| *b == 0xff).next().unwrap_or_default();
    let uri: Uri = format!("/l/x?{}", path.escape_default())
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/l/x"));
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("webhook-id", &id),
        ("webhook-timestamp", &timestamp),
        ("webhook-signature", &signature),
        ("x-twilio-signature", &signature),
        ("x-hub-signature-256", &signature),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    for kind in [
        ListenerKind::StandardWebhooks,
        ListenerKind::Twilio,
        ListenerKind::GithubHmac,
    ] {
        let _ = spillway::sources::authenticate_webhook(
            kind,
            &secret,
            "https://hooks.example.test",
            &uri,
            &headers,
            body,
        );
    }
});
