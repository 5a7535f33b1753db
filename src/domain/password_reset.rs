//! Password reset (issue I): RequestPasswordReset, the background job that turns requests into
//! mails, and ResetPassword.
//!
//! **No enumeration.** [`Authd::request_password_reset`] does the same work for every well-formed
//! address: it applies the rate limits and inserts one `password_reset_requests` row (see
//! [`crate::db::password_resets`]), nothing else, so neither its answer (always OK) nor its time
//! depends on whether an account exists. The limits, per address and per client key, are counted
//! from those rows in the database (every replica together) and apply identically to known and
//! unknown addresses. Both calls also take the in-memory per-client bucket
//! (`AUTHD_RATE_LIMIT_PER_IP`) first, as VerifyEmail and ConfirmEmailChange do: a client guessing
//! reset tokens gets RESOURCE_EXHAUSTED before any query.
//!
//! **The job.** [`Authd::process_password_resets`] (run by `server::background::password_reset_loop`
//! on every replica, woken at once by a local request, otherwise polling) claims requests one at a
//! time (`FOR UPDATE SKIP LOCKED`). For an active account it creates a reset token (at most
//! [`RESET_TOKEN_CAP`] live per account; a new one never voids the others, so a stranger who asks
//! for links cannot kill the owner's) and queues the `password_reset` mail in the same
//! transaction. Requests for unknown or inactive addresses, and for accounts that already have
//! [`RESET_TOKEN_CAP`] live links, are just marked processed.
//!
//! **ResetPassword** ([`Authd::reset_password`]) looks the token up without spending it, checks the
//! new password against the policy (a weak password is INVALID_ARGUMENT and the link still works),
//! hashes it on the bcrypt pool, and then, in one transaction: spends the token (one UPDATE: of
//! concurrent resets with one token exactly one gets it), sets the password, marks the address
//! verified, voids the account's other reset tokens, revokes every session (audited
//! `PASSWORD_RESET`) and queues the `password_changed` notice. A bad, used, voided or expired
//! token is UNAUTHENTICATED with one message ([`AuthFailure::BadResetToken`]).

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use uuid::Uuid;

use crate::db::account_tokens::{self as tokens_db, NewAccountToken, Purpose};
use crate::db::models::UserChanges;
use crate::db::password_resets::{self, Limits, ResetRequest};
use crate::db::{self, users};
use crate::domain::account_tokens::{MAX_TOKEN_BYTES, link, new_token};
use crate::domain::audit::{AuditEntry, AuditKind};
use crate::domain::authd::chrono_duration;
use crate::domain::mail::Mail;
use crate::domain::opaque::HashedToken;
use crate::domain::sessions::revocation;
use crate::domain::{AuthFailure, Authd, ClientInfo, Error, Result, passwords, validate};
use crate::metric_names as m;

/// The prefix of a reset token ("password reset").
pub const RESET_TOKEN_PREFIX: &str = "pr_";
/// Live reset tokens an account may have at once.
pub const RESET_TOKEN_CAP: i64 = 3;
/// The page of the application that a reset link opens (`<AUTHD_LINK_BASE_URL>/reset-password`).
pub const RESET_PAGE: &str = "reset-password";
/// The window of the request limits.
pub const RATE_WINDOW_SECS: i64 = 3600;

/// The `password_changed` notice to `email`; `how` is `reset` or `changed`.
pub(in crate::domain) fn password_changed_mail(email: &str, how: &str, now: DateTime<Utc>) -> Mail {
    Mail {
        to: email.to_owned(),
        kind: "password_changed".into(),
        context: serde_json::json!({
            "email": email,
            "how": how,
            "time": now.format("%Y-%m-%d %H:%M UTC").to_string(),
        }),
        live_link: false,
    }
}

impl Authd {
    /// Queues a `password_changed` notice on `conn` (the change's transaction). An address the
    /// mailer cannot parse (it was valid for authd, say, but not for lettre) skips the notice with a
    /// warning rather than failing the change; any other error fails it.
    pub(in crate::domain) async fn queue_password_notice(
        &self,
        conn: &mut db::PgConn,
        user_id: Uuid,
        email: &str,
        how: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        match self
            .mailer
            .queue(conn, &password_changed_mail(email, how, now), now)
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::InvalidArgument(e)) => {
                tracing::warn!(user = %user_id, error = %e, "no password notice: the address cannot be mailed");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

fn bad_token() -> Error {
    Error::Unauthenticated(AuthFailure::BadResetToken)
}

impl Authd {
    /// RequestPasswordReset: OK for every well-formed address, known or not (see the module doc).
    /// RESOURCE_EXHAUSTED with `retry-after` past a limit.
    pub async fn request_password_reset(&self, email: &str, client: &ClientInfo) -> Result<()> {
        self.rate_limiter.check(client.ip)?;
        let email = validate::email(email)?;
        let s = self.settings.password_reset;
        let now = self.now();
        let window = chrono::Duration::seconds(RATE_WINDOW_SECS);
        let limits = Limits {
            per_email: s.per_address_per_hour,
            per_client: s.per_ip_per_hour,
            since: now - window,
        };
        let client_key = client.key_string();
        let inserted = self
            .conn()
            .await?
            .transaction::<_, db::DbError, _>(async |conn| {
                password_resets::insert_limited(conn, &email, &client_key, limits, now).await
            })
            .await?;
        match inserted {
            Ok(_) => {
                metrics::counter!(m::PASSWORD_RESET_REQUESTS).increment(1);
                self.reset_wake.notify_one();
                Ok(())
            }
            Err(limited) => Err(Error::ResourceExhausted {
                message: "too many password reset requests; retry later".into(),
                retry_after: Some(
                    (limited.oldest + window - now)
                        .to_std()
                        .unwrap_or(std::time::Duration::from_secs(1)),
                ),
            }),
        }
    }

    /// Resolves when a request was made on this replica (or had been since the last wait).
    pub async fn password_reset_woken(&self) {
        self.reset_wake.notified().await;
    }

    /// One round of the job: processes waiting requests until none is left; returns how many.
    pub async fn process_password_resets(&self) -> Result<usize> {
        let mut done = 0;
        while self.process_one_reset_request().await? {
            done += 1;
        }
        Ok(done)
    }

    /// Claims and processes one request; false when none waits.
    async fn process_one_reset_request(&self) -> Result<bool> {
        let mut conn = self.conn().await?;
        let processed = conn
            .transaction::<_, Error, _>(async |conn| {
                let Some(req) = password_resets::claim_one(conn).await? else {
                    return Ok(None);
                };
                let now = self.now();
                // A savepoint: a request that cannot be processed (a bug, say) is dropped with an
                // error in the log instead of blocking the queue; an outage stops the round.
                let made = conn
                    .transaction::<_, Error, _>(async |conn| {
                        self.reset_token_for(conn, &req, now).await
                    })
                    .await;
                let mailed = match made {
                    Ok(mailed) => mailed,
                    Err(e @ (Error::Unavailable(_) | Error::DeadlineExceeded)) => return Err(e),
                    Err(e) => {
                        tracing::error!(request = %req.id, error = %e,
                            "a password reset request could not be processed; it is dropped");
                        false
                    }
                };
                password_resets::mark_processed(conn, req.id, now).await?;
                Ok(Some(mailed))
            })
            .await?;
        match processed {
            None => Ok(false),
            Some(mailed) => {
                if mailed {
                    metrics::counter!(m::PASSWORD_RESET_MAILS).increment(1);
                    self.mailer.wake();
                }
                Ok(true)
            }
        }
    }

    /// For an active account with fewer than [`RESET_TOKEN_CAP`] live links: a new reset token
    /// and its mail, on `conn` (the caller's transaction). Returns whether a mail was queued.
    async fn reset_token_for(
        &self,
        conn: &mut db::PgConn,
        req: &ResetRequest,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let Some(user) = users::find_by_email(conn, &req.email).await? else {
            return Ok(false);
        };
        if !user.active {
            return Ok(false);
        }
        let (token, hash) = new_token(RESET_TOKEN_PREFIX);
        let ttl = chrono_duration(self.settings.password_reset.ttl);
        let inserted = tokens_db::insert_capped(
            conn,
            &NewAccountToken {
                id: Uuid::now_v7(),
                user_id: user.id,
                purpose: Purpose::ResetPassword.as_str(),
                token_hash: hash.as_bytes(),
                new_email: None,
                session_id: None,
                create_time: now,
                expire_time: now + ttl,
            },
            RESET_TOKEN_CAP,
            now,
        )
        .await?;
        if !inserted {
            tracing::info!(user = %user.id, cap = RESET_TOKEN_CAP,
                "password reset requested for an account with the most live links; none sent");
            return Ok(false);
        }
        let mail = Mail {
            to: user.email.clone(),
            kind: "password_reset".into(),
            context: serde_json::json!({
                "email": user.email,
                "link": link(&self.settings.mail.link_base_url, RESET_PAGE, &token),
                "token": token,
                "ttl_minutes": ttl.num_minutes().max(1),
            }),
            live_link: true,
        };
        self.mailer.queue(conn, &mail, now).await?;
        Ok(true)
    }

    /// ResetPassword (see the module doc).
    pub async fn reset_password(
        &self,
        token: &str,
        new_password: &str,
        client: &ClientInfo,
    ) -> Result<()> {
        self.rate_limiter.check(client.ip)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::invalid(format!(
                "token must be at most {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let new_password = passwords::new_password("new_password", new_password)?;
        let hash = HashedToken::of(token);
        let user = {
            let mut conn = self.conn().await?;
            let Some(live) = tokens_db::find_live(
                &mut conn,
                Purpose::ResetPassword,
                hash.as_bytes(),
                self.now(),
            )
            .await?
            else {
                return Err(bad_token());
            };
            match users::find_by_id(&mut conn, live.user_id).await? {
                Some(u) if u.active => u,
                _ => return Err(bad_token()),
            }
        };
        passwords::check_strength(
            "new_password",
            &new_password,
            self.settings.passwords.min_score,
            &[&user.email, user.username.as_deref().unwrap_or_default()],
        )?;
        let password_hash = self.hasher().hash(new_password, client).await?;
        let now = self.now();
        let mut conn = self.conn().await?;
        let revoked = conn
            .transaction::<_, Error, _>(async |conn| {
                let spent = tokens_db::spend(conn, Purpose::ResetPassword, hash.as_bytes(), now)
                    .await?
                    .ok_or_else(bad_token)?;
                let user = users::lock(conn, spent.user_id)
                    .await?
                    .filter(|u| u.active)
                    .ok_or_else(bad_token)?;
                let changes = UserChanges {
                    password_hash: Some(&password_hash),
                    update_time: Some(now),
                    ..Default::default()
                };
                users::update(conn, user.id, &changes).await?;
                users::mark_email_verified(conn, user.id, now).await?;
                tokens_db::void_all(conn, user.id, Purpose::ResetPassword, now).await?;
                let revoked = revocation::revoke_user_sessions(
                    conn,
                    now,
                    user.id,
                    None,
                    "password_reset",
                    |n| {
                        Some(
                            AuditEntry::new(AuditKind::PasswordReset, client)
                                .user(user.id)
                                .actor(Some(user.id))
                                .detail(format!(
                                    "password set through a reset link; {n} session(s) revoked"
                                )),
                        )
                    },
                )
                .await?;
                self.queue_password_notice(conn, user.id, &user.email, "reset", now)
                    .await?;
                Ok(revoked)
            })
            .await?;
        self.publish(&mut conn, revoked).await;
        self.mailer.wake();
        metrics::counter!(m::PASSWORD_RESETS).increment(1);
        Ok(())
    }

    /// How many password reset requests wait for the job (for tests and diagnostics).
    pub async fn pending_password_resets(&self) -> Result<i64> {
        Ok(password_resets::unprocessed(&mut *self.conn().await?).await?)
    }
}
