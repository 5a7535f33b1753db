//! The security audit log: which events are recorded and how their fields are sanitized.
//!
//! Events never contain a password, token or key. Free text (the identifier of a failed login for a
//! known account, the user agent) is stripped of control characters and truncated before it is
//! stored.
//!
//! **Unknown identifiers.** A failed login for an identifier that names no account is often a
//! password typed into the wrong field, so it is never stored: the event keeps a *keyed hash*
//! instead, `hmac:` and the first 16 hex digits (64 bits) of HMAC-SHA256 under a server secret
//! (`audit_identifier_hmac`, kept in the database like the other server secrets and sealed by
//! `AUTHD_MASTER_KEY`) of the identifier's kind and normalized form ([`identifier_digest`]).
//! Repeated attempts with one identifier carry the same digest, so an admin can still correlate
//! them, and can check a candidate identifier with `authd audit identifier-digest`; without the
//! secret a digest cannot be tested against guesses. Failures of known accounts carry the user id.

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use super::ClientInfo;
use crate::db::models::NewAuditEvent;
use crate::db::{DbError, audit};

/// At most this many characters of detail are stored.
pub const MAX_DETAIL_CHARS: usize = 256;
/// At most this many characters of a failed login's identifier are stored.
pub const MAX_IDENTIFIER_CHARS: usize = 64;

/// The kinds of event, stored in UPPER_SNAKE_CASE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    LoginSucceeded,
    LoginFailed,
    Logout,
    LogoutAll,
    RefreshReuseDetected,
    /// A just-spent refresh token presented again inside the grace window and honoured (the same
    /// successor returned); the detail names both the replaying and the spending address.
    RefreshReplayed,
    PasswordChanged,
    /// A password set through a mailed reset link (ResetPassword).
    PasswordReset,
    /// An e-mail change applied (ConfirmEmailChange, or an admin's UpdateUser).
    EmailChanged,
    /// UpdateMe asked for an e-mail change; it waits for the link mailed to the new address.
    EmailChangeRequested,
    /// The owner proved control of the address (VerifyEmail).
    EmailVerified,
    UserCreated,
    UserUpdated,
    UserDeleted,
    SessionsRevoked,
    ServiceKeyCreated,
    ServiceKeyRevoked,
    /// TOTP switched on (ConfirmTotp).
    MfaEnabled,
    /// TOTP switched off by its owner (DisableTotp).
    MfaDisabled,
    /// TOTP switched off by an admin (ResetUserMfa).
    MfaReset,
    /// Too many wrong second-factor codes: the account's second factor is locked for a while.
    MfaLocked,
    /// A recovery code was spent (VerifyMfa, DisableTotp or RegenerateRecoveryCodes).
    RecoveryCodeUsed,
    /// RegenerateRecoveryCodes replaced the recovery codes.
    RecoveryCodesRegenerated,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::LoginSucceeded => "LOGIN_SUCCEEDED",
            AuditKind::LoginFailed => "LOGIN_FAILED",
            AuditKind::Logout => "LOGOUT",
            AuditKind::LogoutAll => "LOGOUT_ALL",
            AuditKind::RefreshReuseDetected => "REFRESH_REUSE_DETECTED",
            AuditKind::RefreshReplayed => "REFRESH_REPLAYED",
            AuditKind::PasswordChanged => "PASSWORD_CHANGED",
            AuditKind::PasswordReset => "PASSWORD_RESET",
            AuditKind::EmailChanged => "EMAIL_CHANGED",
            AuditKind::EmailChangeRequested => "EMAIL_CHANGE_REQUESTED",
            AuditKind::EmailVerified => "EMAIL_VERIFIED",
            AuditKind::UserCreated => "USER_CREATED",
            AuditKind::UserUpdated => "USER_UPDATED",
            AuditKind::UserDeleted => "USER_DELETED",
            AuditKind::SessionsRevoked => "SESSIONS_REVOKED",
            AuditKind::ServiceKeyCreated => "SERVICE_KEY_CREATED",
            AuditKind::ServiceKeyRevoked => "SERVICE_KEY_REVOKED",
            AuditKind::MfaEnabled => "MFA_ENABLED",
            AuditKind::MfaDisabled => "MFA_DISABLED",
            AuditKind::MfaReset => "MFA_RESET",
            AuditKind::MfaLocked => "MFA_LOCKED",
            AuditKind::RecoveryCodeUsed => "RECOVERY_CODE_USED",
            AuditKind::RecoveryCodesRegenerated => "RECOVERY_CODES_REGENERATED",
        }
    }
}

/// One event to record.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub kind: AuditKind,
    /// The account the event is about.
    pub user_id: Option<Uuid>,
    /// Who acted.
    pub actor_id: Option<Uuid>,
    pub client: &'a ClientInfo,
    pub detail: String,
}

impl<'a> AuditEntry<'a> {
    pub fn new(kind: AuditKind, client: &'a ClientInfo) -> Self {
        Self {
            kind,
            user_id: None,
            actor_id: None,
            client,
            detail: String::new(),
        }
    }

    pub fn user(mut self, id: Uuid) -> Self {
        self.user_id = Some(id);
        self
    }

    pub fn actor(mut self, id: Option<Uuid>) -> Self {
        self.actor_id = id;
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = d.into();
        self
    }
}

/// Stores an event (inside the caller's transaction, when there is one).
pub async fn record(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    e: AuditEntry<'_>,
) -> Result<(), DbError> {
    let ip = e.client.ip_string();
    let mut detail = sanitize(&e.detail, MAX_DETAIL_CHARS);
    // The address is the one a gateway named: record whose word it is.
    if let Some(key) = e.client.proxy_key {
        detail.push_str(&format!("; via proxy key {key}"));
    }
    audit::insert(
        conn,
        &NewAuditEvent {
            id: Uuid::now_v7(),
            user_id: e.user_id,
            actor_id: e.actor_id,
            kind: e.kind.as_str(),
            ip_address: &ip,
            user_agent: &e.client.user_agent,
            detail: &detail,
            create_time: now,
        },
    )
    .await
}

/// Hex digits of the keyed hash that stands for an unknown identifier.
pub const IDENTIFIER_DIGEST_HEX: usize = 16;

/// The keyed hash stored for an unknown login identifier: `hmac:` and the first
/// [`IDENTIFIER_DIGEST_HEX`] hex digits of HMAC-SHA256(`secret`, `kind:normalized`), where `kind`
/// is `email` or `username` and `normalized` is what the login throttle keys by.
pub fn identifier_digest(secret: &[u8], kind: &str, normalized: &str) -> String {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let message = format!("{kind}:{normalized}");
    // HMAC accepts keys of any length, so this cannot fail; fall back to hashing for robustness.
    let digest: [u8; 32] = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(message.as_bytes());
            mac.finalize().into_bytes().into()
        }
        Err(_) => Sha256::digest([secret, message.as_bytes()].concat()).into(),
    };
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("hmac:{}", &hex[..IDENTIFIER_DIGEST_HEX])
}

/// Drops control characters and keeps at most `max` characters.
pub fn sanitize(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_strips_controls_and_truncates() {
        assert_eq!(sanitize("a\nb\u{0}c\u{1b}[31m", 10), "abc[31m");
        assert_eq!(sanitize(&"x".repeat(500), 64).len(), 64);
        assert_eq!(sanitize("ééé", 2), "éé");
    }

    #[test]
    fn identifier_digests_are_keyed_and_short() {
        let a = identifier_digest(b"secret one", "email", "x@example.com");
        assert_eq!(a.len(), "hmac:".len() + IDENTIFIER_DIGEST_HEX);
        assert_eq!(
            a,
            identifier_digest(b"secret one", "email", "x@example.com")
        );
        assert_ne!(
            a,
            identifier_digest(b"secret two", "email", "x@example.com")
        );
        assert_ne!(
            a,
            identifier_digest(b"secret one", "username", "x@example.com")
        );
    }

    #[test]
    fn kinds_are_upper_snake_case() {
        assert_eq!(
            AuditKind::RefreshReuseDetected.as_str(),
            "REFRESH_REUSE_DETECTED"
        );
        assert_eq!(AuditKind::ServiceKeyRevoked.as_str(), "SERVICE_KEY_REVOKED");
        assert_eq!(AuditKind::RefreshReplayed.as_str(), "REFRESH_REPLAYED");
    }
}
