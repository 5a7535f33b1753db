//! RFC 6238 time-based one-time passwords (HMAC-SHA1, 6 digits, 30-second steps) and the RFC 4648
//! base32 that authenticator apps take secrets in.

use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::domain::fastkey::same_bytes;

/// Seconds per time step.
pub const STEP_SECS: i64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Bytes of a seed (160 bits, as RFC 4226 recommends for SHA-1).
pub const SEED_BYTES: usize = 20;
/// Steps of clock drift accepted on either side of the current one.
pub const DRIFT_STEPS: i64 = 1;

/// The time step of unix time `secs`.
pub fn step_at(secs: i64) -> i64 {
    secs.div_euclid(STEP_SECS)
}

/// The HOTP value (RFC 4226) of `seed` at counter `step`, with `digits` digits (at most 9).
pub fn hotp(seed: &[u8], step: u64, digits: u32) -> u32 {
    // HMAC takes a key of any length: new_from_slice cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(seed) else {
        return u32::MAX;
    };
    mac.update(&step.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = usize::from(hash[hash.len() - 1] & 0x0f);
    let bin = (u32::from(hash[offset]) & 0x7f) << 24
        | u32::from(hash[offset + 1]) << 16
        | u32::from(hash[offset + 2]) << 8
        | u32::from(hash[offset + 3]);
    bin % 10u32.pow(digits.min(9))
}

/// The 6-digit code of `seed` at `step`, zero-padded.
pub fn code(seed: &[u8], step: i64) -> String {
    format!(
        "{:0width$}",
        hotp(seed, u64::try_from(step).unwrap_or(0), DIGITS),
        width = DIGITS as usize
    )
}

/// The step in `now_step - 1 ..= now_step + 1` whose code is `presented` (compared in constant
/// time; every candidate is computed), if any; the latest when several match.
pub fn matching_step(seed: &[u8], presented: &str, now_step: i64) -> Option<i64> {
    let mut found = None;
    for step in (now_step - DRIFT_STEPS)..=(now_step + DRIFT_STEPS) {
        if step < 0 {
            continue;
        }
        let expected = code(seed, step);
        if same_bytes(expected.as_bytes(), presented.as_bytes()) {
            found = Some(step);
        }
    }
    found
}

/// Whether `s` looks like a TOTP code: exactly 6 ASCII digits.
pub fn is_code(s: &str) -> bool {
    s.len() == DIGITS as usize && s.bytes().all(|b| b.is_ascii_digit())
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32, upper case, without padding.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows (8 digits; the seed is the ASCII "12345678901234567890").
    #[test]
    fn rfc6238_appendix_b_vectors() {
        let seed = b"12345678901234567890";
        for (time, expected) in [
            (59i64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            let step = u64::try_from(step_at(time)).unwrap();
            assert_eq!(hotp(seed, step, 8), expected, "T = {time}");
            // The 6-digit code is the same value's last 6 digits.
            assert_eq!(
                code(seed, step_at(time)),
                format!("{:06}", expected % 1_000_000)
            );
        }
    }

    #[test]
    fn drift_of_one_step_either_side() {
        let seed = [7u8; SEED_BYTES];
        let now = 1_000_000;
        for d in -1..=1 {
            assert_eq!(
                matching_step(&seed, &code(&seed, now + d), now),
                Some(now + d)
            );
        }
        assert_eq!(matching_step(&seed, &code(&seed, now + 2), now), None);
        assert_eq!(matching_step(&seed, &code(&seed, now - 2), now), None);
        assert!(is_code("012345") && !is_code("12345") && !is_code("12345a"));
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fo"), "MZXQ");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(&[0u8; 20]).len(), 32);
    }
}
