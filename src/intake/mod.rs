//! Durable intake: an accepted alert, one candidate per token and the queued work, with its audit
//! entry, committed before the platform is answered. A replay (same listener, same dedupe key: the
//! body's hash, or the sender's delivery id) creates nothing and gets the same answer.
//!
//! Writes go through one group-committing task ([`committer`]): many alerts per transaction and
//! fsync, each answered only after its own commit. An alert bigger than [`SLICE`] tokens is
//! written slice by slice, so it never holds the single writer long.
//!
//! Tokens arrive raw and leave this module only as fingerprints (HMAC under a key kept outside the
//! database), sealed (AEAD, until decided) and, where a protocol asks for it, as `sha256(token)`
//! on the wire.
//!
//! Must not import HTTP or the revocation engine.

mod committer;
pub mod queue;

use std::sync::Arc;

use serde::Serialize;
use sha2::Digest as _;

use crate::installations::signing_keys::KeyCache;
use crate::platform::keyring::Keys;
use crate::platform::store::Store;
use crate::scanner::{Finding, RuleSet, Scanner, TokenSecret};
pub use committer::GroupObserver;
use committer::{Job, NewAlert, Opened, Row};

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

/// GitHub's feedback labels (a finding's label too).
pub use crate::findings::Label;
use crate::installations::verdict::{JwtVerdict, judge_jwt};

/// The sealing owner of a candidate's token copy (the decision opens it).
pub fn candidate_owner(fingerprint: &str) -> String {
    format!("candidate:{fingerprint}")
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
/// With `jwt_keys`, a JWT whose key id has one owner with fresh keys is labelled `true_positive`
/// when its signature verifies. A signature that does not verify gives no label here: another
/// installation may publish the same key id in a JWKS not fetched yet, so the token is queued and
/// the decision (which fetches first) says whether it is forged. Dropping it here is how a second
/// installation reusing a key id once suppressed a genuine token.
pub fn offline_label<'r>(
    scanner: &mut Scanner<'r>,
    rules: &'r RuleSet,
    jwt_keys: Option<&KeyCache>,
    token: &TokenSecret,
    token_type: &str,
) -> Option<Label> {
    if let Some(cache) = jwt_keys
        && let JwtVerdict::Verified { .. } = judge_jwt(
            token,
            |kid| cache.lookup(kid),
            crate::platform::store::now_ms(),
        )
    {
        return Some(Label::TruePositive);
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

/// Tokens written per transaction: a bigger alert is written slice by slice.
pub const SLICE: usize = 1_000;
/// Work priority unit: a work item's priority is `position / PRIORITY_UNIT` in its alert (one
/// decide batch).
pub const PRIORITY_UNIT: usize = 64;

/// The intake: prepares alerts (labels, fingerprints, sealed tokens) in the caller's task and hands
/// them to the group committer.
pub struct Intake {
    jobs: tokio::sync::mpsc::Sender<Job>,
    keys: Arc<Keys>,
    rules: Arc<RuleSet>,
}

impl Intake {
    /// Starts the committer (a task that ends when the last `Intake` handle is dropped).
    pub fn start(
        store: Store,
        keys: Arc<Keys>,
        rules: Arc<RuleSet>,
        observer: Arc<dyn GroupObserver>,
    ) -> Intake {
        Intake {
            jobs: committer::start(store, observer),
            keys,
            rules,
        }
    }

    async fn submit<T>(
        &self,
        job: impl FnOnce(tokio::sync::oneshot::Sender<anyhow::Result<T>>) -> Job,
    ) -> anyhow::Result<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(job(reply))
            .await
            .map_err(|_| anyhow::anyhow!("intake is shutting down"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("intake stopped before answering"))?
    }

    /// Labels and rows for `tokens` (CPU work: offline checks, fingerprints, sealing).
    fn prepare<'r>(
        &'r self,
        scanner: &mut Scanner<'r>,
        jwt_keys: Option<&KeyCache>,
        tokens: &[ReportedToken],
        feedback: &mut Vec<Feedback>,
    ) -> Vec<Row> {
        tokens
            .iter()
            .map(|t| {
                let label = offline_label(scanner, &self.rules, jwt_keys, &t.token, &t.token_type);
                if let Some(label) = label {
                    feedback.push(Feedback {
                        token_hash: t.token.sha256_hex(),
                        token_type: t.token_type.clone(),
                        label,
                    });
                }
                let fingerprint = self.keys.fingerprint(t.token.expose());
                // Undecided tokens stay sealed until decided (the decision may need the token).
                let sealed = (label != Some(Label::FalsePositive)).then(|| {
                    crate::platform::seal::seal(
                        &self.keys.sealing,
                        &candidate_owner(&fingerprint),
                        &t.token,
                    )
                });
                Row {
                    fingerprint,
                    token_type: t.token_type.clone(),
                    url: t.url.clone(),
                    source: t.source.clone(),
                    label,
                    sealed,
                    hosts: (!t.context_hosts.is_empty()).then(|| {
                        serde_json::to_string(&t.context_hosts).expect("strings serialise")
                    }),
                }
            })
            .collect()
    }

    /// Records an alert durably (see the module doc) and returns the feedback to answer with.
    pub async fn record(
        &self,
        jwt_keys: Option<&KeyCache>,
        alert: &IncomingAlert<'_>,
    ) -> anyhow::Result<Recorded> {
        let body_sha256 = hex::encode(sha2::Sha256::digest(alert.body));
        let dedupe_key = alert.dedupe_key(&body_sha256);
        let tokens = alert.tokens;
        let mut scanner = self.rules.scanner();
        let mut feedback = Vec::new();
        let first = &tokens[..tokens.len().min(SLICE)];
        let rows = self.prepare(&mut scanner, jwt_keys, first, &mut feedback);
        let false_positives =
            |f: &[Feedback]| f.iter().filter(|f| f.label == Label::FalsePositive).count();
        let new = NewAlert {
            listener_id: alert.listener_id.to_owned(),
            listener_kind: alert.listener_kind.to_owned(),
            dedupe_key,
            body_sha256,
            key_id: alert.key_id.map(str::to_owned),
            key_current: alert.key_current,
            token_count: tokens.len(),
            false_positives: false_positives(&feedback),
            event: alert.event.cloned(),
        };
        let opened = self
            .submit(|reply| Job::Open {
                alert: Box::new(new),
                rows,
                reply,
            })
            .await?;
        let (alert_id, mut recorded, replay) = match opened {
            Opened::New { alert_id } => (alert_id, first.len(), false),
            Opened::Existing {
                alert_id,
                token_count,
                recorded,
            } => {
                if recorded >= token_count {
                    // A complete replay: the answer is computed again (labels for every token).
                    if tokens.len() > first.len() {
                        let _ = self.prepare(
                            &mut scanner,
                            jwt_keys,
                            &tokens[first.len()..],
                            &mut feedback,
                        );
                    }
                    return Ok(Recorded {
                        alert_id,
                        replay: true,
                        token_count,
                        feedback,
                    });
                }
                // An earlier request stopped between slices: carry on from where it stopped.
                let _ = self.prepare(
                    &mut scanner,
                    jwt_keys,
                    &tokens[first.len()..recorded.min(tokens.len())],
                    &mut feedback,
                );
                (alert_id, recorded.min(tokens.len()), false)
            }
        };
        while recorded < tokens.len() {
            let end = (recorded + SLICE).min(tokens.len());
            // Other requests run while this one prepares its next slice.
            tokio::task::yield_now().await;
            let rows = self.prepare(
                &mut scanner,
                jwt_keys,
                &tokens[recorded..end],
                &mut feedback,
            );
            let start = recorded;
            self.submit(|reply| Job::Slice {
                alert_id,
                start,
                rows,
                reply,
            })
            .await?;
            recorded = end;
        }
        Ok(Recorded {
            alert_id,
            replay,
            token_count: tokens.len(),
            feedback,
        })
    }
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
