//! What a finding keeps sealed until its outcome ([`Payload`]): the raw token only for an
//! installation that takes raw tokens, otherwise only `sha256(token)`, all its calls need. The
//! stored encoding (a `sha256:` prefix for the hash form) is read and written here alone. Must not
//! import anything but the sealing key and the secret type.

use crate::installations::Delivery;
use crate::platform::keyring::KeyBytes;
use crate::platform::seal;
use crate::scanner::TokenSecret;

/// The stored form of [`Payload::Sha256`].
const SHA256_PREFIX: &str = "sha256:";

/// A finding's token, as much of it as its installation is given.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Lower-case hex `sha256(token)`.
    Sha256(String),
    /// The raw token (installations in `raw` delivery).
    Raw(TokenSecret),
}

impl Payload {
    /// What a finding for an installation with `delivery` keeps.
    pub fn for_delivery(token: &TokenSecret, delivery: Delivery) -> Payload {
        match delivery {
            Delivery::Raw => Payload::Raw(token.clone()),
            Delivery::Sha256 => Payload::Sha256(token.sha256_hex()),
        }
    }

    pub fn sha256_hex(&self) -> String {
        match self {
            Payload::Sha256(hex) => hex.clone(),
            Payload::Raw(token) => token.sha256_hex(),
        }
    }

    /// The raw token, for an installation that takes it.
    pub fn raw(&self) -> Option<&TokenSecret> {
        match self {
            Payload::Sha256(_) => None,
            Payload::Raw(token) => Some(token),
        }
    }

    pub fn seal(&self, key: &KeyBytes, owner: &str) -> String {
        match self {
            Payload::Sha256(hex) => seal::seal(
                key,
                owner,
                &TokenSecret::new(format!("{SHA256_PREFIX}{hex}")),
            ),
            Payload::Raw(token) => seal::seal(key, owner, token),
        }
    }

    pub fn open(key: &KeyBytes, owner: &str, sealed: &str) -> anyhow::Result<Payload> {
        let opened = seal::open(key, owner, sealed)?;
        Ok(match opened.expose().strip_prefix(SHA256_PREFIX) {
            Some(hex) => Payload::Sha256(hex.to_owned()),
            None => Payload::Raw(opened),
        })
    }
}

/// The sealing owner of a finding's token copy.
pub fn owner(installation_id: &str, fingerprint: &str) -> String {
    format!("finding:{installation_id}:{fingerprint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_payload_opens_as_it_was_and_only_for_its_owner() {
        let key: KeyBytes = secrecy::SecretBox::new(Box::new([7u8; 32]));
        let token = TokenSecret::new("ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        let hashed = Payload::for_delivery(&token, Delivery::Sha256);
        let sealed = hashed.seal(&key, &owner("ins_1", "fp"));
        assert!(!sealed.contains("ghp_"));
        match Payload::open(&key, &owner("ins_1", "fp"), &sealed).unwrap() {
            Payload::Sha256(hex) => assert_eq!(hex, token.sha256_hex()),
            Payload::Raw(_) => panic!("a hash opened as a raw token"),
        }
        assert!(Payload::open(&key, &owner("ins_2", "fp"), &sealed).is_err());

        let raw = Payload::for_delivery(&token, Delivery::Raw);
        let opened = Payload::open(&key, "o", &raw.seal(&key, "o")).unwrap();
        assert_eq!(opened.raw().unwrap().expose(), token.expose());
        assert_eq!(opened.sha256_hex(), token.sha256_hex());
        assert!(!format!("{opened:?}").contains("ghp_"));
    }
}
