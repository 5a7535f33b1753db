//! Queries on `audit_events`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::DbError;
use super::models::{AuditEvent, NewAuditEvent};
use super::schema::audit_events;

pub async fn insert(conn: &mut AsyncPgConnection, e: &NewAuditEvent<'_>) -> Result<(), DbError> {
    diesel::insert_into(audit_events::table)
        .values(e)
        .execute(conn)
        .await?;
    Ok(())
}

/// Newest first, optionally about one user, strictly after the keyset `cursor` (create_time, id).
pub async fn list(
    conn: &mut AsyncPgConnection,
    user_id: Option<Uuid>,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<AuditEvent>, DbError> {
    let mut q = audit_events::table
        .select(AuditEvent::as_select())
        .order((audit_events::create_time.desc(), audit_events::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(u) = user_id {
        q = q.filter(audit_events::user_id.eq(u));
    }
    if let Some((t, id)) = cursor {
        q = q.filter(
            audit_events::create_time
                .lt(t)
                .or(audit_events::create_time.eq(t).and(audit_events::id.lt(id))),
        );
    }
    Ok(q.load(conn).await?)
}

/// Deletes events older than `before`, at most `batch` at a time. Returns how many went.
pub async fn prune(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<usize, DbError> {
    use diesel::sql_types::{BigInt, Timestamptz};
    Ok(diesel::sql_query(
        "DELETE FROM audit_events WHERE id IN \
         (SELECT id FROM audit_events WHERE create_time < $1 LIMIT $2)",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(batch)
    .execute(conn)
    .await?)
}
