//! Secret keys Spillway holds outside the database: the token fingerprint key (HMAC-SHA256), the
//! sealing key (AEAD, for installations that need raw tokens) and the audit signing key (Ed25519).
//!
//! Sources, in order: the environment (`SPILLWAY_FINGERPRINT_KEY`, `SPILLWAY_SEALING_KEY`,
//! `SPILLWAY_AUDIT_SIGNING_KEY`, each 32 bytes as hex or standard base64), then a key file
//! (`key_file` setting, JSON). When neither has them, a development start generates them into the
//! key file with a loud warning: fine for a laptop, never for production.

use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// 32 secret bytes whose `Debug` shows nothing.
pub type KeyBytes = SecretBox<[u8; 32]>;

pub struct Keys {
    fingerprint: KeyBytes,
    pub sealing: KeyBytes,
    audit_signing: KeyBytes,
    /// True when the keys were generated for development.
    pub generated: bool,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    fingerprint_key: String,
    sealing_key: String,
    audit_signing_key: String,
}

fn parse_key(name: &str, text: &str) -> anyhow::Result<KeyBytes> {
    let text = text.trim();
    let bytes = hex::decode(text)
        .ok()
        .filter(|b| b.len() == 32)
        .or_else(|| STANDARD.decode(text).ok())
        .with_context(|| format!("{name}: not hex or base64"))?;
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{name}: must be exactly 32 bytes"))?;
    Ok(SecretBox::new(Box::new(array)))
}

fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    k
}

impl Keys {
    /// Loads keys from the environment or `key_file`; generates `key_file` when `allow_generate`.
    pub fn load(key_file: &Path, allow_generate: bool) -> anyhow::Result<Keys> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let (Some(f), Some(s), Some(a)) = (
            env("SPILLWAY_FINGERPRINT_KEY"),
            env("SPILLWAY_SEALING_KEY"),
            env("SPILLWAY_AUDIT_SIGNING_KEY"),
        ) {
            return Ok(Keys {
                fingerprint: parse_key("SPILLWAY_FINGERPRINT_KEY", &f)?,
                sealing: parse_key("SPILLWAY_SEALING_KEY", &s)?,
                audit_signing: parse_key("SPILLWAY_AUDIT_SIGNING_KEY", &a)?,
                generated: false,
            });
        }
        match std::fs::read_to_string(key_file) {
            Ok(text) => {
                let file: KeyFile = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a spillway key file", key_file.display()))?;
                Ok(Keys {
                    fingerprint: parse_key("fingerprint_key", &file.fingerprint_key)?,
                    sealing: parse_key("sealing_key", &file.sealing_key)?,
                    audit_signing: parse_key("audit_signing_key", &file.audit_signing_key)?,
                    generated: false,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && allow_generate => {
                Self::generate(key_file)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
                "no keys: set SPILLWAY_FINGERPRINT_KEY, SPILLWAY_SEALING_KEY and SPILLWAY_AUDIT_SIGNING_KEY, \
                 or provide the key file {}",
                key_file.display()
            ),
            Err(e) => {
                Err(e).with_context(|| format!("{}: cannot read key file", key_file.display()))
            }
        }
    }

    fn generate(key_file: &Path) -> anyhow::Result<Keys> {
        let (f, s, a) = (random_key(), random_key(), random_key());
        let file = KeyFile {
            fingerprint_key: hex::encode(f),
            sealing_key: hex::encode(s),
            audit_signing_key: hex::encode(a),
        };
        write_private(key_file, &serde_json::to_string_pretty(&file)?)?;
        tracing::warn!(
            key_file = %key_file.display(),
            "GENERATED DEVELOPMENT KEYS: no keys were configured, so new ones were written to the key file. \
             Losing this file makes stored fingerprints unmatchable and the audit log unverifiable. \
             In production, provide SPILLWAY_FINGERPRINT_KEY, SPILLWAY_SEALING_KEY and SPILLWAY_AUDIT_SIGNING_KEY."
        );
        eprintln!(
            "WARNING: generated development keys into {} (set SPILLWAY_*_KEY in production)",
            key_file.display()
        );
        Ok(Keys {
            fingerprint: SecretBox::new(Box::new(f)),
            sealing: SecretBox::new(Box::new(s)),
            audit_signing: SecretBox::new(Box::new(a)),
            generated: true,
        })
    }

    /// The token identity stored in the database: hex HMAC-SHA256(fingerprint key, token).
    pub fn fingerprint(&self, token: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.fingerprint.expose_secret())
            .expect("any key length");
        mac.update(token.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    pub fn audit_signing_key(&self) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(self.audit_signing.expose_secret())
    }
}

/// Creates a new file readable only by its owner (fails if it exists): key files, shared secrets.
pub fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = create_private_file(path)
        .with_context(|| format!("{}: cannot create key file", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_reloaded_and_fingerprints_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spillway.keys");
        assert!(
            Keys::load(&path, false)
                .unwrap_err()
                .to_string()
                .contains("no keys")
        );
        let first = Keys::load(&path, true).unwrap();
        assert!(first.generated);
        let again = Keys::load(&path, false).unwrap();
        assert!(!again.generated);
        assert_eq!(first.fingerprint("ghp_x"), again.fingerprint("ghp_x"));
        assert_ne!(first.fingerprint("ghp_x"), first.fingerprint("ghp_y"));
        assert!(!format!("{first:?}").contains(&hex::encode(first.fingerprint.expose_secret())));
    }
}
