//! Recovery codes: 80 random bits each, written as 16 lower-case base32 characters in groups of
//! four (`abcd-efgh-ijkl-mnop`), accepted with or without dashes or spaces and in any case, and
//! stored only as HMAC-SHA256 under a server secret, keyed with the user id too (a code of one
//! account is no code of another).

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;

use super::totp::base32;

/// Random bytes per code (80 bits).
const CODE_BYTES: usize = 10;
/// Base32 characters per code.
pub const CODE_CHARS: usize = 16;

/// A fresh code, as shown to the user.
pub fn generate() -> String {
    let mut bytes = [0u8; CODE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let plain = base32(&bytes).to_ascii_lowercase();
    let groups: Vec<&str> = (0..CODE_CHARS / 4)
        .filter_map(|i| plain.get(4 * i..4 * i + 4))
        .collect();
    groups.join("-")
}

/// The canonical form of a presented code (upper-case base32, no separators), if it is one.
pub fn normalize(presented: &str) -> Option<String> {
    let s: String = presented
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let alphabet = |c: char| c.is_ascii_uppercase() || ('2'..='7').contains(&c);
    (s.len() == CODE_CHARS && s.chars().all(alphabet)).then_some(s)
}

/// The stored hash of the canonical code `normal` of `user_id`.
pub fn hash(secret: &[u8], user_id: Uuid, normal: &str) -> Vec<u8> {
    // HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Vec::new();
    };
    mac.update(b"authd recovery code v1\0");
    mac.update(user_id.as_bytes());
    mac.update(normal.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_grouped_and_normalize_in_any_form() {
        let c = generate();
        assert_eq!(c.len(), 19, "{c}");
        assert_eq!(c.matches('-').count(), 3);
        let n = normalize(&c).unwrap();
        assert_eq!(n.len(), CODE_CHARS);
        assert_eq!(normalize(&c.replace('-', "")), Some(n.clone()));
        assert_eq!(normalize(&c.to_uppercase()), Some(n.clone()));
        assert_eq!(normalize(&format!(" {} ", c.replace('-', " "))), Some(n));
        assert_eq!(normalize("123456"), None);
        assert_eq!(normalize("abcd-efgh-ijkl-mno1"), None);
        assert_ne!(generate(), generate());
    }

    #[test]
    fn hashes_are_keyed_by_secret_and_user() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let h = hash(b"k", a, "AAAA");
        assert_eq!(h.len(), 32);
        assert_eq!(h, hash(b"k", a, "AAAA"));
        assert_ne!(h, hash(b"k", b, "AAAA"));
        assert_ne!(h, hash(b"j", a, "AAAA"));
    }
}
