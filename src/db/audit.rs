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
///
/// The cursor is a row comparison, `(create_time, id) < ($1, $2)`, which PostgreSQL turns into
/// the start of an index range (the primary key read backwards, or the user's index), so a page
/// deep in the log costs what the first does. The redundant `create_time <= $1` lets the planner
/// skip the newer partitions.
pub async fn list(
    conn: &mut AsyncPgConnection,
    user_id: Option<Uuid>,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<AuditEvent>, DbError> {
    use diesel::sql_types::{Bool, Timestamptz, Uuid as SqlUuid};
    let mut q = audit_events::table
        .select(AuditEvent::as_select())
        .order((audit_events::create_time.desc(), audit_events::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(u) = user_id {
        q = q.filter(audit_events::user_id.eq(u));
    }
    if let Some((t, id)) = cursor {
        q = q.filter(audit_events::create_time.le(t)).filter(
            diesel::dsl::sql::<Bool>("(audit_events.create_time, audit_events.id) < (")
                .bind::<Timestamptz, _>(t)
                .sql(", ")
                .bind::<SqlUuid, _>(id)
                .sql(")"),
        );
    }
    Ok(q.load(conn).await?)
}

/// How many weeks ahead the housekeeping job keeps partitions of `audit_events` ready.
pub const PARTITION_WEEKS_AHEAD: i32 = 4;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The partition upkeep (migration `000084_audit_events_partitioned`): creates the weekly
/// partitions up to [`PARTITION_WEEKS_AHEAD`] weeks after `now` and drops those whose events are
/// all older than `before`. Runs in its own short transaction with a `lock_timeout`, since a
/// `DROP` of a partition briefly locks the whole table against inserts: rather than queue behind
/// a long reader (and make logins queue behind it), it fails and is retried at the next run.
/// Returns how many events the dropped partitions held.
pub async fn maintain_partitions(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    before: DateTime<Utc>,
) -> Result<i64, DbError> {
    use diesel::sql_types::{Integer, Timestamptz};
    use diesel_async::AsyncConnection;
    conn.transaction::<_, DbError, _>(async move |conn| {
        diesel::sql_query("SET LOCAL lock_timeout = '5s'")
            .execute(conn)
            .await?;
        diesel::sql_query("SELECT authd_audit_partitions_ensure($1, $2)")
            .bind::<Timestamptz, _>(now)
            .bind::<Integer, _>(PARTITION_WEEKS_AHEAD)
            .execute(conn)
            .await?;
        let c: Count = diesel::sql_query("SELECT authd_audit_partitions_drop($1) AS n")
            .bind::<Timestamptz, _>(before)
            .get_result(conn)
            .await?;
        Ok(c.n)
    })
    .await
}

/// Deletes the events older than `before` that [`maintain_partitions`] left: those of the
/// partition that straddles the retention bound (an index range on the primary key, about one
/// run's worth of events), and any in the default partition. At most `batch` at a time; returns
/// how many went.
pub async fn prune(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<usize, DbError> {
    use diesel::sql_types::{BigInt, Timestamptz};
    // A batch is a time range, up to the `batch`-th oldest expired event: a range of each
    // partition's primary key. (`IN (SELECT ... LIMIT n)` would join against every partition.)
    Ok(diesel::sql_query(
        "DELETE FROM audit_events WHERE create_time < $1 AND create_time <= COALESCE(\
         (SELECT create_time FROM audit_events WHERE create_time < $1 \
          ORDER BY create_time OFFSET $2 LIMIT 1), $1)",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(batch - 1)
    .execute(conn)
    .await?)
}
