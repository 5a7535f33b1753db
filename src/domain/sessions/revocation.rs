//! Revocation: the one way to end sessions and service keys, and the one revocation check.
//!
//! **Revoking.** Every operation that ends sessions or service keys calls one of the functions here
//! inside its transaction. Each revokes and records its audit event in that transaction, and
//! returns a [`Revoked`], whose value the caller reaches only through [`Authd::publish`] after the
//! commit: that refreshes this replica's revocation view at once instead of at the next poll. A
//! new revoking operation therefore cannot forget the audit event or the view (`Revoked` is
//! `#[must_use]`).
//!
//! **Checking.** [`Authd::live_access_token`] is the check that authentication of API calls and
//! ValidateToken both use: a fresh view (fail closed), a verified token, a session that has not
//! ended.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{self, DbError, service_keys, sessions, users};
use crate::domain::audit::{self, AuditEntry};
use crate::domain::tokens::VerifiedToken;
use crate::domain::{AuthFailure, Authd, Error, Result};

/// What a revoking transaction ended, not yet shown to this replica's revocation view.
#[must_use = "pass it to Authd::publish once the transaction has committed"]
pub(in crate::domain) struct Revoked<T> {
    value: T,
    /// Whether anything ended (and the view needs a refresh).
    ended: bool,
}

impl<T> Revoked<T> {
    /// A transaction outcome that ended nothing.
    pub(in crate::domain) fn nothing(value: T) -> Self {
        Self {
            value,
            ended: false,
        }
    }

    /// The value, for use inside the transaction (e.g. a count for an audit detail).
    pub(in crate::domain) fn get(&self) -> &T {
        &self.value
    }

    /// The same revocation with another value.
    pub(in crate::domain) fn map<U>(self, f: impl FnOnce(T) -> U) -> Revoked<U> {
        Revoked {
            value: f(self.value),
            ended: self.ended,
        }
    }
}

/// Revokes session `session_id` with `reason`, recording `entry` if it was live.
pub(in crate::domain) async fn revoke_session(
    conn: &mut db::PgConn,
    now: DateTime<Utc>,
    session_id: Uuid,
    reason: &str,
    entry: AuditEntry<'_>,
) -> Result<Revoked<bool>, DbError> {
    let revoked = sessions::revoke(conn, session_id, now, reason).await?;
    if revoked {
        audit::record(conn, now, entry).await?;
    }
    Ok(Revoked {
        value: revoked,
        ended: revoked,
    })
}

/// Revokes session `session_id` if it is a live session of `user_id`, recording `entry` if so.
pub(in crate::domain) async fn revoke_own_session(
    conn: &mut db::PgConn,
    now: DateTime<Utc>,
    user_id: Uuid,
    session_id: Uuid,
    reason: &str,
    entry: AuditEntry<'_>,
) -> Result<Revoked<bool>, DbError> {
    let revoked = sessions::revoke_own(conn, user_id, session_id, now, reason).await?;
    if revoked {
        audit::record(conn, now, entry).await?;
    }
    Ok(Revoked {
        value: revoked,
        ended: revoked,
    })
}

/// Revokes every live session of `user_id` but `keep`, and records the event `entry` makes of the
/// count (`None` when the caller's own event of the transaction reports the count).
pub(in crate::domain) async fn revoke_user_sessions<'a>(
    conn: &mut db::PgConn,
    now: DateTime<Utc>,
    user_id: Uuid,
    keep: Option<Uuid>,
    reason: &str,
    entry: impl FnOnce(i64) -> Option<AuditEntry<'a>>,
) -> Result<Revoked<i64>, DbError> {
    let n = sessions::revoke_all_for_user(conn, user_id, keep, now, reason).await?;
    if let Some(entry) = entry(n) {
        audit::record(conn, now, entry).await?;
    }
    Ok(Revoked {
        value: n,
        ended: n > 0,
    })
}

/// Revokes service key `id`, recording `entry` if it was unrevoked.
pub(in crate::domain) async fn revoke_service_key(
    conn: &mut db::PgConn,
    now: DateTime<Utc>,
    id: Uuid,
    entry: AuditEntry<'_>,
) -> Result<Revoked<bool>, DbError> {
    let revoked = service_keys::revoke(conn, id, now).await?;
    if revoked {
        audit::record(conn, now, entry).await?;
    }
    Ok(Revoked {
        value: revoked,
        ended: revoked,
    })
}

/// Deletes account `user_id` (its sessions and refresh tokens cascade) and records `entry`.
pub(in crate::domain) async fn delete_account(
    conn: &mut db::PgConn,
    now: DateTime<Utc>,
    user_id: Uuid,
    entry: AuditEntry<'_>,
) -> Result<Revoked<()>, DbError> {
    users::delete(conn, user_id).await?;
    audit::record(conn, now, entry).await?;
    Ok(Revoked {
        value: (),
        ended: true,
    })
}

impl Authd {
    /// After the revoking transaction committed: makes what it ended visible here at once instead
    /// of at the next poll (a failure only delays it to that poll), and gives back its value.
    pub(in crate::domain) async fn publish<T>(&self, conn: &mut db::PgConn, r: Revoked<T>) -> T {
        if r.ended {
            self.refresh_views(conn).await;
        }
        r.value
    }

    /// Refreshes this replica's views from the database now (a failure only delays it to the next
    /// poll). Also for a new service key, usable here at once.
    pub(in crate::domain) async fn refresh_views(&self, conn: &mut db::PgConn) {
        if let Err(e) = self.views.sync(conn, self.now()).await {
            tracing::warn!(error = %e, "refreshing the revocation view failed; the next poll will");
        }
    }

    /// The revocation check, the same for API calls and ValidateToken: the view is fresh (fail
    /// closed: a stale view cannot vouch for any session), `token` verifies (see
    /// [`Authd::verify_access_token`]), and its session has not ended.
    pub(in crate::domain) async fn live_access_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Arc<VerifiedToken>> {
        self.views.check_fresh()?;
        let v = self.verify_access_token(token, now).await?;
        if self.views.has_ended(v.session_id) {
            return Err(Error::Unauthenticated(AuthFailure::TokenInvalid));
        }
        Ok(v)
    }
}
