//! Opaque secrets handed to clients (refresh tokens and service keys) and their stored hashes.
//!
//! A refresh token is `rt_` plus 256 random bits (base64url); its successor is derived as
//! `rt_` + base64url(HMAC-SHA256(server secret, predecessor)), so a replica that sees the immediate
//! predecessor again within the grace window can hand out the same successor without storing it.
//! A service key is `sk_` plus 256 random bits. Only SHA-256 hashes are stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const REFRESH_TOKEN_PREFIX: &str = "rt_";
pub const SERVICE_KEY_PREFIX: &str = "sk_";
/// Upper bound on a presented refresh token or service key; longer input is refused unhashed.
pub const MAX_OPAQUE_BYTES: usize = 512;

/// The SHA-256 of a secret. Its `Debug` is redacted so it never reaches a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct HashedToken([u8; 32]);

impl HashedToken {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time comparison with a stored hash.
    pub fn matches(&self, stored: &[u8]) -> bool {
        self.0.as_slice().ct_eq(stored).into()
    }
}

impl std::fmt::Debug for HashedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashedToken([redacted])")
    }
}

fn random_256(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A fresh refresh token for a new session.
pub fn new_refresh_token() -> String {
    random_256(REFRESH_TOKEN_PREFIX)
}

/// A fresh service key.
pub fn new_service_key() -> String {
    random_256(SERVICE_KEY_PREFIX)
}

/// 256 random bits for a server secret.
pub fn new_secret() -> Vec<u8> {
    let mut bytes = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// The deterministic successor of a refresh token under `secret`.
pub fn successor(secret: &[u8], predecessor: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail; fall back to hashing for robustness.
    let digest: [u8; 32] = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(predecessor.as_bytes());
            mac.finalize().into_bytes().into()
        }
        Err(_) => Sha256::digest([secret, predecessor.as_bytes()].concat()).into(),
    };
    format!("{REFRESH_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_prefixed() {
        let a = new_refresh_token();
        let b = new_refresh_token();
        assert_ne!(a, b);
        assert!(a.starts_with("rt_"));
        // 32 bytes -> 43 base64url characters.
        assert_eq!(a.len(), 3 + 43);
        assert!(new_service_key().starts_with("sk_"));
    }

    #[test]
    fn successor_is_deterministic_and_keyed() {
        let t = new_refresh_token();
        assert_eq!(successor(b"k1", &t), successor(b"k1", &t));
        assert_ne!(successor(b"k1", &t), successor(b"k2", &t));
        assert_ne!(successor(b"k1", &t), t);
    }

    #[test]
    fn hashes_compare_and_redact() {
        let h = HashedToken::of("secret");
        assert!(h.matches(HashedToken::of("secret").as_bytes()));
        assert!(!h.matches(HashedToken::of("other").as_bytes()));
        assert!(!h.matches(b"short"));
        assert_eq!(format!("{h:?}"), "HashedToken([redacted])");
    }
}
