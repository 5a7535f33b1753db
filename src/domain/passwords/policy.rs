//! The password rules: NFKC normalization, length limits, and the zxcvbn strength of new passwords
//! (see the module docs of `passwords`).

use unicode_normalization::UnicodeNormalization;

use crate::domain::{Error, Result};

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
