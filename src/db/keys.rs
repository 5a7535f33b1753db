//! Queries on `signing_keys` and `server_secrets`: key material shared by every replica.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::DbError;
use super::models::{NewServerSecret, NewSigningKey, ServerSecret, SigningKey};
use super::schema::{server_secrets, signing_keys};

/// Advisory-lock key that serializes first-start key generation across replicas.
const KEYGEN_LOCK_KEY: i64 = 0x6175_7468_6402;

/// Keys that are not retired at `now`, newest activation first.
pub async fn list_unretired(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<Vec<SigningKey>, DbError> {
    Ok(signing_keys::table
        .filter(
            signing_keys::retire_time
                .is_null()
                .or(signing_keys::retire_time.gt(now)),
        )
        .order(signing_keys::activate_time.desc())
        .select(SigningKey::as_select())
        .load(conn)
        .await?)
}

/// Inserts `new` only when no unretired key exists, under a transaction-level advisory lock so that
/// replicas starting together create exactly one key. Returns the unretired keys afterwards.
pub async fn ensure_signing_key(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    new: &NewSigningKey<'_>,
) -> Result<Vec<SigningKey>, DbError> {
    use diesel_async::AsyncConnection;
    conn.transaction::<_, DbError, _>(async move |conn| {
        diesel::sql_query(format!("SELECT pg_advisory_xact_lock({KEYGEN_LOCK_KEY})"))
            .execute(conn)
            .await?;
        let existing = list_unretired(conn, now).await?;
        if !existing.is_empty() {
            return Ok(existing);
        }
        diesel::insert_into(signing_keys::table)
            .values(new)
            .execute(conn)
            .await?;
        list_unretired(conn, now).await
    })
    .await
}

/// Returns the secret called `candidate.name`, storing `candidate` first if there is none yet.
pub async fn get_or_create_secret(
    conn: &mut AsyncPgConnection,
    candidate: &NewServerSecret<'_>,
) -> Result<ServerSecret, DbError> {
    diesel::insert_into(server_secrets::table)
        .values(candidate)
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(server_secrets::table
        .find(candidate.name)
        .select(ServerSecret::as_select())
        .first(conn)
        .await?)
}

/// Replaces a secret's stored value (e.g. to seal it under the master key).
pub async fn store_secret(
    conn: &mut AsyncPgConnection,
    name: &str,
    value: &[u8],
    encrypted: bool,
) -> Result<(), DbError> {
    diesel::update(server_secrets::table.find(name))
        .set((
            server_secrets::value.eq(value),
            server_secrets::encrypted.eq(encrypted),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Replaces a signing key's stored private key (e.g. to seal it under the master key).
pub async fn store_private_key(
    conn: &mut AsyncPgConnection,
    kid: &str,
    private_key: &[u8],
    encrypted: bool,
) -> Result<(), DbError> {
    diesel::update(signing_keys::table.find(kid))
        .set((
            signing_keys::private_key.eq(private_key),
            signing_keys::encrypted.eq(encrypted),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds `new` and schedules every other unretired key to retire at `retire_time`, atomically and
/// under the key-generation lock.
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    new: &NewSigningKey<'_>,
    retire_time: DateTime<Utc>,
) -> Result<(), DbError> {
    use diesel_async::AsyncConnection;
    conn.transaction::<_, DbError, _>(async move |conn| {
        diesel::sql_query(format!("SELECT pg_advisory_xact_lock({KEYGEN_LOCK_KEY})"))
            .execute(conn)
            .await?;
        diesel::update(
            signing_keys::table.filter(
                signing_keys::retire_time
                    .is_null()
                    .or(signing_keys::retire_time.gt(retire_time)),
            ),
        )
        .set(signing_keys::retire_time.eq(retire_time))
        .execute(conn)
        .await?;
        diesel::insert_into(signing_keys::table)
            .values(new)
            .execute(conn)
            .await?;
        Ok(())
    })
    .await
}

/// Deletes keys retired before `before`.
pub async fn delete_retired(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
) -> Result<usize, DbError> {
    Ok(
        diesel::delete(signing_keys::table.filter(signing_keys::retire_time.lt(before)))
            .execute(conn)
            .await?,
    )
}
