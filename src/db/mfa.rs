//! Queries of the second factor: `user_totp` (seeds, the replay guard and the wrong-code lock),
//! `recovery_codes` and `mfa_challenges` (see the migration `000070_totp`). Their row types live
//! here too.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::DbError;
use super::schema::{mfa_challenges, recovery_codes, user_totp};

/// An account's TOTP state. Its Debug hides the seeds.
#[derive(Clone, Queryable, Selectable)]
#[diesel(table_name = user_totp, check_for_backend(diesel::pg::Pg))]
#[expect(
    dead_code,
    reason = "the row's columns: read by diesel, not all by the domain"
)]
pub struct UserTotp {
    pub user_id: Uuid,
    /// The active seed (maybe sealed); None while only an enrolment is pending.
    pub seed: Option<Vec<u8>>,
    pub seed_sealed: bool,
    pub pending_seed: Option<Vec<u8>>,
    pub pending_sealed: bool,
    pub enable_time: Option<DateTime<Utc>>,
    pub last_step: i64,
    pub failures: i32,
    pub lock_level: i32,
    pub locked_until: Option<DateTime<Utc>>,
    pub update_time: DateTime<Utc>,
}

impl std::fmt::Debug for UserTotp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTotp")
            .field("user_id", &self.user_id)
            .field("enabled", &self.seed.is_some())
            .field("pending", &self.pending_seed.is_some())
            .field("last_step", &self.last_step)
            .field("failures", &self.failures)
            .field("lock_level", &self.lock_level)
            .field("locked_until", &self.locked_until)
            .finish_non_exhaustive()
    }
}

/// A login waiting for its second factor.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = mfa_challenges, check_for_backend(diesel::pg::Pg))]
pub struct MfaChallenge {
    pub user_id: Uuid,
    pub ip_address: String,
    pub user_agent: String,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = mfa_challenges)]
pub struct NewMfaChallenge<'a> {
    pub token_hash: &'a [u8],
    pub user_id: Uuid,
    pub create_time: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
    pub ip_address: &'a str,
    pub user_agent: &'a str,
}

/// The TOTP row of `user_id`.
pub async fn find(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> Result<Option<UserTotp>, DbError> {
    Ok(user_totp::table
        .find(user_id)
        .select(UserTotp::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The TOTP row of `user_id`, locked until the transaction ends.
pub async fn lock(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> Result<Option<UserTotp>, DbError> {
    Ok(user_totp::table
        .find(user_id)
        .select(UserTotp::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

/// Stores a pending enrolment (replacing one). Call in a transaction that checked under [`lock`]
/// that TOTP is off.
pub async fn set_pending(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    seed: &[u8],
    sealed: bool,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::insert_into(user_totp::table)
        .values((
            user_totp::user_id.eq(user_id),
            user_totp::pending_seed.eq(seed),
            user_totp::pending_sealed.eq(sealed),
            user_totp::update_time.eq(now),
        ))
        .on_conflict(user_totp::user_id)
        .do_update()
        .set((
            user_totp::pending_seed.eq(seed),
            user_totp::pending_sealed.eq(sealed),
            user_totp::update_time.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Switches the pending seed `pending` on, with `step` as its last accepted step (its code is
/// spent). False when the pending seed changed meanwhile or TOTP is already on.
pub async fn enable(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    pending: &[u8],
    step: i64,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let n = diesel::update(
        user_totp::table
            .find(user_id)
            .filter(user_totp::seed.is_null())
            .filter(user_totp::pending_seed.eq(pending)),
    )
    .set((
        user_totp::seed.eq(user_totp::pending_seed),
        user_totp::seed_sealed.eq(user_totp::pending_sealed),
        user_totp::pending_seed.eq(None::<Vec<u8>>),
        user_totp::enable_time.eq(now),
        user_totp::last_step.eq(step),
        user_totp::failures.eq(0),
        user_totp::lock_level.eq(0),
        user_totp::locked_until.eq(None::<DateTime<Utc>>),
        user_totp::update_time.eq(now),
    ))
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// Accepts a code of `step`: the one check-and-set that makes a code single use. True only if TOTP
/// is on and `step` is later than every step accepted before; then the wrong-code count and lock
/// are cleared too.
pub async fn accept_step(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    step: i64,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let n = diesel::update(
        user_totp::table
            .find(user_id)
            .filter(user_totp::seed.is_not_null())
            .filter(user_totp::last_step.lt(step)),
    )
    .set((
        user_totp::last_step.eq(step),
        user_totp::failures.eq(0),
        user_totp::lock_level.eq(0),
        user_totp::locked_until.eq(None::<DateTime<Utc>>),
        user_totp::update_time.eq(now),
    ))
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// Clears the wrong-code count and lock (after a right recovery code).
pub async fn clear_failures(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::update(user_totp::table.find(user_id))
        .set((
            user_totp::failures.eq(0),
            user_totp::lock_level.eq(0),
            user_totp::locked_until.eq(None::<DateTime<Utc>>),
            user_totp::update_time.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes the wrong-code state computed under [`lock`].
pub async fn set_failures(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    failures: i32,
    lock_level: i32,
    locked_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::update(user_totp::table.find(user_id))
        .set((
            user_totp::failures.eq(failures),
            user_totp::lock_level.eq(lock_level),
            user_totp::locked_until.eq(locked_until),
            user_totp::update_time.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Turns the second factor off: the TOTP row, the recovery codes and the pending challenges go.
/// Returns whether TOTP was on.
pub async fn delete_all(conn: &mut AsyncPgConnection, user_id: Uuid) -> Result<bool, DbError> {
    let was_on = diesel::delete(
        user_totp::table
            .find(user_id)
            .filter(user_totp::seed.is_not_null()),
    )
    .execute(conn)
    .await?
        > 0;
    diesel::delete(user_totp::table.find(user_id))
        .execute(conn)
        .await?;
    diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user_id)))
        .execute(conn)
        .await?;
    diesel::delete(mfa_challenges::table.filter(mfa_challenges::user_id.eq(user_id)))
        .execute(conn)
        .await?;
    Ok(was_on)
}

/// Replaces every recovery code of `user_id` with `hashes`.
pub async fn replace_recovery_codes(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    hashes: &[Vec<u8>],
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user_id)))
        .execute(conn)
        .await?;
    let rows: Vec<_> = hashes
        .iter()
        .map(|h| {
            (
                recovery_codes::code_hash.eq(h.as_slice()),
                recovery_codes::user_id.eq(user_id),
                recovery_codes::create_time.eq(now),
            )
        })
        .collect();
    diesel::insert_into(recovery_codes::table)
        .values(rows)
        .execute(conn)
        .await?;
    Ok(())
}

/// What presenting a recovery code found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryUse {
    /// It was unused and is now spent (by this caller alone).
    Spent,
    /// It is a code of the account, spent before (or by a concurrent caller).
    AlreadyUsed,
    /// No code of the account.
    Unknown,
}

/// Spends recovery code `hash` of `user_id` if it is unused (one atomic UPDATE: of concurrent
/// callers, one wins).
pub async fn use_recovery_code(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    hash: &[u8],
    now: DateTime<Utc>,
) -> Result<RecoveryUse, DbError> {
    let n = diesel::update(
        recovery_codes::table
            .find(hash)
            .filter(recovery_codes::user_id.eq(user_id))
            .filter(recovery_codes::use_time.is_null()),
    )
    .set(recovery_codes::use_time.eq(now))
    .execute(conn)
    .await?;
    if n > 0 {
        return Ok(RecoveryUse::Spent);
    }
    let exists: bool = diesel::select(diesel::dsl::exists(
        recovery_codes::table
            .find(hash)
            .filter(recovery_codes::user_id.eq(user_id)),
    ))
    .get_result(conn)
    .await?;
    Ok(if exists {
        RecoveryUse::AlreadyUsed
    } else {
        RecoveryUse::Unknown
    })
}

/// Unused recovery codes of `user_id`.
pub async fn unused_recovery_codes(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> Result<i64, DbError> {
    Ok(recovery_codes::table
        .filter(recovery_codes::user_id.eq(user_id))
        .filter(recovery_codes::use_time.is_null())
        .count()
        .get_result(conn)
        .await?)
}

/// Stores a new challenge.
pub async fn insert_challenge(
    conn: &mut AsyncPgConnection,
    c: &NewMfaChallenge<'_>,
) -> Result<(), DbError> {
    diesel::insert_into(mfa_challenges::table)
        .values(c)
        .execute(conn)
        .await?;
    Ok(())
}

/// The live challenge `hash`: unused, unexpired and not voided (fewer than `max_failures` wrong
/// codes).
pub async fn find_challenge(
    conn: &mut AsyncPgConnection,
    hash: &[u8],
    now: DateTime<Utc>,
    max_failures: i32,
) -> Result<Option<MfaChallenge>, DbError> {
    Ok(mfa_challenges::table
        .find(hash)
        .filter(mfa_challenges::use_time.is_null())
        .filter(mfa_challenges::expire_time.gt(now))
        .filter(mfa_challenges::failures.lt(max_failures))
        .select(MfaChallenge::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Spends the live challenge `hash` (one atomic UPDATE: of concurrent callers, one wins).
pub async fn consume_challenge(
    conn: &mut AsyncPgConnection,
    hash: &[u8],
    now: DateTime<Utc>,
    max_failures: i32,
) -> Result<Option<MfaChallenge>, DbError> {
    Ok(diesel::update(
        mfa_challenges::table
            .find(hash)
            .filter(mfa_challenges::use_time.is_null())
            .filter(mfa_challenges::expire_time.gt(now))
            .filter(mfa_challenges::failures.lt(max_failures)),
    )
    .set(mfa_challenges::use_time.eq(now))
    .returning(MfaChallenge::as_returning())
    .get_result(conn)
    .await
    .optional()?)
}

/// Counts a wrong code against the live challenge `hash` (atomically); the new count, or None when
/// it is no longer live.
pub async fn fail_challenge(
    conn: &mut AsyncPgConnection,
    hash: &[u8],
    now: DateTime<Utc>,
    max_failures: i32,
) -> Result<Option<i32>, DbError> {
    Ok(diesel::update(
        mfa_challenges::table
            .find(hash)
            .filter(mfa_challenges::use_time.is_null())
            .filter(mfa_challenges::expire_time.gt(now))
            .filter(mfa_challenges::failures.lt(max_failures)),
    )
    .set(mfa_challenges::failures.eq(mfa_challenges::failures + 1))
    .returning(mfa_challenges::failures)
    .get_result(conn)
    .await
    .optional()?)
}

/// Deletes challenges that expired before `before`.
pub async fn prune_challenges(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
) -> Result<usize, DbError> {
    Ok(
        diesel::delete(mfa_challenges::table.filter(mfa_challenges::expire_time.lt(before)))
            .execute(conn)
            .await?,
    )
}
