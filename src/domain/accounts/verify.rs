//! E-mail verification (issue I):
//!
//! - [`Authd::queue_verification`] issues a verification token and queues its message, inside the
//!   transaction of the change that asks for it (Register, CreateUser without `email_verified`, an
//!   admin's change of the address, a ResendVerification request). At most
//!   [`MAX_LIVE_VERIFY_TOKENS`] tokens per account are live; past that no new one is issued, and a
//!   new one never voids the others (a stranger who asks for a link cannot kill the owner's).
//! - [`Authd::verify_email`] spends a token (one UPDATE: of concurrent callers with one token,
//!   exactly one succeeds) and marks the address verified.
//! - [`Authd::resend_verification`] answers every address alike: it validates the address, checks
//!   the per-client and per-address limits (counted in `verification_requests`, so every replica
//!   agrees; each key's check runs under a transaction-scoped advisory lock, so concurrent requests
//!   are counted one after another), looks the address up once and inserts one request row. No
//!   bcrypt, no token, no template rendering on the reply path: the background job
//!   ([`Authd::process_verification_requests`], run by the mail sender loop) turns the requests of
//!   active, unverified accounts into messages.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::account_tokens::{self as tokens_db, NewAccountToken, Purpose};
use crate::db::models::UserChanges;
use crate::db::verification_requests::{self as requests_db, NewRequest};
use crate::db::{self, users};
use crate::domain::account_tokens::{self, MAX_TOKEN_BYTES, VERIFY_EMAIL_PREFIX};
use crate::domain::accounts::Account;
use crate::domain::audit::{self, AuditEntry, AuditKind};
use crate::domain::authd::chrono_duration;
use crate::domain::mail::Mail;
use crate::domain::opaque::HashedToken;
use crate::domain::{AuthFailure, Authd, ClientInfo, Error, Result, validate};
use crate::metric_names as m;

/// At most this many verification tokens of one account are live at once.
pub const MAX_LIVE_VERIFY_TOKENS: i64 = 3;
/// The window of the ResendVerification limits.
pub const RESEND_WINDOW_SECS: i64 = 3600;
/// Requests the job handles per transaction.
const REQUEST_BATCH: i64 = 50;

/// Counts in `authd_email_verification_total{result}`.
pub(in crate::domain) fn count(result: &'static str) {
    metrics::counter!(m::EMAIL_VERIFICATION, "result" => result).increment(1);
}

/// The hash of a presented account token; empty or longer than [`MAX_TOKEN_BYTES`] is
/// INVALID_ARGUMENT (never hashed).
pub(in crate::domain) fn presented_token(token: &str) -> Result<HashedToken> {
    if token.is_empty() {
        return Err(Error::invalid("token is required"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Error::invalid(format!(
            "token must be at most {MAX_TOKEN_BYTES} bytes"
        )));
    }
    Ok(HashedToken::of(token))
}

/// SHA-256 of a normalized address (the per-address key; no address is stored).
fn email_hash(email: &str) -> Vec<u8> {
    Sha256::digest(email.as_bytes()).to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RESOURCE_EXHAUSTED until the oldest counted request leaves the window.
fn resend_exhausted(what: &str, oldest: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Error {
    let until = oldest.unwrap_or(now) + chrono::Duration::seconds(RESEND_WINDOW_SECS);
    let wait = (until - now)
        .to_std()
        .unwrap_or(std::time::Duration::from_secs(1));
    count("throttled");
    Error::ResourceExhausted {
        message: format!("too many verification requests {what}; retry later"),
        retry_after: Some(wait.max(std::time::Duration::from_secs(1))),
    }
}

impl Authd {
    /// Issues a verification token for `user_id` and queues its message to `email`, on `conn`
    /// (inside the caller's transaction; it locks the user's row). Returns false when the account
    /// already has [`MAX_LIVE_VERIFY_TOKENS`] live tokens (nothing is queued). The caller wakes the
    /// mailer after its commit.
    pub(in crate::domain) async fn queue_verification(
        &self,
        conn: &mut db::PgConn,
        user_id: Uuid,
        email: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let (token, hash) = account_tokens::new_token(VERIFY_EMAIL_PREFIX);
        let ttl = self.settings.accounts.email_verify_ttl;
        let new = NewAccountToken {
            id: Uuid::new_v4(),
            user_id,
            purpose: Purpose::VerifyEmail.as_str(),
            token_hash: hash.as_bytes(),
            new_email: None,
            create_time: now,
            expire_time: now + chrono_duration(ttl),
            session_id: None,
        };
        if !tokens_db::insert_capped(conn, &new, MAX_LIVE_VERIFY_TOKENS, now).await? {
            count("capped");
            return Ok(false);
        }
        let link = account_tokens::link(&self.settings.mail.link_base_url, "verify-email", &token);
        let mail = Mail {
            to: email.to_owned(),
            kind: "verify_email".into(),
            context: serde_json::json!({
                "email": email,
                "link": link,
                "valid_for": humantime_short(ttl),
            }),
            live_link: true,
        };
        self.mailer.queue(conn, &mail, now).await?;
        count("mailed");
        Ok(true)
    }

    /// VerifyEmail: spends the token and marks its account's address verified (an address that is
    /// already verified stays so). The other verification tokens of the account are voided.
    pub async fn verify_email(&self, token: &str, client: &ClientInfo) -> Result<Account> {
        self.rate_limiter.check(client.ip)?;
        let hash = presented_token(token)?;
        let now = self.now();
        let row = self
            .conn()
            .await?
            .transaction::<_, Error, _>(async |conn| {
                let bad = || Error::Unauthenticated(AuthFailure::BadAccountToken);
                let spent = tokens_db::spend(conn, Purpose::VerifyEmail, hash.as_bytes(), now)
                    .await?
                    .ok_or_else(bad)?;
                let user = users::lock(conn, spent.user_id).await?.ok_or_else(bad)?;
                tokens_db::void_all(conn, user.id, Purpose::VerifyEmail, now).await?;
                if user.email_verified {
                    return Ok(user);
                }
                let changes = UserChanges {
                    email_verified: Some(true),
                    email_verify_time: Some(Some(now)),
                    update_time: Some(now),
                    ..Default::default()
                };
                let row = users::update(conn, user.id, &changes).await?;
                let entry = AuditEntry::new(AuditKind::EmailVerified, client)
                    .user(user.id)
                    .detail(format!("{} verified", user.email));
                audit::record(conn, now, entry).await?;
                Ok(row)
            })
            .await
            .inspect_err(|e| {
                if matches!(e, Error::Unauthenticated(_)) {
                    count("invalid_token");
                }
            })?;
        count("verified");
        Account::try_from(row)
    }

    /// ResendVerification: always OK for a well-formed address within the limits, after the same
    /// work whatever the address (see the module docs).
    pub async fn resend_verification(&self, email: &str, client: &ClientInfo) -> Result<()> {
        self.rate_limiter.check(client.ip)?;
        let email = validate::email(email)?;
        let hash = email_hash(&email);
        let client_key = client.key_string();
        let per_ip = i64::from(self.settings.accounts.verify_resend_per_ip);
        let per_address = i64::from(self.settings.accounts.verify_resend_per_address);
        let now = self.now();
        let since = now - chrono::Duration::seconds(RESEND_WINDOW_SECS);
        self.conn()
            .await?
            .transaction::<_, Error, _>(async |conn| {
                // Client first, then address: always this order (no deadlock).
                if per_ip > 0 && !client_key.is_empty() {
                    requests_db::lock_key(conn, &format!("verify-resend:ip:{client_key}")).await?;
                    let (n, oldest) =
                        requests_db::count_client_since(conn, &client_key, since).await?;
                    if n >= per_ip {
                        return Err(resend_exhausted("from this address", oldest, now));
                    }
                }
                if per_address > 0 {
                    requests_db::lock_key(conn, &format!("verify-resend:email:{}", hex(&hash)))
                        .await?;
                    let (n, oldest) = requests_db::count_email_since(conn, &hash, since).await?;
                    if n >= per_address {
                        return Err(resend_exhausted("for this e-mail address", oldest, now));
                    }
                }
                let user_id = users::id_by_email(conn, &email).await?;
                let new = NewRequest {
                    id: Uuid::new_v4(),
                    email_hash: &hash,
                    user_id,
                    client: &client_key,
                    create_time: now,
                };
                requests_db::insert(conn, &new).await?;
                Ok(())
            })
            .await?;
        count("requested");
        // The sender loop runs the request job before it delivers.
        self.mailer.wake();
        Ok(())
    }

    /// The background job: turns pending ResendVerification requests into verification messages
    /// for accounts that are active, unverified and still have the address asked for. Every
    /// replica may run it; each request is handled by one (`FOR UPDATE SKIP LOCKED`). Returns how
    /// many requests it handled.
    pub async fn process_verification_requests(&self) -> Result<usize> {
        let mut handled = 0;
        loop {
            let now = self.now();
            let (n, queued) = self
                .conn()
                .await?
                .transaction::<_, Error, _>(async |conn| {
                    let pending = requests_db::claim_pending(conn, REQUEST_BATCH).await?;
                    let mut queued = false;
                    for req in &pending {
                        if let Some(user_id) = req.user_id
                            && let Some(user) = users::find_by_id(conn, user_id).await?
                            && user.active
                            && !user.email_verified
                            && email_hash(&user.email) == req.email_hash
                        {
                            queued |= self
                                .queue_verification(conn, user.id, &user.email, now)
                                .await?;
                        }
                        requests_db::mark_processed(conn, req.id, now).await?;
                    }
                    Ok((pending.len(), queued))
                })
                .await?;
            if queued {
                self.mailer.wake();
            }
            handled += n;
            if (n as i64) < REQUEST_BATCH {
                return Ok(handled);
            }
        }
    }
}

/// A lifetime for a message: "24 hours", "30 minutes", "90 seconds".
pub(in crate::domain) fn humantime_short(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = if s >= 3600 && s.is_multiple_of(3600) {
        (s / 3600, "hour")
    } else if s >= 60 && s.is_multiple_of(60) {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_read_well() {
        use std::time::Duration;
        assert_eq!(humantime_short(Duration::from_secs(86400)), "24 hours");
        assert_eq!(humantime_short(Duration::from_secs(1800)), "30 minutes");
        assert_eq!(humantime_short(Duration::from_secs(3600)), "1 hour");
        assert_eq!(humantime_short(Duration::from_secs(90)), "90 seconds");
    }

    #[test]
    fn tokens_are_checked_before_hashing() {
        assert!(matches!(
            presented_token(""),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            presented_token(&"x".repeat(MAX_TOKEN_BYTES + 1)),
            Err(Error::InvalidArgument(_))
        ));
        assert!(presented_token("ev_abc").is_ok());
    }
}
