//! Single-use tokens mailed to a user (issue I): e-mail verification, password reset and e-mail
//! change links. A token is a prefix plus 256 random bits (base64url); only its SHA-256
//! ([`HashedToken`]) is stored, in `account_tokens` (see [`crate::db::account_tokens`]). The link
//! points at the application (`AUTHD_LINK_BASE_URL`), whose page calls the matching RPC.

use crate::domain::opaque::{self, HashedToken};

/// Prefix of e-mail verification tokens.
pub const VERIFY_EMAIL_PREFIX: &str = "ev_";
/// Prefix of e-mail change tokens.
pub const CHANGE_EMAIL_PREFIX: &str = "ec_";
/// Longest token a client may present; longer input is refused without hashing. Tokens are 46
/// characters; this leaves room for other prefixes.
pub const MAX_TOKEN_BYTES: usize = 128;

/// A fresh token with `prefix`, and its hash (what the database stores).
pub fn new_token(prefix: &str) -> (String, HashedToken) {
    let token = opaque::random_256(prefix);
    let hash = HashedToken::of(&token);
    (token, hash)
}

/// `<base>/<page>?token=<token>` (tokens are base64url: nothing to escape).
pub fn link(base: &str, page: &str, token: &str) -> String {
    format!("{base}/{page}?token={token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, ha) = new_token(VERIFY_EMAIL_PREFIX);
        let (b, _) = new_token(VERIFY_EMAIL_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with("ev_") && a.len() == 46, "{a}");
        assert!(ha.matches(HashedToken::of(&a).as_bytes()));
        assert!(a.len() <= MAX_TOKEN_BYTES);
        assert_eq!(
            link("https://app.test/auth", "verify-email", &a),
            format!("https://app.test/auth/verify-email?token={a}")
        );
    }
}
