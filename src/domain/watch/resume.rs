//! Resume tokens of WatchRevocations: where a stream stood, signed so that any replica of the
//! deployment can continue it, and no one else can make one up.
//!
//! A token is `wr1.` and the base64url (no padding) of 58 bytes:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | flags: bit 0 set = "no resume point" (sent inside a snapshot, before it is complete) |
//! | 8 | issue time, unix seconds (big-endian), on the injected clock |
//! | 8 | database watermark: every tombstone with a lower transaction id has been delivered |
//! | 8 | fingerprint of the key set delivered (see [`keys_fingerprint`]) |
//! | 1 | reserved (0) |
//! | 32 | HMAC-SHA256 of the 26 bytes above |
//!
//! The HMAC key is the server secret [`RESUME_SECRET`] (created once, in the database, by whichever
//! replica starts first; sealed under `AUTHD_MASTER_KEY` when one is set), so every replica of a
//! deployment verifies every other replica's tokens and another deployment's tokens do not verify.
//! The watermark is a transaction id of the shared database, meaningful on every replica.
//!
//! [`verify`] never fails loudly: a token that is garbled, forged, from another deployment, marked
//! "no resume point", dated in the future or older than [`MAX_AGE_SECS`] is simply not a resume
//! point, and the stream starts with a fresh snapshot.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use authd_token::PublicJwk;

use crate::domain::fastkey::same_bytes;

/// Name of the server secret that keys the resume tokens.
pub const RESUME_SECRET: &str = "watch_resume_hmac";
/// How old a token may be and still be resumed from. Older ones get a fresh snapshot: catching up
/// from memory is cheaper than reading a long stretch of tombstones back from the database.
pub const MAX_AGE_SECS: i64 = 600;
/// How far in the future a token's issue time may be (clock skew between replicas).
const MAX_SKEW_SECS: i64 = 60;
const PREFIX: &str = "wr1.";
const BODY: usize = 26;
const MAC: usize = 32;
const NO_RESUME: u8 = 1;

/// Where a stream stood when a message was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    pub issued: DateTime<Utc>,
    /// Every tombstone with a lower transaction id has been delivered (or had expired).
    pub watermark: i64,
    /// The key set delivered, as [`keys_fingerprint`].
    pub keys: u64,
}

/// HMAC-SHA256(secret, body). HMAC accepts keys of any length, so the fallback (a plain keyed
/// hash) is never taken; it exists only so that this cannot panic.
fn tag(secret: &[u8], body: &[u8]) -> [u8; MAC] {
    match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(mut m) => {
            m.update(body);
            m.finalize().into_bytes().into()
        }
        Err(_) => Sha256::digest([secret, body].concat()).into(),
    }
}

fn encode(secret: &[u8], flags: u8, p: &ResumePoint) -> String {
    let mut body = [0u8; BODY + MAC];
    body[0] = flags;
    body[1..9].copy_from_slice(&p.issued.timestamp().to_be_bytes());
    body[9..17].copy_from_slice(&p.watermark.to_be_bytes());
    body[17..25].copy_from_slice(&p.keys.to_be_bytes());
    let t = tag(secret, &body[..BODY]);
    body[BODY..].copy_from_slice(&t);
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(body))
}

/// A token to resume from `p`.
pub fn sign(secret: &[u8], p: &ResumePoint) -> String {
    encode(secret, 0, p)
}

/// A token that resumes nowhere (a fresh snapshot): for the messages of a snapshot before its
/// last one. Signed like the others, so a client cannot tell it apart, and need not.
pub fn no_resume(secret: &[u8], issued: DateTime<Utc>) -> String {
    encode(
        secret,
        NO_RESUME,
        &ResumePoint {
            issued,
            watermark: 0,
            keys: 0,
        },
    )
}

/// The resume point of `token`, if it is one this deployment issued, recently enough, at `now`.
pub fn verify(secret: &[u8], token: &str, now: DateTime<Utc>) -> Option<ResumePoint> {
    let b64 = token.trim().strip_prefix(PREFIX)?;
    if b64.len() > 2 * (BODY + MAC) {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(b64).ok()?;
    if raw.len() != BODY + MAC {
        return None;
    }
    let (body, presented) = raw.split_at(BODY);
    let expected = tag(secret, body);
    if !same_bytes(&expected, presented) {
        return None;
    }
    if body[0] & NO_RESUME != 0 {
        return None;
    }
    let int = |r: std::ops::Range<usize>| -> Option<[u8; 8]> { body.get(r)?.try_into().ok() };
    let issued = DateTime::from_timestamp(i64::from_be_bytes(int(1..9)?), 0)?;
    let age = (now - issued).num_seconds();
    if !(-MAX_SKEW_SECS..=MAX_AGE_SECS).contains(&age) {
        return None;
    }
    Some(ResumePoint {
        issued,
        watermark: i64::from_be_bytes(int(9..17)?),
        keys: u64::from_be_bytes(int(17..25)?),
    })
}

/// A short fingerprint of a published key set (its kids and public keys, in order): a resumed
/// stream sends the keys only if they differ from those the client had.
pub fn keys_fingerprint(keys: &[PublicJwk]) -> u64 {
    let mut h = Sha256::new();
    for k in keys {
        h.update(k.kid.as_bytes());
        h.update([0]);
        h.update(k.x.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(now: DateTime<Utc>) -> ResumePoint {
        ResumePoint {
            issued: DateTime::from_timestamp(now.timestamp(), 0).unwrap(),
            watermark: 123_456,
            keys: 42,
        }
    }

    #[test]
    fn round_trip_on_any_replica_of_the_deployment() {
        let now = Utc::now();
        let t = sign(b"shared secret", &point(now));
        assert!(t.starts_with(PREFIX));
        assert_eq!(verify(b"shared secret", &t, now), Some(point(now)));
        assert_eq!(
            verify(
                b"shared secret",
                &t,
                now + chrono::Duration::seconds(MAX_AGE_SECS)
            ),
            Some(point(now))
        );
    }

    #[test]
    fn anything_else_is_not_a_resume_point() {
        let now = Utc::now();
        let t = sign(b"shared secret", &point(now));
        // Another deployment, an old or future token, a snapshot's inner token.
        assert_eq!(verify(b"other secret", &t, now), None);
        let late = now + chrono::Duration::seconds(MAX_AGE_SECS + 1);
        assert_eq!(verify(b"shared secret", &t, late), None);
        let early = now - chrono::Duration::seconds(MAX_SKEW_SECS + 2);
        assert_eq!(verify(b"shared secret", &t, early), None);
        assert_eq!(
            verify(b"shared secret", &no_resume(b"shared secret", now), now),
            None
        );
        // Tampered, truncated, garbled.
        let mut raw = URL_SAFE_NO_PAD.decode(&t[PREFIX.len()..]).unwrap();
        raw[10] ^= 1;
        let forged = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw));
        assert_eq!(verify(b"shared secret", &forged, now), None);
        for junk in [
            "",
            "wr1.",
            "wr1.!!!",
            &t[..t.len() - 2],
            "x",
            &"A".repeat(10_000),
        ] {
            assert_eq!(verify(b"shared secret", junk, now), None, "{junk:?}");
        }
    }

    #[test]
    fn the_fingerprint_follows_the_key_set() {
        let a = PublicJwk::ed25519("a", &[1; 32]);
        let b = PublicJwk::ed25519("b", &[2; 32]);
        let ab = keys_fingerprint(&[a.clone(), b.clone()]);
        assert_eq!(ab, keys_fingerprint(&[a.clone(), b.clone()]));
        assert_ne!(ab, keys_fingerprint(std::slice::from_ref(&a)));
        assert_ne!(ab, keys_fingerprint(&[b, a]));
    }
}
