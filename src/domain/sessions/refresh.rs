//! Refresh: rotation of a refresh token into its successor, honoured grace replays, and reuse
//! detection (which revokes the session).

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use uuid::Uuid;

use crate::db::models::{RefreshToken, Session};
use crate::db::{DbError, sessions, users};
use crate::domain::audit::{self, AuditEntry, AuditKind};
use crate::domain::authd::chrono_duration;
use crate::domain::opaque::{self, HashedToken, MAX_OPAQUE_BYTES, ReplayBox};
use crate::domain::sessions::revocation::{self, Revoked};
use crate::domain::sessions::{TokenPair, TokenSubject, session_end, show_ip};
use crate::domain::{AuthFailure, Authd, ClientInfo, ClientKey, Error, Result};

pub(in crate::domain) enum RefreshOutcome {
    Rotated(Session, String),
    Replayed(Session, String),
    Reused(Uuid),
    Dead,
}

/// What a spent refresh token presented again gets (see [`Authd::judge_replay`]).
pub(in crate::domain) enum Replay {
    /// The immediate predecessor inside its grace window, from a client it may come from: the
    /// current successor, and who spent the token.
    Honoured { successor: String, spender: String },
    /// Anything else is reuse; the text says why, for the audit event.
    Reuse(String),
}

impl Authd {
    /// Rotates a refresh token into a random successor (see the module docs of `opaque`). A spent
    /// token presented again is reuse and revokes the session, except the immediate predecessor
    /// inside `AUTHD_REFRESH_REUSE_GRACE`, from the client that spent it (unless
    /// `AUTHD_REFRESH_REPLAY_SAME_CLIENT=false`): that replay gets the current successor, audited
    /// as REFRESH_REPLAYED.
    pub async fn refresh(&self, refresh_token: &str, client: &ClientInfo) -> Result<TokenPair> {
        self.rate_limiter.check(client.ip)?;
        let refresh_token = refresh_token.trim();
        if refresh_token.is_empty() {
            return Err(Error::invalid("refresh_token is required"));
        }
        if refresh_token.len() > MAX_OPAQUE_BYTES {
            return Err(Error::invalid(format!(
                "refresh_token must be at most {MAX_OPAQUE_BYTES} bytes"
            )));
        }
        let presented = HashedToken::of(refresh_token);
        let successor = opaque::new_refresh_token();
        let successor_hash = HashedToken::of(&successor);
        let now = self.now();
        let grace = chrono_duration(self.settings.sessions.refresh_reuse_grace);
        // Only a holder of the token being spent can open this (see `opaque::ReplayBox`).
        let replay_box =
            (grace > chrono::Duration::zero()).then(|| ReplayBox::seal(refresh_token, &successor));
        let ip = client.ip_string();
        let rotation = sessions::Rotation {
            successor_hash: successor_hash.as_bytes(),
            now,
            idle_expire_time: now + chrono_duration(self.settings.sessions.refresh_token_ttl),
            access_expire_time: now + chrono_duration(self.settings.tokens.access_token_ttl),
            replay_box: replay_box.as_deref(),
            replay_until: replay_box.as_ref().map(|_| now + grace),
            rotate_ip: &ip,
        };

        let mut conn = self.conn().await?;
        // The normal case in one statement; replays, reuse and dead tokens take the slow path.
        let rotated = conn
            .guarded(async |c| sessions::rotate_unspent(c, presented.as_bytes(), &rotation).await)
            .await?;
        if let Some(r) = rotated {
            drop(conn);
            if !r.user_active {
                return Err(Error::Unauthenticated(AuthFailure::BadRefreshToken));
            }
            let subject = TokenSubject {
                user_id: r.session.user_id,
                role: &r.user_role,
                email: &r.user_email,
                username: r.user_username.as_deref(),
            };
            return self.token_pair(subject, &r.session, successor, now);
        }
        let outcome = conn
            .transaction::<_, DbError, _>(async |conn| {
                let Some((token, session)) =
                    sessions::lock_by_refresh_hash(conn, presented.as_bytes()).await?
                else {
                    return Ok(Revoked::nothing(RefreshOutcome::Dead));
                };
                if session.revoke_time.is_some()
                    || now >= session.expire_time
                    || now >= session.idle_expire_time
                {
                    return Ok(Revoked::nothing(RefreshOutcome::Dead));
                }
                if token.spend_time.is_none() {
                    let s =
                        sessions::rotate(conn, &session, presented.as_bytes(), &rotation).await?;
                    return Ok(Revoked::nothing(RefreshOutcome::Rotated(s, successor)));
                }
                match self.judge_replay(&token, &session, refresh_token, client, now) {
                    Replay::Honoured { successor, spender } => {
                        let exp = self.access_expire_time(now, session_end(&session));
                        sessions::extend_access(conn, session.id, exp).await?;
                        let entry = AuditEntry::new(AuditKind::RefreshReplayed, client)
                            .user(session.user_id)
                            .detail(format!(
                                "session {}; generation {} replayed from {} within the grace \
                                 window; spent by {}",
                                session.id,
                                token.generation,
                                show_ip(&ip),
                                show_ip(&spender)
                            ));
                        audit::record(conn, now, entry).await?;
                        Ok(Revoked::nothing(RefreshOutcome::Replayed(
                            session, successor,
                        )))
                    }
                    Replay::Reuse(why) => {
                        let entry = AuditEntry::new(AuditKind::RefreshReuseDetected, client)
                            .user(session.user_id)
                            .detail(format!(
                                "session {} revoked; generation {} presented, current {}{why}",
                                session.id, token.generation, session.generation
                            ));
                        let revoked = revocation::revoke_session(
                            conn,
                            now,
                            session.id,
                            "refresh_token_reuse",
                            entry,
                        )
                        .await?;
                        Ok(revoked.map(|_| RefreshOutcome::Reused(session.id)))
                    }
                }
            })
            .await?;
        let outcome = self.publish(&mut conn, outcome).await;

        let (session, token) = match outcome {
            RefreshOutcome::Rotated(s, t) | RefreshOutcome::Replayed(s, t) => (s, t),
            RefreshOutcome::Reused(session_id) => {
                drop(conn);
                metrics::counter!(crate::metric_names::REFRESH_REUSE_DETECTED).increment(1);
                tracing::warn!(%session_id, "refresh token reuse detected; session revoked");
                return Err(Error::Unauthenticated(AuthFailure::BadRefreshToken));
            }
            RefreshOutcome::Dead => {
                return Err(Error::Unauthenticated(AuthFailure::BadRefreshToken));
            }
        };
        let user = users::find_by_id(&mut conn, session.user_id)
            .await?
            .filter(|u| u.active)
            .ok_or(Error::Unauthenticated(AuthFailure::BadRefreshToken))?;
        drop(conn);
        self.token_pair(TokenSubject::of(&user), &session, token, now)
    }

    /// Whether `spent` (the spent refresh token `token` of the live, locked `session`), presented
    /// again by `client`, is an honoured grace replay: the immediate predecessor of the current
    /// token, inside the window the rotating replica recorded, whose sealed successor it opens, from
    /// the client (address, or IPv6 /64) that spent it unless that binding is off.
    pub(in crate::domain) fn judge_replay(
        &self,
        token: &RefreshToken,
        session: &Session,
        spent: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Replay {
        let window = match (&session.replay_box, session.replay_until) {
            (Some(sealed), Some(until))
                if token.generation.checked_add(1) == Some(session.generation) && now <= until =>
            {
                Some(sealed)
            }
            _ => None,
        };
        let Some(successor) = window.and_then(|sealed| ReplayBox::open(spent, sealed)) else {
            return Replay::Reuse(String::new());
        };
        let spender = session.rotate_ip.clone().unwrap_or_default();
        let spender_key = spender.parse().ok().map(ClientKey::of);
        if self.settings.sessions.replay_same_client && spender_key != client.key() {
            return Replay::Reuse(format!(
                "; replayed within the grace window from {}, but spent by {}",
                show_ip(&client.ip_string()),
                show_ip(&spender)
            ));
        }
        Replay::Honoured { successor, spender }
    }
}
