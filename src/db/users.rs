//! Queries on `users`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::DbError;
use super::models::{NewUser, User, UserChanges};
use super::schema::users;

diesel::define_sql_function!(fn lower(x: diesel::sql_types::Nullable<diesel::sql_types::Text>) -> diesel::sql_types::Nullable<diesel::sql_types::Text>);

/// Name of the unique index on e-mail (see migrations).
pub const EMAIL_UNIQUE: &str = "users_email_key";
/// Name of the unique index on lower(username).
pub const USERNAME_UNIQUE: &str = "users_username_key";

pub async fn insert(conn: &mut AsyncPgConnection, new: &NewUser<'_>) -> Result<User, DbError> {
    Ok(diesel::insert_into(users::table)
        .values(new)
        .returning(User::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn find_by_id(conn: &mut AsyncPgConnection, id: Uuid) -> Result<Option<User>, DbError> {
    Ok(users::table
        .find(id)
        .select(User::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// `email` must already be normalized (trimmed, lowercased).
pub async fn find_by_email(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> Result<Option<User>, DbError> {
    Ok(users::table
        .filter(users::email.eq(email))
        .select(User::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The id of the account with `email` (normalized), if any: one index lookup, no row to decode
/// (ResendVerification's reply path, which must cost the same for every address).
pub async fn id_by_email(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> Result<Option<Uuid>, DbError> {
    Ok(users::table
        .filter(users::email.eq(email))
        .select(users::id)
        .first(conn)
        .await
        .optional()?)
}

/// Case-insensitive, served by the unique index on `lower(username)`.
pub async fn find_by_username(
    conn: &mut AsyncPgConnection,
    username: &str,
) -> Result<Option<User>, DbError> {
    Ok(users::table
        .filter(lower(users::username).eq(username.to_lowercase()))
        .select(User::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub async fn set_last_login(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::update(users::table.find(id))
        .set(users::last_login_time.eq(now))
        .execute(conn)
        .await?;
    Ok(())
}

/// Filters of the admin listing.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// A LIKE pattern (already escaped and wrapped in `%`), matched case-insensitively on e-mail or username.
    pub pattern: Option<String>,
    pub role: Option<&'static str>,
    pub active: Option<bool>,
}

fn filtered(f: &UserFilter) -> users::BoxedQuery<'static, diesel::pg::Pg> {
    let mut q = users::table.into_boxed();
    if let Some(p) = &f.pattern {
        q = q.filter(
            users::email
                .ilike(p.clone())
                .or(users::username.assume_not_null().ilike(p.clone())),
        );
    }
    if let Some(r) = f.role {
        q = q.filter(users::role.eq(r));
    }
    if let Some(a) = f.active {
        q = q.filter(users::active.eq(a));
    }
    q
}

/// Oldest first by (create_time, id), strictly after the keyset `cursor`.
pub async fn list(
    conn: &mut AsyncPgConnection,
    f: &UserFilter,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<User>, DbError> {
    let mut q = filtered(f)
        .select(User::as_select())
        .order((users::create_time.asc(), users::id.asc()))
        .limit(limit);
    if let Some((t, id)) = cursor {
        q = q.filter(
            users::create_time
                .gt(t)
                .or(users::create_time.eq(t).and(users::id.gt(id))),
        );
    }
    Ok(q.load(conn).await?)
}

/// How many users match `f`, over all pages.
pub async fn count(conn: &mut AsyncPgConnection, f: &UserFilter) -> Result<i64, DbError> {
    Ok(filtered(f).count().get_result(conn).await?)
}

/// Reads a user and locks the row until the transaction ends.
pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> Result<Option<User>, DbError> {
    Ok(users::table
        .find(id)
        .select(User::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

/// Serializes the transactions that call [`lock_active_admins`].
const ADMIN_LOCK_KEY: i64 = 0x6175_7468_6403;

/// Whether any active admin exists (no lock: a hint; decisions take [`lock_active_admins`]).
pub async fn any_active_admin(conn: &mut AsyncPgConnection) -> Result<bool, DbError> {
    Ok(diesel::select(diesel::dsl::exists(
        users::table
            .filter(users::role.eq("admin"))
            .filter(users::active.eq(true)),
    ))
    .get_result(conn)
    .await?)
}

/// Locks every active admin row and returns their ids. Changes that could remove the last active
/// admin take this lock first, so concurrent demotions are serialized.
///
/// A transaction-level advisory lock comes first: the row locks alone can deadlock, because a
/// transaction whose snapshot predates a demotion locks (and skips) the demoted row before the
/// others, while one that sees the demotion locks the others first and that row later, as its
/// target.
pub async fn lock_active_admins(conn: &mut AsyncPgConnection) -> Result<Vec<Uuid>, DbError> {
    diesel::sql_query(format!("SELECT pg_advisory_xact_lock({ADMIN_LOCK_KEY})"))
        .execute(conn)
        .await?;
    Ok(users::table
        .filter(users::role.eq("admin"))
        .filter(users::active.eq(true))
        .select(users::id)
        .order(users::id.asc())
        .for_update()
        .load(conn)
        .await?)
}

pub async fn update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    changes: &UserChanges<'_>,
) -> Result<User, DbError> {
    Ok(diesel::update(users::table.find(id))
        .set(changes)
        .returning(User::as_returning())
        .get_result(conn)
        .await?)
}

/// Marks the address of `id` verified at `now`, unless it already is (the first proof's time
/// stays). Returns whether it changed.
pub async fn mark_email_verified(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    Ok(diesel::update(
        users::table
            .find(id)
            .filter(users::email_verified.eq(false)),
    )
    .set((
        users::email_verified.eq(true),
        users::email_verify_time.eq(now),
    ))
    .execute(conn)
    .await?
        > 0)
}

/// Replaces the password hash, only if it is still `old` (a concurrent change wins).
pub async fn replace_password_hash(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    old: &str,
    new: &str,
) -> Result<bool, DbError> {
    Ok(
        diesel::update(users::table.find(id).filter(users::password_hash.eq(old)))
            .set(users::password_hash.eq(new))
            .execute(conn)
            .await?
            > 0,
    )
}

/// Deletes a user; sessions and refresh tokens go with it (ON DELETE CASCADE).
pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> Result<bool, DbError> {
    Ok(diesel::delete(users::table.find(id)).execute(conn).await? > 0)
}
