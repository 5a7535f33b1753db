//! Queries on `sessions` and their `refresh_tokens`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
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

/// Spends the current refresh token and records its successor. Call inside the transaction that
/// took [`lock_by_refresh_hash`].
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    session: &Session,
    spent_hash: &[u8],
    successor_hash: &[u8],
    now: DateTime<Utc>,
    idle_expire_time: DateTime<Utc>,
) -> Result<Session, DbError> {
    let next_generation = session.generation + 1;
    diesel::update(refresh_tokens::table.find(spent_hash))
        .set(refresh_tokens::spend_time.eq(now))
        .execute(conn)
        .await?;
    diesel::insert_into(refresh_tokens::table)
        .values(&NewRefreshToken {
            token_hash: successor_hash,
            session_id: session.id,
            generation: next_generation,
            create_time: now,
        })
        .execute(conn)
        .await?;
    Ok(diesel::update(sessions::table.find(session.id))
        .set((
            sessions::generation.eq(next_generation),
            sessions::last_use_time.eq(now),
            sessions::idle_expire_time.eq(idle_expire_time),
        ))
        .returning(Session::as_returning())
        .get_result(conn)
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
pub async fn prune(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<usize, DbError> {
    use diesel::sql_types::{BigInt, Timestamptz};
    Ok(diesel::sql_query(
        "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions \
         WHERE expire_time < $1 OR idle_expire_time < $1 OR revoke_time < $1 LIMIT $2)",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(batch)
    .execute(conn)
    .await?)
}
