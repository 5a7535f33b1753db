//! Refresh: rotation of a refresh token into its successor, honoured grace replays, and reuse
//! detection (which revokes the session).
//!
//! A token of the current format (see `opaque`) names its session and generation, so the normal
//! refresh is one single-row UPDATE of the session guarded by the token's hash
//! ([`rotations::rotate`]), written together with concurrent refreshes' rotations
//! (`sessions::rotations`). When that matches nothing, the session is locked and the token judged:
//! a spent token of an earlier generation is a grace replay or reuse; anything else is invalid.
//! Tokens of the previous format are looked up in `refresh_tokens` and rotated once, into the
//! current format, under the same rules.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use uuid::Uuid;

use crate::db::models::Session;
use crate::db::{DbError, PgConn, rotations, sessions, users};
use crate::domain::audit::{self, AuditEntry, AuditKind};
use crate::domain::authd::chrono_duration;
use crate::domain::opaque::{
    self, HashedToken, MAX_OPAQUE_BYTES, RefreshClaims, RefreshFormat, ReplayBox,
};
use crate::domain::sessions::revocation::{self, Revoked};
use crate::domain::sessions::rotations::Batched;
use crate::domain::sessions::{
    SessionFacts, TokenPair, TokenSubject, end_of, session_end, show_ip,
};
use crate::domain::{AuthFailure, Authd, ClientInfo, ClientKey, Error, Result};

pub(in crate::domain) enum RefreshOutcome {
    Rotated(Box<rotations::Rotated>, String),
    Replayed(Box<Session>, String),
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

/// A successor minted for one rotation, with what the rotation writes about it.
struct Successor {
    token: String,
    hash: HashedToken,
    replay_box: Option<Vec<u8>>,
}

/// Whether a locked session can no longer be refreshed.
fn dead(session: &Session, now: DateTime<Utc>) -> bool {
    session.revoke_time.is_some() || now >= session.expire_time || now >= session.idle_expire_time
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
        let now = self.now();
        let ip = client.ip_string();
        // Taken only when the token is not rotated by a batch (see `rotations`).
        let mut conn = None;
        let outcome = match opaque::refresh_format(&self.refresh_secret, refresh_token) {
            // Only a token whose MAC verifies is taken for what it says (it can revoke a session).
            RefreshFormat::Forged => RefreshOutcome::Dead,
            RefreshFormat::Current(claims) => {
                let Some(next) =
                    self.successor(refresh_token, claims.session_id, claims.generation)
                else {
                    return Err(Error::Unauthenticated(AuthFailure::BadRefreshToken));
                };
                let rotation = self.rotation(&claims, Some(presented.as_bytes()), &next, now, &ip);
                // The normal case: one row of a shared statement, or a statement of its own.
                let rotated = match self.rotations.rotate(&rotation).await {
                    Batched::Rotated(r) => Some(r),
                    Batched::NotRotated => None,
                    Batched::RunAlone => {
                        let c = conn.insert(self.conn().await?);
                        c.guarded(async |c| rotations::rotate(c, &rotation).await)
                            .await?
                            .map(Box::new)
                    }
                    Batched::Unavailable(reason) => {
                        return Err(DbError::Unavailable(reason).into());
                    }
                };
                match rotated {
                    Some(r) => RefreshOutcome::Rotated(r, next.token),
                    None => {
                        let c = match conn.take() {
                            Some(c) => conn.insert(c),
                            None => conn.insert(self.conn().await?),
                        };
                        let outcome = c
                            .transaction::<_, DbError, _>(async |conn| {
                                self.refresh_locked(
                                    conn,
                                    &claims,
                                    &presented,
                                    &rotation,
                                    &next.token,
                                    refresh_token,
                                    client,
                                    now,
                                )
                                .await
                            })
                            .await?;
                        self.publish(c, outcome).await
                    }
                }
            }
            RefreshFormat::Legacy => {
                let c = conn.insert(self.conn().await?);
                let outcome = c
                    .transaction::<_, DbError, _>(async |conn| {
                        self.refresh_legacy(conn, &presented, refresh_token, client, now, &ip)
                            .await
                    })
                    .await?;
                self.publish(c, outcome).await
            }
        };

        let (session, token) = match outcome {
            RefreshOutcome::Rotated(r, token) => {
                drop(conn);
                if !r.user_active {
                    return Err(Error::Unauthenticated(AuthFailure::BadRefreshToken));
                }
                let subject = TokenSubject {
                    user_id: r.user_id,
                    role: &r.user_role,
                    email: &r.user_email,
                    username: r.user_username.as_deref(),
                };
                let facts = SessionFacts {
                    id: r.id,
                    end: end_of(r.idle_expire_time, r.expire_time),
                    amr: &r.amr,
                };
                return self.token_pair_of(subject, facts, token, now);
            }
            RefreshOutcome::Replayed(s, t) => (s, t),
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
        let mut conn = match conn {
            Some(c) => c,
            None => self.conn().await?,
        };
        let user = users::find_by_id(&mut conn, session.user_id)
            .await?
            .filter(|u| u.active)
            .ok_or(Error::Unauthenticated(AuthFailure::BadRefreshToken))?;
        drop(conn);
        self.token_pair(TokenSubject::of(&user), &session, token, now)
    }

    /// The successor of `spent`, the token of `session_id` at `generation`, with its replay box
    /// when a grace window is on (only a holder of `spent` can open it: see `opaque::ReplayBox`).
    /// `None` at the last generation there is.
    fn successor(&self, spent: &str, session_id: Uuid, generation: i32) -> Option<Successor> {
        let token = opaque::mint_refresh_token(
            &self.refresh_secret,
            session_id,
            generation.checked_add(1)?,
        );
        let grace = chrono_duration(self.settings.sessions.refresh_reuse_grace);
        let replay_box = (grace > chrono::Duration::zero()).then(|| ReplayBox::seal(spent, &token));
        Some(Successor {
            hash: HashedToken::of(&token),
            token,
            replay_box,
        })
    }

    /// What rotating the token of `claims` (whose hash is `presented_hash`) into `next` writes.
    fn rotation<'a>(
        &self,
        claims: &RefreshClaims,
        presented_hash: Option<&'a [u8]>,
        next: &'a Successor,
        now: DateTime<Utc>,
        ip: &'a str,
    ) -> rotations::Rotation<'a> {
        let grace = chrono_duration(self.settings.sessions.refresh_reuse_grace);
        rotations::Rotation {
            session_id: claims.session_id,
            generation: claims.generation,
            presented_hash,
            successor_hash: next.hash.as_bytes(),
            now,
            idle_expire_time: now + chrono_duration(self.settings.sessions.refresh_token_ttl),
            access_expire_time: now + chrono_duration(self.settings.tokens.access_token_ttl),
            replay_box: next.replay_box.as_deref(),
            replay_until: next.replay_box.as_ref().map(|_| now + grace),
            rotate_ip: ip,
        }
    }

    /// A current-format token the single UPDATE did not rotate: locks its session and judges it.
    #[expect(
        clippy::too_many_arguments,
        reason = "one refresh's state, passed down once"
    )]
    async fn refresh_locked(
        &self,
        conn: &mut PgConn,
        claims: &RefreshClaims,
        presented: &HashedToken,
        rotation: &rotations::Rotation<'_>,
        successor: &str,
        refresh_token: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> std::result::Result<Revoked<RefreshOutcome>, DbError> {
        let Some(session) = sessions::lock(conn, claims.session_id).await? else {
            return Ok(Revoked::nothing(RefreshOutcome::Dead));
        };
        if dead(&session, now) {
            return Ok(Revoked::nothing(RefreshOutcome::Dead));
        }
        let current = session
            .refresh_hash
            .as_deref()
            .is_some_and(|h| presented.matches(h));
        if current && session.generation == claims.generation {
            // The session was busy when the UPDATE ran and is still at this token: rotate now.
            let outcome = match rotations::rotate(conn, rotation).await? {
                Some(r) => RefreshOutcome::Rotated(Box::new(r), successor.to_owned()),
                None => RefreshOutcome::Dead,
            };
            return Ok(Revoked::nothing(outcome));
        }
        if claims.generation >= session.generation {
            // The MAC verifies but the session never handed this token out: invalid, no more.
            return Ok(Revoked::nothing(RefreshOutcome::Dead));
        }
        self.replay_or_reuse(conn, session, claims.generation, refresh_token, client, now)
            .await
    }

    /// A token of the previous format: a row of `refresh_tokens`, locked with its session. Unspent,
    /// it is rotated into the current format; spent, it is judged like any spent token.
    async fn refresh_legacy(
        &self,
        conn: &mut PgConn,
        presented: &HashedToken,
        refresh_token: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
        ip: &str,
    ) -> std::result::Result<Revoked<RefreshOutcome>, DbError> {
        let Some((token, session)) =
            sessions::lock_by_refresh_hash(conn, presented.as_bytes()).await?
        else {
            return Ok(Revoked::nothing(RefreshOutcome::Dead));
        };
        if dead(&session, now) {
            return Ok(Revoked::nothing(RefreshOutcome::Dead));
        }
        if token.spend_time.is_some() {
            return self
                .replay_or_reuse(conn, session, token.generation, refresh_token, client, now)
                .await;
        }
        let claims = RefreshClaims {
            session_id: session.id,
            generation: token.generation,
        };
        let Some(next) = self.successor(refresh_token, session.id, token.generation) else {
            return Ok(Revoked::nothing(RefreshOutcome::Dead));
        };
        // Guarded by the generation and by the session having no current-format token yet.
        let rotation = self.rotation(&claims, None, &next, now, ip);
        let Some(r) = rotations::rotate(conn, &rotation).await? else {
            return Ok(Revoked::nothing(RefreshOutcome::Dead));
        };
        sessions::spend_legacy(conn, presented.as_bytes(), now).await?;
        Ok(Revoked::nothing(RefreshOutcome::Rotated(
            Box::new(r),
            next.token,
        )))
    }

    /// A spent token of `generation` of the live, locked `session`, presented again: an honoured
    /// grace replay (audited as REFRESH_REPLAYED), or reuse, which revokes the session.
    async fn replay_or_reuse(
        &self,
        conn: &mut PgConn,
        session: Session,
        generation: i32,
        refresh_token: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> std::result::Result<Revoked<RefreshOutcome>, DbError> {
        let ip = client.ip_string();
        match self.judge_replay(generation, &session, refresh_token, client, now) {
            Replay::Honoured { successor, spender } => {
                let exp = self.access_expire_time(now, session_end(&session));
                sessions::extend_access(conn, session.id, exp).await?;
                let entry = AuditEntry::new(AuditKind::RefreshReplayed, client)
                    .user(session.user_id)
                    .detail(format!(
                        "session {}; generation {generation} replayed from {} within the grace \
                         window; spent by {}",
                        session.id,
                        show_ip(&ip),
                        show_ip(&spender)
                    ));
                audit::record(conn, now, entry).await?;
                Ok(Revoked::nothing(RefreshOutcome::Replayed(
                    Box::new(session),
                    successor,
                )))
            }
            Replay::Reuse(why) => {
                let entry = AuditEntry::new(AuditKind::RefreshReuseDetected, client)
                    .user(session.user_id)
                    .detail(format!(
                        "session {} revoked; generation {generation} presented, current {}{why}",
                        session.id, session.generation
                    ));
                let revoked =
                    revocation::revoke_session(conn, now, session.id, "refresh_token_reuse", entry)
                        .await?;
                Ok(revoked.map(|_| RefreshOutcome::Reused(session.id)))
            }
        }
    }

    /// Whether `spent` (the spent refresh token of `generation` of the live, locked `session`), presented
    /// again by `client`, is an honoured grace replay: the immediate predecessor of the current
    /// token, inside the window the rotating replica recorded, whose sealed successor it opens, from
    /// the client (address, or IPv6 /64) that spent it unless that binding is off.
    pub(in crate::domain) fn judge_replay(
        &self,
        generation: i32,
        session: &Session,
        spent: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Replay {
        let window = match (&session.replay_box, session.replay_until) {
            (Some(sealed), Some(until))
                if generation.checked_add(1) == Some(session.generation) && now <= until =>
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
