//! Administration by role (see the permission matrix in the module docs of `accounts`): listing,
//! reading, changing, creating and deleting users, ending their sessions, and the audit log.

use diesel_async::AsyncConnection;

use crate::db::models::UserChanges;
use crate::db::users::UserFilter;
use crate::db::{audit as audit_db, users};
use crate::domain::accounts::{
    Account, AdminUpdate, AuditEventInfo, AuditPage, MAX_QUERY_CHARS, NewAccount, ProfileFields,
    RoleArg, UserPage, UserQuery, decode_page_token, encode_page_token, escape_like, last_admin,
    moderator_may_act_on, page_size, uniqueness_error,
};
use crate::domain::audit::{self, AuditEntry, AuditKind};
use crate::domain::passwords;
use crate::domain::sessions::revocation::{self, Revoked};
use crate::domain::{Authd, ClientInfo, Error, Principal, Result, Role, validate};

impl Authd {
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
            prefix: (!query.is_empty()).then(|| {
                let q = query.to_lowercase();
                let domain = q.strip_prefix('@').unwrap_or(&q);
                (
                    format!("{}%", escape_like(&q)),
                    format!("{}%", escape_like(domain)),
                )
            }),
            role,
            active: q.active,
        };
        let scope = format!("users|{query}|{}|{:?}", role.unwrap_or(""), q.active);
        let cursor = decode_page_token(&q.page_token, &scope)?;
        let mut conn = self.conn().await?;
        let mut rows = users::list(&mut conn, &filter, cursor, i64::from(limit) + 1).await?;
        // A first page that holds every match is its own count.
        let count = if cursor.is_none() && rows.len() <= limit as usize {
            users::UserCount {
                total: rows.len() as i64,
                estimate: false,
            }
        } else {
            users::count(&mut conn, &filter).await?
        };
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
            total_size: count.total,
            total_size_is_estimate: count.estimate,
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
        let mut conn = self.conn().await?;
        let revoked = conn
            .transaction::<_, Error, _>(async |conn| {
                let target = users::find_by_id(conn, id)
                    .await?
                    .ok_or_else(|| Error::NotFound("user not found".into()))?;
                moderator_may_act_on(p, &target.role)?;
                let revoked = revocation::revoke_user_sessions(
                    conn,
                    now,
                    id,
                    None,
                    "revoked_by_admin",
                    |n| {
                        Some(
                            AuditEntry::new(AuditKind::SessionsRevoked, client)
                                .user(id)
                                .actor(Some(p.user_id))
                                .detail(format!("{n} session(s) revoked")),
                        )
                    },
                )
                .await?;
                Ok(revoked)
            })
            .await?;
        Ok(self.publish(&mut conn, revoked).await)
    }

    /// ADMIN: creates an account with any role (ROLE_UNSPECIFIED means ROLE_USER), verified when
    /// `input.email_verified`, else with a verification message.
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
            .map(|pw| passwords::new_password("password", pw))
            .transpose()?;
        let hash = match password {
            Some(pw) => {
                let target = self.get_user(p, user_id).await?;
                let email_ctx = email.as_deref().unwrap_or(&target.email);
                let username_ctx = match &username {
                    Some(u) => u.as_deref(),
                    None => target.username.as_deref(),
                };
                passwords::check_strength(
                    "password",
                    &pw,
                    self.settings.passwords.min_score,
                    &[email_ctx, username_ctx.unwrap_or_default()],
                )?;
                Some(self.hasher().hash(pw, client).await?)
            }
            None => None,
        };
        let now = self.now();
        let mut conn = self.conn().await?;
        let revoked = conn
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
                    // Applied at once, unverified (see `email_change`).
                    email_verified: email_change.is_some().then_some(false),
                    email_verify_time: email_change.is_some().then_some(None),
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
                if hash.is_some() {
                    // A password set by an admin voids the mailed reset links.
                    crate::db::account_tokens::void_all(
                        conn,
                        id,
                        crate::db::account_tokens::Purpose::ResetPassword,
                        now,
                    )
                    .await?;
                }
                let revoked = if role_change.is_some() || active_change.is_some() || hash.is_some()
                {
                    // The count goes into the USER_UPDATED event below.
                    let revoked = revocation::revoke_user_sessions(
                        conn,
                        now,
                        id,
                        None,
                        "account_changed",
                        |_| None,
                    )
                    .await?;
                    detail.push(format!("{} session(s) revoked", revoked.get()));
                    revoked
                } else {
                    Revoked::nothing(0)
                };
                let actor = Some(p.user_id);
                let entry = AuditEntry::new(AuditKind::UserUpdated, client)
                    .user(id)
                    .actor(actor)
                    .detail(detail.join("; "));
                audit::record(conn, now, entry).await?;
                let mut queued = false;
                if let Some(e) = &email_change {
                    let entry = AuditEntry::new(AuditKind::EmailChanged, client)
                        .user(id)
                        .actor(actor)
                        .detail(format!(
                            "{} -> {e}; set by an admin, unverified",
                            target.email
                        ));
                    audit::record(conn, now, entry).await?;
                    queued = self.after_admin_email_change(conn, id, e, now).await?;
                }
                if hash.is_some() {
                    let entry = AuditEntry::new(AuditKind::PasswordChanged, client)
                        .user(id)
                        .actor(actor)
                        .detail("set by an admin");
                    audit::record(conn, now, entry).await?;
                }
                Ok(revoked.map(|_| (row, queued)))
            })
            .await?;
        let (row, queued) = self.publish(&mut conn, revoked).await;
        if queued {
            self.mailer.wake();
        }
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
}
