//! The `outbox` table (issue I, "Mail that is never lost"): enqueue in the producer's transaction,
//! claim a batch of due messages, and record each attempt's outcome.
//!
//! Claiming is one statement: it picks due rows with `FOR UPDATE SKIP LOCKED` and, in the same
//! UPDATE, counts the attempt and moves `next_attempt_time` one lease ahead. Once it commits, the
//! rows are no longer due for any other sender until the lease ends, so two replicas never hold
//! the same message; the row lock is not held during the (slow) SMTP conversation. A sender that
//! dies mid-send leaves the message to be retried after the lease (the same Message-ID tells a
//! receiver it is the same message).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Int8, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::DbError;
use super::schema::outbox;

/// A message to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = outbox)]
pub struct NewOutboxRow<'a> {
    pub id: Uuid,
    pub create_time: DateTime<Utc>,
    pub recipient: &'a str,
    pub subject: &'a str,
    pub kind: &'a str,
    pub body: &'a [u8],
    pub body_sealed: bool,
    pub live_link: bool,
    pub message_id: &'a str,
    pub next_attempt_time: DateTime<Utc>,
}

/// A claimed message: what a delivery needs.
#[derive(Debug, Clone, QueryableByName)]
#[diesel(table_name = outbox)]
pub struct OutboxRow {
    pub id: Uuid,
    pub create_time: DateTime<Utc>,
    pub recipient: String,
    pub kind: String,
    pub body: Vec<u8>,
    pub body_sealed: bool,
    pub message_id: String,
    pub attempts: i32,
}

/// Inserts a message. Runs on whatever connection it is given, so inside the producer's
/// transaction the message commits (or not) with the change that causes it.
pub async fn enqueue(conn: &mut AsyncPgConnection, row: &NewOutboxRow<'_>) -> Result<(), DbError> {
    diesel::insert_into(outbox::table)
        .values(row)
        .execute(conn)
        .await?;
    Ok(())
}

/// Claims up to `limit` messages due at `now` (see the module doc): each claimed row has its
/// attempt counted and is not due again before `lease_until`.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<OutboxRow>, DbError> {
    let rows = diesel::sql_query(
        "UPDATE outbox SET attempts = attempts + 1, next_attempt_time = $2 \
         WHERE id IN (SELECT id FROM outbox \
                      WHERE sent_time IS NULL AND failed_time IS NULL AND next_attempt_time <= $1 \
                      ORDER BY next_attempt_time LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING id, create_time, recipient, kind, body, body_sealed, message_id, attempts",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<Timestamptz, _>(lease_until)
    .bind::<Int8, _>(limit)
    .load::<OutboxRow>(conn)
    .await?;
    Ok(rows)
}

/// Records a delivery. A body that holds a live link is blanked.
pub async fn mark_sent(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::sql_query(
        "UPDATE outbox SET sent_time = $2, last_error = NULL, \
         body = CASE WHEN live_link THEN ''::bytea ELSE body END WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<Timestamptz, _>(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a failed attempt; the message is due again at `next_attempt_time`.
pub async fn mark_retry(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    next_attempt_time: DateTime<Utc>,
    error: &str,
) -> Result<(), DbError> {
    diesel::update(outbox::table.find(id))
        .set((
            outbox::next_attempt_time.eq(next_attempt_time),
            outbox::last_error.eq(error),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Gives a message up after its last attempt. The row stays (with its error) until the retention
/// prune; a body with a live link is blanked, as the link is of no use to anyone any more.
pub async fn mark_failed(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: DateTime<Utc>,
    error: &str,
) -> Result<(), DbError> {
    diesel::sql_query(
        "UPDATE outbox SET failed_time = $2, last_error = $3, \
         body = CASE WHEN live_link THEN ''::bytea ELSE body END WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<Timestamptz, _>(now)
    .bind::<diesel::sql_types::Text, _>(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// The waiting messages: how many, and the creation time of the oldest.
#[derive(Debug, QueryableByName)]
pub struct Depth {
    #[diesel(sql_type = Int8)]
    pub waiting: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<Timestamptz>)]
    pub oldest: Option<DateTime<Utc>>,
}

/// See [`Depth`].
pub async fn depth(conn: &mut AsyncPgConnection) -> Result<Depth, DbError> {
    let d = diesel::sql_query(
        "SELECT count(*) AS waiting, min(create_time) AS oldest FROM outbox \
         WHERE sent_time IS NULL AND failed_time IS NULL",
    )
    .get_result::<Depth>(conn)
    .await?;
    Ok(d)
}

/// Deletes messages sent or given up before `before`.
pub async fn prune(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> Result<usize, DbError> {
    let n = diesel::delete(
        outbox::table.filter(
            outbox::sent_time
                .lt(before)
                .or(outbox::failed_time.lt(before)),
        ),
    )
    .execute(conn)
    .await?;
    Ok(n)
}
