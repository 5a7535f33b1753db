//! Password rules and bcrypt hashing.
//!
//! Passwords are normalized to NFKC first; the rules apply to the normalized form: at least 8 Unicode
//! scalar values and at most 72 bytes of UTF-8 (bcrypt's limit; longer input is rejected, never
//! truncated). Raw input over [`MAX_PASSWORD_INPUT_BYTES`] is refused before normalizing.
//!
//! New passwords must also reach a minimum zxcvbn strength score (`AUTHD_MIN_PASSWORD_SCORE`, default
//! 3 of 4), estimated with the account's e-mail and username as context. There are no composition rules.
//!
//! bcrypt runs on tokio's blocking pool, never on a runtime worker. Unknown accounts are verified
//! against a dummy hash of the same cost so that they take as long as a wrong password.

use unicode_normalization::UnicodeNormalization;

use super::{Error, Result};

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 72;
/// A hard cap on the raw field, checked before any work (INVALID_ARGUMENT beyond it).
pub const MAX_PASSWORD_INPUT_BYTES: usize = 1024;

/// NFKC normalization.
pub fn normalize(raw: &str) -> String {
    raw.nfkc().collect()
}

/// Checks a new password (Register, and later password changes) and returns its normalized form.
pub fn new_password(field: &str, raw: &str) -> Result<String> {
    if raw.is_empty() {
        return Err(Error::invalid(format!("{field} is required")));
    }
    if raw.len() > MAX_PASSWORD_INPUT_BYTES {
        return Err(Error::invalid(format!(
            "{field} must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    let p = normalize(raw);
    if p.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::invalid(format!(
            "{field} must be at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if p.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid(format!(
            "{field} must be at most {MAX_PASSWORD_BYTES} bytes of UTF-8"
        )));
    }
    Ok(p)
}

/// Refuses a normalized password whose zxcvbn score is below `min_score`, with the estimator's hint.
/// `user_inputs` (e-mail, username) count as known words.
pub fn check_strength(
    field: &str,
    password: &str,
    min_score: u8,
    user_inputs: &[&str],
) -> Result<()> {
    if min_score == 0 {
        return Ok(());
    }
    // zxcvbn matches user inputs as whole tokens: give it each input and its words, so that the
    // local part of an e-mail address, or a part of it, counts as known.
    let mut inputs: Vec<&str> = Vec::new();
    for s in user_inputs.iter().filter(|s| !s.is_empty()) {
        inputs.push(s);
        if let Some((local, _)) = s.split_once('@') {
            inputs.push(local);
        }
        inputs.extend(
            s.split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.len() >= 3),
        );
    }
    let estimate = zxcvbn::zxcvbn(password, &inputs);
    let score = u8::from(estimate.score());
    if score >= min_score {
        return Ok(());
    }
    let mut hint =
        format!("{field} is too weak (strength {score} of 4, at least {min_score} needed).");
    if let Some(feedback) = estimate.feedback() {
        if let Some(w) = feedback.warning() {
            hint.push_str(&format!(" {w}."));
        }
        for s in feedback.suggestions() {
            hint.push_str(&format!(" {s}"));
        }
    }
    if !hint.contains("Add another word") {
        hint.push_str(" Longer passphrases of unrelated words are strong and easy to remember.");
    }
    Err(Error::InvalidArgument(hint.replace("..", ".")))
}

/// The cost of a bcrypt hash (`$2b$12$...`), if it parses.
pub fn hash_cost(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
}

/// A password offered to prove identity (Login and re-authentication). `Ok(None)` means it cannot
/// match any stored hash (too long or too short after normalizing), which callers treat as wrong.
pub fn presented_password(field: &str, raw: &str) -> Result<Option<String>> {
    if raw.is_empty() {
        return Err(Error::invalid(format!("{field} is required")));
    }
    if raw.len() > MAX_PASSWORD_INPUT_BYTES {
        return Err(Error::invalid(format!(
            "{field} must be at most {MAX_PASSWORD_INPUT_BYTES} bytes"
        )));
    }
    let p = normalize(raw);
    if p.len() > MAX_PASSWORD_BYTES || p.chars().count() < MIN_PASSWORD_CHARS {
        return Ok(None);
    }
    Ok(Some(p))
}

/// Hashes and verifies passwords off the async runtime.
#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    dummy_hash: String,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// Prepares the dummy hash for unknown accounts (one bcrypt run at `cost`).
    pub async fn new(cost: u32) -> Result<Self> {
        let dummy_hash = blocking(move || {
            let mut seed = [0u8; 16];
            rand::Rng::fill(&mut rand::thread_rng(), &mut seed);
            bcrypt::hash(hex_encode(&seed), cost).map_err(Error::internal)
        })
        .await??;
        Ok(Self { cost, dummy_hash })
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// Hashes a normalized password (see [`new_password`]).
    pub async fn hash(&self, password: String) -> Result<String> {
        let cost = self.cost;
        blocking(move || bcrypt::hash(password, cost).map_err(Error::internal)).await?
    }

    /// Verifies a normalized password against `hash`, or against the dummy hash when `hash` is None
    /// (unknown account) or the password cannot match, so every failure costs the same.
    pub async fn verify(&self, password: Option<String>, hash: Option<&str>) -> Result<bool> {
        let real = password.is_some() && hash.is_some();
        let hash = hash.unwrap_or(&self.dummy_hash).to_owned();
        let password = password.unwrap_or_default();
        let ok = blocking(move || bcrypt::verify(password, &hash).unwrap_or(false)).await?;
        Ok(real && ok)
    }
}

/// Runs bcrypt work on the blocking pool. `authd_bcrypt_queue_depth` counts it from submission until
/// it finishes (or is dropped unrun), whether or not the caller still waits for it.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let queued = QueueDepth::enter();
    tokio::task::spawn_blocking(move || {
        let _queued = queued;
        f()
    })
    .await
    .map_err(|e| Error::internal(format!("blocking task failed: {e}")))
}

/// One unit of `authd_bcrypt_queue_depth`, released on drop.
struct QueueDepth;

impl QueueDepth {
    fn enter() -> Self {
        metrics::gauge!(crate::metrics::BCRYPT_QUEUE_DEPTH).increment(1.0);
        QueueDepth
    }
}

impl Drop for QueueDepth {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::BCRYPT_QUEUE_DEPTH).decrement(1.0);
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_apply_to_the_normalized_password() {
        // U+FB01 (ﬁ) normalizes to "fi" under NFKC.
        assert_eq!(normalize("\u{FB01}"), "fi");
        assert!(new_password("password", "short").is_err());
        assert!(new_password("password", "").is_err());
        // 7 ligatures -> 14 characters after NFKC.
        assert!(new_password("password", &"\u{FB01}".repeat(7)).is_ok());
        assert!(new_password("password", &"a".repeat(72)).is_ok());
        assert!(new_password("password", &"a".repeat(73)).is_err());
        // 24 three-byte characters = 72 bytes; 25 = 75 bytes.
        assert!(new_password("password", &"€".repeat(24)).is_ok());
        assert!(new_password("password", &"€".repeat(25)).is_err());
        assert!(new_password("password", &"a".repeat(5000)).is_err());
    }

    #[test]
    fn presented_passwords_that_cannot_match() {
        assert!(presented_password("password", "").is_err());
        assert!(matches!(
            presented_password("password", &"a".repeat(73)),
            Ok(None)
        ));
        assert!(presented_password("password", &"a".repeat(2000)).is_err());
        assert!(matches!(
            presented_password("password", "correct horse"),
            Ok(Some(_))
        ));
    }

    #[test]
    fn strength() {
        assert!(check_strength("password", "password1", 3, &[]).is_err());
        assert!(check_strength("password", "Correct-Horse-Battery-Staple-42", 3, &[]).is_ok());
        // The account's own e-mail is a known word.
        let email = "margaret.hamilton.apollo@example.com";
        assert!(check_strength("password", "margaret.hamilton.apollo", 3, &[email]).is_err());
        assert!(check_strength("password", "password1", 0, &[]).is_ok());
        let err = check_strength("password", "qwertyuiop", 3, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("too weak"), "{err}");
    }

    #[test]
    fn costs() {
        assert_eq!(hash_cost("$2b$04$abcdefghijklmnopqrstuv"), Some(4));
        assert_eq!(hash_cost("$2y$12$x"), Some(12));
        assert_eq!(hash_cost("garbage"), None);
    }

    #[tokio::test]
    async fn hash_and_verify() -> Result<()> {
        let h = PasswordHasher::new(4).await?;
        let hash = h.hash("correct horse battery".into()).await?;
        assert!(
            h.verify(Some("correct horse battery".into()), Some(&hash))
                .await?
        );
        assert!(
            !h.verify(Some("wrong horse battery".into()), Some(&hash))
                .await?
        );
        assert!(!h.verify(Some("correct horse battery".into()), None).await?);
        assert!(!h.verify(None, Some(&hash)).await?);
        Ok(())
    }
}
