//! JSON logs on stderr, filtered by `SPILLWAY_LOG` (default `info`), each line passed through the
//! scanner before it is written: whatever a log line carries, a token of any format the rules
//! know (checksum-failing candidates included) is replaced by `[REDACTED <token type>]`, so a new
//! token format is redacted by adding its rule, without anyone remembering to.
//!
//! Every line is one event: the formatter hands each event to one writer, which redacts and
//! writes it whole when dropped.
//!
//! Must not import anything of the crate but the secret type.

use std::io::Write;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

use crate::scanner::{Finding, RuleSet, ScanOptions};

/// Where redacted lines go.
pub type Sink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// A `MakeWriter` whose writers redact what they are given.
#[derive(Clone)]
pub struct Redacting {
    /// Compiled when the first line is written, so a command that logs nothing pays nothing.
    rules: Arc<std::sync::OnceLock<Arc<RuleSet>>>,
    sink: Sink,
}

impl Redacting {
    pub fn new(rules: Arc<RuleSet>, sink: Sink) -> Redacting {
        Redacting {
            rules: Arc::new(std::sync::OnceLock::from(rules)),
            sink,
        }
    }

    /// To stderr, with the default rules (invalid candidates included).
    pub fn stderr() -> Redacting {
        Redacting {
            rules: Arc::default(),
            sink: Arc::new(|line: &[u8]| {
                let _ = std::io::stderr().lock().write_all(line);
            }),
        }
    }

    /// The rules, compiled on first use. Fails closed: without the rules there are no logs and
    /// the process exits (the rule tests make this unreachable in practice).
    fn rules(&self) -> &RuleSet {
        self.rules.get_or_init(|| {
            // Compiling logs too: with no subscriber here, or it would wait on this very lock.
            let compiled = tracing::dispatcher::with_default(&tracing::Dispatch::none(), || {
                RuleSet::default_rules(ScanOptions {
                    include_invalid: true,
                })
            });
            match compiled {
                Ok(rules) => Arc::new(rules),
                Err(e) => {
                    eprintln!(
                        "spillway: cannot compile rules for log redaction, so cannot log safely: {e:#}"
                    );
                    std::process::exit(2);
                }
            }
        })
    }
}

pub struct LineWriter {
    buf: Vec<u8>,
    owner: Redacting,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            (self.owner.sink)(&redact(self.owner.rules(), &self.buf));
        }
    }
}

impl<'a> MakeWriter<'a> for Redacting {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            buf: Vec::with_capacity(256),
            owner: self.clone(),
        }
    }
}

/// `text` with every token the rules match replaced by `[REDACTED <token type>]`, whether it
/// stands in the text as written or is reached through its decoded views (a JSON log line holds a
/// field's token after `\n`, or spelled with `\u` escapes).
pub fn redact(rules: &RuleSet, text: &[u8]) -> Vec<u8> {
    let mut spans: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    rules.scanner().scan_decoded(
        "log",
        text,
        &crate::scanner::DecodeOptions::default(),
        &mut |f: Finding<'_>| spans.push((f.span.clone(), f.rule.token_type.clone())),
    );
    if spans.is_empty() {
        return text.to_vec();
    }
    spans.sort_by_key(|(span, _)| (span.start, std::cmp::Reverse(span.end)));
    let mut out = Vec::with_capacity(text.len());
    let mut copied = 0;
    for (span, token_type) in spans {
        if span.start < copied {
            copied = copied.max(span.end);
            continue;
        }
        out.extend_from_slice(&text[copied..span.start]);
        out.extend_from_slice(format!("[REDACTED {token_type}]").as_bytes());
        copied = span.end;
    }
    out.extend_from_slice(&text[copied..]);
    out
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// One JSON object a line (the service).
    Json,
    /// `LEVEL target: message key=value` (the command line).
    Text,
}

/// Installs the subscriber on stderr with redaction. The filter is `level` when given (the CLI's
/// `--log-level`/`-v`), else `SPILLWAY_LOG` (a tracing filter), else `default`; one that does not
/// parse stops start-up, naming it.
pub fn init(level: Option<&str>, default: &str, style: Style) -> anyhow::Result<()> {
    let filter = match (level, std::env::var("SPILLWAY_LOG")) {
        (Some(level), _) => tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|e| anyhow::anyhow!("--log-level: not a log level ({e})"))?,
        (None, Ok(text)) => tracing_subscriber::EnvFilter::try_new(&text)
            .map_err(|e| anyhow::anyhow!("SPILLWAY_LOG: not a log filter ({e})"))?,
        (None, Err(std::env::VarError::NotPresent)) => default.into(),
        (None, Err(std::env::VarError::NotUnicode(_))) => anyhow::bail!("SPILLWAY_LOG: not UTF-8"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Redacting::stderr());
    let _ = match style {
        Style::Json => builder.json().try_init(),
        Style::Text => builder.without_time().with_ansi(false).try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A GitHub classic token with a valid checksum, built at run time.
    fn token() -> String {
        let body = "R7mKq2VxT9pL4sN8wYc3Hd6Fj1Zb5A";
        format!(
            "ghp_{body}{}",
            crate::scanner::validate::crc32_base62(body.as_bytes())
        )
    }

    #[test]
    fn a_token_in_any_field_of_a_log_line_is_redacted() {
        let lines = Arc::new(Mutex::new(Vec::<u8>::new()));
        let collected = lines.clone();
        let rules = RuleSet::default_rules(ScanOptions {
            include_invalid: true,
        })
        .unwrap();
        let writer = Redacting::new(
            Arc::new(rules),
            Arc::new(move |l: &[u8]| collected.lock().unwrap().extend_from_slice(l)),
        );
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(writer)
            .finish();
        let t = token();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(header = %format!("Bearer {t}"), "someone logged a token by mistake: {t}");
            // After an escape the JSON line holds `\n{t}`: no word boundary before the token.
            tracing::info!(body = %format!("line one\n{t}\n\"{t}\""), "a response body");
            // Spelled with an escape inside the token: only a decoded view sees it.
            tracing::info!(body = %format!("{{\"k\":\"\\u0067{}\"}}", &t[1..]), "escaped");
        });
        let out = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        assert!(!out.contains(&t), "{out}");
        assert_eq!(
            out.matches("[REDACTED github_personal_access_token]")
                .count(),
            5,
            "{out}"
        );
        assert!(out.contains("someone logged a token by mistake"));
    }
}
