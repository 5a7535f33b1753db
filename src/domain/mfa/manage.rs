//! Turning the second factor on and off: EnrollTotp, ConfirmTotp, DisableTotp,
//! RegenerateRecoveryCodes and ResetUserMfa (ADMIN).

use diesel_async::AsyncConnection;
use rand::RngCore;

use super::{SpendError, code_input, recovery, seed_aad, totp};
use crate::db::{DbError, mfa, users};
use crate::domain::audit::{AuditEntry, AuditKind};
use crate::domain::authd::REDACTED;
use crate::domain::sessions::revocation;
use crate::domain::{AuthFailure, Authd, ClientInfo, Error, Principal, Result, Role, validate};

/// A pending enrolment, as EnrollTotp returns it. Its Debug hides the secret.
#[derive(Clone)]
pub struct Enrollment {
    /// The seed in base32 (no padding).
    pub secret: String,
    pub otpauth_uri: String,
    pub qr_png: Vec<u8>,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("secret", &REDACTED)
            .finish_non_exhaustive()
    }
}

/// Fresh recovery codes (shown once) and how many other sessions were revoked. Debug hides them.
#[derive(Clone)]
pub struct RecoveryCodes {
    pub codes: Vec<String>,
    pub revoked_sessions: i64,
}

impl std::fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryCodes")
            .field("codes", &REDACTED)
            .field("revoked_sessions", &self.revoked_sessions)
            .finish()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn already_on() -> Error {
    Error::FailedPrecondition("TOTP is already on; disable it first".into())
}

fn is_off() -> Error {
    Error::FailedPrecondition("TOTP is not on".into())
}

impl Authd {
    /// EnrollTotp: a new pending secret (see the module doc of `mfa`).
    pub async fn enroll_totp(
        &self,
        p: &Principal,
        current_password: &str,
        client: &ClientInfo,
    ) -> Result<Enrollment> {
        // As ChangePassword: a missing password is INVALID_ARGUMENT, a wrong one UNAUTHENTICATED.
        if current_password.is_empty() {
            return Err(Error::invalid("current_password is required"));
        }
        let user = self
            .reauthenticate(p.user_id, current_password, client)
            .await?;
        let mut seed = vec![0u8; totp::SEED_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let (stored, sealed) = self.keystore.seal_row(&seed, &seed_aad(user.id))?;
        let now = self.now();
        self.conn()
            .await?
            .transaction::<_, Error, _>(async |conn| {
                if mfa::lock(conn, user.id)
                    .await?
                    .is_some_and(|r| r.seed.is_some())
                {
                    return Err(already_on());
                }
                mfa::set_pending(conn, user.id, &stored, sealed, now).await?;
                Ok(())
            })
            .await?;
        let secret = totp::base32(&seed);
        let issuer = &self.settings.mfa.totp_issuer;
        let otpauth_uri = format!(
            "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits={}&period={}",
            percent(issuer),
            percent(&user.email),
            percent(issuer),
            totp::DIGITS,
            totp::STEP_SECS,
        );
        let qr_png = super::qr::png(&otpauth_uri)?;
        Ok(Enrollment {
            secret,
            otpauth_uri,
            qr_png,
        })
    }

    /// ConfirmTotp: switches the pending secret on with one of its codes; returns the recovery
    /// codes and revokes the caller's other sessions.
    pub async fn confirm_totp(
        &self,
        p: &Principal,
        code: &str,
        client: &ClientInfo,
    ) -> Result<RecoveryCodes> {
        let code = code_input(code)?;
        let now = self.now();
        let row = mfa::find(&mut *self.conn().await?, p.user_id).await?;
        let Some(row) = row else {
            return Err(Error::FailedPrecondition(
                "no pending TOTP enrolment: call EnrollTotp first".into(),
            ));
        };
        if row.seed.is_some() {
            return Err(already_on());
        }
        let Some(pending) = row.pending_seed.as_deref() else {
            return Err(Error::FailedPrecondition(
                "no pending TOTP enrolment: call EnrollTotp first".into(),
            ));
        };
        let seed = self.open_seed(p.user_id, pending, row.pending_sealed)?;
        let step = totp::is_code(code)
            .then(|| totp::matching_step(&seed, code, self.totp_step(now)))
            .flatten()
            .ok_or(Error::Unauthenticated(AuthFailure::MfaCodeInvalid))?;
        let codes: Vec<String> = (0..super::RECOVERY_CODES)
            .map(|_| recovery::generate())
            .collect();
        let hashes = self.recovery_hashes(p.user_id, &codes);
        let mut conn = self.conn().await?;
        let revoked = conn
            .transaction::<_, Error, _>(async |conn| {
                if !mfa::enable(conn, p.user_id, pending, step, now).await? {
                    // A concurrent EnrollTotp or ConfirmTotp changed the enrolment.
                    return Err(Error::FailedPrecondition(
                        "the TOTP enrolment changed meanwhile: enroll again".into(),
                    ));
                }
                mfa::replace_recovery_codes(conn, p.user_id, &hashes, now).await?;
                Ok(revocation::revoke_user_sessions(
                    conn,
                    now,
                    p.user_id,
                    Some(p.session_id),
                    "mfa_enabled",
                    |n| {
                        Some(
                            AuditEntry::new(AuditKind::MfaEnabled, client)
                                .user(p.user_id)
                                .actor(Some(p.user_id))
                                .detail(format!("{n} other session(s) revoked")),
                        )
                    },
                )
                .await?)
            })
            .await?;
        let revoked_sessions = self.publish(&mut conn, revoked).await;
        Ok(RecoveryCodes {
            codes,
            revoked_sessions,
        })
    }

    /// DisableTotp: the password, then a code (TOTP or recovery); revokes the caller's other
    /// sessions. Returns how many.
    pub async fn disable_totp(
        &self,
        p: &Principal,
        current_password: &str,
        code: &str,
        client: &ClientInfo,
    ) -> Result<i64> {
        if current_password.is_empty() {
            return Err(Error::invalid("current_password is required"));
        }
        let code = code_input(code)?;
        self.reauthenticate(p.user_id, current_password, client)
            .await?;
        let now = self.now();
        let row = mfa::find(&mut *self.conn().await?, p.user_id).await?;
        let row = self.usable_totp(row, now, is_off)?;
        let presented = self.presented(p.user_id, code);
        let mut conn = self.conn().await?;
        let outcome = conn
            .transaction::<_, SpendError, _>(async |conn| {
                let spent = self.spend_code(conn, &row, &presented, now).await?;
                if spent == super::Spent::Recovery {
                    recovery_used(conn, now, p.user_id, client, "DisableTotp").await?;
                }
                mfa::delete_all(conn, p.user_id).await?;
                Ok(revocation::revoke_user_sessions(
                    conn,
                    now,
                    p.user_id,
                    Some(p.session_id),
                    "mfa_disabled",
                    |n| {
                        Some(
                            AuditEntry::new(AuditKind::MfaDisabled, client)
                                .user(p.user_id)
                                .actor(Some(p.user_id))
                                .detail(format!("{n} other session(s) revoked")),
                        )
                    },
                )
                .await?)
            })
            .await;
        let revoked = self.settle(outcome, p.user_id, None, client).await?;
        Ok(self.publish(&mut conn, revoked).await)
    }

    /// RegenerateRecoveryCodes: a code (TOTP or recovery), then 10 new codes replace all.
    pub async fn regenerate_recovery_codes(
        &self,
        p: &Principal,
        code: &str,
        client: &ClientInfo,
    ) -> Result<Vec<String>> {
        let code = code_input(code)?;
        let now = self.now();
        let row = mfa::find(&mut *self.conn().await?, p.user_id).await?;
        let row = self.usable_totp(row, now, is_off)?;
        let presented = self.presented(p.user_id, code);
        let codes: Vec<String> = (0..super::RECOVERY_CODES)
            .map(|_| recovery::generate())
            .collect();
        let hashes = self.recovery_hashes(p.user_id, &codes);
        let outcome = self
            .conn()
            .await?
            .transaction::<_, SpendError, _>(async |conn| {
                let spent = self.spend_code(conn, &row, &presented, now).await?;
                if spent == super::Spent::Recovery {
                    recovery_used(conn, now, p.user_id, client, "RegenerateRecoveryCodes").await?;
                }
                mfa::replace_recovery_codes(conn, p.user_id, &hashes, now).await?;
                let entry = AuditEntry::new(AuditKind::RecoveryCodesRegenerated, client)
                    .user(p.user_id)
                    .actor(Some(p.user_id));
                crate::domain::audit::record(conn, now, entry).await?;
                Ok(())
            })
            .await;
        self.settle(outcome, p.user_id, None, client).await?;
        Ok(codes)
    }

    /// ResetUserMfa (ADMIN): turns a user's second factor off and revokes all their sessions.
    pub async fn reset_user_mfa(
        &self,
        p: &Principal,
        user_id: &str,
        client: &ClientInfo,
    ) -> Result<i64> {
        p.require(Role::Admin)?;
        let target = validate::uuid("user_id", user_id)?;
        let now = self.now();
        let mut conn = self.conn().await?;
        let revoked = conn
            .transaction::<_, Error, _>(async |conn| {
                if users::find_by_id(conn, target).await?.is_none() {
                    return Err(Error::NotFound("user not found".into()));
                }
                if !mfa::delete_all(conn, target).await? {
                    return Err(Error::FailedPrecondition(
                        "TOTP is not on for this user".into(),
                    ));
                }
                Ok(
                    revocation::revoke_user_sessions(conn, now, target, None, "mfa_reset", |n| {
                        Some(
                            AuditEntry::new(AuditKind::MfaReset, client)
                                .user(target)
                                .actor(Some(p.user_id))
                                .detail(format!("{n} session(s) revoked")),
                        )
                    })
                    .await?,
                )
            })
            .await?;
        Ok(self.publish(&mut conn, revoked).await)
    }

    fn recovery_hashes(&self, user_id: uuid::Uuid, codes: &[String]) -> Vec<Vec<u8>> {
        codes
            .iter()
            .filter_map(|c| recovery::normalize(c))
            .map(|n| recovery::hash(&self.recovery_secret, user_id, &n))
            .collect()
    }
}

/// Records RECOVERY_CODE_USED (with what it was used for) and how many codes are left.
pub(super) async fn recovery_used(
    conn: &mut crate::db::PgConn,
    now: chrono::DateTime<chrono::Utc>,
    user_id: uuid::Uuid,
    client: &ClientInfo,
    what: &str,
) -> Result<(), DbError> {
    let left = mfa::unused_recovery_codes(conn, user_id).await?;
    let entry = AuditEntry::new(AuditKind::RecoveryCodeUsed, client)
        .user(user_id)
        .actor(Some(user_id))
        .detail(format!("{what}; {left} unused recovery code(s) left"));
    crate::domain::audit::record(conn, now, entry).await
}
