//! The `account_tokens` table (issue I): single-use tokens mailed to a user to verify an address,
//! reset a password or confirm an e-mail change. Only the SHA-256 of a token is stored.
//!
//! - [`insert_capped`] keeps at most `cap` live tokens per user and purpose. It takes the user's
//!   row lock (`FOR NO KEY UPDATE`) first, so concurrent requests for one user are counted one after another: twenty
//!   concurrent requests still leave at most `cap` live tokens. A new token never voids an older
//!   one (a stranger who asks for a link cannot kill the owner's).
//! - [`spend`] is one UPDATE: of concurrent callers with the same token, exactly one gets the row.
//! - [`void_all`] voids a user's live tokens of one purpose (a password change voids reset links).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::DbError;
use super::schema::{account_tokens, users};

/// What a token is for (the `purpose` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    VerifyEmail,
    // Issued by the password reset (branch i-reset).
    #[allow(dead_code)]
    ResetPassword,
    ChangeEmail,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => "verify_email",
            Purpose::ResetPassword => "reset_password",
            Purpose::ChangeEmail => "change_email",
        }
    }
}

/// A stored token (never the token itself). Every column is selected; not every caller reads all.
#[allow(dead_code)]
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = account_tokens, check_for_backend(diesel::pg::Pg))]
pub struct AccountToken {
    pub id: Uuid,
    pub user_id: Uuid,
    pub purpose: String,
    pub token_hash: Vec<u8>,
    pub new_email: Option<String>,
    pub create_time: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
    pub use_time: Option<DateTime<Utc>>,
    pub void_time: Option<DateTime<Utc>>,
    /// For `change_email`: the session that asked for the change.
    pub session_id: Option<Uuid>,
}

/// A token to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = account_tokens)]
pub struct NewAccountToken<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub purpose: &'a str,
    pub token_hash: &'a [u8],
    pub new_email: Option<&'a str>,
    pub create_time: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
    pub session_id: Option<Uuid>,
}

/// Inserts `new` unless the user already has `cap` live (unspent, unvoided, unexpired) tokens of
/// its purpose. Returns whether it was inserted. Call it inside a transaction: it locks the user's
/// row (`FOR NO KEY UPDATE`) so that concurrent inserts for one user are serialised. A user that no longer
/// exists gets no token (`false`).
pub async fn insert_capped(
    conn: &mut AsyncPgConnection,
    new: &NewAccountToken<'_>,
    cap: i64,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let locked: Option<Uuid> = users::table
        .filter(users::id.eq(new.user_id))
        .select(users::id)
        .for_no_key_update()
        .first(conn)
        .await
        .optional()?;
    if locked.is_none() {
        return Ok(false);
    }
    let live: i64 = live_filter(new.user_id, new.purpose, now)
        .count()
        .get_result(conn)
        .await?;
    if live >= cap {
        return Ok(false);
    }
    diesel::insert_into(account_tokens::table)
        .values(new)
        .execute(conn)
        .await?;
    Ok(true)
}

/// The live tokens of `user_id` and `purpose`.
fn live_filter(
    user_id: Uuid,
    purpose: &str,
    now: DateTime<Utc>,
) -> account_tokens::BoxedQuery<'_, diesel::pg::Pg> {
    account_tokens::table
        .filter(account_tokens::user_id.eq(user_id))
        .filter(account_tokens::purpose.eq(purpose))
        .filter(account_tokens::use_time.is_null())
        .filter(account_tokens::void_time.is_null())
        .filter(account_tokens::expire_time.gt(now))
        .into_boxed()
}

/// The live token of `purpose` whose hash is `token_hash`, without spending it (a reset checks the
/// new password before it spends the token).
pub async fn find_live(
    conn: &mut AsyncPgConnection,
    purpose: Purpose,
    token_hash: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<AccountToken>, DbError> {
    Ok(account_tokens::table
        .filter(account_tokens::token_hash.eq(token_hash))
        .filter(account_tokens::purpose.eq(purpose.as_str()))
        .filter(account_tokens::use_time.is_null())
        .filter(account_tokens::void_time.is_null())
        .filter(account_tokens::expire_time.gt(now))
        .select(AccountToken::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Spends the live token of `purpose` whose hash is `token_hash`: sets its `use_time` and returns
/// it, or None when there is no such live token (unknown, spent, voided or expired). One UPDATE, so
/// of concurrent callers exactly one gets the row.
pub async fn spend(
    conn: &mut AsyncPgConnection,
    purpose: Purpose,
    token_hash: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<AccountToken>, DbError> {
    Ok(diesel::update(
        account_tokens::table
            .filter(account_tokens::token_hash.eq(token_hash))
            .filter(account_tokens::purpose.eq(purpose.as_str()))
            .filter(account_tokens::use_time.is_null())
            .filter(account_tokens::void_time.is_null())
            .filter(account_tokens::expire_time.gt(now)),
    )
    .set(account_tokens::use_time.eq(now))
    .returning(AccountToken::as_returning())
    .get_result(conn)
    .await
    .optional()?)
}

/// Voids every live token of `user_id` and `purpose`; returns how many.
pub async fn void_all(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    purpose: Purpose,
    now: DateTime<Utc>,
) -> Result<usize, DbError> {
    Ok(diesel::update(
        account_tokens::table
            .filter(account_tokens::user_id.eq(user_id))
            .filter(account_tokens::purpose.eq(purpose.as_str()))
            .filter(account_tokens::use_time.is_null())
            .filter(account_tokens::void_time.is_null()),
    )
    .set(account_tokens::void_time.eq(now))
    .execute(conn)
    .await?)
}

/// Voids every live token of `user_id` whose purpose is in `purposes`; returns how many.
pub async fn void_purposes(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    purposes: &[Purpose],
    now: DateTime<Utc>,
) -> Result<usize, DbError> {
    let names: Vec<&str> = purposes.iter().map(|p| p.as_str()).collect();
    Ok(diesel::update(
        account_tokens::table
            .filter(account_tokens::user_id.eq(user_id))
            .filter(account_tokens::purpose.eq_any(names))
            .filter(account_tokens::use_time.is_null())
            .filter(account_tokens::void_time.is_null()),
    )
    .set(account_tokens::void_time.eq(now))
    .execute(conn)
    .await?)
}

/// Deletes tokens that expired before `before`; returns how many.
pub async fn prune(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> Result<usize, DbError> {
    Ok(
        diesel::delete(account_tokens::table.filter(account_tokens::expire_time.lt(before)))
            .execute(conn)
            .await?,
    )
}
