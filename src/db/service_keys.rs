//! Queries on `service_keys`.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::DbError;
use super::models::{NewServiceKey, ServiceKey};
use super::schema::service_keys;

pub async fn insert(
    conn: &mut AsyncPgConnection,
    new: &NewServiceKey<'_>,
) -> Result<ServiceKey, DbError> {
    Ok(diesel::insert_into(service_keys::table)
        .values(new)
        .returning(ServiceKey::as_returning())
        .get_result(conn)
        .await?)
}

/// Unrevoked keys, oldest first.
pub async fn list_active(conn: &mut AsyncPgConnection) -> Result<Vec<ServiceKey>, DbError> {
    Ok(service_keys::table
        .filter(service_keys::revoke_time.is_null())
        .order((service_keys::create_time.asc(), service_keys::id.asc()))
        .select(ServiceKey::as_select())
        .load(conn)
        .await?)
}

/// Revokes a key. Returns false when there is no such unrevoked key.
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let n = diesel::update(
        service_keys::table
            .find(id)
            .filter(service_keys::revoke_time.is_null()),
    )
    .set(service_keys::revoke_time.eq(now))
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// Records a use, at most once per `debounce` per key.
pub async fn touch(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: DateTime<Utc>,
    debounce: Duration,
) -> Result<(), DbError> {
    diesel::update(
        service_keys::table.find(id).filter(
            service_keys::last_use_time
                .is_null()
                .or(service_keys::last_use_time.lt(now - debounce)),
        ),
    )
    .set(service_keys::last_use_time.eq(now))
    .execute(conn)
    .await?;
    Ok(())
}
