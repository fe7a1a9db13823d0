//! The offline verdict on a JWT: decoded once, its key id looked up by the caller (intake reads the
//! cache as it is; a decision refreshes it first), and verified once against the keys of the key
//! id's one fresh owner. An unknown, stale or ambiguous key id gives no verdict. Pure: no I/O.

use super::signing_keys::KeyLookup;
use crate::platform::jwt;
use crate::scanner::TokenSecret;

/// What a token's JWT form says offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtVerdict {
    /// Not a JWT (or not one we can read).
    NotJwt,
    /// A JWT; its key id is unknown, stale, or claimed by more than one installation: no offline
    /// verdict rests on it.
    Undecided { kid: String },
    /// Signed by the key id's one owner.
    Verified { owner: String, expired: bool },
    /// The key id's one owner did not sign it.
    Forged { owner: String },
}

/// A token decoded once: its key id (to look up) and what is needed to verify it.
pub struct DecodedToken<'t> {
    token: &'t TokenSecret,
    decoded: jwt::Decoded,
}

impl<'t> DecodedToken<'t> {
    /// The token's JWT form, if it has one.
    pub fn decode(token: &'t TokenSecret) -> Option<DecodedToken<'t>> {
        jwt::decode(token.expose())
            .ok()
            .map(|decoded| DecodedToken { token, decoded })
    }

    pub fn key_id(&self) -> &str {
        self.decoded.key_id().unwrap_or_default()
    }

    /// Whether the key id's one fresh owner signed it.
    fn verifies(&self, found: &KeyLookup) -> bool {
        found.fresh_owner().is_some_and(|(_, keys)| {
            keys.iter()
                .any(|key| jwt::verify(self.token.expose(), &self.decoded, key))
        })
    }

    /// The verdict against what the lookup found, at `now_ms`.
    pub fn judge(&self, found: &KeyLookup, now_ms: i64) -> JwtVerdict {
        match found.fresh_owner() {
            None => JwtVerdict::Undecided {
                kid: self.key_id().to_owned(),
            },
            Some((owner, _)) if self.verifies(found) => JwtVerdict::Verified {
                owner: owner.to_owned(),
                expired: self
                    .decoded
                    .expires_at()
                    .is_some_and(|exp| exp.saturating_mul(1000) <= now_ms),
            },
            Some((owner, _)) => JwtVerdict::Forged {
                owner: owner.to_owned(),
            },
        }
    }
}

/// Decodes and judges a token against `lookup(kid)`: for callers that may not fetch keys (intake).
pub fn judge_jwt(
    token: &TokenSecret,
    lookup: impl FnOnce(&str) -> KeyLookup,
    now_ms: i64,
) -> JwtVerdict {
    match DecodedToken::decode(token) {
        None => JwtVerdict::NotJwt,
        Some(d) => d.judge(&lookup(d.key_id()), now_ms),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use p256::ecdsa::SigningKey;

    use super::*;

    fn owned(id: &str, key: &SigningKey, fresh: bool) -> KeyLookup {
        KeyLookup::Owned {
            installation_id: id.into(),
            keys: vec![*key.verifying_key()],
            fresh,
        }
    }

    #[test]
    fn a_jwt_is_judged_only_against_its_key_ids_one_fresh_owner() {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let forger = SigningKey::random(&mut rand::rngs::OsRng);
        let live = TokenSecret::new(jwt::mint(&key, "k1", &serde_json::json!({"sub": "u"})));
        let expired = TokenSecret::new(jwt::mint(&key, "k1", &serde_json::json!({"exp": 1})));
        let forged = TokenSecret::new(jwt::mint(&forger, "k1", &serde_json::json!({})));
        let mut looked_up = Vec::new();
        let verdict = judge_jwt(
            &live,
            |kid| {
                looked_up.push(kid.to_owned());
                owned("ins_a", &key, true)
            },
            0,
        );
        assert_eq!(looked_up, ["k1"], "looked up once, by the token's key id");
        assert_eq!(
            verdict,
            JwtVerdict::Verified {
                owner: "ins_a".into(),
                expired: false
            }
        );
        assert_eq!(
            judge_jwt(&expired, |_| owned("ins_a", &key, true), 5_000),
            JwtVerdict::Verified {
                owner: "ins_a".into(),
                expired: true
            }
        );
        assert_eq!(
            judge_jwt(&forged, |_| owned("ins_a", &key, true), 0),
            JwtVerdict::Forged {
                owner: "ins_a".into()
            }
        );
        // Stale keys, an unknown key id and a key id two installations claim decide nothing: the
        // token goes online (another issuer may publish the key id in a JWKS not fetched yet).
        let undecided = JwtVerdict::Undecided { kid: "k1".into() };
        assert_eq!(
            judge_jwt(&forged, |_| owned("ins_a", &key, false), 0),
            undecided
        );
        assert_eq!(judge_jwt(&forged, |_| KeyLookup::Unknown, 0), undecided);
        let ambiguous = KeyLookup::Ambiguous {
            installations: BTreeSet::from(["ins_a".to_owned(), "ins_b".to_owned()]),
        };
        assert_eq!(judge_jwt(&live, |_| ambiguous, 0), undecided);
    }
}
