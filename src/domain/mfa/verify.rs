//! The second step of a login: the mfa_token that Login hands out when TOTP is on, VerifyMfa, and
//! the per-account count of wrong codes with its escalating lock and mail.

use diesel_async::AsyncConnection;

use super::{CHALLENGE_MAX_FAILURES, CHALLENGE_TTL, SpendError, Spent, code_input, lock_duration};
use crate::db::mfa::{self, NewMfaChallenge};
use crate::db::models::User;
use crate::db::users;
use crate::domain::audit::{self, AuditEntry, AuditKind};
use crate::domain::authd::chrono_duration;
use crate::domain::mail::Mail;
use crate::domain::opaque::{self, HashedToken, MAX_OPAQUE_BYTES};
use crate::domain::sessions::login::{SessionStart, count_login};
use crate::domain::sessions::{MfaTicket, TokenPair, TokenSubject};
use crate::domain::tokens::{AMR_OTP, AMR_PASSWORD};
use crate::domain::{AuthFailure, Authd, ClientInfo, Error, Result};

fn bad_ticket() -> Error {
    Error::Unauthenticated(AuthFailure::MfaTokenInvalid)
}

impl Authd {
    /// After a right password: when `user` has TOTP on, a new mfa_token bound to this login (no
    /// session yet); None when the account has no second factor.
    pub(in crate::domain) async fn mfa_challenge(
        &self,
        user: &User,
        client: &ClientInfo,
    ) -> Result<Option<MfaTicket>> {
        let mut conn = self.conn().await?;
        let on = mfa::find(&mut conn, user.id)
            .await?
            .is_some_and(|r| r.seed.is_some());
        if !on {
            return Ok(None);
        }
        let now = self.now();
        let token = opaque::new_mfa_token();
        let ip = client.ip_string();
        mfa::insert_challenge(
            &mut conn,
            &NewMfaChallenge {
                token_hash: HashedToken::of(&token).as_bytes(),
                user_id: user.id,
                create_time: now,
                expire_time: now + chrono_duration(CHALLENGE_TTL),
                ip_address: &ip,
                user_agent: &client.user_agent,
            },
        )
        .await?;
        Ok(Some(MfaTicket(token)))
    }

    /// VerifyMfa: the mfa_token of a Login and a TOTP or recovery code open the session.
    pub async fn verify_mfa(
        &self,
        mfa_token: &str,
        code: &str,
        client: &ClientInfo,
    ) -> Result<TokenPair> {
        self.rate_limiter.check(client.ip)?;
        let mfa_token = mfa_token.trim();
        if mfa_token.is_empty() {
            return Err(Error::invalid("mfa_token is required"));
        }
        if mfa_token.len() > MAX_OPAQUE_BYTES {
            return Err(Error::invalid(format!(
                "mfa_token must be at most {MAX_OPAQUE_BYTES} bytes"
            )));
        }
        let code = code_input(code)?;
        let hash = HashedToken::of(mfa_token);
        let now = self.now();
        let mut conn = self.conn().await?;
        let challenge =
            mfa::find_challenge(&mut conn, hash.as_bytes(), now, CHALLENGE_MAX_FAILURES)
                .await?
                .ok_or_else(bad_ticket)?;
        let user_id = challenge.user_id;
        let row = mfa::find(&mut conn, user_id).await?;
        // TOTP turned off (or reset) since the password step: the ticket is void.
        let row = self.usable_totp(row, now, bad_ticket)?;
        let user = users::find_by_id(&mut conn, user_id)
            .await?
            .filter(|u| u.active)
            .ok_or_else(bad_ticket)?;
        drop(conn);
        let presented = self.presented(user_id, code);
        let amr = [AMR_PASSWORD.to_owned(), AMR_OTP.to_owned()];
        let mut conn = self.conn().await?;
        let outcome = conn
            .transaction::<_, SpendError, _>(async |conn| {
                // The ticket first: of concurrent callers with one ticket, one gets past here.
                let c = mfa::consume_challenge(conn, hash.as_bytes(), now, CHALLENGE_MAX_FAILURES)
                    .await?
                    .ok_or(SpendError::Failed(bad_ticket()))?;
                let spent = self.spend_code(conn, &row, &presented, now).await?;
                let start = SessionStart {
                    ip: &c.ip_address,
                    user_agent: &c.user_agent,
                    amr: &amr,
                };
                let (session, refresh_token) =
                    self.insert_session(conn, user_id, &start, now).await?;
                users::set_last_login(conn, user_id, now).await?;
                // The session's client is the login's; the audit events name this call's.
                if spent == Spent::Recovery {
                    super::manage::recovery_used(conn, now, user_id, client, "VerifyMfa").await?;
                }
                let method = match spent {
                    Spent::Totp => "totp",
                    Spent::Recovery => "recovery code",
                };
                let entry = AuditEntry::new(AuditKind::LoginSucceeded, client)
                    .user(user_id)
                    .actor(Some(user_id))
                    .detail(format!("session {}; second factor: {method}", session.id));
                audit::record(conn, now, entry).await?;
                Ok((session, refresh_token))
            })
            .await;
        drop(conn);
        let (session, refresh_token) = self
            .settle(outcome, user_id, Some(hash.as_bytes()), client)
            .await?;
        count_login("success");
        self.token_pair(TokenSubject::of(&user), &session, refresh_token, now)
    }

    /// Counts a wrong code against `challenge` (5 void it) and against the account: past
    /// `AUTHD_MFA_MAX_FAILURES` in a row the second factor is locked, audited and the owner mailed,
    /// all in one transaction.
    pub(in crate::domain) async fn count_wrong_code(
        &self,
        user_id: uuid::Uuid,
        challenge: Option<&[u8]>,
        client: &ClientInfo,
    ) -> Result<()> {
        let now = self.now();
        let max = i32::try_from(self.settings.mfa.max_failures).unwrap_or(i32::MAX);
        let mut conn = self.conn().await?;
        let mailed = conn
            .transaction::<_, Error, _>(async |conn| {
                if let Some(hash) = challenge {
                    mfa::fail_challenge(conn, hash, now, CHALLENGE_MAX_FAILURES).await?;
                }
                let Some(row) = mfa::lock(conn, user_id).await? else {
                    return Ok(false);
                };
                let failures = row.failures.saturating_add(1);
                if failures < max {
                    mfa::set_failures(conn, user_id, failures, row.lock_level, row.locked_until, now)
                        .await?;
                    return Ok(false);
                }
                let lock = lock_duration(row.lock_level);
                let until = now + chrono_duration(lock);
                mfa::set_failures(conn, user_id, 0, row.lock_level.saturating_add(1), Some(until), now)
                    .await?;
                let entry = AuditEntry::new(AuditKind::MfaLocked, client)
                    .user(user_id)
                    .detail(format!(
                        "{failures} wrong codes in a row; locked for {} s",
                        lock.as_secs()
                    ));
                audit::record(conn, now, entry).await?;
                let Some(user) = users::find_by_id(conn, user_id).await? else {
                    return Ok(false);
                };
                let mail = Mail {
                    to: user.email.clone(),
                    kind: "mfa_locked".into(),
                    context: serde_json::json!({
                        "email": user.email,
                        "minutes": lock.as_secs().div_ceil(60),
                        "failures": failures,
                    }),
                    live_link: false,
                };
                self.mailer.queue(conn, &mail, now).await?;
                tracing::warn!(%user_id, lock_secs = lock.as_secs(), "second factor locked after wrong codes");
                Ok(true)
            })
            .await?;
        if mailed {
            self.mailer.wake();
        }
        Ok(())
    }
}
