//! Queries on `sessions` and the `refresh_tokens` of the previous token format.

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Nullable, Timestamptz, Untyped};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::DbError;
use super::models::{NewSession, RefreshToken, Session};
use super::schema::{refresh_tokens, sessions};

/// Inserts a session (its refresh token is the session row's `refresh_hash`).
pub async fn insert(
    conn: &mut AsyncPgConnection,
    session: &NewSession<'_>,
) -> Result<Session, DbError> {
    Ok(diesel::insert_into(sessions::table)
        .values(session)
        .returning(Session::as_returning())
        .get_result(conn)
        .await?)
}

/// A session by id.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> Result<Option<Session>, DbError> {
    Ok(sessions::table
        .find(id)
        .select(Session::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Locks a session until the transaction ends, so that concurrent refreshes, replays and
/// revocations of it (from any replica) are serialized.
pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> Result<Option<Session>, DbError> {
    Ok(sessions::table
        .find(id)
        .select(Session::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

/// Finds a refresh token of the previous format and its session, locking both rows until the
/// transaction ends (see [`lock`]).
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

/// Marks a refresh token of the previous format spent (its successor has the current format). Call
/// inside the transaction that took [`lock_by_refresh_hash`].
pub async fn spend_legacy(
    conn: &mut AsyncPgConnection,
    hash: &[u8],
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::update(refresh_tokens::table.find(hash))
        .set(refresh_tokens::spend_time.eq(now))
        .execute(conn)
        .await?;
    Ok(())
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
/// on every session whose window ended before `now`, and moves the sweep time of those whose
/// window was renewed by a later rotation to that window's end. Returns how many rows it touched.
/// The partial index `sessions_replay_sweep_time_idx` (migration 000092) holds only sessions with a
/// pending sweep, so this reads nothing else. A rotation sets `replay_sweep_time` only when it is
/// NULL, which keeps rotations HOT updates (see [`rotate`]).
pub async fn clear_replays(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<usize, DbError> {
    use diesel::sql_types::Timestamptz;
    Ok(diesel::sql_query(
        "UPDATE sessions SET \
           replay_box = CASE WHEN replay_until >= $1 THEN replay_box END, \
           rotate_ip = CASE WHEN replay_until >= $1 THEN rotate_ip END, \
           replay_until = CASE WHEN replay_until >= $1 THEN replay_until END, \
           replay_sweep_time = CASE WHEN replay_until >= $1 THEN replay_until END \
         WHERE replay_sweep_time < $1",
    )
    .bind::<Timestamptz, _>(now)
    .execute(conn)
    .await?)
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

/// What one batch of [`prune`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneBatch {
    /// Sessions deleted: they ended before the bound.
    pub deleted: usize,
    /// Sessions read from the index: when fewer than the batch size, nothing is left to read.
    pub visited: usize,
}

/// Deletes sessions that ended (expired, or revoked) before `before`, one batch of at most `batch`
/// sessions. Deleted sessions count as revoked wherever revocation is checked.
///
/// A session ends at `LEAST(expire_time, idle_expire_time, revoke_time)` (LEAST ignores the NULL
/// of an unrevoked session). Its `prune_time` (migration 000092) is a lower bound of that end which
/// rotations leave alone: the index `sessions_prune_time_idx` makes this a range probe, nothing at
/// all to read when nothing is due. A due session that a rotation kept alive gets its `prune_time`
/// moved up to its end, out of the range, so it is read again only when that end comes. Rows from
/// before migration 000092 have no `prune_time` yet (NULL): they are due, and get one the same way.
pub async fn prune(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<PruneBatch, DbError> {
    use diesel::sql_types::{BigInt, Timestamptz};
    let row: PruneRow = diesel::sql_query(
        "WITH due AS (SELECT id FROM sessions WHERE prune_time < $1 OR prune_time IS NULL \
                      LIMIT $2 FOR UPDATE SKIP LOCKED), \
              gone AS (DELETE FROM sessions s USING due WHERE s.id = due.id \
                       AND LEAST(s.expire_time, s.idle_expire_time, s.revoke_time) < $1 RETURNING 1), \
              moved AS (UPDATE sessions s \
                        SET prune_time = LEAST(s.expire_time, s.idle_expire_time, s.revoke_time) \
                        FROM due WHERE s.id = due.id \
                        AND LEAST(s.expire_time, s.idle_expire_time, s.revoke_time) >= $1 RETURNING 1) \
         SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM due) AS visited",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(batch)
    .get_result(conn)
    .await?;
    Ok(PruneBatch {
        deleted: usize::try_from(row.deleted).unwrap_or(0),
        visited: usize::try_from(row.visited).unwrap_or(0),
    })
}

#[derive(QueryableByName)]
struct PruneRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    deleted: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    visited: i64,
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
