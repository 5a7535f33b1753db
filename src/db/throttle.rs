//! Queries on the brute-force state shared by every replica: `login_guard` (one row per identifier key: the
//! lock that serializes its reservations, and the identifier-wide slot), `login_throttle` (consecutive failures
//! per key and client key), `login_failures` (one row per counted failure, for the hourly cap) and
//! `login_known_clients` (clients with a recent success, exempt from the identifier-wide slot).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::DbError;
use super::schema::{login_failures, login_guard, login_known_clients, login_throttle};

/// The identifier-wide state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Queryable)]
pub struct Guard {
    /// No slot check before this time (past the hourly cap); `None`: the slot is free.
    pub next_check_time: Option<DateTime<Utc>>,
    /// The gap the next slot check imposes, in seconds.
    pub slot_delay_secs: i32,
}

/// Creates (if needed) and locks the guard row of `key` until the end of the transaction, and
/// returns it. Every reservation for `key` takes this lock first.
pub async fn lock_guard(
    conn: &mut AsyncPgConnection,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Guard, DbError> {
    Ok(diesel::insert_into(login_guard::table)
        .values((
            login_guard::key.eq(key),
            login_guard::slot_delay_secs.eq(1),
            login_guard::last_attempt_time.eq(now),
        ))
        .on_conflict(login_guard::key)
        .do_update()
        // A no-op update: it takes the row lock and makes RETURNING yield the existing row.
        .set(login_guard::key.eq(excluded(login_guard::key)))
        .returning((login_guard::next_check_time, login_guard::slot_delay_secs))
        .get_result(conn)
        .await?)
}

/// Stores the identifier-wide slot of `key` (its row is locked by [`lock_guard`]).
pub async fn set_guard(
    conn: &mut AsyncPgConnection,
    key: &str,
    guard: Guard,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::update(login_guard::table.find(key))
        .set((
            login_guard::next_check_time.eq(guard.next_check_time),
            login_guard::slot_delay_secs.eq(guard.slot_delay_secs),
            login_guard::last_attempt_time.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Consecutive failures and the last failure time of `key` from `client`.
pub async fn get(
    conn: &mut AsyncPgConnection,
    key: &str,
    client: &str,
) -> Result<Option<(i32, DateTime<Utc>)>, DbError> {
    Ok(login_throttle::table
        .find((key, client))
        .select((
            login_throttle::consecutive_failures,
            login_throttle::last_failure_time,
        ))
        .first(conn)
        .await
        .optional()?)
}

/// Counted failures of `key` from any client since `since`.
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

/// Whether `client` had a successful check for `key` since `since`.
pub async fn is_known(
    conn: &mut AsyncPgConnection,
    key: &str,
    client: &str,
    since: DateTime<Utc>,
) -> Result<bool, DbError> {
    Ok(diesel::select(diesel::dsl::exists(
        login_known_clients::table
            .find((key, client))
            .filter(login_known_clients::last_success_time.gt(since)),
    ))
    .get_result(conn)
    .await?)
}

/// Counts one failure of `key` from `client` (a reservation); returns the id of its
/// `login_failures` row, so that a success can take exactly this one back.
pub async fn record_failure(
    conn: &mut AsyncPgConnection,
    key: &str,
    client: &str,
    now: DateTime<Utc>,
) -> Result<i64, DbError> {
    diesel::insert_into(login_throttle::table)
        .values((
            login_throttle::key.eq(key),
            login_throttle::ip.eq(client),
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
    Ok(diesel::insert_into(login_failures::table)
        .values((
            login_failures::key.eq(key),
            login_failures::create_time.eq(now),
        ))
        .returning(login_failures::id)
        .get_result(conn)
        .await?)
}

/// A success from `client`: its count for `key` starts again, and the reservation's failure row
/// goes.
pub async fn reset(
    conn: &mut AsyncPgConnection,
    key: &str,
    client: &str,
    failure_id: i64,
) -> Result<(), DbError> {
    diesel::delete(login_throttle::table.find((key, client)))
        .execute(conn)
        .await?;
    diesel::delete(login_failures::table.find(failure_id))
        .execute(conn)
        .await?;
    Ok(())
}

/// A reservation whose password was never checked (the bcrypt pool refused it): takes back its
/// failure row and its +1 of the consecutive count.
pub async fn uncount(
    conn: &mut AsyncPgConnection,
    key: &str,
    client: &str,
    failure_id: i64,
) -> Result<(), DbError> {
    diesel::update(
        login_throttle::table
            .find((key, client))
            .filter(login_throttle::consecutive_failures.gt(0)),
    )
    .set(login_throttle::consecutive_failures.eq(login_throttle::consecutive_failures - 1))
    .execute(conn)
    .await?;
    diesel::delete(login_failures::table.find(failure_id))
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a successful check from `client` for each of `keys`.
pub async fn remember_client(
    conn: &mut AsyncPgConnection,
    keys: &[String],
    client: &str,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let rows: Vec<_> = keys
        .iter()
        .map(|k| {
            (
                login_known_clients::key.eq(k.as_str()),
                login_known_clients::client.eq(client),
                login_known_clients::last_success_time.eq(now),
            )
        })
        .collect();
    diesel::insert_into(login_known_clients::table)
        .values(rows)
        .on_conflict((login_known_clients::key, login_known_clients::client))
        .do_update()
        .set(
            login_known_clients::last_success_time
                .eq(excluded(login_known_clients::last_success_time)),
        )
        .execute(conn)
        .await?;
    Ok(())
}

/// What [`prune`] deletes: everything older than its bound.
#[derive(Debug, Clone, Copy)]
pub struct PruneBefore {
    /// Failure rows (the hourly window).
    pub failures: DateTime<Utc>,
    /// Per-client counts, by their last failure.
    pub counts: DateTime<Utc>,
    /// Guard rows, by their last attempt (an idle guard is a reset slot).
    pub guards: DateTime<Utc>,
    /// Known clients, by their last success.
    pub known_clients: DateTime<Utc>,
}

/// Forgets throttle state older than the bounds of `before`.
pub async fn prune(conn: &mut AsyncPgConnection, before: PruneBefore) -> Result<usize, DbError> {
    let a = diesel::delete(
        login_failures::table.filter(login_failures::create_time.lt(before.failures)),
    )
    .execute(conn)
    .await?;
    let b = diesel::delete(
        login_throttle::table.filter(login_throttle::last_failure_time.lt(before.counts)),
    )
    .execute(conn)
    .await?;
    let c =
        diesel::delete(login_guard::table.filter(login_guard::last_attempt_time.lt(before.guards)))
            .execute(conn)
            .await?;
    let d = diesel::delete(
        login_known_clients::table
            .filter(login_known_clients::last_success_time.lt(before.known_clients)),
    )
    .execute(conn)
    .await?;
    Ok(a + b + c + d)
}
