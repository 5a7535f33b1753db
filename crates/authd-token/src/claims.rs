//! The claims of an access token ([`AccessClaims`], as signed) and what verification makes of them
//! ([`VerifiedToken`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Role;

/// The claims of an access token (RFC 9068 section 2.2, plus authd's `sid`, `role` and `email`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The user's id (a UUID).
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    /// The session's id (a UUID): revoking the session revokes the token.
    pub sid: String,
    /// [`Role::as_str`].
    pub role: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// How the user authenticated (RFC 8176): `["pwd"]`, or `["pwd", "otp"]` after a second factor.
    /// Tokens issued before authd knew a second factor have none: they read as `["pwd"]`.
    #[serde(default = "default_amr")]
    pub amr: Vec<String>,
}

/// The `amr` of a token without one: a password login.
pub fn default_amr() -> Vec<String> {
    vec![AMR_PASSWORD.to_owned()]
}

/// The `amr` value of a password (RFC 8176).
pub const AMR_PASSWORD: &str = "pwd";
/// The `amr` value of a one-time password, here TOTP (RFC 8176).
pub const AMR_OTP: &str = "otp";

/// A token that passed every check of [`Verifier::verify`](crate::Verifier::verify). Whether its
/// session is still alive is not something a token can say: the caller checks revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The `kid` that verified it.
    pub key_id: String,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub role: Role,
    pub email: String,
    pub username: Option<String>,
    pub issue_time: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
    /// The token's `amr` claim (`["pwd"]` when it has none).
    pub amr: Vec<String>,
}
