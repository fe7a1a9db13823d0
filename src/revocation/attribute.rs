//! Attribution as a pure function: which installations a token concerns and what each finding
//! does first. The offline JWT verdict ([`JwtVerdict`], `installations::verdict`: decoded once,
//! verified once against the keys a lookup found; intake labels with it, decisions attribute with
//! it) is an input: [`attribute`] turns that verdict, the hostnames seen next to the token and its type into a
//! [`Decision`]. No I/O: the caller looks keys up (and refreshes them) first.
//!
//! In order: a JWT whose key id has one owner with fresh keys is that installation's (signature
//! verifies: revoked without asking, or labelled `expired`; does not: `invalid`); else a hostname
//! seen next to the token; else every installation issuing the token type, at most `fanout_max`.
//! Everything not judged offline is verified online first (or, with no verify URL, revoked
//! directly: an installation answers `unknown_token` for a token it did not issue). Must not
//! import storage, HTTP or the engine.

use crate::findings::{FindingState, Label};
pub use crate::installations::verdict::{DecodedToken, JwtVerdict, judge_jwt};
use crate::installations::{self, Installation};

/// How a candidate was attributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    KeyId,
    Hostname,
    TokenType,
    /// This Spillway's own admin key.
    Spillway,
    /// No installation claims it: the company that issued it revokes it (`issuer:NAME`).
    Issuer,
    None,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::KeyId => "key_id",
            Method::Hostname => "hostname",
            Method::TokenType => "token_type",
            Method::Spillway => "spillway",
            Method::Issuer => "issuer",
            Method::None => "none",
        }
    }
}

/// What a finding does first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    Verify,
    Revoke,
    Pull,
    Expired,
    Invalid,
}

impl First {
    pub fn state(self) -> FindingState {
        match self {
            First::Verify => FindingState::Verifying,
            First::Revoke => FindingState::Revoking,
            First::Pull => FindingState::AwaitingPull,
            First::Expired => FindingState::Expired,
            First::Invalid => FindingState::Invalid,
        }
    }

    /// The label an offline verdict earns.
    pub fn label(self) -> Option<Label> {
        match self {
            First::Revoke | First::Expired => Some(Label::TruePositive),
            First::Invalid => Some(Label::FalsePositive),
            First::Verify | First::Pull => None,
        }
    }

    /// Whether a call or pull still needs the token.
    pub fn active(self) -> bool {
        matches!(self, First::Verify | First::Revoke | First::Pull)
    }
}

/// The decision for one candidate.
#[derive(Debug, Clone)]
pub struct Decision {
    pub method: Method,
    pub targets: Vec<(Installation, First)>,
    /// Why nobody was attributed, when `targets` is empty.
    pub reason: Option<String>,
}

impl Decision {
    pub fn nobody(method: Method, reason: Option<String>) -> Decision {
        Decision {
            method,
            targets: Vec::new(),
            reason,
        }
    }
}

/// The first step of an installation judged online.
pub fn online(i: &Installation) -> First {
    if i.spec.pull_mode {
        First::Pull
    } else if i.spec.verify_url.is_some() {
        First::Verify
    } else {
        First::Revoke
    }
}

/// Attributes a token of `token_type`, with `hosts` seen next to it and its JWT verdict, among
/// `all` installations.
pub fn attribute(
    all: &[Installation],
    token_type: &str,
    hosts: &[String],
    jwt: &JwtVerdict,
    fanout_max: usize,
) -> Decision {
    let owner = match jwt {
        JwtVerdict::Verified { owner, .. } | JwtVerdict::Forged { owner } => {
            all.iter().find(|i| &i.id == owner)
        }
        JwtVerdict::NotJwt | JwtVerdict::Undecided { .. } => None,
    };
    if let Some(installation) = owner {
        let first = match jwt {
            JwtVerdict::Verified { expired: true, .. } => First::Expired,
            JwtVerdict::Verified { .. } if installation.spec.pull_mode => First::Pull,
            JwtVerdict::Verified { .. } => First::Revoke,
            _ => First::Invalid,
        };
        return Decision {
            method: Method::KeyId,
            targets: vec![(installation.clone(), first)],
            reason: None,
        };
    }
    let by_host = installations::by_hostname(all, hosts);
    if !by_host.is_empty() && by_host.len() <= fanout_max {
        return Decision {
            method: Method::Hostname,
            targets: by_host
                .into_iter()
                .map(|i| (i.clone(), online(i)))
                .collect(),
            reason: None,
        };
    }
    let issuing = installations::issuing(all, token_type);
    match issuing.len() {
        // An issuer with a "who am I" call checks liveness first, as an installation with a
        // verify URL does.
        0 if let Some(issuer) = installations::issuer_of(all, token_type) => Decision {
            method: Method::Issuer,
            targets: vec![(issuer.clone(), online(issuer))],
            reason: None,
        },
        0 => Decision::nobody(
            Method::None,
            Some(format!("no installation issues token type {token_type}")),
        ),
        n if n > fanout_max => Decision::nobody(
            Method::None,
            Some(format!(
                "{n} installations issue token type {token_type} (fanout_max {fanout_max})"
            )),
        ),
        _ => Decision {
            method: Method::TokenType,
            targets: issuing
                .into_iter()
                .map(|i| (i.clone(), online(i)))
                .collect(),
            reason: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installation(id: &str, json: serde_json::Value) -> Installation {
        let mut spec = serde_json::json!({"name": id, "token_types": ["acme_key"]});
        spec.as_object_mut()
            .unwrap()
            .extend(json.as_object().unwrap().clone());
        Installation {
            id: id.into(),
            spec: serde_json::from_value(spec).unwrap(),
            created_at: 0,
            updated_at: 0,
            secret_created_at: 0,
            live_secrets: 1,
        }
    }

    fn registry() -> Vec<Installation> {
        vec![
            installation(
                "ins_a",
                serde_json::json!({"hostnames": ["a.example"], "verify_url": "https://a.example/v"}),
            ),
            installation("ins_b", serde_json::json!({"hostnames": ["b.example"]})),
            installation(
                "ins_p",
                serde_json::json!({"token_types": ["pull_key"], "pull_mode": true}),
            ),
        ]
    }

    fn targets(d: &Decision) -> Vec<(&str, First)> {
        d.targets.iter().map(|(i, f)| (i.id.as_str(), *f)).collect()
    }

    #[test]
    fn a_verified_jwt_goes_to_its_key_owner_only_and_is_revoked_without_asking() {
        let all = registry();
        let verified = JwtVerdict::Verified {
            owner: "ins_a".into(),
            expired: false,
        };
        // The hostname points elsewhere; the signature wins.
        let d = attribute(&all, "acme_key", &["b.example".into()], &verified, 5);
        assert_eq!(d.method, Method::KeyId);
        assert_eq!(targets(&d), [("ins_a", First::Revoke)]);
        let expired = JwtVerdict::Verified {
            owner: "ins_a".into(),
            expired: true,
        };
        assert_eq!(
            targets(&attribute(&all, "acme_key", &[], &expired, 5)),
            [("ins_a", First::Expired)]
        );
        let pulled = JwtVerdict::Verified {
            owner: "ins_p".into(),
            expired: false,
        };
        assert_eq!(
            targets(&attribute(&all, "acme_key", &[], &pulled, 5)),
            [("ins_p", First::Pull)]
        );
        let forged = JwtVerdict::Forged {
            owner: "ins_b".into(),
        };
        let d = attribute(&all, "acme_key", &[], &forged, 5);
        assert_eq!(targets(&d), [("ins_b", First::Invalid)]);
        assert_eq!(First::Invalid.label(), Some(Label::FalsePositive));
    }

    #[test]
    fn without_an_offline_verdict_hostnames_then_token_types_decide_within_fanout() {
        let all = registry();
        let undecided = JwtVerdict::Undecided { kid: "k".into() };
        // A sub-domain of a registered hostname.
        let d = attribute(&all, "acme_key", &["api.b.example".into()], &undecided, 5);
        assert_eq!(d.method, Method::Hostname);
        assert_eq!(targets(&d), [("ins_b", First::Revoke)]);
        // No hostname: every issuer of the type, each by its own first step.
        let d = attribute(
            &all,
            "acme_key",
            &["elsewhere.example".into()],
            &JwtVerdict::NotJwt,
            5,
        );
        assert_eq!(d.method, Method::TokenType);
        assert_eq!(
            targets(&d),
            [("ins_a", First::Verify), ("ins_b", First::Revoke)]
        );
        // Too many issuers: nobody, saying why.
        let d = attribute(&all, "acme_key", &[], &JwtVerdict::NotJwt, 1);
        assert_eq!(d.method, Method::None);
        assert!(d.targets.is_empty());
        assert_eq!(
            d.reason.as_deref(),
            Some("2 installations issue token type acme_key (fanout_max 1)")
        );
        let d = attribute(&all, "other", &[], &JwtVerdict::NotJwt, 5);
        assert_eq!(
            d.reason.as_deref(),
            Some("no installation issues token type other")
        );
        // An owner that is no longer registered decides nothing.
        let gone = JwtVerdict::Verified {
            owner: "ins_gone".into(),
            expired: false,
        };
        assert_eq!(
            attribute(&all, "acme_key", &[], &gone, 5).method,
            Method::TokenType
        );
    }

    #[test]
    fn an_issuer_checks_liveness_first_when_it_has_a_who_am_i_call() {
        let mut all = registry();
        all.push(installation(
            "issuer:gitlab",
            serde_json::json!({"token_types": ["gitlab_access_token"], "verify_url": "https://gitlab.com/api/v4/personal_access_tokens/self"}),
        ));
        all.push(installation(
            "issuer:slack",
            serde_json::json!({"token_types": ["slack_bot_token"]}),
        ));
        let d = attribute(&all, "gitlab_access_token", &[], &JwtVerdict::NotJwt, 5);
        assert_eq!(d.method, Method::Issuer);
        assert_eq!(targets(&d), [("issuer:gitlab", First::Verify)]);
        let d = attribute(&all, "slack_bot_token", &[], &JwtVerdict::NotJwt, 5);
        assert_eq!(targets(&d), [("issuer:slack", First::Revoke)]);
    }

    #[test]
    fn a_token_that_is_not_a_jwt_is_not_judged() {
        let token = crate::scanner::TokenSecret::new("ghp_notajwt");
        let verdict = judge_jwt(&token, |_| panic!("nothing to look up"), 0);
        assert_eq!(verdict, JwtVerdict::NotJwt);
    }
}
