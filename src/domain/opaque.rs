//! Opaque secrets handed to clients (refresh tokens and service keys) and their stored hashes.
//!
//! A refresh token is `rt_` and the base64url (no padding) of 69 bytes (see [`RefreshFormat`]):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version, 2 |
//! | 16 | session id |
//! | 4 | generation (big-endian): 0 from Login, one more at each rotation |
//! | 32 | random part: 256 bits from the OS |
//! | 16 | MAC: HMAC-SHA256 of the 53 bytes above under the server secret [`REFRESH_SECRET`], truncated |
//!
//! The random part makes each token unguessable: nothing, not even the server's secrets, lets
//! anyone compute a live token from an old one. The session id and generation let a refresh be one
//! single-row UPDATE of the session guarded by the token's hash, and let a spent token be recognised
//! as reuse without a row per token. Session ids are public (the `sid` claim), so only a token whose
//! MAC verifies is taken for what it says: anything else is merely invalid and can revoke nothing.
//!
//! Tokens of the previous format, `rt_` plus 256 random bits, each stored as a row of
//! `refresh_tokens`, keep working until their next rotation. A service key is `sk_` plus 256 random
//! bits, an mfa_token `mfa_` plus 256 random bits. Only SHA-256 hashes are stored.
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
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::fastkey::same_bytes;

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
        same_bytes(&self.0, stored)
    }
}

impl std::fmt::Debug for HashedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashedToken([redacted])")
    }
}

/// Fills `bytes` for a token or a nonce from the thread's CSPRNG (`rand::thread_rng`: ChaCha12,
/// seeded from the operating system and reseeded from it every 64 KiB). `OsRng` would be a system
/// call each time, and a Refresh takes randomness four times. Server secrets, signing keys, TOTP
/// seeds and recovery codes still come straight from `OsRng`.
fn fill_random(bytes: &mut [u8]) {
    rand::thread_rng().fill_bytes(bytes);
}

/// A prefix plus 256 random bits, base64url.
pub fn random_256(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A refresh token of the previous format (256 random bits, stored as a `refresh_tokens` row). Only
/// tests and benchmarks still make them, to check that such tokens keep working.
pub fn new_refresh_token() -> String {
    random_256(REFRESH_TOKEN_PREFIX)
}

/// Name of the server secret that keys the MAC of refresh tokens.
pub const REFRESH_SECRET: &str = "refresh_token_mac";
const REFRESH_VERSION: u8 = 2;
const REFRESH_BODY: usize = 1 + 16 + 4 + 32;
const REFRESH_MAC: usize = 16;

/// What a refresh token of the current format says about itself, once its MAC verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshClaims {
    pub session_id: Uuid,
    pub generation: i32,
}

/// What a presented refresh token is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshFormat {
    /// The current format with a MAC that verifies: the server issued it for this session and
    /// generation.
    Current(RefreshClaims),
    /// The current format's shape with a MAC that does not verify: invalid, and nothing more.
    Forged,
    /// Anything else: looked up as a token of the previous format.
    Legacy,
}

fn refresh_mac(secret: &[u8], body: &[u8]) -> [u8; REFRESH_MAC] {
    let full: [u8; 32] = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(mut m) => {
            m.update(body);
            m.finalize().into_bytes().into()
        }
        // HMAC takes keys of any length; this only keeps the function total.
        Err(_) => Sha256::digest([secret, body].concat()).into(),
    };
    let mut mac = [0u8; REFRESH_MAC];
    mac.copy_from_slice(&full[..REFRESH_MAC]);
    mac
}

/// A fresh refresh token for `session_id` at `generation`, MACed under `secret`.
pub fn mint_refresh_token(secret: &[u8], session_id: Uuid, generation: i32) -> String {
    let mut raw = [0u8; REFRESH_BODY + REFRESH_MAC];
    raw[0] = REFRESH_VERSION;
    raw[1..17].copy_from_slice(session_id.as_bytes());
    raw[17..21].copy_from_slice(&generation.to_be_bytes());
    fill_random(&mut raw[21..REFRESH_BODY]);
    let mac = refresh_mac(secret, &raw[..REFRESH_BODY]);
    raw[REFRESH_BODY..].copy_from_slice(&mac);
    format!("{REFRESH_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// Reads a presented refresh token (see [`RefreshFormat`]); the MAC is compared in constant time.
pub fn refresh_format(secret: &[u8], token: &str) -> RefreshFormat {
    let Some(body) = token.strip_prefix(REFRESH_TOKEN_PREFIX) else {
        return RefreshFormat::Legacy;
    };
    // 69 bytes are 92 base64url characters; the previous format has 43.
    if body.len() != 92 {
        return RefreshFormat::Legacy;
    }
    let Ok(raw) = URL_SAFE_NO_PAD.decode(body) else {
        return RefreshFormat::Legacy;
    };
    if raw.len() != REFRESH_BODY + REFRESH_MAC || raw[0] != REFRESH_VERSION {
        return RefreshFormat::Legacy;
    }
    let (body, mac) = raw.split_at(REFRESH_BODY);
    if !same_bytes(&refresh_mac(secret, body), mac) {
        return RefreshFormat::Forged;
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&body[1..17]);
    let mut generation = [0u8; 4];
    generation.copy_from_slice(&body[17..21]);
    RefreshFormat::Current(RefreshClaims {
        session_id: Uuid::from_bytes(id),
        generation: i32::from_be_bytes(generation),
    })
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
        fill_random(&mut nonce);
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
    fn current_refresh_tokens_carry_session_and_generation_under_a_mac() {
        let secret = new_secret();
        let sid = Uuid::new_v4();
        let t = mint_refresh_token(&secret, sid, 7);
        assert!(t.starts_with("rt_"));
        assert_eq!(t.len(), 3 + 92);
        assert_ne!(
            t,
            mint_refresh_token(&secret, sid, 7),
            "a random part each time"
        );
        assert_eq!(
            refresh_format(&secret, &t),
            RefreshFormat::Current(RefreshClaims {
                session_id: sid,
                generation: 7
            })
        );
        // Another deployment's secret, or any flipped bit: forged, never taken for what it says.
        assert_eq!(refresh_format(&new_secret(), &t), RefreshFormat::Forged);
        let mut raw = URL_SAFE_NO_PAD.decode(&t[3..]).unwrap();
        raw[20] ^= 1; // the generation
        let tampered = format!("rt_{}", URL_SAFE_NO_PAD.encode(&raw));
        assert_eq!(refresh_format(&secret, &tampered), RefreshFormat::Forged);
        // The previous format, and garbage, are looked up as the previous format.
        assert_eq!(
            refresh_format(&secret, &new_refresh_token()),
            RefreshFormat::Legacy
        );
        assert_eq!(refresh_format(&secret, "rt_!"), RefreshFormat::Legacy);
        assert_eq!(refresh_format(&secret, &t[3..]), RefreshFormat::Legacy);
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
