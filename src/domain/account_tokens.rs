//! The tokens mailed to a user (issue I): e-mail verification, password reset, e-mail change. A
//! token is a prefix plus 256 random bits (base64url); only its SHA-256 ([`HashedToken`]) is stored
//! (see [`crate::db::account_tokens`]). [`link`] builds the application page's URL that carries it.

use crate::domain::opaque::{HashedToken, random_256};

/// Upper bound on a presented mailed token; longer input is refused unhashed.
pub const MAX_TOKEN_BYTES: usize = 512;

/// A fresh token with `prefix`, and its hash to store.
pub fn new_token(prefix: &str) -> (String, HashedToken) {
    let token = random_256(prefix);
    let hash = HashedToken::of(&token);
    (token, hash)
}

/// `<base>/<page>?token=<token>`: `base` is `AUTHD_LINK_BASE_URL` (no trailing `/`). Tokens are
/// base64url with an ASCII prefix, so they need no escaping.
pub fn link(base: &str, page: &str, token: &str) -> String {
    format!("{base}/{page}?token={token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_hashed() {
        let (a, ha) = new_token("pr_");
        let (b, hb) = new_token("pr_");
        assert!(a.starts_with("pr_") && a.len() == 3 + 43);
        assert_ne!(a, b);
        assert!(ha.matches(HashedToken::of(&a).as_bytes()));
        assert!(!hb.matches(ha.as_bytes()));
        assert_eq!(
            link("https://app.example/auth", "reset-password", &a),
            format!("https://app.example/auth/reset-password?token={a}")
        );
    }
}
