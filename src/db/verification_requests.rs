//! The `verification_requests` table (issue I): one row per accepted ResendVerification call. The
//! reply path inserts one row for every address, known or not; a background job turns the rows of
//! active, unverified accounts into verification messages ([`claim_pending`], [`mark_processed`]).
//! The per-address and per-client limits count the rows of the last window ([`count_since`]).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::DbError;
use super::schema::verification_requests as vr;

/// A request to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = vr)]
pub struct NewRequest<'a> {
    pub id: Uuid,
    pub email_hash: &'a [u8],
    pub user_id: Option<Uuid>,
    pub client: &'a str,
    pub create_time: DateTime<Utc>,
}

/// A pending request, as the job sees it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = vr, check_for_backend(diesel::pg::Pg))]
pub struct Request {
    pub id: Uuid,
    pub email_hash: Vec<u8>,
    pub user_id: Option<Uuid>,
}

/// Serialises the limit checks of one key (an address hash or a client) for the rest of the
/// transaction, so that concurrent requests are counted one after another. Callers lock the client
/// key before the address key, always in that order.
pub async fn lock_key(conn: &mut AsyncPgConnection, key: &str) -> Result<(), DbError> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 61))")
        .bind::<Text, _>(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Requests for `email_hash` since `since`: how many, and the oldest one's time.
pub async fn count_email_since(
    conn: &mut AsyncPgConnection,
    email_hash: &[u8],
    since: DateTime<Utc>,
) -> Result<(i64, Option<DateTime<Utc>>), DbError> {
    Ok(vr::table
        .filter(vr::email_hash.eq(email_hash))
        .filter(vr::create_time.gt(since))
        .select((diesel::dsl::count_star(), diesel::dsl::min(vr::create_time)))
        .get_result(conn)
        .await?)
}

/// Requests from `client` since `since`: how many, and the oldest one's time.
pub async fn count_client_since(
    conn: &mut AsyncPgConnection,
    client: &str,
    since: DateTime<Utc>,
) -> Result<(i64, Option<DateTime<Utc>>), DbError> {
    Ok(vr::table
        .filter(vr::client.eq(client))
        .filter(vr::create_time.gt(since))
        .select((diesel::dsl::count_star(), diesel::dsl::min(vr::create_time)))
        .get_result(conn)
        .await?)
}

pub async fn insert(conn: &mut AsyncPgConnection, new: &NewRequest<'_>) -> Result<(), DbError> {
    diesel::insert_into(vr::table)
        .values(new)
        .execute(conn)
        .await?;
    Ok(())
}

/// Up to `limit` pending requests, oldest first, locked (`FOR UPDATE SKIP LOCKED`) for the rest of
/// the caller's transaction: two replicas never handle the same request.
pub async fn claim_pending(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> Result<Vec<Request>, DbError> {
    Ok(vr::table
        .filter(vr::process_time.is_null())
        .order(vr::create_time.asc())
        .limit(limit)
        .select(Request::as_select())
        .for_update()
        .skip_locked()
        .load(conn)
        .await?)
}

pub async fn mark_processed(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::update(vr::table.find(id))
        .set(vr::process_time.eq(now))
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes requests made before `before` that were processed; returns how many.
pub async fn prune(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> Result<usize, DbError> {
    Ok(diesel::delete(
        vr::table
            .filter(vr::create_time.lt(before))
            .filter(vr::process_time.is_not_null()),
    )
    .execute(conn)
    .await?)
}
