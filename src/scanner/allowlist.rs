//! Allowlists: matches a rule should not report (from imported Gitleaks rules and their file's
//! global allowlist), and the Gitleaks 8.30 way of judging them.
//!
//! Owns the allowlist data and the decision; the engine asks it once per candidate. Pure: no I/O.

use regex_automata::meta;

/// How an allowlist's checks combine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Condition {
    /// Any configured check that holds allows the match.
    #[default]
    Or,
    /// Every configured check must hold.
    And,
}

/// What an allowlist's regexes are tested against. Stopwords always test the secret.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AllowTarget {
    #[default]
    Secret,
    /// The whole regex match.
    Match,
    /// The line(s) holding the match.
    Line,
}

/// One allowlist. Empty parts are not checks (and an AND allowlist needs every configured one).
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    pub condition: Condition,
    pub target: AllowTarget,
    /// The allowlist's regexes joined as one alternation, as Gitleaks joins them.
    pub regexes: Option<meta::Regex>,
    /// Lower-cased substrings of the secret.
    pub stopwords: Vec<String>,
    /// Tested (unanchored) against the source label, a path.
    pub paths: Option<meta::Regex>,
    /// Lower-cased full commit ids (only `scan --git` knows a blob's commit).
    pub commits: Vec<String>,
}

/// Where a candidate stands, for allowlists to judge.
pub struct Candidate<'a> {
    /// The source label (a path).
    pub source: &'a str,
    pub commit: Option<&'a str>,
    pub secret: &'a str,
    pub matched: &'a [u8],
    pub line: &'a [u8],
}

impl Allowlist {
    /// Whether this allowlist lets `c` go unreported.
    pub fn allows(&self, c: &Candidate<'_>) -> bool {
        let mut checks = [None; 4];
        if !self.commits.is_empty() {
            checks[0] = Some(
                c.commit
                    .is_some_and(|id| self.commits.iter().any(|k| k.eq_ignore_ascii_case(id))),
            );
        }
        if let Some(paths) = &self.paths {
            checks[1] = Some(paths.is_match(c.source));
        }
        if let Some(regexes) = &self.regexes {
            let target = match self.target {
                AllowTarget::Secret => c.secret.as_bytes(),
                AllowTarget::Match => c.matched,
                AllowTarget::Line => c.line,
            };
            checks[2] = Some(!target.is_empty() && regexes.is_match(target));
        }
        if !self.stopwords.is_empty() {
            let lower = c.secret.to_ascii_lowercase();
            checks[3] = Some(self.stopwords.iter().any(|w| lower.contains(w.as_str())));
        }
        let mut configured = checks.iter().flatten().peekable();
        match self.condition {
            Condition::Or => checks.iter().flatten().any(|&b| b),
            Condition::And => configured.peek().is_some() && configured.all(|&b| b),
        }
    }

    /// Whether the allowlist lets every match in `source` go, whatever the match: path or commit
    /// checks alone decide it (Gitleaks skips such files before matching).
    pub fn allows_whole_source(&self, source: &str, commit: Option<&str>) -> bool {
        let path = self.paths.as_ref().map(|p| p.is_match(source));
        let commit = (!self.commits.is_empty()).then(|| {
            commit.is_some_and(|id| self.commits.iter().any(|k| k.eq_ignore_ascii_case(id)))
        });
        match self.condition {
            Condition::Or => path == Some(true) || commit == Some(true),
            Condition::And => {
                self.regexes.is_none()
                    && self.stopwords.is_empty()
                    && (path.is_some() || commit.is_some())
                    && path != Some(false)
                    && commit != Some(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate<'a>(source: &'a str, secret: &'a str) -> Candidate<'a> {
        Candidate {
            source,
            commit: None,
            secret,
            matched: secret.as_bytes(),
            line: secret.as_bytes(),
        }
    }

    #[test]
    fn or_needs_one_check_and_needs_all() {
        let mut list = Allowlist {
            paths: Some(meta::Regex::new(r"^test/").unwrap()),
            stopwords: vec!["example".into()],
            ..Allowlist::default()
        };
        assert!(list.allows(&candidate("test/a", "abc")));
        assert!(list.allows(&candidate("src/a", "MyEXAMPLEkey")));
        assert!(!list.allows(&candidate("src/a", "abc")));
        assert!(list.allows_whole_source("test/a", None));
        list.condition = Condition::And;
        assert!(!list.allows(&candidate("test/a", "abc")));
        assert!(!list.allows(&candidate("src/a", "example")));
        assert!(list.allows(&candidate("test/a", "example")));
        // An AND list with a stopword cannot let a whole file go.
        assert!(!list.allows_whole_source("test/a", None));
    }

    #[test]
    fn regex_targets() {
        let list = Allowlist {
            regexes: Some(meta::Regex::new(r"^x+$|import").unwrap()),
            target: AllowTarget::Line,
            ..Allowlist::default()
        };
        let c = Candidate {
            source: "a",
            commit: None,
            secret: "xxxx",
            matched: b"k = xxxx",
            line: b"import { k } from 'y'",
        };
        assert!(list.allows(&c));
        let secret_target = Allowlist {
            target: AllowTarget::Secret,
            ..list.clone()
        };
        assert!(secret_target.allows(&c));
        let match_target = Allowlist {
            target: AllowTarget::Match,
            ..list
        };
        assert!(!match_target.allows(&c));
    }

    #[test]
    fn commits_compare_without_case() {
        let list = Allowlist {
            commits: vec!["abc123".into()],
            ..Allowlist::default()
        };
        let mut c = candidate("a", "s");
        assert!(!list.allows(&c));
        c.commit = Some("ABC123");
        assert!(list.allows(&c));
    }
}
