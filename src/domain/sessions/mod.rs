//! Sessions: a login opens one, refresh rotates its refresh token, logout and the other revoking
//! operations end it. Files: `login.rs`, `refresh.rs` (rotation, grace replays, reuse detection),
//! `logout.rs`, `revocation.rs` (the one way to revoke, and the one revocation check), and
//! `rotations.rs` (concurrent refreshes' rotations written in shared statements).
//!
//! This file holds what they share: [`TokenPair`] and the signing of a session's access token.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db;
use crate::db::models::Session;
use crate::domain::authd::{REDACTED, chrono_duration};
use crate::domain::tokens::AccessClaims;
use crate::domain::{Authd, Result};

pub(in crate::domain) mod login;
mod logout;
pub(in crate::domain) mod refresh;
pub(in crate::domain) mod revocation;
pub(in crate::domain) mod rotations;

pub use login::{LoginIdentifier, LoginOutcome, MfaTicket};

/// The credentials Login and Refresh return. Its Debug hides both tokens.
#[derive(Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
    pub refresh_expires_in: i64,
    pub session_id: Uuid,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let TokenPair {
            access_token: _,
            refresh_token: _,
            expires_in,
            refresh_expires_in,
            session_id,
        } = self;
        f.debug_struct("TokenPair")
            .field("access_token", &REDACTED)
            .field("refresh_token", &REDACTED)
            .field("expires_in", expires_in)
            .field("refresh_expires_in", refresh_expires_in)
            .field("session_id", session_id)
            .finish()
    }
}

impl Authd {
    /// The `exp` of an access token issued at `now` for a session whose refresh token lasts until
    /// `session_end`: the token never outlives its session (the revocation view relies on that).
    pub(in crate::domain) fn access_expire_time(
        &self,
        now: DateTime<Utc>,
        session_end: DateTime<Utc>,
    ) -> DateTime<Utc> {
        (now + chrono_duration(self.settings.tokens.access_token_ttl)).min(session_end)
    }

    /// Signs an access token for `session` and pairs it with `refresh_token`. The access token never
    /// outlives the session's idle or absolute expiry (the revocation view relies on that).
    pub(in crate::domain) fn token_pair(
        &self,
        user: TokenSubject<'_>,
        session: &Session,
        refresh_token: String,
        now: DateTime<Utc>,
    ) -> Result<TokenPair> {
        let facts = SessionFacts {
            id: session.id,
            end: session_end(session),
            amr: &session.amr,
        };
        self.token_pair_of(user, facts, refresh_token, now)
    }

    /// [`Self::token_pair`] from what a token needs of its session (a rotation returns only that).
    pub(in crate::domain) fn token_pair_of(
        &self,
        user: TokenSubject<'_>,
        session: SessionFacts<'_>,
        refresh_token: String,
        now: DateTime<Utc>,
    ) -> Result<TokenPair> {
        let refresh_end = session.end;
        let exp = self.access_expire_time(now, refresh_end);
        let claims = AccessClaims {
            iss: self.settings.tokens.issuer.clone(),
            aud: self.settings.tokens.audience.clone(),
            sub: user.user_id.to_string(),
            exp: exp.timestamp(),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            jti: Uuid::new_v4().to_string(),
            client_id: self.settings.tokens.issuer.clone(),
            sid: session.id.to_string(),
            role: user.role.to_owned(),
            email: user.email.to_owned(),
            preferred_username: user.username.map(str::to_owned),
            amr: session.amr.to_vec(),
        };
        let access_token = self.keyring().sign(&claims)?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            expires_in: (exp - now).num_seconds().max(0),
            refresh_expires_in: (refresh_end - now).num_seconds().max(0),
            session_id: session.id,
        })
    }
}

/// What an access token needs of its session: the id, the end (the earlier of the idle and the
/// absolute expiry) and the authentication methods of its login.
pub(in crate::domain) struct SessionFacts<'a> {
    pub(in crate::domain) id: Uuid,
    pub(in crate::domain) end: DateTime<Utc>,
    pub(in crate::domain) amr: &'a [String],
}

/// What an access token says about its user.
pub(in crate::domain) struct TokenSubject<'a> {
    user_id: Uuid,
    role: &'a str,
    email: &'a str,
    username: Option<&'a str>,
}

impl<'a> TokenSubject<'a> {
    pub(in crate::domain) fn of(user: &'a db::models::User) -> Self {
        Self {
            user_id: user.id,
            role: &user.role,
            email: &user.email,
            username: user.username.as_deref(),
        }
    }
}

/// When a session's refresh token stops working: its idle or its absolute expiry.
pub(in crate::domain) fn session_end(session: &Session) -> DateTime<Utc> {
    end_of(session.idle_expire_time, session.expire_time)
}

/// When a session ends: the earlier of its idle and its absolute expiry.
pub(in crate::domain) fn end_of(
    idle_expire_time: DateTime<Utc>,
    expire_time: DateTime<Utc>,
) -> DateTime<Utc> {
    idle_expire_time.min(expire_time)
}

/// An address for an audit detail (`unknown` when the transport did not give one).
pub(in crate::domain) fn show_ip(ip: &str) -> &str {
    if ip.is_empty() { "unknown" } else { ip }
}
