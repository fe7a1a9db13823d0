//! What the scanner reports: a [`Finding`] per match, carrying everything callers need to act on it
//! and print it, with the raw secret behind [`TokenSecret`], whose `Debug` and `Display` never show it.

use std::fmt;
use std::ops::Range;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::decode::DecodeStep;
use super::rule::Rule;
use super::validate::{Invalid, JwtFacts};

/// A raw secret. The only way to read it is [`TokenSecret::expose`], so every use is greppable.
pub struct TokenSecret(SecretString);

impl TokenSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(SecretString::from(secret.into()))
    }

    /// The raw secret. Call only to hash it, seal it or hand it to the installation that issued it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn len(&self) -> usize {
        self.expose().len()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    /// `sha256(token)` as lower-case hex: the identity partner protocols put on the wire.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.expose().as_bytes()))
    }
}

impl Clone for TokenSecret {
    fn clone(&self) -> Self {
        Self::new(self.expose().to_owned())
    }
}

/// Compares the secrets (tests and contract types; not for authentication, which compares in
/// constant time).
impl PartialEq for TokenSecret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for TokenSecret {}

/// Reads a secret straight into its wrapper (a contract body an installation receives).
impl<'de> serde::Deserialize<'de> for TokenSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(TokenSecret::new)
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSecret([REDACTED], {} bytes)", self.len())
    }
}

impl fmt::Display for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// What offline validation concluded about a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every validator of the rule passed (a checksum or a JWT structure).
    Valid,
    /// The rule has no validator: the format matched, nothing more is known offline.
    Unvalidated,
    /// A validator failed: not a finding unless invalid candidates were asked for.
    Invalid(Invalid),
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Unvalidated => "unvalidated",
            Verdict::Invalid(_) => "invalid",
        }
    }

    pub fn is_invalid(&self) -> bool {
        matches!(self, Verdict::Invalid(_))
    }
}

/// One match of one rule in one buffer.
#[derive(Debug, Clone)]
pub struct Finding<'r> {
    pub rule: &'r Rule,
    /// Byte span of the secret in the buffer.
    pub span: Range<usize>,
    /// Byte span of the whole regex match.
    pub match_span: Range<usize>,
    /// 1-based line of the secret's first byte.
    pub line: usize,
    /// 1-based byte column of the secret's first byte.
    pub column: usize,
    pub verdict: Verdict,
    /// Facts from a JWT validator (key id, expiry, subtype), when the rule has one.
    pub jwt: Option<JwtFacts>,
    /// How the secret was reached, outermost first; empty when it stands in the buffer as written.
    /// `span` and `match_span` are then the raw bytes that encode it.
    pub decoded: Vec<DecodeStep>,
    secret: TokenSecret,
}

impl<'r> Finding<'r> {
    pub(crate) fn new(
        rule: &'r Rule,
        span: Range<usize>,
        match_span: Range<usize>,
        verdict: Verdict,
        jwt: Option<JwtFacts>,
        secret: TokenSecret,
    ) -> Self {
        Finding {
            rule,
            span,
            match_span,
            line: 0,
            column: 0,
            verdict,
            jwt,
            decoded: Vec::new(),
            secret,
        }
    }

    /// The offset its line and column describe: the secret's first byte, or for a rule imported from
    /// Gitleaks the match's, as Gitleaks reports it.
    pub fn located_at(&self) -> usize {
        match self.rule.dialect {
            super::rule::Dialect::Spillway => self.span.start,
            super::rule::Dialect::Gitleaks => self.match_span.start,
        }
    }

    /// The raw secret (see [`TokenSecret::expose`]).
    pub fn secret(&self) -> &TokenSecret {
        &self.secret
    }

    /// The token's subtype, e.g. `session` or `user-generated` for Foundry JWTs.
    pub fn subtype(&self) -> Option<&str> {
        self.jwt.as_ref().and_then(|j| j.subtype.as_deref())
    }

    /// A preview safe to print: the rule's literal prefix (never more than a third of the secret),
    /// then the length. `ghp_…[40]`.
    pub fn preview(&self) -> String {
        redacted_preview(self.secret.expose(), self.rule.prefix_len)
    }

    /// A stable, location-independent fingerprint of (rule, secret): hex SHA-256 under a domain
    /// separator, truncated to 128 bits. Used by baselines and SARIF `partialFingerprints`.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"spillway-finding-v1\0");
        h.update(self.rule.id.as_bytes());
        h.update(b"\0");
        h.update(self.secret.expose().as_bytes());
        hex::encode(&h.finalize()[..16])
    }
}

/// See [`Finding::preview`].
pub fn redacted_preview(secret: &str, prefix_len: usize) -> String {
    let visible = prefix_len.min(secret.len() / 3);
    let cut = (0..=visible)
        .rev()
        .find(|&i| secret.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}…[{}]", &secret[..cut], secret.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats() {
        let s = TokenSecret::new("ghp_supersecretvalue");
        assert!(!format!("{s:?}").contains("supersecret"));
        assert!(!format!("{s}").contains("supersecret"));
        assert!(!format!("{:?}", Some(s.clone())).contains("supersecret"));
    }

    #[test]
    fn preview_shows_at_most_a_third() {
        assert_eq!(
            redacted_preview("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", 4),
            "ghp_…[40]"
        );
        assert_eq!(redacted_preview("sk_abc", 3), "sk…[6]");
        assert_eq!(redacted_preview("abcdef", 0), "…[6]");
    }
}
