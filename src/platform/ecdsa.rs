//! P-256 ECDSA signature checks, done by `ring`: 70 µs a check on this machine against 244 µs
//! with the `p256` crate, and a partner alert costs one check (measured: p256's verification was
//! a quarter of serve's CPU at 1,000 alerts/s). Keys stay `p256` types, parsed from PEM and JWK
//! there; both high-S and low-S signatures verify (GitHub's and JOSE's signers do not normalise).
//!
//! Pure: no I/O.

use p256::ecdsa::VerifyingKey;
use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

fn point(key: &VerifyingKey) -> p256::EncodedPoint {
    key.to_encoded_point(false)
}

/// True when `der` (ASN.1 DER) is a signature of SHA-256(`message`) by `key`.
pub fn verify_der(key: &VerifyingKey, message: &[u8], der: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point(key).as_bytes())
        .verify(message, der)
        .is_ok()
}

/// True when `r_s` (64 bytes, `r || s`, as JOSE writes ES256) is a signature of SHA-256(`message`)
/// by `key`.
pub fn verify_fixed(key: &VerifyingKey, message: &[u8], r_s: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point(key).as_bytes())
        .verify(message, r_s)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::{Signature, SigningKey};

    use super::*;

    #[test]
    fn low_and_high_s_signatures_verify_and_others_do_not() {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let message = b"[{\"token\":\"x\"}]";
        let sig: Signature = key.sign(message);
        let low = sig.normalize_s().unwrap_or(sig);
        // The same signature with s replaced by n - s.
        let (r, s) = low.split_scalars();
        let high = Signature::from_scalars(r, -*s).unwrap();
        let vk = key.verifying_key();
        for sig in [low, high] {
            assert!(verify_der(vk, message, sig.to_der().as_bytes()));
            assert!(verify_fixed(vk, message, &sig.to_bytes()));
            assert!(!verify_der(vk, b"other", sig.to_der().as_bytes()));
        }
        let other = SigningKey::random(&mut rand::rngs::OsRng);
        assert!(!verify_der(
            other.verifying_key(),
            message,
            low.to_der().as_bytes()
        ));
        assert!(!verify_fixed(vk, message, &[0u8; 64]));
    }
}
