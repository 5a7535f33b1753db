//! Opaque secrets handed to clients (refresh tokens and service keys) and their stored hashes.
//!
//! A refresh token is `rt_` plus 256 random bits (base64url), and so is each successor it is
//! rotated into: nothing, not even the server's secrets, lets anyone compute a live token from an
//! old one. A service key is `sk_` plus 256 random bits, an mfa_token `mfa_` plus 256 random bits.
//! Only SHA-256 hashes are stored.
//!
//! **Grace replays.** A client whose refresh reply was lost presents the just-spent token again
//! and must get the same successor. For that window only, the session row keeps the successor
//! sealed in a [`ReplayBox`]: ChaCha20-Poly1305 under a key derived with HKDF-SHA256 from the
//! *spent token itself* (fixed salt and info), with a random nonce. The database holds only the spent token's SHA-256, from which
//! the key cannot be derived, so the box opens only for a holder of the spent token, and a
//! database dump (with or without the server's secrets) yields no live token. The box is cleared
//! after the window (see `crate::db::sessions::clear_replays`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const REFRESH_TOKEN_PREFIX: &str = "rt_";
pub const SERVICE_KEY_PREFIX: &str = "sk_";
pub const MFA_TOKEN_PREFIX: &str = "mfa_";
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

/// A prefix plus 256 random bits, base64url.
pub fn random_256(prefix: &str) -> String {
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

/// A fresh mfa_token (the second step of a login with a second factor).
pub fn new_mfa_token() -> String {
    random_256(MFA_TOKEN_PREFIX)
}

/// 256 random bits for a server secret.
pub fn new_secret() -> Vec<u8> {
    let mut bytes = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// HKDF salt of the replay-box key (a fixed, public domain separator).
const REPLAY_SALT: &[u8] = b"authd refresh-token replay box v1";
/// HKDF info of the replay-box key.
const REPLAY_INFO: &[u8] = b"chacha20poly1305 key";
/// Associated data of every box. The key, derived from the spent token, already ties a box to the
/// one token row (and so the one session) whose holder can open it.
const REPLAY_AAD: &[u8] = b"authd refresh successor";
const REPLAY_NONCE_LEN: usize = 12;

/// The successor of a spent refresh token, sealed under a key only the spent token yields (see the
/// module docs). Stored as the nonce followed by the ciphertext.
pub struct ReplayBox;

impl ReplayBox {
    fn cipher(spent: &str) -> ChaCha20Poly1305 {
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 255 × 32, so expand cannot fail.
        let _ =
            Hkdf::<Sha256>::new(Some(REPLAY_SALT), spent.as_bytes()).expand(REPLAY_INFO, &mut key);
        ChaCha20Poly1305::new(&key.into())
    }

    /// Seals `successor` under `spent`.
    pub fn seal(spent: &str, successor: &str) -> Vec<u8> {
        let mut nonce = [0u8; REPLAY_NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: successor.as_bytes(),
            aad: REPLAY_AAD,
        };
        // ChaCha20-Poly1305 encryption fails only for messages of hundreds of GiB.
        let ct = Self::cipher(spent)
            .encrypt(&Nonce::from(nonce), payload)
            .unwrap_or_default();
        [nonce.as_slice(), &ct].concat()
    }

    /// Opens a box sealed by [`ReplayBox::seal`]; `None` for any other token, row or bytes.
    pub fn open(spent: &str, sealed: &[u8]) -> Option<String> {
        if sealed.len() <= REPLAY_NONCE_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(REPLAY_NONCE_LEN);
        let nonce: [u8; REPLAY_NONCE_LEN] = nonce.try_into().ok()?;
        let plain = Self::cipher(spent)
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: REPLAY_AAD,
                },
            )
            .ok()?;
        String::from_utf8(plain).ok()
    }
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
    fn replay_boxes_open_only_with_the_spent_token() {
        let spent = new_refresh_token();
        let next = new_refresh_token();
        let sealed = ReplayBox::seal(&spent, &next);
        assert_eq!(
            ReplayBox::open(&spent, &sealed).as_deref(),
            Some(next.as_str())
        );
        // Nothing readable in the stored bytes, and a fresh nonce each time.
        assert!(
            !sealed
                .windows(8)
                .any(|w| next.as_bytes().windows(8).any(|n| n == w))
        );
        assert_ne!(sealed, ReplayBox::seal(&spent, &next));
        // Any other token (even the successor itself, or the spent token's stored hash): no.
        assert!(ReplayBox::open(&next, &sealed).is_none());
        let hash = URL_SAFE_NO_PAD.encode(HashedToken::of(&spent).as_bytes());
        assert!(ReplayBox::open(&hash, &sealed).is_none());
        assert!(ReplayBox::open(&new_refresh_token(), &sealed).is_none());
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(ReplayBox::open(&spent, &tampered).is_none());
        assert!(ReplayBox::open(&spent, &sealed[..12]).is_none());
        assert!(ReplayBox::open(&spent, b"").is_none());
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
