//! Row types: a `Queryable` read struct per table and an `Insertable` `NewX` for writes.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::schema::{refresh_tokens, server_secrets, service_keys, sessions, signing_keys, users};

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub username: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub password_hash: String,
    pub role: String,
    pub active: bool,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub last_login_time: Option<DateTime<Utc>>,
    pub email_verified: bool,
    pub email_verify_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub id: Uuid,
    pub email: &'a str,
    pub username: Option<&'a str>,
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub password_hash: &'a str,
    pub role: &'a str,
    pub active: bool,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub email_verified: bool,
    pub email_verify_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Identifiable)]
#[diesel(table_name = sessions, check_for_backend(diesel::pg::Pg))]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub generation: i32,
    pub create_time: DateTime<Utc>,
    pub last_use_time: DateTime<Utc>,
    pub idle_expire_time: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
    pub revoke_time: Option<DateTime<Utc>>,
    pub revoke_reason: Option<String>,
    pub user_agent: String,
    pub ip_address: String,
    /// The current refresh token sealed under the one it replaced, during that one's grace window
    /// (see `domain::opaque::ReplayBox`); NULL otherwise.
    pub replay_box: Option<Vec<u8>>,
    /// End of the grace window of the last rotation.
    pub replay_until: Option<DateTime<Utc>>,
    /// Address of the client whose refresh made the last rotation (during the window).
    pub rotate_ip: Option<String>,
    /// The latest `exp` of any access token issued for this session; its tombstone lasts until then.
    pub access_expire_time: DateTime<Utc>,
    /// The authentication methods of its login (RFC 8176): `pwd`, and `otp` after a second factor.
    pub amr: Vec<String>,
    /// SHA-256 of the current refresh token when it has the current format (see
    /// `domain::opaque::RefreshFormat`); NULL while it is a row of `refresh_tokens`.
    pub refresh_hash: Option<Vec<u8>>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = sessions)]
pub struct NewSession<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub generation: i32,
    pub create_time: DateTime<Utc>,
    pub last_use_time: DateTime<Utc>,
    pub idle_expire_time: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
    pub user_agent: &'a str,
    pub ip_address: &'a str,
    pub access_expire_time: DateTime<Utc>,
    pub amr: &'a [String],
    pub refresh_hash: &'a [u8],
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = refresh_tokens, check_for_backend(diesel::pg::Pg))]
#[expect(
    dead_code,
    reason = "the row's columns: read by diesel, not all by the domain"
)]
pub struct RefreshToken {
    pub token_hash: Vec<u8>,
    pub session_id: Uuid,
    pub generation: i32,
    pub create_time: DateTime<Utc>,
    pub spend_time: Option<DateTime<Utc>>,
}

#[derive(Clone, Queryable, Selectable)]
#[diesel(table_name = signing_keys, check_for_backend(diesel::pg::Pg))]
#[expect(
    dead_code,
    reason = "the row's columns: read by diesel, not all by the domain"
)]
pub struct SigningKey {
    pub kid: String,
    pub algorithm: String,
    pub private_key: Vec<u8>,
    pub public_key: Vec<u8>,
    pub create_time: DateTime<Utc>,
    pub activate_time: DateTime<Utc>,
    pub retire_time: Option<DateTime<Utc>>,
    /// `private_key` is sealed under the master key.
    pub encrypted: bool,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("private_key", &"[redacted]")
            .field("activate_time", &self.activate_time)
            .field("retire_time", &self.retire_time)
            .finish()
    }
}

#[derive(Insertable)]
#[diesel(table_name = signing_keys)]
pub struct NewSigningKey<'a> {
    pub kid: &'a str,
    pub algorithm: &'a str,
    pub private_key: &'a [u8],
    pub public_key: &'a [u8],
    pub create_time: DateTime<Utc>,
    pub activate_time: DateTime<Utc>,
    pub encrypted: bool,
}

#[derive(Insertable)]
#[diesel(table_name = server_secrets)]
pub struct NewServerSecret<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
    pub create_time: DateTime<Utc>,
    pub encrypted: bool,
}

#[derive(Clone, Queryable, Selectable)]
#[diesel(table_name = server_secrets, check_for_backend(diesel::pg::Pg))]
#[expect(
    dead_code,
    reason = "the row's columns: read by diesel, not all by the domain"
)]
pub struct ServerSecret {
    pub name: String,
    pub value: Vec<u8>,
    pub create_time: DateTime<Utc>,
    pub encrypted: bool,
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSecret")
            .field("name", &self.name)
            .field("value", &"[redacted]")
            .field("encrypted", &self.encrypted)
            .finish()
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = service_keys, check_for_backend(diesel::pg::Pg))]
pub struct ServiceKey {
    pub id: Uuid,
    pub name: String,
    pub key_hash: Vec<u8>,
    pub creator_id: Option<Uuid>,
    pub create_time: DateTime<Utc>,
    pub last_use_time: Option<DateTime<Utc>>,
    pub revoke_time: Option<DateTime<Utc>>,
    /// May name the end user's address in `x-forwarded-for`.
    pub trusted_proxy: bool,
    /// Networks the key may be used from (normalized CIDRs); empty = anywhere.
    pub allowed_cidrs: Vec<String>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = service_keys)]
pub struct NewServiceKey<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub key_hash: &'a [u8],
    pub creator_id: Option<Uuid>,
    pub create_time: DateTime<Utc>,
    pub trusted_proxy: bool,
    pub allowed_cidrs: &'a [String],
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = super::schema::audit_events, check_for_backend(diesel::pg::Pg))]
pub struct AuditEvent {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    pub kind: String,
    pub ip_address: String,
    pub user_agent: String,
    pub detail: String,
    pub create_time: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = super::schema::audit_events)]
pub struct NewAuditEvent<'a> {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    pub kind: &'a str,
    pub ip_address: &'a str,
    pub user_agent: &'a str,
    pub detail: &'a str,
    pub create_time: DateTime<Utc>,
}

/// A partial update of a user; `None` leaves a column alone.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = users)]
pub struct UserChanges<'a> {
    pub email: Option<&'a str>,
    pub username: Option<Option<&'a str>>,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
    pub password_hash: Option<&'a str>,
    pub role: Option<&'a str>,
    pub active: Option<bool>,
    pub update_time: Option<DateTime<Utc>>,
    pub email_verified: Option<bool>,
    /// `Some(None)` clears it.
    pub email_verify_time: Option<Option<DateTime<Utc>>>,
}
