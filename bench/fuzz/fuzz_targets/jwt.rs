//! JWT decoding and ES256 verification on arbitrary strings: an error or `false`, never a panic,
//! and nothing arbitrary verifies under a fixed key.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use p256::ecdsa::{SigningKey, VerifyingKey};

fn key() -> &'static VerifyingKey {
    static KEY: OnceLock<VerifyingKey> = OnceLock::new();
    KEY.get_or_init(|| {
        *SigningKey::from_slice(&[7u8; 32])
            .expect("a valid scalar")
            .verifying_key()
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(decoded) = spillway::platform::jwt::decode(&text) {
        let _ = decoded.key_id();
        assert!(!spillway::platform::jwt::verify(&text, &decoded, key()));
    }
});
