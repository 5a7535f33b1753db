//! E-mail change (issue I):
//!
//! - UpdateMe with a new address ([`Authd::request_email_change`], inside UpdateMe's
//!   transaction, after its password check) applies nothing yet: it voids the links of an earlier
//!   pending change, issues a `change_email` token bound to the new address and to the asking
//!   session, queues the confirmation link to the new address and a notice to the current one,
//!   and audits EMAIL_CHANGE_REQUESTED.
//! - [`Authd::confirm_email_change`] spends the token and applies the change: the new address is
//!   verified (the click proved it), EMAIL_CHANGED is audited and every other session of the user
//!   is revoked through the same path as a password change (the asking session stays, if still
//!   live). The account's pending verification and change links are voided. An address taken
//!   meanwhile is ALREADY_EXISTS and the token stays unused.
//! - An admin's change of someone's address (UpdateUser) is applied at once, as in Keycloak, and
//!   leaves the address unverified: [`Authd::after_admin_email_change`] voids the account's
//!   pending links and queues a verification message to the new address.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use uuid::Uuid;

use crate::db::account_tokens::{self as tokens_db, NewAccountToken, Purpose};
use crate::db::models::UserChanges;
use crate::db::{self, users};
use crate::domain::account_tokens::{self, CHANGE_EMAIL_PREFIX};
use crate::domain::accounts::verify::{humantime_short, presented_token};
use crate::domain::accounts::{Account, uniqueness_error};
use crate::domain::audit::{self, AuditEntry, AuditKind};
use crate::domain::authd::chrono_duration;
use crate::domain::mail::Mail;
use crate::domain::sessions::revocation;
use crate::domain::{AuthFailure, Authd, ClientInfo, Error, Principal, Result};
use crate::metric_names as m;

/// Live change tokens per account (a new change voids the earlier ones, so one is live).
const MAX_LIVE_CHANGE_TOKENS: i64 = 3;

fn count(result: &'static str) {
    metrics::counter!(m::EMAIL_CHANGE, "result" => result).increment(1);
}

/// What ConfirmEmailChange did.
#[derive(Debug, Clone)]
pub struct EmailChanged {
    pub account: Account,
    /// How many other sessions were revoked.
    pub revoked_sessions: i64,
}

impl Authd {
    /// The pending part of UpdateMe's e-mail change (see the module docs), on `conn` inside
    /// UpdateMe's transaction. `current` is the caller's row before the change.
    pub(in crate::domain) async fn request_email_change(
        &self,
        conn: &mut db::PgConn,
        p: &Principal,
        current: &db::models::User,
        new_email: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if users::find_by_email(conn, new_email)
            .await?
            .is_some_and(|u| u.id != current.id)
        {
            return Err(Error::AlreadyExists("email is already registered".into()));
        }
        tokens_db::void_all(conn, current.id, Purpose::ChangeEmail, now).await?;
        let (token, hash) = account_tokens::new_token(CHANGE_EMAIL_PREFIX);
        let ttl = self.settings.accounts.email_verify_ttl;
        let new = NewAccountToken {
            id: Uuid::new_v4(),
            user_id: current.id,
            purpose: Purpose::ChangeEmail.as_str(),
            token_hash: hash.as_bytes(),
            new_email: Some(new_email),
            create_time: now,
            expire_time: now + chrono_duration(ttl),
            session_id: Some(p.session_id),
        };
        if !tokens_db::insert_capped(conn, &new, MAX_LIVE_CHANGE_TOKENS, now).await? {
            return Err(Error::NotFound("user not found".into()));
        }
        let link = account_tokens::link(
            &self.settings.mail.link_base_url,
            "confirm-email-change",
            &token,
        );
        let confirm = Mail {
            to: new_email.to_owned(),
            kind: "email_change_confirm".into(),
            context: serde_json::json!({
                "email": new_email,
                "old_email": current.email,
                "link": link,
                "valid_for": humantime_short(ttl),
            }),
            live_link: true,
        };
        self.mailer.queue(conn, &confirm, now).await?;
        let notice = Mail {
            to: current.email.clone(),
            kind: "email_change_notice".into(),
            context: serde_json::json!({
                "email": current.email,
                "new_email": new_email,
            }),
            live_link: false,
        };
        self.mailer.queue(conn, &notice, now).await?;
        let entry = AuditEntry::new(AuditKind::EmailChangeRequested, client)
            .user(current.id)
            .actor(Some(p.user_id))
            .detail(format!("{} -> {new_email} (pending)", current.email));
        audit::record(conn, now, entry).await?;
        count("requested");
        Ok(())
    }

    /// ConfirmEmailChange: applies the pending change of the token (see the module docs).
    pub async fn confirm_email_change(
        &self,
        token: &str,
        client: &ClientInfo,
    ) -> Result<EmailChanged> {
        self.rate_limiter.check(client.ip)?;
        let hash = presented_token(token)?;
        let now = self.now();
        let mut conn = self.conn().await?;
        let outcome = conn
            .transaction::<_, Error, _>(async |conn| {
                let bad = || Error::Unauthenticated(AuthFailure::BadAccountToken);
                let spent = tokens_db::spend(conn, Purpose::ChangeEmail, hash.as_bytes(), now)
                    .await?
                    .ok_or_else(bad)?;
                let new_email = spent
                    .new_email
                    .clone()
                    .ok_or_else(|| Error::internal("change_email token without new_email"))?;
                let user = users::lock(conn, spent.user_id).await?.ok_or_else(bad)?;
                if users::find_by_email(conn, &new_email)
                    .await?
                    .is_some_and(|u| u.id != user.id)
                {
                    // Rolls back: the token stays unused.
                    return Err(Error::AlreadyExists("email is already registered".into()));
                }
                let changes = UserChanges {
                    email: Some(&new_email),
                    email_verified: Some(true),
                    email_verify_time: Some(Some(now)),
                    update_time: Some(now),
                    ..Default::default()
                };
                let row = users::update(conn, user.id, &changes)
                    .await
                    .map_err(uniqueness_error)?;
                tokens_db::void_purposes(
                    conn,
                    user.id,
                    &[Purpose::VerifyEmail, Purpose::ChangeEmail],
                    now,
                )
                .await?;
                let old_email = user.email.clone();
                let revoked = revocation::revoke_user_sessions(
                    conn,
                    now,
                    user.id,
                    spent.session_id,
                    "email_changed",
                    |n| {
                        Some(
                            AuditEntry::new(AuditKind::EmailChanged, client)
                                .user(user.id)
                                .actor(Some(user.id))
                                .detail(format!(
                                    "{old_email} -> {new_email}; {n} other session(s) revoked"
                                )),
                        )
                    },
                )
                .await?;
                Ok(revoked.map(|n| (row, n)))
            })
            .await
            .inspect_err(|e| match e {
                Error::Unauthenticated(_) => count("invalid_token"),
                Error::AlreadyExists(_) => count("conflict"),
                _ => {}
            })?;
        let (row, revoked_sessions) = self.publish(&mut conn, outcome).await;
        count("confirmed");
        Ok(EmailChanged {
            account: Account::try_from(row)?,
            revoked_sessions,
        })
    }

    /// After an admin changed `user_id`'s address to `new_email` (inside UpdateUser's
    /// transaction; the update already cleared `email_verified`): voids the account's pending
    /// verification and change links and queues a verification message to the new address.
    /// Returns whether a message was queued (wake the mailer after the commit).
    pub(in crate::domain) async fn after_admin_email_change(
        &self,
        conn: &mut db::PgConn,
        user_id: Uuid,
        new_email: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        tokens_db::void_purposes(
            conn,
            user_id,
            &[Purpose::VerifyEmail, Purpose::ChangeEmail],
            now,
        )
        .await?;
        count("admin");
        self.queue_verification(conn, user_id, new_email, now).await
    }
}
