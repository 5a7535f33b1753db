//! Password rules and bcrypt hashing.
//!
//! Passwords are normalized to NFKC first; the rules apply to the normalized form: at least 8 Unicode
//! scalar values and at most 72 bytes of UTF-8 (bcrypt's limit; longer input is rejected, never
//! truncated). Raw input over [`MAX_PASSWORD_INPUT_BYTES`] is refused before normalizing.
//!
//! New passwords must also reach a minimum zxcvbn strength score (`AUTHD_MIN_PASSWORD_SCORE`, default
//! 3 of 4), estimated with the account's e-mail and username as context. There are no composition rules.
//!
//! Unknown accounts are verified against a dummy hash of the same cost so that they take as long as a
//! wrong password. A failed check against a stored hash cheaper than `AUTHD_BCRYPT_COST` (made before
//! the cost was raised) is padded, in the same pool job, with a verification against the dummy hash,
//! so that it costs at least as much as a check at the configured cost and known accounts with old
//! hashes do not answer faster than unknown ones (`authd_bcrypt_padded_total` counts these).
//!
//!
//! Files: `policy.rs` (the rules of new and presented passwords), `hasher.rs` ([`PasswordHasher`]:
//! hashing and verification, the dummy hash, cost upgrades), `pool.rs` (the bcrypt thread pool, its
//! fair queues and admission by deadline; the pool is described in its module docs), `jobs.rs`
//! (what the hasher and the pool share: the pool settings, a job's admission, run times).

mod hasher;
mod jobs;
mod policy;
mod pool;
#[cfg(test)]
mod tests;

pub use hasher::*;
pub use policy::*;
