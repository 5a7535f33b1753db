//! Logout: by refresh token (RFC 7009), of the bearer's own session, and of all of the caller's
//! sessions.

use diesel_async::AsyncConnection;
use uuid::Uuid;

use crate::db::{self, DbError, sessions};
use crate::domain::audit::{AuditEntry, AuditKind};
use crate::domain::opaque::{self, HashedToken, MAX_OPAQUE_BYTES, RefreshFormat};
use crate::domain::sessions::revocation;
use crate::domain::{Authd, ClientInfo, Error, Principal, Result};

impl Authd {
    /// Logout by refresh token (RFC 7009): revokes its session; unknown tokens are fine.
    pub async fn logout_by_refresh_token(
        &self,
        refresh_token: &str,
        client: &ClientInfo,
    ) -> Result<()> {
        // Like Refresh, an anonymous call that costs a lookup: it shares the per-IP rate limit.
        self.rate_limiter.check(client.ip)?;
        let refresh_token = refresh_token.trim();
        if refresh_token.len() > MAX_OPAQUE_BYTES {
            return Err(Error::invalid(format!(
                "refresh_token must be at most {MAX_OPAQUE_BYTES} bytes"
            )));
        }
        let session = match opaque::refresh_format(&self.refresh_secret, refresh_token) {
            // Any token the server issued for the session (spent or current) ends it, as before.
            RefreshFormat::Current(claims) => {
                let mut conn = self.conn().await?;
                sessions::find(&mut conn, claims.session_id)
                    .await?
                    .filter(|s| claims.generation <= s.generation)
                    .map(|s| (conn, s))
            }
            RefreshFormat::Forged => None,
            RefreshFormat::Legacy => {
                let hash = HashedToken::of(refresh_token);
                let mut conn = self.conn().await?;
                sessions::find_by_refresh_hash(&mut conn, hash.as_bytes())
                    .await?
                    .map(|s| (conn, s))
            }
        };
        if let Some((mut conn, s)) = session {
            self.end_session(&mut conn, s.user_id, s.id, client).await?;
        }
        Ok(())
    }

    pub(in crate::domain) async fn end_session(
        &self,
        conn: &mut db::PgConn,
        user_id: Uuid,
        session_id: Uuid,
        client: &ClientInfo,
    ) -> Result<()> {
        let now = self.now();
        let entry = AuditEntry::new(AuditKind::Logout, client)
            .user(user_id)
            .actor(Some(user_id))
            .detail(format!("session {session_id}"));
        let revoked = conn
            .transaction::<_, DbError, _>(async |conn| {
                revocation::revoke_session(conn, now, session_id, "logout", entry).await
            })
            .await?;
        self.publish(conn, revoked).await;
        Ok(())
    }

    /// Logout of the bearer's own session.
    pub async fn logout_session(&self, p: &Principal, client: &ClientInfo) -> Result<()> {
        let mut conn = self.conn().await?;
        self.end_session(&mut conn, p.user_id, p.session_id, client)
            .await
    }

    /// Revokes every live session of the caller. Returns how many.
    pub async fn logout_all(&self, p: &Principal, client: &ClientInfo) -> Result<i64> {
        let now = self.now();
        let mut conn = self.conn().await?;
        let revoked = conn
            .transaction::<_, DbError, _>(async |conn| {
                revocation::revoke_user_sessions(conn, now, p.user_id, None, "logout_all", |n| {
                    Some(
                        AuditEntry::new(AuditKind::LogoutAll, client)
                            .user(p.user_id)
                            .actor(Some(p.user_id))
                            .detail(format!("{n} session(s) revoked")),
                    )
                })
                .await
            })
            .await?;
        Ok(self.publish(&mut conn, revoked).await)
    }
}
