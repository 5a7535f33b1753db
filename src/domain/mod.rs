//! The rules of authd: accounts, passwords, sessions, tokens and who may do what.
//!
//! Nothing here knows about tonic or gRPC. Operations take plain inputs plus an authenticated
//! [`Principal`] where needed, and fail with the one [`Error`] enum that the `grpc` layer maps to
//! status codes in a single place.

pub mod access;
pub mod account_tokens;
pub mod accounts;
pub mod audit;
mod authd;
pub mod ext_authz;
pub mod fastkey;
mod housekeeping;
pub mod key_digests;
pub mod keystore;
pub mod mail;
pub mod mfa;
pub mod opaque;
pub mod password_reset;
pub mod passwords;
pub mod revocation_feed;
pub mod service_keys;
pub mod sessions;
pub mod settings;
mod signing_keys;
pub mod throttle;
pub mod tokens;
pub mod validate;
pub mod views;
pub mod watch;

use std::net::IpAddr;
use std::time::Duration;

use uuid::Uuid;

use crate::db::DbError;

pub use authd::{Authd, REDACTED};

/// A user's role, ordered by power: defined with the token model in `authd-token` (it is the
/// JWT `role` claim), so that the server and its clients share one definition.
pub use authd_token::Role;

/// Why a request was not authenticated. The grpc layer turns the bearer-token variants into
/// machine-readable `ErrorInfo` reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization: Bearer` metadata.
    TokenMissing,
    /// Malformed, badly signed, wrong type/audience/issuer, or its session was revoked.
    TokenInvalid,
    /// Correctly signed but past `exp`: refresh and retry.
    TokenExpired,
    /// Login: unknown account, wrong password, or credentials that cannot match.
    BadCredentials,
    /// Refresh: unknown, spent, revoked or expired refresh token.
    BadRefreshToken,
    /// ResetPassword: unknown, used, voided or expired reset token (one answer for all).
    BadResetToken,
    /// ValidateToken: no `x-api-key`.
    ServiceKeyMissing,
    /// ValidateToken: unknown or revoked service key.
    ServiceKeyInvalid,
    /// VerifyEmail, ConfirmEmailChange: the mailed token is unknown, used, voided or expired.
    BadAccountToken,
    /// VerifyMfa: unknown, expired, used or voided mfa_token.
    MfaTokenInvalid,
    /// A wrong (or already used) second-factor code.
    MfaCodeInvalid,
}

/// Every way a domain operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("unauthenticated: {0:?}")]
    Unauthenticated(AuthFailure),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Login with the right password for an unverified address while `AUTHD_REQUIRE_VERIFIED_EMAIL`
    /// is on: FAILED_PRECONDITION with the ErrorInfo reason `EMAIL_NOT_VERIFIED`.
    #[error("email not verified")]
    EmailNotVerified,
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("request timed out")]
    DeadlineExceeded,
    /// The database cannot be reached. The detail is for the log only.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected state. The detail is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Error::Internal(msg.to_string())
    }
}

impl From<DbError> for Error {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(detail) => Error::Unavailable(detail),
            DbError::Timeout => Error::DeadlineExceeded,
            // Callers that expect a uniqueness conflict map it themselves; one reaching here is a bug.
            e @ DbError::UniqueViolation { .. } => Error::Internal(e.to_string()),
            DbError::Query(e) => Error::Internal(e.to_string()),
        }
    }
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        DbError::from(e).into()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who is calling, as proven by a verified access token of a live session.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub role: Role,
    pub email: String,
    /// The token's `amr` (RFC 8176): `["pwd"]`, or `["pwd", "otp"]` after a second factor.
    pub amr: Vec<String>,
}

impl Principal {
    /// Authorization: the caller's role must be at least `min`.
    pub fn require(&self, min: Role) -> Result<()> {
        if self.role >= min {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "this call requires the {} role",
                min.as_str()
            )))
        }
    }
}

/// Facts about the client connection that sessions and (later) audit events record.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    pub user_agent: String,
    /// The proxy service key this call came through, when a gateway presented one from an address
    /// it may be used from (`ip` is then the end user's address, named by the gateway). Password
    /// checks of such calls count against the key's failure budget.
    pub proxy_key: Option<Uuid>,
    /// When the call must be answered: its `grpc-timeout` capped by `AUTHD_REQUEST_TIMEOUT`,
    /// counted from its arrival (see [`RequestDeadline`]). None = `AUTHD_REQUEST_TIMEOUT` from now.
    /// Only the bcrypt pool's admission reads it (scheduling, not a business rule).
    pub deadline: Option<std::time::Instant>,
}

/// The deadline of a call, put into the request's extensions by the server's deadline layer
/// (`grpc-timeout`, capped by `AUTHD_REQUEST_TIMEOUT`) and copied into [`ClientInfo::deadline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestDeadline(pub std::time::Instant);

/// Limits on stored client info.
pub const MAX_USER_AGENT_CHARS: usize = 256;

/// The unit of per-client limits: an IPv4 address, or the /64 prefix of an IPv6 address (one
/// subscriber's or host's allocation, which it can change at will inside). The login throttle, the
/// per-IP rate limit, the bcrypt pool's fair queues and the grace-replay binding all key by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientKey {
    V4(std::net::Ipv4Addr),
    /// The address with its low 64 bits cleared.
    V6Prefix64(std::net::Ipv6Addr),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(v4),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                ClientKey::V6Prefix64(std::net::Ipv6Addr::from(bits))
            }
        }
    }
}

impl std::fmt::Display for ClientKey {
    /// `192.0.2.1` or `2001:db8:1:2::/64`: what the throttle table and audit details store.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKey::V4(a) => write!(f, "{a}"),
            ClientKey::V6Prefix64(a) => write!(f, "{a}/64"),
        }
    }
}

impl ClientInfo {
    pub fn new(ip: Option<IpAddr>, user_agent: &str) -> Self {
        let user_agent: String = user_agent
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_USER_AGENT_CHARS)
            .collect();
        Self {
            ip,
            user_agent,
            proxy_key: None,
            deadline: None,
        }
    }

    /// The same client, reached through proxy key `key`.
    pub fn via_proxy_key(mut self, key: Option<Uuid>) -> Self {
        self.proxy_key = key;
        self
    }

    pub fn ip_string(&self) -> String {
        self.ip.map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// The client's [`ClientKey`], if its address is known.
    pub fn key(&self) -> Option<ClientKey> {
        self.ip.map(ClientKey::of)
    }

    /// [`ClientInfo::key`] as text (empty when the address is unknown), for database rows.
    pub fn key_string(&self) -> String {
        self.key().map(|k| k.to_string()).unwrap_or_default()
    }
}

#[cfg(test)]
mod client_key_tests {
    use super::*;

    #[test]
    fn ipv6_addresses_of_one_64_share_a_key() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientKey::of(a), ClientKey::of(b));
        assert_ne!(ClientKey::of(a), ClientKey::of(c));
        assert_eq!(ClientKey::of(a).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ClientKey::of(mapped).to_string(), "192.0.2.7");
    }
}
