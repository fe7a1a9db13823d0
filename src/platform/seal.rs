//! Sealing: secrets that must survive in the database (listener verification secrets; later, raw
//! tokens for installations in `raw` mode) are encrypted with ChaCha20-Poly1305 under the sealing
//! key, which is kept outside the database. The associated data binds a sealed value to its owner
//! (e.g. the listener id), so a sealed value copied to another row does not open.
//!
//! Must not import anything outside `platform` but the secret type.

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::RngCore as _;
use secrecy::ExposeSecret;

use crate::platform::keyring::KeyBytes;
use crate::scanner::TokenSecret;

/// base64(nonce || ciphertext) of `secret`, bound to `owner`.
pub fn seal(key: &KeyBytes, owner: &str, secret: &TokenSecret) -> String {
    let cipher = ChaCha20Poly1305::new(key.expose_secret().into());
    // A random 96-bit nonce from the thread's CSPRNG (ChaCha, seeded and reseeded from the OS):
    // the OS generator cost a system call per sealed token at intake.
    let mut nonce = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: secret.expose().as_bytes(),
                aad: owner.as_bytes(),
            },
        )
        .expect("encryption of an in-memory buffer cannot fail");
    let mut out = nonce.to_vec();
    out.extend(sealed);
    STANDARD.encode(out)
}

/// Opens what [`seal`] produced for the same `owner`.
pub fn open(key: &KeyBytes, owner: &str, sealed: &str) -> anyhow::Result<TokenSecret> {
    let bytes = STANDARD
        .decode(sealed)
        .context("sealed value is not base64")?;
    anyhow::ensure!(bytes.len() > 12, "sealed value is too short");
    let cipher = ChaCha20Poly1305::new(key.expose_secret().into());
    let plain = cipher
        .decrypt(
            Nonce::from_slice(&bytes[..12]),
            Payload {
                msg: &bytes[12..],
                aad: owner.as_bytes(),
            },
        )
        .map_err(|_| anyhow::anyhow!("sealed value does not open with this key and owner"))?;
    Ok(TokenSecret::new(
        String::from_utf8(plain).context("sealed value is not UTF-8")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretBox;

    #[test]
    fn sealed_values_open_only_for_their_owner_and_key() {
        let key: KeyBytes = SecretBox::new(Box::new([7u8; 32]));
        let other: KeyBytes = SecretBox::new(Box::new([8u8; 32]));
        let sealed = seal(&key, "lst_1", &TokenSecret::new("whsec_abc"));
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(open(&key, "lst_1", &sealed).unwrap().expose(), "whsec_abc");
        assert!(open(&key, "lst_2", &sealed).is_err());
        assert!(open(&other, "lst_1", &sealed).is_err());
    }
}
