//! Self-service: the caller's own profile, password, sessions and account deletion.

use diesel_async::AsyncConnection;
use uuid::Uuid;

use crate::db::account_tokens::{self, Purpose};
use crate::db::models::{Session, UserChanges};
use crate::db::{self, DbError, sessions, users};
use crate::domain::accounts::{
    Account, ProfileFields, ProfileUpdate, SessionInfo, last_admin, uniqueness_error,
};
use crate::domain::audit::{AuditEntry, AuditKind};
use crate::domain::passwords;
use crate::domain::sessions::revocation;
use crate::domain::throttle;
use crate::domain::{AuthFailure, Authd, ClientInfo, Error, Principal, Result, validate};

impl Authd {
    // ----- self-service ----------------------------------------------------------------------

    /// UpdateMe. Changing the e-mail requires the current password, and only asks for the change
    /// (see `email_change`): the reply shows the current address until ConfirmEmailChange.
    pub async fn update_me(
        &self,
        p: &Principal,
        upd: ProfileUpdate,
        client: &ClientInfo,
    ) -> Result<Account> {
        let ProfileFields {
            email,
            username,
            first_name,
            last_name,
        } = ProfileFields::validate(&upd.email, &upd.username, &upd.first_name, &upd.last_name)?;

        let current = self.get_me(p).await?;
        let email_change = email.filter(|e| *e != current.email);
        let me = match &email_change {
            Some(_) => Some(
                self.reauthenticate(p.user_id, &upd.current_password, client)
                    .await?,
            ),
            None => None,
        };
        let now = self.now();
        let changes = UserChanges {
            username: username.as_ref().map(|u| u.as_deref()),
            first_name: first_name.as_deref(),
            last_name: last_name.as_deref(),
            update_time: Some(now),
            ..Default::default()
        };
        let row = self
            .conn()
            .await?
            .transaction::<_, Error, _>(async |conn| {
                let row = users::update(conn, p.user_id, &changes)
                    .await
                    .map_err(uniqueness_error)?;
                if let (Some(new_email), Some(me)) = (&email_change, &me) {
                    self.request_email_change(conn, p, me, new_email, client, now)
                        .await?;
                }
                Ok(row)
            })
            .await?;
        if email_change.is_some() {
            self.mailer.wake();
        }
        Account::try_from(row)
    }

    /// Checks the caller's password for a sensitive change. A missing or wrong password is
    /// UNAUTHENTICATED.
    /// These checks are throttled per user and client IP like logins (see `throttle`), so a stolen
    /// access token gives neither unlimited guessing nor a bcrypt denial of service.
    pub(in crate::domain) async fn reauthenticate(
        &self,
        user_id: Uuid,
        password_input: &str,
        client: &ClientInfo,
    ) -> Result<db::models::User> {
        if password_input.is_empty() {
            return Err(Error::Unauthenticated(AuthFailure::BadCredentials));
        }
        let presented = passwords::presented_password("current_password", password_input)?;
        let key = throttle::reauth_key(user_id);
        let budget = self.proxy_budget().reserve(client.proxy_key, self.now())?;
        let client_key = client.key_string();
        let (reservation, user) = {
            let mut conn = self.conn().await?;
            let reservation = throttle::reserve(
                &mut conn,
                self.throttle_policy(),
                &key,
                &client_key,
                self.now(),
            )
            .await?;
            match users::find_by_id(&mut conn, user_id).await {
                Ok(Some(user)) => (reservation, user),
                found => {
                    drop(conn);
                    self.take_back(reservation).await;
                    found?;
                    return Err(Error::Unauthenticated(AuthFailure::TokenInvalid));
                }
            }
        };
        let ok = match self
            .hasher()
            .verify(presented, Some(&user.password_hash), client)
            .await
        {
            Ok(ok) => ok,
            Err(e) => {
                self.take_back(reservation).await;
                return Err(e);
            }
        };
        if ok {
            drop(budget);
            let known = throttle::account_keys(user.id, &user.email, user.username.as_deref());
            reservation
                .succeeded(&mut *self.conn().await?, &known, self.now())
                .await?;
            Ok(user)
        } else {
            budget.failed();
            reservation.failed();
            Err(Error::Unauthenticated(AuthFailure::BadCredentials))
        }
    }

    /// ChangePassword: revokes every other session; returns how many.
    pub async fn change_password(
        &self,
        p: &Principal,
        current_password: &str,
        new_password: &str,
        client: &ClientInfo,
    ) -> Result<i64> {
        if current_password.is_empty() {
            return Err(Error::invalid("current_password is required"));
        }
        let new_password = passwords::new_password("new_password", new_password)?;
        let me = self.get_me(p).await?;
        passwords::check_strength(
            "new_password",
            &new_password,
            self.settings.passwords.min_score,
            &[&me.email, me.username.as_deref().unwrap_or_default()],
        )?;
        self.reauthenticate(p.user_id, current_password, client)
            .await?;
        let hash = self.hasher().hash(new_password, client).await?;
        let now = self.now();
        let changes = UserChanges {
            password_hash: Some(&hash),
            update_time: Some(now),
            ..Default::default()
        };
        let mut conn = self.conn().await?;
        let revoked = conn
            .transaction::<_, Error, _>(async |conn| {
                let user = users::update(conn, p.user_id, &changes).await?;
                // A password change voids every mailed reset link, and tells the owner.
                account_tokens::void_all(conn, p.user_id, Purpose::ResetPassword, now).await?;
                self.queue_password_notice(conn, user.id, &user.email, "changed", now)
                    .await?;
                let revoked = revocation::revoke_user_sessions(
                    conn,
                    now,
                    p.user_id,
                    Some(p.session_id),
                    "password_changed",
                    |n| {
                        Some(
                            AuditEntry::new(AuditKind::PasswordChanged, client)
                                .user(p.user_id)
                                .actor(Some(p.user_id))
                                .detail(format!("{n} other session(s) revoked")),
                        )
                    },
                )
                .await?;
                Ok(revoked)
            })
            .await?;
        self.mailer.wake();
        Ok(self.publish(&mut conn, revoked).await)
    }

    /// DeleteMe: requires the password; the last active admin cannot delete themselves.
    pub async fn delete_me(
        &self,
        p: &Principal,
        password: &str,
        client: &ClientInfo,
    ) -> Result<()> {
        if password.is_empty() {
            return Err(Error::invalid("password is required"));
        }
        self.reauthenticate(p.user_id, password, client).await?;
        self.delete_account(Some(p.user_id), p.user_id, client, "deleted by themselves")
            .await
    }

    /// Deletes an account (sessions and refresh tokens cascade), keeping at least one active admin.
    pub(in crate::domain) async fn delete_account(
        &self,
        actor: Option<Uuid>,
        target: Uuid,
        client: &ClientInfo,
        how: &str,
    ) -> Result<()> {
        let now = self.now();
        let mut conn = self.conn().await?;
        let deleted = conn
            .transaction::<_, Error, _>(async |conn| {
                let admins = users::lock_active_admins(conn).await?;
                let user = users::lock(conn, target)
                    .await?
                    .ok_or_else(|| Error::NotFound("user not found".into()))?;
                if admins == [user.id] {
                    return Err(last_admin());
                }
                let entry = AuditEntry::new(AuditKind::UserDeleted, client)
                    .user(target)
                    .actor(actor)
                    .detail(format!("{how}; was {} ({})", user.email, user.role));
                Ok(revocation::delete_account(conn, now, target, entry).await?)
            })
            .await?;
        self.publish(&mut conn, deleted).await;
        Ok(())
    }

    /// The caller's live sessions, newest first.
    pub async fn list_my_sessions(&self, p: &Principal) -> Result<Vec<SessionInfo>> {
        let rows = sessions::list_live(&mut *self.conn().await?, p.user_id, self.now()).await?;
        Ok(rows
            .into_iter()
            .map(|s: Session| SessionInfo {
                id: s.id,
                create_time: s.create_time,
                last_use_time: s.last_use_time,
                expire_time: s.idle_expire_time.min(s.expire_time),
                current: s.id == p.session_id,
                user_agent: s.user_agent,
                ip_address: s.ip_address,
                amr: s.amr,
            })
            .collect())
    }

    /// Revokes one of the caller's own live sessions; any other id is NOT_FOUND.
    pub async fn revoke_my_session(
        &self,
        p: &Principal,
        session_id: &str,
        client: &ClientInfo,
    ) -> Result<()> {
        let id = validate::uuid("session_id", session_id)?;
        let now = self.now();
        let entry = AuditEntry::new(AuditKind::SessionsRevoked, client)
            .user(p.user_id)
            .actor(Some(p.user_id))
            .detail(format!("session {id} revoked by its owner"));
        let mut conn = self.conn().await?;
        let revoked = conn
            .transaction::<_, DbError, _>(async |conn| {
                revocation::revoke_own_session(conn, now, p.user_id, id, "revoked_by_owner", entry)
                    .await
            })
            .await?;
        if self.publish(&mut conn, revoked).await {
            Ok(())
        } else {
            Err(Error::NotFound("session not found".into()))
        }
    }
}
