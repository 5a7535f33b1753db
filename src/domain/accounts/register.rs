//! New accounts: Register, the bootstrap admin, and the shared path (validation, password policy,
//! bcrypt, insert with its USER_CREATED event, and the verification message of an unverified
//! address, queued in the same transaction) that admin creation uses too.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use uuid::Uuid;

use crate::db::{self, DbError, users};
use crate::domain::accounts::{Account, NewAccount, uniqueness_error};
use crate::domain::audit::{self, AuditEntry, AuditKind};
use crate::domain::passwords;
use crate::domain::{Authd, ClientInfo, Error, Principal, Result, Role, validate};

impl Authd {
    /// Validates and stores a new account, with its USER_CREATED event and, unless
    /// `input.email_verified`, a verification message. Every check runs before bcrypt.
    pub async fn create_account(
        &self,
        input: NewAccount,
        role: Role,
        actor: Option<Uuid>,
        client: &ClientInfo,
        how: &str,
    ) -> Result<Account> {
        let prepared = self.prepare_account(input, client).await?;
        let now = self.now();
        let (row, queued) = self
            .conn()
            .await?
            .transaction::<_, Error, _>(async |conn| {
                let row = insert_account(conn, &prepared, role, actor, client, how, now)
                    .await
                    .map_err(uniqueness_error)?;
                let queued = if row.email_verified {
                    false
                } else {
                    self.queue_verification(conn, row.id, &row.email, now)
                        .await?
                };
                Ok((row, queued))
            })
            .await?;
        if queued {
            self.mailer.wake();
        }
        Account::try_from(row)
    }

    /// The checks of a new account, then its password hash.
    pub(in crate::domain) async fn prepare_account(
        &self,
        input: NewAccount,
        client: &ClientInfo,
    ) -> Result<PreparedAccount> {
        let email = validate::email(&input.email)?;
        let username = validate::username(&input.username)?;
        let first_name = validate::person_name("first_name", &input.first_name)?;
        let last_name = validate::person_name("last_name", &input.last_name)?;
        let password = passwords::new_password("password", &input.password)?;
        let email_verified = input.email_verified;
        passwords::check_strength(
            "password",
            &password,
            self.settings.passwords.min_score,
            &[&email, username.as_deref().unwrap_or_default()],
        )?;
        let hash = self.hasher.hash(password, client).await?;
        Ok(PreparedAccount {
            email,
            username,
            first_name,
            last_name,
            hash,
            email_verified,
        })
    }

    /// Register: always an active ROLE_USER; refused when registration is closed.
    /// The account starts unverified; its verification message is queued with it.
    pub async fn register(&self, mut input: NewAccount, client: &ClientInfo) -> Result<Account> {
        self.rate_limiter.check(client.ip)?;
        input.email_verified = false;
        if !self.settings.accounts.allow_registration {
            return Err(Error::PermissionDenied("registration is closed".into()));
        }
        self.create_account(input, Role::User, None, client, "registration")
            .await
    }

    /// Creates the bootstrap admin, only while no active admin exists: a deleted or deactivated
    /// bootstrap admin does not come back at the next start while another active admin exists.
    /// The check and the insert run in one transaction under the lock that also guards the last
    /// active admin (`users::lock_active_admins`), so replicas starting together create it once.
    pub async fn ensure_bootstrap_admin(&self, email: &str, password: &str) -> Result<()> {
        let normalized = validate::email(email)?;
        // Most starts find an admin: no bcrypt work for them.
        if users::any_active_admin(&mut *self.conn().await?).await? {
            return Ok(());
        }
        let input = NewAccount {
            email: normalized.clone(),
            password: password.to_owned(),
            // The bootstrap admin is verified.
            email_verified: true,
            ..Default::default()
        };
        let client = ClientInfo::default();
        let prepared = self.prepare_account(input, &client).await?;
        let now = self.now();
        let outcome = self
            .conn()
            .await?
            .transaction::<_, DbError, _>(async |conn| {
                if !users::lock_active_admins(conn).await?.is_empty() {
                    return Ok(None);
                }
                if let Some(u) = users::find_by_email(conn, &normalized).await? {
                    return Ok(Some(Err(u.id)));
                }
                let row = insert_account(
                    conn,
                    &prepared,
                    Role::Admin,
                    None,
                    &client,
                    "bootstrap admin",
                    now,
                )
                .await?;
                Ok(Some(Ok(row.id)))
            })
            .await
            .map_err(uniqueness_error)?;
        match outcome {
            None => {}
            Some(Ok(id)) => tracing::info!(user_id = %id, "bootstrap admin created"),
            Some(Err(id)) => tracing::warn!(
                user_id = %id,
                "no active admin, but the bootstrap admin e-mail belongs to an existing account \
                 (inactive, or not an admin); left unchanged: use `authd users create-admin`"
            ),
        }
        Ok(())
    }

    pub async fn get_me(&self, p: &Principal) -> Result<Account> {
        let row = users::find_by_id(&mut *self.conn().await?, p.user_id)
            .await?
            .ok_or_else(|| Error::NotFound("user not found".into()))?;
        Account::try_from(row)
    }
}

/// A new account that passed its checks, with its password hash.
pub(in crate::domain) struct PreparedAccount {
    email: String,
    username: Option<String>,
    first_name: String,
    last_name: String,
    hash: String,
    email_verified: bool,
}

/// Inserts a prepared account with its USER_CREATED event (inside the caller's transaction).
pub(in crate::domain) async fn insert_account(
    conn: &mut db::PgConn,
    p: &PreparedAccount,
    role: Role,
    actor: Option<Uuid>,
    client: &ClientInfo,
    how: &str,
    now: DateTime<Utc>,
) -> std::result::Result<db::models::User, DbError> {
    let new_user = db::models::NewUser {
        id: Uuid::new_v4(),
        email: &p.email,
        username: p.username.as_deref(),
        first_name: &p.first_name,
        last_name: &p.last_name,
        password_hash: &p.hash,
        role: role.as_str(),
        active: true,
        create_time: now,
        update_time: now,
        email_verified: p.email_verified,
        email_verify_time: p.email_verified.then_some(now),
    };
    let row = users::insert(conn, &new_user).await?;
    let entry = AuditEntry::new(AuditKind::UserCreated, client)
        .user(row.id)
        .actor(actor)
        .detail(format!(
            "{how}; role {}{}",
            role.as_str(),
            if p.email_verified {
                "; email verified"
            } else {
                ""
            }
        ));
    audit::record(conn, now, entry).await?;
    Ok(row)
}
