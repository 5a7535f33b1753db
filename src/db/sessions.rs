//! Queries on `sessions` and their `refresh_tokens`.

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Bool, Bytea, Nullable, Text, Timestamptz, Untyped};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::DbError;
use super::models::{NewRefreshToken, NewSession, RefreshToken, Session};
use super::schema::{refresh_tokens, sessions};

/// Inserts a session and its first refresh token. Call inside a transaction.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    session: &NewSession<'_>,
    token: &NewRefreshToken<'_>,
) -> Result<Session, DbError> {
    let s = diesel::insert_into(sessions::table)
        .values(session)
        .returning(Session::as_returning())
        .get_result(conn)
        .await?;
    diesel::insert_into(refresh_tokens::table)
        .values(token)
        .execute(conn)
        .await?;
    Ok(s)
}

/// Finds a refresh token and its session, locking both rows until the transaction ends, so that
/// concurrent refreshes of one session (from any replica) are serialized.
pub async fn lock_by_refresh_hash(
    conn: &mut AsyncPgConnection,
    hash: &[u8],
) -> Result<Option<(RefreshToken, Session)>, DbError> {
    Ok(refresh_tokens::table
        .inner_join(sessions::table)
        .filter(refresh_tokens::token_hash.eq(hash))
        .select((RefreshToken::as_select(), Session::as_select()))
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

/// The session a refresh token (of any generation) belongs to.
pub async fn find_by_refresh_hash(
    conn: &mut AsyncPgConnection,
    hash: &[u8],
) -> Result<Option<Session>, DbError> {
    Ok(refresh_tokens::table
        .inner_join(sessions::table)
        .filter(refresh_tokens::token_hash.eq(hash))
        .select(Session::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// What a rotation writes besides the successor's hash: the session's new idle expiry and the `exp`
/// of the access token issued with it (both capped by the session's absolute expiry), and, when a
/// grace window is on, the successor sealed for a replay (see `domain::opaque::ReplayBox`) with the
/// window's end and the rotating client's address.
#[derive(Debug, Clone, Copy)]
pub struct Rotation<'a> {
    pub successor_hash: &'a [u8],
    pub now: DateTime<Utc>,
    pub idle_expire_time: DateTime<Utc>,
    pub access_expire_time: DateTime<Utc>,
    pub replay_box: Option<&'a [u8]>,
    pub replay_until: Option<DateTime<Utc>>,
    pub rotate_ip: &'a str,
}

/// Spends the current refresh token and records its successor. Call inside the transaction that
/// took [`lock_by_refresh_hash`].
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    session: &Session,
    spent_hash: &[u8],
    r: &Rotation<'_>,
) -> Result<Session, DbError> {
    let next_generation = session.generation + 1;
    diesel::update(refresh_tokens::table.find(spent_hash))
        .set(refresh_tokens::spend_time.eq(r.now))
        .execute(conn)
        .await?;
    diesel::insert_into(refresh_tokens::table)
        .values(&NewRefreshToken {
            token_hash: r.successor_hash,
            session_id: session.id,
            generation: next_generation,
            create_time: r.now,
        })
        .execute(conn)
        .await?;
    let idle_expire_time = r.idle_expire_time.min(session.expire_time);
    let access_expire_time = r
        .access_expire_time
        .min(idle_expire_time)
        .max(session.access_expire_time);
    Ok(diesel::update(sessions::table.find(session.id))
        .set((
            sessions::generation.eq(next_generation),
            sessions::last_use_time.eq(r.now),
            sessions::idle_expire_time.eq(idle_expire_time),
            sessions::access_expire_time.eq(access_expire_time),
            sessions::replay_box.eq(r.replay_box),
            sessions::replay_until.eq(r.replay_until),
            sessions::rotate_ip.eq(r.replay_box.map(|_| r.rotate_ip)),
        ))
        .returning(Session::as_returning())
        .get_result(conn)
        .await?)
}

/// After a grace replay issued an access token expiring at `exp`: the session's tombstone, should
/// it be revoked, must last until then. Call inside the transaction that locked the session.
pub async fn extend_access(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    exp: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::update(
        sessions::table
            .find(id)
            .filter(sessions::access_expire_time.lt(exp)),
    )
    .set(sessions::access_expire_time.eq(exp))
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets what grace replays needed (the sealed successor, the window's end, the rotating address)
/// on every session whose window ended before `now`. Returns how many it cleared. The partial index
/// `sessions_replay_until_idx` holds only sessions inside a window, so this reads nothing else.
pub async fn clear_replays(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<usize, DbError> {
    Ok(
        diesel::update(sessions::table.filter(sessions::replay_until.lt(now)))
            .set((
                sessions::replay_box.eq(None::<Vec<u8>>),
                sessions::replay_until.eq(None::<DateTime<Utc>>),
                sessions::rotate_ip.eq(None::<String>),
            ))
            .execute(conn)
            .await?,
    )
}

/// Revokes one session if it is not revoked yet. Returns whether it was.
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: DateTime<Utc>,
    reason: &str,
) -> Result<bool, DbError> {
    let n = diesel::update(
        sessions::table
            .find(id)
            .filter(sessions::revoke_time.is_null()),
    )
    .set((
        sessions::revoke_time.eq(now),
        sessions::revoke_reason.eq(reason),
        sessions::replay_box.eq(None::<Vec<u8>>),
        sessions::replay_until.eq(None::<DateTime<Utc>>),
        sessions::rotate_ip.eq(None::<String>),
    ))
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// Revokes every live session of a user, except `keep` if given. Returns how many were revoked.
pub async fn revoke_all_for_user(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    keep: Option<Uuid>,
    now: DateTime<Utc>,
    reason: &str,
) -> Result<i64, DbError> {
    let live = sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoke_time.is_null())
        .filter(sessions::expire_time.gt(now))
        .filter(sessions::idle_expire_time.gt(now));
    let n = match keep {
        Some(keep) => {
            diesel::update(live.filter(sessions::id.ne(keep)))
                .set((
                    sessions::revoke_time.eq(now),
                    sessions::revoke_reason.eq(reason),
                ))
                .execute(conn)
                .await?
        }
        None => {
            diesel::update(live)
                .set((
                    sessions::revoke_time.eq(now),
                    sessions::revoke_reason.eq(reason),
                ))
                .execute(conn)
                .await?
        }
    };
    Ok(n as i64)
}

/// Whether a session exists and is not revoked. Access tokens of a revoked or deleted session are dead.
pub async fn is_active(conn: &mut AsyncPgConnection, id: Uuid) -> Result<bool, DbError> {
    Ok(diesel::select(diesel::dsl::exists(
        sessions::table
            .find(id)
            .filter(sessions::revoke_time.is_null()),
    ))
    .get_result(conn)
    .await?)
}

/// A user's live sessions (not revoked, not expired), newest first.
pub async fn list_live(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<Session>, DbError> {
    Ok(sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoke_time.is_null())
        .filter(sessions::expire_time.gt(now))
        .filter(sessions::idle_expire_time.gt(now))
        .order((sessions::create_time.desc(), sessions::id.desc()))
        .select(Session::as_select())
        .load(conn)
        .await?)
}

/// Revokes one live session of `user_id`. Returns false when there is none with that id.
pub async fn revoke_own(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
    now: DateTime<Utc>,
    reason: &str,
) -> Result<bool, DbError> {
    let n = diesel::update(
        sessions::table
            .find(id)
            .filter(sessions::user_id.eq(user_id))
            .filter(sessions::revoke_time.is_null())
            .filter(sessions::expire_time.gt(now))
            .filter(sessions::idle_expire_time.gt(now)),
    )
    .set((
        sessions::revoke_time.eq(now),
        sessions::revoke_reason.eq(reason),
    ))
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// Deletes sessions that ended (expired, or revoked) before `before`. Deleted sessions count as
/// revoked wherever revocation is checked. Returns how many went.
///
/// A session ends at `LEAST(expire_time, idle_expire_time, revoke_time)` (LEAST ignores the NULL
/// of an unrevoked session): the expression index `sessions_end_time_idx` (migration 000080)
/// makes this a range probe, nothing at all to read when nothing ended.
pub async fn prune(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<usize, DbError> {
    use diesel::sql_types::{BigInt, Timestamptz};
    Ok(diesel::sql_query(
        "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions \
         WHERE LEAST(expire_time, idle_expire_time, revoke_time) < $1 LIMIT $2)",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(batch)
    .execute(conn)
    .await?)
}

// ----- the refresh fast path -----------------------------------------------------------------

/// What [`rotate_unspent`] returns: the rotated session and what a token needs of its user.
#[derive(Debug, QueryableByName)]
pub struct Rotated {
    #[diesel(embed)]
    pub session: Session,
    #[diesel(sql_type = Text)]
    pub user_email: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub user_username: Option<String>,
    #[diesel(sql_type = Text)]
    pub user_role: String,
    #[diesel(sql_type = Bool)]
    pub user_active: bool,
}

/// The normal refresh in one statement (one round trip, one commit, a plan prepared once per
/// connection): if `presented` is the unspent token of a live session, spend it, record its
/// successor, move the session to the next generation and write the rest of the [`Rotation`]. The
/// `FOR UPDATE` re-checks the row after waiting for a concurrent refresh or logout, so exactly one
/// caller rotates; every other outcome (replay, reuse, dead) returns `None` and is left to the
/// locking slow path.
pub async fn rotate_unspent(
    conn: &mut AsyncPgConnection,
    presented: &[u8],
    rotation: &Rotation<'_>,
) -> Result<Option<Rotated>, DbError> {
    Ok(RotateUnspent {
        presented,
        r: *rotation,
        rotate_ip: rotation.replay_box.map(|_| rotation.rotate_ip),
    }
    .get_result(conn)
    .await
    .optional()?)
}

struct RotateUnspent<'a> {
    presented: &'a [u8],
    r: Rotation<'a>,
    rotate_ip: Option<&'a str>,
}

/// The statement-cache identity of [`RotateUnspent`] (the query itself borrows its binds).
struct RotateUnspentId;

impl QueryId for RotateUnspent<'_> {
    type QueryId = RotateUnspentId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for RotateUnspent<'_> {
    type SqlType = Untyped;
}

impl QueryFragment<Pg> for RotateUnspent<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "WITH cur AS (\
               SELECT rt.token_hash, rt.session_id, s.generation \
               FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id \
               WHERE rt.token_hash = ",
        );
        out.push_bind_param::<Bytea, _>(&self.presented)?;
        out.push_sql(" AND rt.spend_time IS NULL AND s.revoke_time IS NULL AND s.expire_time > ");
        out.push_bind_param::<Timestamptz, _>(&self.r.now)?;
        out.push_sql(" AND s.idle_expire_time > ");
        out.push_bind_param::<Timestamptz, _>(&self.r.now)?;
        out.push_sql(
            " FOR UPDATE OF rt, s), \
             spent AS (UPDATE refresh_tokens t SET spend_time = ",
        );
        out.push_bind_param::<Timestamptz, _>(&self.r.now)?;
        out.push_sql(
            " FROM cur WHERE t.token_hash = cur.token_hash RETURNING t.session_id), \
             successor AS (INSERT INTO refresh_tokens (token_hash, session_id, generation, create_time) \
               SELECT ",
        );
        out.push_bind_param::<Bytea, _>(&self.r.successor_hash)?;
        out.push_sql(", cur.session_id, cur.generation + 1, ");
        out.push_bind_param::<Timestamptz, _>(&self.r.now)?;
        out.push_sql(
            " FROM cur), \
             sess AS (UPDATE sessions s SET generation = cur.generation + 1, last_use_time = ",
        );
        out.push_bind_param::<Timestamptz, _>(&self.r.now)?;
        out.push_sql(", idle_expire_time = LEAST(");
        out.push_bind_param::<Timestamptz, _>(&self.r.idle_expire_time)?;
        out.push_sql(
            ", s.expire_time), access_expire_time = GREATEST(s.access_expire_time, LEAST(",
        );
        out.push_bind_param::<Timestamptz, _>(&self.r.access_expire_time)?;
        out.push_sql(", ");
        out.push_bind_param::<Timestamptz, _>(&self.r.idle_expire_time)?;
        out.push_sql(", s.expire_time)), replay_box = ");
        out.push_bind_param::<Nullable<Bytea>, _>(&self.r.replay_box)?;
        out.push_sql(", replay_until = ");
        out.push_bind_param::<Nullable<Timestamptz>, _>(&self.r.replay_until)?;
        out.push_sql(", rotate_ip = ");
        out.push_bind_param::<Nullable<Text>, _>(&self.rotate_ip)?;
        out.push_sql(
            " FROM cur WHERE s.id = cur.session_id RETURNING s.*) \
             SELECT sess.id, sess.user_id, sess.generation, sess.create_time, sess.last_use_time, \
               sess.idle_expire_time, sess.expire_time, sess.revoke_time, sess.revoke_reason, \
               sess.user_agent, sess.ip_address, sess.replay_box, sess.replay_until, sess.rotate_ip, \
               sess.access_expire_time, sess.amr, \
               u.email AS user_email, u.username AS user_username, u.role AS user_role, \
               u.active AS user_active \
             FROM sess JOIN users u ON u.id = sess.user_id",
        );
        Ok(())
    }
}

// ----- the revocation view -------------------------------------------------------------------

/// One poll of `session_revocations` (see the migrations `000004_revocation_view` and
/// `000040_refresh_successors`).
#[derive(Debug, Default)]
pub struct RevocationBatch {
    /// Sessions that ended, with how long their tombstones last (their access tokens' latest `exp`).
    pub ended: Vec<(Uuid, DateTime<Utc>)>,
    /// The next poll's watermark: the xmin of this poll's snapshot. Every transaction below it had
    /// finished when the snapshot was taken, so no tombstone below it can still appear; rows at or
    /// above it that were already visible are simply read again.
    pub watermark: i64,
}

/// Tombstones written at or after `watermark` (a transaction id; 0 reads all) and kept until after
/// `since`, in one statement whose snapshot also yields the next watermark.
pub async fn revocations_since(
    conn: &mut AsyncPgConnection,
    watermark: i64,
    since: DateTime<Utc>,
) -> Result<RevocationBatch, DbError> {
    let rows: Vec<RevocationRow> = RevocationsSince { watermark, since }.load(conn).await?;
    let mut batch = RevocationBatch::default();
    for r in rows {
        batch.watermark = r.horizon;
        if let (Some(id), Some(until)) = (r.session_id, r.keep_until) {
            batch.ended.push((id, until));
        }
    }
    Ok(batch)
}

/// Forgets tombstones kept until before `before`.
pub async fn prune_revocations(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
) -> Result<usize, DbError> {
    Ok(
        diesel::sql_query("DELETE FROM session_revocations WHERE keep_until < $1")
            .bind::<Timestamptz, _>(before)
            .execute(conn)
            .await?,
    )
}

#[derive(QueryableByName)]
struct RevocationRow {
    #[diesel(sql_type = BigInt)]
    horizon: i64,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    session_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    keep_until: Option<DateTime<Utc>>,
}

#[derive(QueryId)]
struct RevocationsSince {
    watermark: i64,
    since: DateTime<Utc>,
}

impl Query for RevocationsSince {
    type SqlType = Untyped;
}

impl QueryFragment<Pg> for RevocationsSince {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // pg_current_snapshot() is this statement's own snapshot, the one the join reads with.
        out.push_sql(
            "SELECT h.horizon, r.session_id, r.keep_until \
             FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon) h \
             LEFT JOIN session_revocations r ON r.xid >= (",
        );
        out.push_bind_param::<BigInt, _>(&self.watermark)?;
        out.push_sql(")::text::xid8 AND r.keep_until > ");
        out.push_bind_param::<Timestamptz, _>(&self.since)?;
        Ok(())
    }
}
