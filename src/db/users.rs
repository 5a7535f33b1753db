//! Queries on `users`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::DbError;
use super::models::{NewUser, User, UserChanges};
use super::schema::users;

diesel::define_sql_function!(fn lower(x: diesel::sql_types::Nullable<diesel::sql_types::Text>) -> diesel::sql_types::Nullable<diesel::sql_types::Text>);
diesel::define_sql_function!(fn split_part(s: diesel::sql_types::Text, delimiter: diesel::sql_types::Text, n: diesel::sql_types::Integer) -> diesel::sql_types::Text);

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
    /// The `query`, lowercased, as LIKE prefix patterns (escaped, `%` appended): matched on the
    /// e-mail and `lower(username)` (`prefix`) and on the e-mail's domain (`domain_prefix`, the
    /// query without a leading `@`). Served by the `text_pattern_ops` indexes of migration 000080.
    pub prefix: Option<(String, String)>,
    pub role: Option<&'static str>,
    pub active: Option<bool>,
}

fn filtered(f: &UserFilter) -> users::BoxedQuery<'static, diesel::pg::Pg> {
    let mut q = users::table.into_boxed();
    if let Some((p, d)) = &f.prefix {
        q = q.filter(
            users::email
                .like(p.clone())
                .or(lower(users::username).assume_not_null().like(p.clone()))
                .or(split_part(users::email, "@", 2).like(d.clone())),
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

/// Oldest first by (create_time, id), strictly after the keyset `cursor`: a row comparison
/// `(create_time, id) > ($1, $2)`, the start of a range on `users_create_time_id_idx`.
pub async fn list(
    conn: &mut AsyncPgConnection,
    f: &UserFilter,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<User>, DbError> {
    use diesel::sql_types::{Bool, Timestamptz, Uuid as SqlUuid};
    let mut q = filtered(f)
        .select(User::as_select())
        .order((users::create_time.asc(), users::id.asc()))
        .limit(limit);
    if let Some((t, id)) = cursor {
        q = q.filter(
            diesel::dsl::sql::<Bool>("(users.create_time, users.id) > (")
                .bind::<Timestamptz, _>(t)
                .sql(", ")
                .bind::<SqlUuid, _>(id)
                .sql(")"),
        );
    }
    Ok(q.load(conn).await?)
}

/// Up to this many matches, [`count`] is exact.
pub const EXACT_COUNT_LIMIT: i64 = 10_000;
/// Without a `query`, a planner estimate over this many rows is trusted to be beyond
/// [`EXACT_COUNT_LIMIT`] and returned without counting (role and active have exact statistics).
const TRUSTED_ESTIMATE: i64 = 10 * EXACT_COUNT_LIMIT;

/// How many users match a filter: exact up to [`EXACT_COUNT_LIMIT`], else an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserCount {
    pub total: i64,
    pub estimate: bool,
}

#[derive(QueryableByName)]
struct Counted {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Plan {
    #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
    plan: String,
}

/// The WHERE clause of `f` in SQL; the patterns, if any, are `$1` and `$2`. Role and active are
/// inlined: the role is one of three constants, never client text.
fn where_sql(f: &UserFilter) -> String {
    let mut w = vec!["true".to_owned()];
    if f.prefix.is_some() {
        w.push(
            "(email LIKE $1 OR lower(username) LIKE $1 OR split_part(email, '@', 2) LIKE $2)"
                .into(),
        );
    }
    if let Some(r) = f.role {
        w.push(format!("role = '{}'", r.replace('\'', "")));
    }
    if let Some(a) = f.active {
        w.push(format!("active = {a}"));
    }
    w.join(" AND ")
}

type BoxedSql =
    diesel::query_builder::BoxedSqlQuery<'static, diesel::pg::Pg, diesel::query_builder::SqlQuery>;

fn bind_prefix(q: BoxedSql, prefix: Option<&(String, String)>) -> BoxedSql {
    match prefix {
        Some((p, d)) => q
            .bind::<diesel::sql_types::Text, _>(p.clone())
            .bind::<diesel::sql_types::Text, _>(d.clone()),
        None => q,
    }
}

/// The planner's estimate of the rows `sql` returns (`EXPLAIN`, no execution).
async fn planned_rows(
    conn: &mut AsyncPgConnection,
    sql: &str,
    prefix: Option<&(String, String)>,
) -> Result<i64, DbError> {
    let q = diesel::sql_query(format!("EXPLAIN (FORMAT JSON) {sql}")).into_boxed();
    let q = bind_prefix(q, prefix);
    let rows: Vec<Plan> = q.load(conn).await?;
    Ok(<[Plan]>::first(&rows)
        .and_then(|p| p.plan.split("\"Plan Rows\":").nth(1))
        .and_then(|rest| {
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit() && c != '.')
                .next()
                .and_then(|n| n.parse::<f64>().ok())
        })
        .map_or(0, |n| n as i64))
}

/// How many users match `f`, over all pages, without counting more than
/// [`EXACT_COUNT_LIMIT`] + 1 of them: exact up to that, the planner's estimate beyond.
pub async fn count(conn: &mut AsyncPgConnection, f: &UserFilter) -> Result<UserCount, DbError> {
    let select = format!("SELECT 1 FROM users WHERE {}", where_sql(f));
    let prefix = f.prefix.as_ref();
    if prefix.is_none() {
        let planned = planned_rows(conn, &select, None).await?;
        if planned > TRUSTED_ESTIMATE {
            return Ok(UserCount {
                total: planned,
                estimate: true,
            });
        }
    }
    let sql = format!(
        "SELECT count(*) AS n FROM ({select} LIMIT {}) s",
        EXACT_COUNT_LIMIT + 1
    );
    let q = bind_prefix(diesel::sql_query(sql).into_boxed(), prefix);
    let counted: Counted = q.get_result(conn).await?;
    if counted.n <= EXACT_COUNT_LIMIT {
        return Ok(UserCount {
            total: counted.n,
            estimate: false,
        });
    }
    let planned = planned_rows(conn, &select, prefix).await?;
    Ok(UserCount {
        total: planned.max(counted.n),
        estimate: true,
    })
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
