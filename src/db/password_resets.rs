//! The `password_reset_requests` table (issue I): one row per RequestPasswordReset, known address or
//! not. The reply path inserts it ([`insert_limited`], which also applies the rate limits); the
//! background job claims unprocessed rows one at a time ([`claim_one`], `FOR UPDATE SKIP LOCKED`,
//! so any number of replicas share the queue) and marks them processed ([`mark_processed`]).

use chrono::{DateTime, Utc};
use diesel::dsl::{count_star, min};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::DbError;
use super::schema::password_reset_requests as req;

/// What the job needs of a request row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = req, check_for_backend(diesel::pg::Pg))]
pub struct ResetRequest {
    pub id: Uuid,
    pub email: String,
}

/// The rate limits [`insert_limited`] applies: at most `per_email` requests per address and
/// `per_client` per client address since `since` (0 = no limit).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_email: u32,
    pub per_client: u32,
    pub since: DateTime<Utc>,
}

/// Why [`insert_limited`] refused: the oldest counted request of the exhausted limit (the caller
/// computes when it leaves the window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub oldest: DateTime<Utc>,
}

/// Serialises the inserts of one key (an address or a client) for the rest of the transaction.
async fn lock_key(conn: &mut AsyncPgConnection, key: &str) -> Result<(), DbError> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<Text, _>(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// How many requests match `filter` since `since`, and the oldest of them.
async fn window(
    conn: &mut AsyncPgConnection,
    email: Option<&str>,
    client: Option<&str>,
    since: DateTime<Utc>,
) -> Result<(i64, Option<DateTime<Utc>>), DbError> {
    let mut q = req::table
        .filter(req::create_time.gt(since))
        .select((count_star(), min(req::create_time)))
        .into_boxed();
    if let Some(e) = email {
        q = q.filter(req::email.eq(e.to_owned()));
    }
    if let Some(c) = client {
        q = q.filter(req::client_address.eq(c.to_owned()));
    }
    Ok(q.get_result(conn).await?)
}

/// Inserts one request of `email` from `client` (a client key string, `''` when unknown) unless
/// the address or the client is over its limit. Call it inside a transaction: it takes
/// transaction-level advisory locks on the address and then the client (always in that order, so
/// they cannot deadlock), so concurrent requests are counted one after another on every replica.
pub async fn insert_limited(
    conn: &mut AsyncPgConnection,
    email: &str,
    client: &str,
    limits: Limits,
    now: DateTime<Utc>,
) -> Result<Result<Uuid, Limited>, DbError> {
    if limits.per_email > 0 {
        lock_key(conn, &format!("password_reset:email:{email}")).await?;
        let (n, oldest) = window(conn, Some(email), None, limits.since).await?;
        if n >= i64::from(limits.per_email) {
            return Ok(Err(Limited {
                oldest: oldest.unwrap_or(now),
            }));
        }
    }
    if limits.per_client > 0 && !client.is_empty() {
        lock_key(conn, &format!("password_reset:client:{client}")).await?;
        let (n, oldest) = window(conn, None, Some(client), limits.since).await?;
        if n >= i64::from(limits.per_client) {
            return Ok(Err(Limited {
                oldest: oldest.unwrap_or(now),
            }));
        }
    }
    let id = Uuid::now_v7();
    diesel::insert_into(req::table)
        .values((
            req::id.eq(id),
            req::email.eq(email),
            req::client_address.eq(client),
            req::create_time.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(Ok(id))
}

/// Claims the oldest unprocessed request that no other transaction holds (`FOR UPDATE SKIP
/// LOCKED`); the row stays locked until the transaction ends.
pub async fn claim_one(conn: &mut AsyncPgConnection) -> Result<Option<ResetRequest>, DbError> {
    Ok(req::table
        .filter(req::processed_time.is_null())
        .order((req::create_time.asc(), req::id.asc()))
        .select(ResetRequest::as_select())
        .for_update()
        .skip_locked()
        .first(conn)
        .await
        .optional()?)
}

/// Marks request `id` processed.
pub async fn mark_processed(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::update(req::table.find(id))
        .set(req::processed_time.eq(now))
        .execute(conn)
        .await?;
    Ok(())
}

/// How many requests wait for the job.
pub async fn unprocessed(conn: &mut AsyncPgConnection) -> Result<i64, DbError> {
    Ok(req::table
        .filter(req::processed_time.is_null())
        .count()
        .get_result(conn)
        .await?)
}

/// Deletes processed requests made before `before`; returns how many.
pub async fn prune(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> Result<usize, DbError> {
    Ok(diesel::delete(
        req::table
            .filter(req::processed_time.is_not_null())
            .filter(req::create_time.lt(before)),
    )
    .execute(conn)
    .await?)
}
