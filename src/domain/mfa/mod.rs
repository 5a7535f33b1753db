//! The second factor: TOTP (RFC 6238) with single-use recovery codes.
//!
//! - **Enrolment** (`manage.rs`): EnrollTotp stores a new 20-byte seed as *pending*, sealed under
//!   `AUTHD_MASTER_KEY` like the signing keys (the keystore's XChaCha20-Poly1305, bound to
//!   `totp_seed:<user id>`), and returns it as base32, an `otpauth://` URI and that URI as a QR
//!   PNG. ConfirmTotp with a code of the pending seed switches it on, returns 10 recovery codes and
//!   revokes the caller's other sessions (as a password change does).
//! - **Login** (`verify.rs`): with TOTP on, a right password gets an `mfa_token` instead of a
//!   session (SHA-256 stored in `mfa_challenges`: 5 minutes, single use, bound to the user and to
//!   the login's client, void after [`CHALLENGE_MAX_FAILURES`] wrong codes). VerifyMfa with a TOTP
//!   code or a recovery code opens the session, whose `amr` is `["pwd","otp"]`.
//! - **Codes** ([`totp`]): SHA-1, 6 digits, 30 s steps, one step of drift either way. A code is
//!   accepted only for a step later than the last accepted one, checked and set in one UPDATE, so
//!   of concurrent callers with one code exactly one wins and no code works twice. Recovery codes
//!   ([`recovery`]) are 80 random bits each, stored as HMAC-SHA256 under the server secret
//!   [`RECOVERY_SECRET`], spent by one atomic UPDATE.
//! - **Wrong codes** count per account across logins (a right password does not reset the count):
//!   after `AUTHD_MFA_MAX_FAILURES` in a row the second factor is locked for [`LOCK_BASE`], doubling
//!   with each further lock up to [`LOCK_CAP`], and the owner gets an `mfa_locked` mail, queued in
//!   the transaction that sets the lock. A right code clears the count *and* the lock level: the
//!   level only escalates against someone who keeps failing. Replays (a right code of a spent step,
//!   a spent recovery code) are refused but not counted: they tell a guesser nothing.
//! - **Turning it off**: DisableTotp (password and code) and ResetUserMfa (ADMIN) delete the seed,
//!   the recovery codes and pending challenges, and revoke sessions (the caller's others; all of
//!   the target's).

mod manage;
pub mod qr;
pub mod recovery;
pub mod totp;
mod verify;

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::mfa::UserTotp;
use crate::domain::{AuthFailure, Authd, Error, Result};
use crate::metric_names::MFA_VERIFICATIONS;

pub use manage::{Enrollment, RecoveryCodes};

/// Name of the server secret that keys recovery-code hashes.
pub const RECOVERY_SECRET: &str = "recovery_code_hmac";
/// Recovery codes per account.
pub const RECOVERY_CODES: usize = 10;
/// How long an mfa_token lasts.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(300);
/// Wrong codes that void an mfa_token.
pub const CHALLENGE_MAX_FAILURES: i32 = 5;
/// The first lock after too many wrong codes.
pub const LOCK_BASE: Duration = Duration::from_secs(300);
/// The longest lock.
pub const LOCK_CAP: Duration = Duration::from_secs(86_400);
/// At most this many characters of a presented code.
pub const MAX_CODE_CHARS: usize = 64;

/// The lock after `level` earlier locks: [`LOCK_BASE`] doubled per level, at most [`LOCK_CAP`].
pub fn lock_duration(level: i32) -> Duration {
    let doublings = u32::try_from(level.clamp(0, 16)).unwrap_or(0);
    LOCK_BASE.saturating_mul(1u32 << doublings).min(LOCK_CAP)
}

/// The sealing context (associated data) of a user's seed.
fn seed_aad(user_id: Uuid) -> String {
    format!("totp_seed:{user_id}")
}

/// A presented code, classified (before any database work).
#[derive(Clone)]
pub(in crate::domain) enum Presented {
    /// Six digits.
    Totp(String),
    /// A well-formed recovery code, as its keyed hash.
    Recovery(Vec<u8>),
    /// Neither: a wrong code.
    Malformed,
}

/// Why a code that was checked did not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::domain) enum Refusal {
    /// A wrong code: counted against the account (and the mfa_token).
    Wrong,
    /// A right code already used: refused, not counted.
    Replay,
}

/// The error of a transaction that spends a code: a refusal to count afterwards, or a failure.
#[derive(Debug)]
pub(in crate::domain) enum SpendError {
    Refused(Refusal),
    Failed(Error),
}

impl From<diesel::result::Error> for SpendError {
    fn from(e: diesel::result::Error) -> Self {
        SpendError::Failed(e.into())
    }
}

impl From<crate::db::DbError> for SpendError {
    fn from(e: crate::db::DbError) -> Self {
        SpendError::Failed(e.into())
    }
}

impl From<Error> for SpendError {
    fn from(e: Error) -> Self {
        SpendError::Failed(e)
    }
}

/// Which factor a spent code was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::domain) enum Spent {
    Totp,
    Recovery,
}

/// Counts a checked code in `authd_mfa_verifications_total{result}`.
fn count(result: &'static str) {
    metrics::counter!(MFA_VERIFICATIONS, "result" => result).increment(1);
}

/// A required code: INVALID_ARGUMENT when empty or over [`MAX_CODE_CHARS`].
pub(in crate::domain) fn code_input(code: &str) -> Result<&str> {
    let code = code.trim();
    if code.is_empty() {
        return Err(Error::invalid("code is required"));
    }
    if code.chars().count() > MAX_CODE_CHARS {
        return Err(Error::invalid(format!(
            "code must be at most {MAX_CODE_CHARS} characters"
        )));
    }
    Ok(code)
}

impl Authd {
    /// Classifies a presented code of `user_id`.
    pub(in crate::domain) fn presented(&self, user_id: Uuid, code: &str) -> Presented {
        if totp::is_code(code) {
            return Presented::Totp(code.to_owned());
        }
        match recovery::normalize(code) {
            Some(normal) => {
                Presented::Recovery(recovery::hash(&self.recovery_secret, user_id, &normal))
            }
            None => Presented::Malformed,
        }
    }

    /// The plaintext of a stored seed.
    pub(in crate::domain) fn open_seed(
        &self,
        user_id: Uuid,
        stored: &[u8],
        sealed: bool,
    ) -> Result<Vec<u8>> {
        self.keystore.open_row(stored, sealed, &seed_aad(user_id))
    }

    /// The current time step.
    pub(in crate::domain) fn totp_step(&self, now: DateTime<Utc>) -> i64 {
        totp::step_at(now.timestamp())
    }

    /// The account's TOTP row when TOTP is on and not locked: FAILED_PRECONDITION when it is off,
    /// RESOURCE_EXHAUSTED (with retry-after) while it is locked.
    pub(in crate::domain) fn usable_totp(
        &self,
        row: Option<UserTotp>,
        now: DateTime<Utc>,
        off: impl FnOnce() -> Error,
    ) -> Result<UserTotp> {
        let row = match row {
            Some(r) if r.seed.is_some() => r,
            _ => return Err(off()),
        };
        if let Some(until) = row.locked_until.filter(|u| *u > now) {
            count("locked");
            return Err(Error::ResourceExhausted {
                message: "too many wrong codes: the second factor is locked, retry later".into(),
                retry_after: (until - now).to_std().ok(),
            });
        }
        Ok(row)
    }

    /// Spends `presented` for `row`'s account inside the caller's transaction: the TOTP step's
    /// check-and-set, or the recovery code's single use. On a refusal the caller rolls back and
    /// calls [`Authd::refused`].
    pub(in crate::domain) async fn spend_code(
        &self,
        conn: &mut crate::db::PgConn,
        row: &UserTotp,
        presented: &Presented,
        now: DateTime<Utc>,
    ) -> Result<Spent, SpendError> {
        match presented {
            Presented::Totp(code) => {
                let stored = row
                    .seed
                    .as_deref()
                    .ok_or(SpendError::Refused(Refusal::Wrong))?;
                let seed = self.open_seed(row.user_id, stored, row.seed_sealed)?;
                let Some(step) = totp::matching_step(&seed, code, self.totp_step(now)) else {
                    return Err(SpendError::Refused(Refusal::Wrong));
                };
                if crate::db::mfa::accept_step(conn, row.user_id, step, now).await? {
                    Ok(Spent::Totp)
                } else {
                    Err(SpendError::Refused(Refusal::Replay))
                }
            }
            Presented::Recovery(hash) => {
                use crate::db::mfa::RecoveryUse;
                match crate::db::mfa::use_recovery_code(conn, row.user_id, hash, now).await? {
                    RecoveryUse::Spent => {
                        crate::db::mfa::clear_failures(conn, row.user_id, now).await?;
                        Ok(Spent::Recovery)
                    }
                    RecoveryUse::AlreadyUsed => Err(SpendError::Refused(Refusal::Replay)),
                    RecoveryUse::Unknown => Err(SpendError::Refused(Refusal::Wrong)),
                }
            }
            Presented::Malformed => Err(SpendError::Refused(Refusal::Wrong)),
        }
    }

    /// After a transaction that spent a code: the metric, and for a refusal the error to answer,
    /// once a wrong code has been counted against the account (and `challenge`, if any).
    pub(in crate::domain) async fn settle<T>(
        &self,
        outcome: std::result::Result<T, SpendError>,
        user_id: Uuid,
        challenge: Option<&[u8]>,
        client: &crate::domain::ClientInfo,
    ) -> Result<T> {
        match outcome {
            Ok(v) => {
                count("ok");
                Ok(v)
            }
            Err(SpendError::Failed(e)) => Err(e),
            Err(SpendError::Refused(Refusal::Replay)) => {
                count("replay");
                Err(Error::Unauthenticated(AuthFailure::MfaCodeInvalid))
            }
            Err(SpendError::Refused(Refusal::Wrong)) => {
                count("invalid");
                self.count_wrong_code(user_id, challenge, client).await?;
                Err(Error::Unauthenticated(AuthFailure::MfaCodeInvalid))
            }
        }
    }
}
