//! Queries on `login_throttle` and `login_failures`: brute-force state shared by every replica.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::DbError;
use super::schema::{login_failures, login_throttle};

/// Consecutive failures and the last failure time of `key` from `ip`.
pub async fn get(
    conn: &mut AsyncPgConnection,
    key: &str,
    ip: &str,
) -> Result<Option<(i32, DateTime<Utc>)>, DbError> {
    Ok(login_throttle::table
        .find((key, ip))
        .select((
            login_throttle::consecutive_failures,
            login_throttle::last_failure_time,
        ))
        .first(conn)
        .await
        .optional()?)
}

/// Failed verifications of `key` from any IP since `since`.
pub async fn failures_since(
    conn: &mut AsyncPgConnection,
    key: &str,
    since: DateTime<Utc>,
) -> Result<i64, DbError> {
    Ok(login_failures::table
        .filter(login_failures::key.eq(key))
        .filter(login_failures::create_time.gt(since))
        .count()
        .get_result(conn)
        .await?)
}

/// Records one failed verification of `key` from `ip`.
pub async fn record_failure(
    conn: &mut AsyncPgConnection,
    key: &str,
    ip: &str,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::insert_into(login_throttle::table)
        .values((
            login_throttle::key.eq(key),
            login_throttle::ip.eq(ip),
            login_throttle::consecutive_failures.eq(1),
            login_throttle::last_failure_time.eq(now),
        ))
        .on_conflict((login_throttle::key, login_throttle::ip))
        .do_update()
        .set((
            login_throttle::consecutive_failures.eq(login_throttle::consecutive_failures + 1),
            login_throttle::last_failure_time.eq(excluded(login_throttle::last_failure_time)),
        ))
        .execute(conn)
        .await?;
    diesel::insert_into(login_failures::table)
        .values((
            login_failures::key.eq(key),
            login_failures::create_time.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// A success from `ip` resets its count for `key`.
pub async fn reset(conn: &mut AsyncPgConnection, key: &str, ip: &str) -> Result<(), DbError> {
    diesel::delete(login_throttle::table.find((key, ip)))
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets failures older than `failures_before` and throttle rows idle since `throttle_before`.
pub async fn prune(
    conn: &mut AsyncPgConnection,
    failures_before: DateTime<Utc>,
    throttle_before: DateTime<Utc>,
) -> Result<usize, DbError> {
    let a = diesel::delete(
        login_failures::table.filter(login_failures::create_time.lt(failures_before)),
    )
    .execute(conn)
    .await?;
    let b = diesel::delete(
        login_throttle::table.filter(login_throttle::last_failure_time.lt(throttle_before)),
    )
    .execute(conn)
    .await?;
    Ok(a + b)
}
