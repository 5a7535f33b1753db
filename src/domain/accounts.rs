//! Account management: self-service (profile, password, sessions, deletion) and administration by role.
//!
//! The permission matrix lives here, not in the handlers:
//!
//! | operation | ADMIN | MODERATOR | USER |
//! |---|---|---|---|
//! | list_users, get_user | yes | yes | no |
//! | revoke_user_sessions | yes | only ROLE_USER targets | no |
//! | update_user | any field | only `active`, on ROLE_USER targets | no |
//! | create_user, delete_user, list_audit_events | yes | no | no |
//!
//! Checks run in the order authenticate (done by the caller), authorize by role, validate input, look
//! up (NOT_FOUND), then target-dependent permission, then act. Changes that could remove the last
//! active admin lock every active admin row first, so they are safe under concurrency.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeZone, Utc};
use diesel_async::AsyncConnection;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::audit::{self, AuditEntry, AuditKind};
use super::password;
use super::service::{Account, NewAccount, chrono_duration, uniqueness_error};
use super::throttle;
use super::{AuthFailure, ClientInfo, Error, Principal, Result, Role, validate};
use crate::db::models::{Session, UserChanges};
use crate::db::users::UserFilter;
use crate::db::{self, DbError, audit as audit_db, sessions, users};
use crate::domain::Authd;

/// Default and maximum page sizes of the listings.
pub const DEFAULT_PAGE_SIZE: i32 = 50;
pub const MAX_PAGE_SIZE: i32 = 1000;
/// Longest accepted `query` of ListUsers and `page_token`.
pub const MAX_QUERY_CHARS: usize = 254;
pub const MAX_PAGE_TOKEN_BYTES: usize = 256;

/// A role argument as the client sent it: unset, a known role, or a number we don't know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleArg {
    Unspecified,
    Role(Role),
    Unknown(i32),
}

/// UpdateMe: `None` leaves a field alone; an empty string clears username and names. Its Debug
/// hides the password.
#[derive(Clone, Default)]
pub struct ProfileUpdate {
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub current_password: String,
}

impl std::fmt::Debug for ProfileUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new field cannot be added without deciding how it is shown.
        let ProfileUpdate {
            username,
            first_name,
            last_name,
            email,
            current_password: _,
        } = self;
        f.debug_struct("ProfileUpdate")
            .field("username", username)
            .field("first_name", first_name)
            .field("last_name", last_name)
            .field("email", email)
            .field("current_password", &super::service::REDACTED)
            .finish()
    }
}

/// UpdateUser: `None` leaves a field alone. Its Debug hides the password.
#[derive(Clone, Default)]
pub struct AdminUpdate {
    pub email: Option<String>,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub role: Option<RoleArg>,
    pub active: Option<bool>,
    pub password: Option<String>,
}

impl std::fmt::Debug for AdminUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let AdminUpdate {
            email,
            username,
            first_name,
            last_name,
            role,
            active,
            password,
        } = self;
        f.debug_struct("AdminUpdate")
            .field("email", email)
            .field("username", username)
            .field("first_name", first_name)
            .field("last_name", last_name)
            .field("role", role)
            .field("active", active)
            .field(
                "password",
                &password.as_ref().map(|_| super::service::REDACTED),
            )
            .finish()
    }
}

impl AdminUpdate {
    fn touches_more_than_active(&self) -> bool {
        self.email.is_some()
            || self.username.is_some()
            || self.first_name.is_some()
            || self.last_name.is_some()
            || self.role.is_some()
            || self.password.is_some()
    }
}

/// Optional profile fields after validation: `None` leaves a field alone; for the username,
/// `Some(None)` clears it.
struct ProfileFields {
    email: Option<String>,
    username: Option<Option<String>>,
    first_name: Option<String>,
    last_name: Option<String>,
}

impl ProfileFields {
    /// The Register rules, applied to the fields that are present.
    fn validate(
        email: &Option<String>,
        username: &Option<String>,
        first_name: &Option<String>,
        last_name: &Option<String>,
    ) -> Result<Self> {
        Ok(Self {
            email: email.as_deref().map(validate::email).transpose()?,
            username: username.as_deref().map(validate::username).transpose()?,
            first_name: first_name
                .as_deref()
                .map(|n| validate::person_name("first_name", n))
                .transpose()?,
            last_name: last_name
                .as_deref()
                .map(|n| validate::person_name("last_name", n))
                .transpose()?,
        })
    }
}

/// ListUsers filters and paging.
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    pub page_size: i32,
    pub page_token: String,
    pub query: String,
    pub role: Option<RoleArg>,
    pub active: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct UserPage {
    pub users: Vec<Account>,
    pub next_page_token: String,
    pub total_size: i64,
}

/// A live session as its owner sees it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: Uuid,
    pub create_time: DateTime<Utc>,
    pub last_use_time: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
    pub user_agent: String,
    pub ip_address: String,
    pub current: bool,
}

#[derive(Debug, Clone)]
pub struct AuditEventInfo {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    pub kind: String,
    pub ip_address: String,
    pub user_agent: String,
    pub detail: String,
    pub create_time: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct AuditPage {
    pub events: Vec<AuditEventInfo>,
    pub next_page_token: String,
}

impl Authd {
    // ----- self-service ----------------------------------------------------------------------

    /// UpdateMe. Changing the e-mail requires the current password.
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
        if email_change.is_some() {
            self.reauthenticate(p.user_id, &upd.current_password, client)
                .await?;
        }
        let now = self.now();
        let changes = UserChanges {
            email: email_change.as_deref(),
            username: username.as_ref().map(|u| u.as_deref()),
            first_name: first_name.as_deref(),
            last_name: last_name.as_deref(),
            update_time: Some(now),
            ..Default::default()
        };
        let row = self
            .conn()
            .await?
            .transaction::<_, DbError, _>(async |conn| {
                let row = users::update(conn, p.user_id, &changes).await?;
                if let Some(new_email) = &email_change {
                    let entry = AuditEntry::new(AuditKind::EmailChanged, client)
                        .user(p.user_id)
                        .actor(Some(p.user_id))
                        .detail(format!("{} -> {new_email}", current.email));
                    audit::record(conn, now, entry).await?;
                }
                Ok(row)
            })
            .await
            .map_err(uniqueness_error)?;
        Account::try_from(row)
    }

    /// Checks the caller's password for a sensitive change. A missing or wrong password is
    /// UNAUTHENTICATED.
    /// These checks are throttled per user and client IP like logins (see `throttle`), so a stolen
    /// access token gives neither unlimited guessing nor a bcrypt denial of service.
    async fn reauthenticate(
        &self,
        user_id: Uuid,
        password_input: &str,
        client: &ClientInfo,
    ) -> Result<db::models::User> {
        if password_input.is_empty() {
            return Err(Error::Unauthenticated(AuthFailure::BadCredentials));
        }
        let presented = password::presented_password("current_password", password_input)?;
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
        let new_password = password::new_password("new_password", new_password)?;
        let me = self.get_me(p).await?;
        password::check_strength(
            "new_password",
            &new_password,
            self.config().min_password_score,
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
        let revoked = self
            .conn()
            .await?
            .transaction::<_, DbError, _>(async |conn| {
                users::update(conn, p.user_id, &changes).await?;
                let n = sessions::revoke_all_for_user(
                    conn,
                    p.user_id,
                    Some(p.session_id),
                    now,
                    "password_changed",
                )
                .await?;
                let entry = AuditEntry::new(AuditKind::PasswordChanged, client)
                    .user(p.user_id)
                    .actor(Some(p.user_id))
                    .detail(format!("{n} other session(s) revoked"));
                audit::record(conn, now, entry).await?;
                Ok(n)
            })
            .await?;
        self.views_changed().await;
        Ok(revoked)
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
    async fn delete_account(
        &self,
        actor: Option<Uuid>,
        target: Uuid,
        client: &ClientInfo,
        how: &str,
    ) -> Result<()> {
        let now = self.now();
        self.conn()
            .await?
            .transaction::<_, Error, _>(async |conn| {
                let admins = users::lock_active_admins(conn).await?;
                let user = users::lock(conn, target)
                    .await?
                    .ok_or_else(|| Error::NotFound("user not found".into()))?;
                if admins == [user.id] {
                    return Err(last_admin());
                }
                users::delete(conn, target).await?;
                let entry = AuditEntry::new(AuditKind::UserDeleted, client)
                    .user(target)
                    .actor(actor)
                    .detail(format!("{how}; was {} ({})", user.email, user.role));
                audit::record(conn, now, entry).await?;
                Ok(())
            })
            .await?;
        self.views_changed().await;
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
        let revoked = self
            .conn()
            .await?
            .transaction::<_, DbError, _>(async |conn| {
                let revoked =
                    sessions::revoke_own(conn, p.user_id, id, now, "revoked_by_owner").await?;
                if revoked {
                    let entry = AuditEntry::new(AuditKind::SessionsRevoked, client)
                        .user(p.user_id)
                        .actor(Some(p.user_id))
                        .detail(format!("session {id} revoked by its owner"));
                    audit::record(conn, now, entry).await?;
                }
                Ok(revoked)
            })
            .await?;
        if revoked {
            self.views_changed().await;
            Ok(())
        } else {
            Err(Error::NotFound("session not found".into()))
        }
    }

    // ----- administration --------------------------------------------------------------------

    /// ADMIN, MODERATOR: users oldest first, keyset-paged.
    pub async fn list_users(&self, p: &Principal, q: UserQuery) -> Result<UserPage> {
        p.require(Role::Moderator)?;
        let limit = page_size(q.page_size)?;
        if q.query.chars().count() > MAX_QUERY_CHARS {
            return Err(Error::invalid(format!(
                "query must be at most {MAX_QUERY_CHARS} characters"
            )));
        }
        let role = match q.role.unwrap_or(RoleArg::Unspecified) {
            RoleArg::Unspecified => None,
            RoleArg::Role(r) => Some(r.as_str()),
            RoleArg::Unknown(n) => return Err(Error::invalid(format!("unknown role {n}"))),
        };
        let query = q.query.trim();
        let filter = UserFilter {
            pattern: (!query.is_empty()).then(|| format!("%{}%", escape_like(query))),
            role,
            active: q.active,
        };
        let scope = format!("users|{query}|{}|{:?}", role.unwrap_or(""), q.active);
        let cursor = decode_page_token(&q.page_token, &scope)?;
        let mut conn = self.conn().await?;
        let total_size = users::count(&mut conn, &filter).await?;
        let mut rows = users::list(&mut conn, &filter, cursor, i64::from(limit) + 1).await?;
        let next_page_token = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last()
                .map(|u| encode_page_token(&scope, u.create_time, u.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let users = rows
            .into_iter()
            .map(Account::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(UserPage {
            users,
            next_page_token,
            total_size,
        })
    }

    /// ADMIN, MODERATOR: one user.
    pub async fn get_user(&self, p: &Principal, user_id: &str) -> Result<Account> {
        p.require(Role::Moderator)?;
        let id = validate::uuid("user_id", user_id)?;
        let row = users::find_by_id(&mut *self.conn().await?, id)
            .await?
            .ok_or_else(|| Error::NotFound("user not found".into()))?;
        Account::try_from(row)
    }

    /// ADMIN; MODERATOR for ROLE_USER targets: revokes every live session of a user.
    pub async fn revoke_user_sessions(
        &self,
        p: &Principal,
        user_id: &str,
        client: &ClientInfo,
    ) -> Result<i64> {
        p.require(Role::Moderator)?;
        let id = validate::uuid("user_id", user_id)?;
        let now = self.now();
        let n = self
            .conn()
            .await?
            .transaction::<_, Error, _>(async |conn| {
                let target = users::find_by_id(conn, id)
                    .await?
                    .ok_or_else(|| Error::NotFound("user not found".into()))?;
                moderator_may_act_on(p, &target.role)?;
                let n =
                    sessions::revoke_all_for_user(conn, id, None, now, "revoked_by_admin").await?;
                let entry = AuditEntry::new(AuditKind::SessionsRevoked, client)
                    .user(id)
                    .actor(Some(p.user_id))
                    .detail(format!("{n} session(s) revoked"));
                audit::record(conn, now, entry).await?;
                Ok(n)
            })
            .await?;
        self.views_changed().await;
        Ok(n)
    }

    /// ADMIN: creates an account with any role (ROLE_UNSPECIFIED means ROLE_USER).
    pub async fn create_user(
        &self,
        p: &Principal,
        input: NewAccount,
        role: RoleArg,
        client: &ClientInfo,
    ) -> Result<Account> {
        p.require(Role::Admin)?;
        let role = match role {
            RoleArg::Unspecified => Role::User,
            RoleArg::Role(r) => r,
            RoleArg::Unknown(n) => return Err(Error::invalid(format!("unknown role {n}"))),
        };
        self.create_account(input, role, Some(p.user_id), client, "created by an admin")
            .await
    }

    /// ADMIN any field; MODERATOR only `active` on ROLE_USER targets. A change of role or active
    /// flag, or a new password, revokes all of the target's sessions.
    pub async fn update_user(
        &self,
        p: &Principal,
        user_id: &str,
        upd: AdminUpdate,
        client: &ClientInfo,
    ) -> Result<Account> {
        p.require(Role::Moderator)?;
        if p.role == Role::Moderator && upd.touches_more_than_active() {
            return Err(Error::PermissionDenied(
                "moderators may only change the active flag".into(),
            ));
        }
        let id = validate::uuid("user_id", user_id)?;
        let ProfileFields {
            email,
            username,
            first_name,
            last_name,
        } = ProfileFields::validate(&upd.email, &upd.username, &upd.first_name, &upd.last_name)?;
        let role = match upd.role {
            None => None,
            Some(RoleArg::Role(r)) => Some(r),
            Some(RoleArg::Unspecified) => return Err(Error::invalid("role must be a real role")),
            Some(RoleArg::Unknown(n)) => return Err(Error::invalid(format!("unknown role {n}"))),
        };
        let password = upd
            .password
            .as_deref()
            .map(|pw| password::new_password("password", pw))
            .transpose()?;
        let hash = match password {
            Some(pw) => {
                let target = self.get_user(p, user_id).await?;
                let email_ctx = email.as_deref().unwrap_or(&target.email);
                let username_ctx = match &username {
                    Some(u) => u.as_deref(),
                    None => target.username.as_deref(),
                };
                password::check_strength(
                    "password",
                    &pw,
                    self.config().min_password_score,
                    &[email_ctx, username_ctx.unwrap_or_default()],
                )?;
                Some(self.hasher().hash(pw, client).await?)
            }
            None => None,
        };
        let now = self.now();
        let row = self
            .conn()
            .await?
            .transaction::<_, Error, _>(async |conn| {
                let admins = users::lock_active_admins(conn).await?;
                let target = users::lock(conn, id)
                    .await?
                    .ok_or_else(|| Error::NotFound("user not found".into()))?;
                moderator_may_act_on(p, &target.role)?;

                let role_change = role.filter(|r| r.as_str() != target.role);
                let active_change = upd.active.filter(|a| *a != target.active);
                let email_change = email.clone().filter(|e| *e != target.email);
                let was_active_admin = target.role == Role::Admin.as_str() && target.active;
                let stays_active_admin =
                    role_change.is_none_or(|r| r == Role::Admin) && active_change.is_none_or(|a| a);
                if was_active_admin && !stays_active_admin && admins == [target.id] {
                    return Err(last_admin());
                }

                let changes = UserChanges {
                    email: email_change.as_deref(),
                    username: username.as_ref().map(|u| u.as_deref()),
                    first_name: first_name.as_deref(),
                    last_name: last_name.as_deref(),
                    password_hash: hash.as_deref(),
                    role: role_change.map(Role::as_str),
                    active: active_change,
                    update_time: Some(now),
                };
                let row = users::update(conn, id, &changes)
                    .await
                    .map_err(uniqueness_error)?;

                let mut detail = Vec::new();
                if let Some(r) = role_change {
                    detail.push(format!("role {} -> {}", target.role, r.as_str()));
                }
                if let Some(a) = active_change {
                    detail.push(format!("active {} -> {a}", target.active));
                }
                if let Some(e) = &email_change {
                    detail.push(format!("email {} -> {e}", target.email));
                }
                for (set, name) in [
                    (username.is_some(), "username"),
                    (first_name.is_some(), "first_name"),
                    (last_name.is_some(), "last_name"),
                    (hash.is_some(), "password reset"),
                ] {
                    if set {
                        detail.push(name.to_owned());
                    }
                }
                if role_change.is_some() || active_change.is_some() || hash.is_some() {
                    let n = sessions::revoke_all_for_user(conn, id, None, now, "account_changed")
                        .await?;
                    detail.push(format!("{n} session(s) revoked"));
                }
                let actor = Some(p.user_id);
                let entry = AuditEntry::new(AuditKind::UserUpdated, client)
                    .user(id)
                    .actor(actor)
                    .detail(detail.join("; "));
                audit::record(conn, now, entry).await?;
                if let Some(e) = &email_change {
                    let entry = AuditEntry::new(AuditKind::EmailChanged, client)
                        .user(id)
                        .actor(actor)
                        .detail(format!("{} -> {e}", target.email));
                    audit::record(conn, now, entry).await?;
                }
                if hash.is_some() {
                    let entry = AuditEntry::new(AuditKind::PasswordChanged, client)
                        .user(id)
                        .actor(actor)
                        .detail("set by an admin");
                    audit::record(conn, now, entry).await?;
                }
                Ok(row)
            })
            .await?;
        self.views_changed().await;
        Account::try_from(row)
    }

    /// ADMIN: deletes a user and their sessions.
    pub async fn delete_user(
        &self,
        p: &Principal,
        user_id: &str,
        client: &ClientInfo,
    ) -> Result<()> {
        p.require(Role::Admin)?;
        let id = validate::uuid("user_id", user_id)?;
        self.delete_account(Some(p.user_id), id, client, "deleted by an admin")
            .await
    }

    /// ADMIN: audit events, newest first, optionally about one user.
    pub async fn list_audit_events(
        &self,
        p: &Principal,
        user_id: &str,
        page_size_arg: i32,
        page_token: &str,
    ) -> Result<AuditPage> {
        p.require(Role::Admin)?;
        let user = if user_id.is_empty() {
            None
        } else {
            Some(validate::uuid("user_id", user_id)?)
        };
        let limit = page_size(page_size_arg)?;
        let scope = format!("audit|{}", user.map(|u| u.to_string()).unwrap_or_default());
        let cursor = decode_page_token(page_token, &scope)?;
        let mut rows =
            audit_db::list(&mut *self.conn().await?, user, cursor, i64::from(limit) + 1).await?;
        let next_page_token = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last()
                .map(|e| encode_page_token(&scope, e.create_time, e.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(AuditPage {
            events: rows
                .into_iter()
                .map(|e| AuditEventInfo {
                    id: e.id,
                    user_id: e.user_id,
                    actor_id: e.actor_id,
                    kind: e.kind,
                    ip_address: e.ip_address,
                    user_agent: e.user_agent,
                    detail: e.detail,
                    create_time: e.create_time,
                })
                .collect(),
            next_page_token,
        })
    }

    /// Deletes audit events past the retention, sessions that ended over a day ago, stale throttle
    /// state, and signing keys retired over a day ago.
    /// Returns (events, sessions) pruned.
    pub async fn prune(&self) -> Result<(usize, usize)> {
        const BATCH: i64 = 5000;
        let now = self.now();
        let events_before = now - chrono_duration(self.config().audit_retention);
        let sessions_before = now - chrono::Duration::days(1);
        let mut conn = self.conn().await?;
        let mut events = 0;
        loop {
            let n = audit_db::prune(&mut conn, events_before, BATCH).await?;
            events += n;
            if (n as i64) < BATCH {
                break;
            }
        }
        let mut ended = 0;
        loop {
            let n = sessions::prune(&mut conn, sessions_before, BATCH).await?;
            ended += n;
            if (n as i64) < BATCH {
                break;
            }
        }
        // Throttle state: failures older than the hourly window, counts idle for a day, slots
        // idle for an hour, known clients without a success for 30 days.
        crate::db::throttle::prune(
            &mut conn,
            crate::db::throttle::PruneBefore {
                failures: now - chrono::Duration::hours(1),
                counts: sessions_before,
                guards: now - chrono::Duration::hours(1),
                known_clients: now - chrono::Duration::days(throttle::KNOWN_CLIENT_DAYS),
            },
        )
        .await?;
        crate::db::keys::delete_retired(&mut conn, sessions_before).await?;
        // Tombstones go a day after the last access token of their session expired.
        let tombstones_before = now - self.views().retention().max(chrono::Duration::days(1));
        sessions::prune_revocations(&mut conn, tombstones_before).await?;
        Ok((events, ended))
    }
}

/// A moderator may act only on ROLE_USER accounts.
fn moderator_may_act_on(p: &Principal, target_role: &str) -> Result<()> {
    if p.role == Role::Moderator && target_role != Role::User.as_str() {
        return Err(Error::PermissionDenied(
            "moderators may only act on ROLE_USER accounts".into(),
        ));
    }
    Ok(())
}

fn last_admin() -> Error {
    Error::FailedPrecondition(
        "the last active admin cannot be demoted, deactivated or deleted".into(),
    )
}

fn page_size(n: i32) -> Result<i32> {
    match n {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1..=MAX_PAGE_SIZE => Ok(n),
        _ => Err(Error::invalid(format!(
            "page_size must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
        ))),
    }
}

/// Escapes LIKE wildcards so that `query` matches literally.
fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A page token: base64url of (scope digest, create_time in microseconds, id). The scope binds it
/// to the listing and filters it came from.
fn encode_page_token(scope: &str, t: DateTime<Utc>, id: Uuid) -> String {
    let mut raw = Vec::with_capacity(8 + 8 + 16);
    raw.extend_from_slice(&Sha256::digest(scope.as_bytes())[..8]);
    raw.extend_from_slice(&t.timestamp_micros().to_be_bytes());
    raw.extend_from_slice(id.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_page_token(token: &str, scope: &str) -> Result<Option<(DateTime<Utc>, Uuid)>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token is not valid for this request");
    if token.len() > MAX_PAGE_TOKEN_BYTES {
        return Err(bad());
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    if raw.len() != 32 || raw[..8] != Sha256::digest(scope.as_bytes())[..8] {
        return Err(bad());
    }
    let micros = i64::from_be_bytes(raw[8..16].try_into().map_err(|_| bad())?);
    let id = Uuid::from_slice(&raw[16..]).map_err(|_| bad())?;
    let t = Utc.timestamp_micros(micros).single().ok_or_else(bad)?;
    Ok(Some((t, id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_their_scope() {
        let t = Utc
            .timestamp_micros(1_700_000_000_123_456)
            .single()
            .unwrap();
        let id = Uuid::new_v4();
        let tok = encode_page_token("users|a", t, id);
        assert_eq!(decode_page_token(&tok, "users|a").unwrap(), Some((t, id)));
        assert!(decode_page_token(&tok, "users|b").is_err());
        assert!(decode_page_token("garbage!", "users|a").is_err());
        assert!(decode_page_token("", "users|a").unwrap().is_none());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(1000).unwrap(), 1000);
        assert!(page_size(1001).is_err());
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn like_is_escaped() {
        assert_eq!(escape_like("a%b_c\\"), "a\\%b\\_c\\\\");
    }
}
