//! The security audit log: which events are recorded and how their fields are sanitized.
//!
//! Events never contain a password, token or key. Free text (the identifier of a failed login, the
//! user agent) is stripped of control characters and truncated before it is stored.

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
    EmailChanged,
    UserCreated,
    UserUpdated,
    UserDeleted,
    SessionsRevoked,
    ServiceKeyCreated,
    ServiceKeyRevoked,
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
            AuditKind::EmailChanged => "EMAIL_CHANGED",
            AuditKind::UserCreated => "USER_CREATED",
            AuditKind::UserUpdated => "USER_UPDATED",
            AuditKind::UserDeleted => "USER_DELETED",
            AuditKind::SessionsRevoked => "SESSIONS_REVOKED",
            AuditKind::ServiceKeyCreated => "SERVICE_KEY_CREATED",
            AuditKind::ServiceKeyRevoked => "SERVICE_KEY_REVOKED",
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
    let detail = sanitize(&e.detail, MAX_DETAIL_CHARS);
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
    fn kinds_are_upper_snake_case() {
        assert_eq!(
            AuditKind::RefreshReuseDetected.as_str(),
            "REFRESH_REUSE_DETECTED"
        );
        assert_eq!(AuditKind::ServiceKeyRevoked.as_str(), "SERVICE_KEY_REVOKED");
        assert_eq!(AuditKind::RefreshReplayed.as_str(), "REFRESH_REPLAYED");
    }
}
