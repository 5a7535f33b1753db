//! The tests' authenticator app: RFC 6238 (HMAC-SHA1, 6 digits, 30 s) written again from the RFC,
//! independently of the server's `domain::mfa::totp`, so that a test compares two implementations.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Decodes RFC 4648 base32 (upper or lower case, padding ignored).
pub fn base32_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for c in s.chars().filter(|c| *c != '=') {
        let v = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u64 - 'A' as u64,
            c @ '2'..='7' => c as u64 - '2' as u64 + 26,
            other => panic!("not base32: {other:?}"),
        };
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The code of the base32 `secret` for unix time `unix_secs`, shifted by `step_offset` steps.
pub fn code_at(secret: &str, unix_secs: i64, step_offset: i64) -> String {
    let key = base32_decode(secret);
    let counter = (unix_secs / 30 + step_offset) as u64;
    let mut mac = Hmac::<Sha1>::new_from_slice(&key).expect("hmac key");
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let o = (h[19] & 0xf) as usize;
    let v = ((h[o] as u32 & 0x7f) << 24)
        | ((h[o + 1] as u32) << 16)
        | ((h[o + 2] as u32) << 8)
        | h[o + 3] as u32;
    format!("{:06}", v % 1_000_000)
}

/// The current code of `secret` on the test server's clock.
pub fn code_now(secret: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    code_at(secret, now.timestamp(), 0)
}

/// A 6-digit code that is not the code of `secret` at any step around `now` (a wrong code).
pub fn wrong_code(secret: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let near: Vec<String> = (-2..=2)
        .map(|d| code_at(secret, now.timestamp(), d))
        .collect();
    (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !near.contains(c))
        .expect("a wrong code")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc6238_sha1_vectors_last_six_digits() {
        // "12345678901234567890" in base32.
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        assert_eq!(super::code_at(secret, 59, 0), "287082");
        assert_eq!(super::code_at(secret, 1111111109, 0), "081804");
        assert_eq!(super::code_at(secret, 1234567890, 0), "005924");
        assert_eq!(super::code_at(secret, 20000000000, 0), "353130");
    }
}
