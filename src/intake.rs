//! Durable intake: an accepted alert, one candidate per token and the queued work, with its audit
//! entry, committed in one transaction before the platform is answered. An exact replay (same
//! listener, same body hash) creates nothing and gets the same answer.
//!
//! Tokens arrive raw and leave this module only as fingerprints (HMAC under a key kept outside the
//! database) and, where a protocol asks for it, as `sha256(token)` on the wire.

use anyhow::Context as _;
use serde::Serialize;
use sha2::Digest as _;
use sqlx::Row as _;

use crate::audit;
use crate::installation_keys::KeyCache;
use crate::keys::Keys;
use crate::scanner::{Finding, RuleSet, Scanner, TokenSecret};
use crate::store::{Store, now_ms};

/// One token as a platform reported it.
#[derive(Debug)]
pub struct ReportedToken {
    pub token: TokenSecret,
    pub token_type: String,
    pub url: Option<String>,
    pub source: Option<String>,
    /// Hostnames seen next to the token (for attribution), when the text around it is known.
    pub context_hosts: Vec<String>,
}

/// GitHub's feedback labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    TruePositive,
    FalsePositive,
}

impl Label {
    fn as_str(&self) -> &'static str {
        match self {
            Label::TruePositive => "true_positive",
            Label::FalsePositive => "false_positive",
        }
    }
}

/// One element of the feedback array GitHub reads from the response body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Feedback {
    pub token_hash: String,
    pub token_type: String,
    pub label: Label,
}

/// What can be decided without asking anyone: a token of a type we have rules for that no such rule
/// matches whole, or whose checksum fails, is a false positive. Anything else waits for the
/// installation (left out of the feedback).
/// `scanner` is reused across an alert's tokens.
/// With `jwt_keys`, a JWT whose key id is cached is labelled by its signature: `true_positive` when
/// it verifies, `false_positive` when no key under that id does.
pub fn offline_label<'r>(
    scanner: &mut Scanner<'r>,
    rules: &'r RuleSet,
    jwt_keys: Option<&KeyCache>,
    token: &TokenSecret,
    token_type: &str,
) -> Option<Label> {
    if let (Some(cache), Ok(decoded)) = (jwt_keys, crate::jwt::decode(token.expose())) {
        let keys = cache.lookup(decoded.key_id().unwrap_or_default());
        if !keys.is_empty() {
            let valid = keys
                .iter()
                .any(|k| crate::jwt::verify(token.expose(), &decoded, &k.key));
            return Some(if valid {
                Label::TruePositive
            } else {
                Label::FalsePositive
            });
        }
    }
    if !rules.rules().iter().any(|r| r.token_type == token_type) {
        return None;
    }
    let raw = token.expose();
    let mut whole_match = None;
    scanner.scan("alert", raw.as_bytes(), &mut |f: Finding<'_>| {
        if f.rule.token_type == token_type && f.span == (0..raw.len()) {
            whole_match = Some(f.verdict);
        }
    });
    match whole_match {
        None => Some(Label::FalsePositive),
        Some(v) if v.is_invalid() => Some(Label::FalsePositive),
        Some(_) => None,
    }
}

/// The outcome of recording an alert.
#[derive(Debug)]
pub struct Recorded {
    pub alert_id: i64,
    pub replay: bool,
    /// Tokens the (first) recording of this alert carried: a replay answers with the same count.
    pub token_count: usize,
    pub feedback: Vec<Feedback>,
}

/// A generic listener's redacted copy of a request, stored as its output stream.
#[derive(Debug, Clone, Default)]
pub struct ListenerEvent {
    /// The body (decompressed) with every token found replaced by its type and fingerprint;
    /// `None` when the body did not decode as declared, so no copy is kept.
    pub redacted_body: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// Why no copy was kept, or anything else worth knowing about how the body was read.
    pub note: Option<String>,
}

/// An alert as a source received it.
#[derive(Debug)]
pub struct IncomingAlert<'a> {
    pub listener_id: &'a str,
    pub listener_kind: &'a str,
    /// The body exactly as received: only its SHA-256 is recorded.
    pub body: &'a [u8],
    /// The sender's delivery id, where its protocol has one: the idempotency key (else the body's
    /// SHA-256 is).
    pub delivery_id: Option<&'a str>,
    /// The partner signing key that verified the alert, and whether it is the current one.
    pub key_id: Option<&'a str>,
    pub key_current: Option<bool>,
    pub tokens: &'a [ReportedToken],
    /// A generic listener's redacted copy, recorded in the same transaction.
    pub event: Option<&'a ListenerEvent>,
}

impl IncomingAlert<'_> {
    fn dedupe_key(&self, body_sha256: &str) -> String {
        match self.delivery_id {
            Some(id) => format!(
                "delivery:{}",
                hex::encode(sha2::Sha256::digest(id.as_bytes()))
            ),
            None => body_sha256.to_owned(),
        }
    }
}

/// Rows per multi-row INSERT: keeps a 5,000-token alert to a few round trips on PostgreSQL.
const BATCH: usize = 200;

/// Records an alert durably (see the module doc) and returns the feedback to answer with.
pub async fn record_alert(
    store: &Store,
    keys: &Keys,
    rules: &RuleSet,
    jwt_keys: Option<&KeyCache>,
    alert: &IncomingAlert<'_>,
) -> anyhow::Result<Recorded> {
    let IncomingAlert {
        listener_id,
        listener_kind,
        body,
        key_id,
        key_current,
        tokens,
        event,
        ..
    } = *alert;
    let body_sha256 = &hex::encode(sha2::Sha256::digest(body));
    let dedupe_key = alert.dedupe_key(body_sha256);
    let mut scanner = rules.scanner();
    let labels: Vec<Option<Label>> = tokens
        .iter()
        .map(|t| offline_label(&mut scanner, rules, jwt_keys, &t.token, &t.token_type))
        .collect();
    let feedback: Vec<Feedback> = tokens
        .iter()
        .zip(&labels)
        .filter_map(|(t, l)| {
            l.map(|label| Feedback {
                token_hash: t.token.sha256_hex(),
                token_type: t.token_type.clone(),
                label,
            })
        })
        .collect();

    let mut tx = store.begin().await?;
    let existing = sqlx::query(
        "SELECT id, token_count FROM alerts WHERE listener_id = $1 AND dedupe_key = $2",
    )
    .bind(listener_id)
    .bind(&dedupe_key)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = existing {
        tx.rollback().await?;
        return Ok(Recorded {
            alert_id: row.try_get("id")?,
            replay: true,
            token_count: row.try_get::<i64, _>("token_count")? as usize,
            feedback,
        });
    }
    let now = now_ms();
    let alert_id: i64 = sqlx::query(
        "INSERT INTO alerts (listener_id, dedupe_key, body_sha256, received_at, key_id, key_current, token_count) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(listener_id)
    .bind(&dedupe_key)
    .bind(body_sha256)
    .bind(now)
    .bind(key_id)
    .bind(key_current.map(i64::from))
    .bind(tokens.len() as i64)
    .fetch_one(&mut *tx)
    .await
    .context("cannot record alert")?
    .try_get("id")?;

    let rows: Vec<(String, &ReportedToken, Option<Label>)> = tokens
        .iter()
        .zip(&labels)
        .map(|(t, l)| (keys.fingerprint(t.token.expose()), t, *l))
        .collect();
    const COLUMNS: usize = 8;
    for chunk in rows.chunks(BATCH) {
        let mut sql = String::from(
            "INSERT INTO candidates (alert_id, fingerprint, token_type, url, source, label, \
             sealed_token, context_hosts) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            let params: Vec<String> = (1..=COLUMNS)
                .map(|c| format!("${}", i * COLUMNS + c))
                .collect();
            sql.push_str(&format!("({})", params.join(", ")));
        }
        let mut q = sqlx::query(&sql);
        for (fp, t, label) in chunk {
            // Undecided tokens stay sealed until decided (the decision may need the token itself).
            let sealed = (*label != Some(Label::FalsePositive)).then(|| {
                crate::seal::seal(
                    &keys.sealing,
                    &crate::revocation::decide::candidate_owner(fp),
                    &t.token,
                )
            });
            let hosts = (!t.context_hosts.is_empty())
                .then(|| serde_json::to_string(&t.context_hosts).expect("strings serialise"));
            q = q
                .bind(alert_id)
                .bind(fp.clone())
                .bind(t.token_type.clone())
                .bind(t.url.clone())
                .bind(t.source.clone())
                .bind(label.map(|l| l.as_str().to_owned()))
                .bind(sealed)
                .bind(hosts);
        }
        q.execute(&mut *tx)
            .await
            .context("cannot record candidates")?;
    }
    if let Some(event) = event {
        sqlx::query(
            "INSERT INTO listener_events (listener_id, received_at, body_sha256, redacted_body, \
             tokens_found, content_type, content_encoding, body_kept, note) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(listener_id)
        .bind(now)
        .bind(body_sha256)
        .bind(event.redacted_body.as_deref().unwrap_or(""))
        .bind(tokens.len() as i64)
        .bind(event.content_type.as_deref())
        .bind(event.content_encoding.as_deref())
        .bind(i64::from(event.redacted_body.is_some()))
        .bind(event.note.as_deref())
        .execute(&mut *tx)
        .await
        .context("cannot record listener event")?;
    }
    // Every candidate not already known false is queued for attribution and revocation.
    sqlx::query(
        "INSERT INTO work_queue (kind, candidate_id, state, attempts, run_at) \
         SELECT 'decide', id, 'pending', 0, $1 FROM candidates \
         WHERE alert_id = $2 AND (label IS NULL OR label <> 'false_positive')",
    )
    .bind(now)
    .bind(alert_id)
    .execute(&mut *tx)
    .await
    .context("cannot queue work")?;
    let details = serde_json::json!({
        "listener": listener_id,
        "kind": listener_kind,
        "body_sha256": body_sha256,
        "tokens": tokens.len(),
        "false_positives": feedback.iter().filter(|f| f.label == Label::FalsePositive).count(),
        "key_id": key_id,
        "key_current": key_current,
    });
    audit::append(
        &mut tx,
        store.backend(),
        &format!("listener:{listener_id}"),
        "alert.received",
        &format!("alert:{alert_id}"),
        details,
    )
    .await?;
    tx.commit().await.context("cannot commit alert")?;
    Ok(Recorded {
        alert_id,
        replay: false,
        token_count: tokens.len(),
        feedback,
    })
}

/// Hostnames (lowercased, at least one dot, alphabetic top-level label) within `radius` bytes of
/// `span` in `text`: the context that attributes a token to an installation by hostname.
pub fn hosts_near(text: &[u8], span: std::ops::Range<usize>, radius: usize) -> Vec<String> {
    let start = span.start.saturating_sub(radius);
    let end = (span.end + radius).min(text.len());
    let mut hosts = Vec::new();
    for part in [&text[start..span.start], &text[span.end..end]] {
        for word in part.split(|b| !(b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-')) {
            let word = std::str::from_utf8(word)
                .unwrap_or("")
                .trim_matches(|c| c == '.' || c == '-');
            let labels: Vec<&str> = word.split('.').collect();
            let plausible = labels.len() >= 2
                && labels.iter().all(|l| !l.is_empty() && l.len() <= 63)
                && labels
                    .last()
                    .is_some_and(|t| t.len() >= 2 && t.bytes().all(|b| b.is_ascii_alphabetic()));
            let host = word.to_ascii_lowercase();
            if plausible && !hosts.contains(&host) {
                hosts.push(host);
            }
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostnames_next_to_a_token_are_found() {
        let text = b"FOUNDRY_URL=https://acme.palantirfoundry.com\nTOKEN=abc123\nother=1.5 v2.x";
        let at = text.windows(6).position(|w| w == b"abc123").unwrap();
        let hosts = super::hosts_near(text, at..at + 6, 200);
        assert_eq!(hosts, vec!["acme.palantirfoundry.com".to_owned()]);
        assert!(super::hosts_near(text, at..at + 6, 3).is_empty());
    }
}
