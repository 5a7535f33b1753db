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
//!
//! Files: `register.rs` (Register, the bootstrap admin, account creation), `profile.rs` (the
//! caller's own account and sessions), `admin.rs` (administration by role).

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use crate::db::{self, DbError, users};
use crate::domain::authd::REDACTED;
use crate::domain::{Error, Principal, Result, Role, validate};

mod admin;
mod email_change;
mod profile;
pub(in crate::domain) mod register;
mod verify;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// An account as the API shows it (never the password hash).
#[derive(Debug, Clone)]
pub struct Account {
    pub id: Uuid,
    pub email: String,
    pub username: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub role: Role,
    pub active: bool,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub last_login_time: Option<DateTime<Utc>>,
    pub email_verified: bool,
    pub email_verify_time: Option<DateTime<Utc>>,
}

impl TryFrom<db::models::User> for Account {
    type Error = Error;
    fn try_from(u: db::models::User) -> Result<Self> {
        let role = Role::parse(&u.role).ok_or_else(|| {
            Error::internal(format!("user {} has unknown role {:?}", u.id, u.role))
        })?;
        Ok(Account {
            id: u.id,
            email: u.email,
            username: u.username,
            first_name: u.first_name,
            last_name: u.last_name,
            role,
            active: u.active,
            create_time: u.create_time,
            update_time: u.update_time,
            last_login_time: u.last_login_time,
            email_verified: u.email_verified,
            email_verify_time: u.email_verify_time,
        })
    }
}

/// What Register (and admin creation) takes. Its Debug hides the password.
#[derive(Clone, Default)]
pub struct NewAccount {
    pub email: String,
    pub password: String,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
    /// The address counts as verified at once (bootstrap and CLI admins, CreateUser with
    /// `email_verified`); otherwise a verification message is queued. Register ignores it.
    pub email_verified: bool,
}

impl std::fmt::Debug for NewAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new field cannot be added without deciding how it is shown.
        let NewAccount {
            email,
            password: _,
            username,
            first_name,
            last_name,
            email_verified,
        } = self;
        f.debug_struct("NewAccount")
            .field("email", email)
            .field("password", &REDACTED)
            .field("username", username)
            .field("first_name", first_name)
            .field("last_name", last_name)
            .field("email_verified", email_verified)
            .finish()
    }
}

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
            .field("current_password", &REDACTED)
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
            .field("password", &password.as_ref().map(|_| REDACTED))
            .finish()
    }
}

impl AdminUpdate {
    pub(in crate::domain) fn touches_more_than_active(&self) -> bool {
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
pub(in crate::domain) struct ProfileFields {
    email: Option<String>,
    username: Option<Option<String>>,
    first_name: Option<String>,
    last_name: Option<String>,
}

impl ProfileFields {
    /// The Register rules, applied to the fields that are present.
    pub(in crate::domain) fn validate(
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
    /// Exact up to [`crate::db::users::EXACT_COUNT_LIMIT`] matches, else an estimate.
    pub total_size: i64,
    pub total_size_is_estimate: bool,
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
    /// How the session was authenticated, as in its tokens' `amr` claim.
    pub amr: Vec<String>,
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

/// A moderator may act only on ROLE_USER accounts.
pub(in crate::domain) fn moderator_may_act_on(p: &Principal, target_role: &str) -> Result<()> {
    if p.role == Role::Moderator && target_role != Role::User.as_str() {
        return Err(Error::PermissionDenied(
            "moderators may only act on ROLE_USER accounts".into(),
        ));
    }
    Ok(())
}

pub(in crate::domain) fn last_admin() -> Error {
    Error::FailedPrecondition(
        "the last active admin cannot be demoted, deactivated or deleted".into(),
    )
}

pub(in crate::domain) fn page_size(n: i32) -> Result<i32> {
    match n {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1..=MAX_PAGE_SIZE => Ok(n),
        _ => Err(Error::invalid(format!(
            "page_size must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
        ))),
    }
}

/// Escapes LIKE wildcards so that `query` matches literally.
pub(in crate::domain) fn escape_like(s: &str) -> String {
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
pub(in crate::domain) fn encode_page_token(scope: &str, t: DateTime<Utc>, id: Uuid) -> String {
    let mut raw = Vec::with_capacity(8 + 8 + 16);
    raw.extend_from_slice(&Sha256::digest(scope.as_bytes())[..8]);
    raw.extend_from_slice(&t.timestamp_micros().to_be_bytes());
    raw.extend_from_slice(id.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

pub(in crate::domain) fn decode_page_token(
    token: &str,
    scope: &str,
) -> Result<Option<(DateTime<Utc>, Uuid)>> {
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

/// Maps a uniqueness conflict on users to ALREADY_EXISTS.
pub(in crate::domain) fn uniqueness_error(e: DbError) -> Error {
    match &e {
        DbError::UniqueViolation { constraint } if constraint == users::EMAIL_UNIQUE => {
            Error::AlreadyExists("email is already registered".into())
        }
        DbError::UniqueViolation { constraint } if constraint == users::USERNAME_UNIQUE => {
            Error::AlreadyExists("username is already taken".into())
        }
        _ => e.into(),
    }
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
