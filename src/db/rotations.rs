//! The rotation of refresh tokens on the session row: one session's ([`rotate`], one single-row
//! UPDATE) or many at once ([`rotate_many`], one statement and one commit for concurrent refreshes;
//! see `domain::sessions::rotations`).

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Bool, Bytea, Nullable, Text, Timestamptz, Untyped};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::DbError;

/// One rotation of a session's refresh token: the guard (the session, its generation and the hash
/// of its current token) and what it writes: the successor's hash, the session's new idle expiry
/// and the `exp` of the access token issued with it (both capped by the session's absolute expiry),
/// and, when a grace window is on, the successor sealed for a replay (see
/// `domain::opaque::ReplayBox`) with the window's end and the rotating client's address.
#[derive(Debug, Clone, Copy)]
pub struct Rotation<'a> {
    pub session_id: Uuid,
    /// The session's generation, which the presented token carries.
    pub generation: i32,
    /// The presented token's hash; `None` for a token of the previous format (its row in
    /// `refresh_tokens` was locked and spent in the same transaction, and the session row has no
    /// `refresh_hash` yet).
    pub presented_hash: Option<&'a [u8]>,
    pub successor_hash: &'a [u8],
    pub now: DateTime<Utc>,
    pub idle_expire_time: DateTime<Utc>,
    pub access_expire_time: DateTime<Utc>,
    pub replay_box: Option<&'a [u8]>,
    pub replay_until: Option<DateTime<Utc>>,
    pub rotate_ip: &'a str,
}

/// What [`rotate`] returns: what a token needs of the rotated session and of its user (no more,
/// so that the statement returns and the reply parses only these columns).
#[derive(Debug, QueryableByName)]
pub struct Rotated {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub user_id: Uuid,
    #[diesel(sql_type = Timestamptz)]
    pub idle_expire_time: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub expire_time: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Array<Text>)]
    pub amr: Vec<String>,
    #[diesel(sql_type = Text)]
    pub user_email: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub user_username: Option<String>,
    #[diesel(sql_type = Text)]
    pub user_role: String,
    #[diesel(sql_type = Bool)]
    pub user_active: bool,
}

/// A refresh in one statement, one row written (one round trip, one commit, a plan prepared once
/// per connection): if the session is live, at the token's generation, and its current token is the
/// presented one, move it to the next generation with the successor and the rest of the
/// [`Rotation`]. A concurrent refresh or revocation of the same session makes PostgreSQL re-check
/// the row after waiting for it, so exactly one caller rotates; every other outcome (replay, reuse,
/// dead) returns `None`. The user's columns come from the join and are not locked.
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    rotation: &Rotation<'_>,
) -> Result<Option<Rotated>, DbError> {
    Ok(Rotate {
        r: *rotation,
        rotate_ip: rotation.replay_box.map(|_| rotation.rotate_ip),
    }
    .get_result(conn)
    .await
    .optional()?)
}

struct Rotate<'a> {
    r: Rotation<'a>,
    rotate_ip: Option<&'a str>,
}

/// The statement-cache identity of [`Rotate`] (the query itself borrows its binds).
struct RotateId;

impl QueryId for Rotate<'_> {
    type QueryId = RotateId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for Rotate<'_> {
    type SqlType = Untyped;
}

impl QueryFragment<Pg> for Rotate<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("UPDATE sessions s SET generation = s.generation + 1, refresh_hash = ");
        out.push_bind_param::<Bytea, _>(&self.r.successor_hash)?;
        out.push_sql(", last_use_time = ");
        out.push_bind_param::<Timestamptz, _>(&self.r.now)?;
        out.push_sql(", idle_expire_time = LEAST(");
        out.push_bind_param::<Timestamptz, _>(&self.r.idle_expire_time)?;
        out.push_sql(
            ", s.expire_time), access_expire_time = GREATEST(s.access_expire_time, LEAST(",
        );
        out.push_bind_param::<Timestamptz, _>(&self.r.access_expire_time)?;
        out.push_sql(", ");
        out.push_bind_param::<Timestamptz, _>(&self.r.idle_expire_time)?;
        out.push_sql(", s.expire_time)), replay_box = ");
        out.push_bind_param::<Nullable<Bytea>, _>(&self.r.replay_box)?;
        out.push_sql(", replay_until = ");
        out.push_bind_param::<Nullable<Timestamptz>, _>(&self.r.replay_until)?;
        // Set only when no sweep is pending, so that rotations inside a window change no indexed
        // column (HOT; see migration 000092 and `clear_replays`). The same writes and guards as
        // `authd_rotate_sessions` (migration 000093, for [`rotate_many`]): keep the two in step.
        out.push_sql(", replay_sweep_time = COALESCE(s.replay_sweep_time, ");
        out.push_bind_param::<Nullable<Timestamptz>, _>(&self.r.replay_until)?;
        out.push_sql("), rotate_ip = ");
        out.push_bind_param::<Nullable<Text>, _>(&self.rotate_ip)?;
        out.push_sql(" FROM users u WHERE s.id = ");
        out.push_bind_param::<diesel::sql_types::Uuid, _>(&self.r.session_id)?;
        out.push_sql(" AND s.generation = ");
        out.push_bind_param::<diesel::sql_types::Integer, _>(&self.r.generation)?;
        out.push_sql(" AND s.refresh_hash IS NOT DISTINCT FROM ");
        out.push_bind_param::<Nullable<Bytea>, _>(&self.r.presented_hash)?;
        out.push_sql(" AND s.revoke_time IS NULL AND s.expire_time > ");
        out.push_bind_param::<Timestamptz, _>(&self.r.now)?;
        out.push_sql(" AND s.idle_expire_time > ");
        out.push_bind_param::<Timestamptz, _>(&self.r.now)?;
        out.push_sql(
            " AND u.id = s.user_id RETURNING s.id, s.user_id, s.idle_expire_time, s.expire_time, \
             s.amr, u.email AS user_email, u.username AS user_username, u.role AS user_role, \
             u.active AS user_active",
        );
        Ok(())
    }
}

/// An owned [`Rotation`], for [`rotate_many`] (a batch outlives the calls that queued it). Its
/// Debug shows the session and generation only.
#[derive(Clone)]
pub struct OwnedRotation {
    pub session_id: Uuid,
    pub generation: i32,
    /// `None` for a token of the previous format, as in [`Rotation`].
    pub presented_hash: Option<Vec<u8>>,
    pub successor_hash: Vec<u8>,
    pub now: DateTime<Utc>,
    pub idle_expire_time: DateTime<Utc>,
    pub access_expire_time: DateTime<Utc>,
    pub replay_box: Option<Vec<u8>>,
    pub replay_until: Option<DateTime<Utc>>,
    /// Written only with a replay box, as in [`rotate`].
    pub rotate_ip: Option<String>,
}

impl std::fmt::Debug for OwnedRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedRotation")
            .field("session_id", &self.session_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl OwnedRotation {
    /// This rotation, borrowed.
    pub fn as_rotation(&self) -> Rotation<'_> {
        Rotation {
            session_id: self.session_id,
            generation: self.generation,
            presented_hash: self.presented_hash.as_deref(),
            successor_hash: &self.successor_hash,
            now: self.now,
            idle_expire_time: self.idle_expire_time,
            access_expire_time: self.access_expire_time,
            replay_box: self.replay_box.as_deref(),
            replay_until: self.replay_until,
            rotate_ip: self.rotate_ip.as_deref().unwrap_or_default(),
        }
    }
}

impl Rotation<'_> {
    /// This rotation, owned.
    pub fn to_owned_rotation(self) -> OwnedRotation {
        OwnedRotation {
            session_id: self.session_id,
            generation: self.generation,
            presented_hash: self.presented_hash.map(<[u8]>::to_vec),
            successor_hash: self.successor_hash.to_vec(),
            now: self.now,
            idle_expire_time: self.idle_expire_time,
            access_expire_time: self.access_expire_time,
            replay_box: self.replay_box.map(<[u8]>::to_vec),
            replay_until: self.replay_until,
            rotate_ip: self.replay_box.map(|_| self.rotate_ip.to_owned()),
        }
    }
}

/// Many rotations in one statement and one commit: [`rotate`] for each of `rotations`, with the
/// same guards and writes, over `unnest` of one array per column (the function
/// `authd_rotate_sessions` of migration 000093, which keeps one generic plan per connection). For
/// a single rotation it sends [`rotate`]'s statement, which costs PostgreSQL less (in the P4 runs,
/// 165 µs against 235 µs of CPU for a lone rotation through the function).
///
/// Returns, for each rotation that matched, its index in `rotations` and what [`rotate`] would
/// have returned. The others are exactly those [`rotate`] would have answered `None` for, plus all
/// but one of any rotations of the same session (PostgreSQL updates a row once per statement),
/// which the caller judges as it judges any refresh the UPDATE did not rotate.
///
/// The plan reads the sessions through a bitmap of the primary key, so every batch locks its rows
/// in the order of the table's pages. A batch that deadlocks anyway (with another batch whose row
/// moved meanwhile, or with a statement that locks many sessions) fails whole, and writes nothing.
pub async fn rotate_many(
    conn: &mut AsyncPgConnection,
    rotations: &[OwnedRotation],
) -> Result<Vec<(usize, Rotated)>, DbError> {
    if let [one] = rotations {
        return Ok(rotate(conn, &one.as_rotation())
            .await?
            .map(|r| (0, r))
            .into_iter()
            .collect());
    }
    let rows: Vec<RotatedAt> = RotateMany::of(rotations).load(conn).await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| Some((usize::try_from(row.ord).ok()?.checked_sub(1)?, row.rotated)))
        .collect())
}

#[derive(QueryableByName)]
struct RotatedAt {
    /// The rotation's position in the batch, from 1 (`WITH ORDINALITY`).
    #[diesel(sql_type = BigInt)]
    ord: i64,
    #[diesel(embed)]
    rotated: Rotated,
}

/// [`rotate_many`]'s call: one array per column of [`OwnedRotation`].
struct RotateMany<'a> {
    session_id: Vec<Uuid>,
    generation: Vec<i32>,
    presented_hash: Vec<Option<&'a [u8]>>,
    successor_hash: Vec<&'a [u8]>,
    now: Vec<DateTime<Utc>>,
    idle_expire_time: Vec<DateTime<Utc>>,
    access_expire_time: Vec<DateTime<Utc>>,
    replay_box: Vec<Option<&'a [u8]>>,
    replay_until: Vec<Option<DateTime<Utc>>>,
    rotate_ip: Vec<Option<&'a str>>,
}

impl<'a> RotateMany<'a> {
    fn of(r: &'a [OwnedRotation]) -> Self {
        RotateMany {
            session_id: r.iter().map(|x| x.session_id).collect(),
            generation: r.iter().map(|x| x.generation).collect(),
            presented_hash: r.iter().map(|x| x.presented_hash.as_deref()).collect(),
            successor_hash: r.iter().map(|x| x.successor_hash.as_slice()).collect(),
            now: r.iter().map(|x| x.now).collect(),
            idle_expire_time: r.iter().map(|x| x.idle_expire_time).collect(),
            access_expire_time: r.iter().map(|x| x.access_expire_time).collect(),
            replay_box: r.iter().map(|x| x.replay_box.as_deref()).collect(),
            replay_until: r.iter().map(|x| x.replay_until).collect(),
            rotate_ip: r.iter().map(|x| x.rotate_ip.as_deref()).collect(),
        }
    }
}

/// The statement-cache identity of [`RotateMany`]: one prepared statement for any batch size.
struct RotateManyId;

impl QueryId for RotateMany<'_> {
    type QueryId = RotateManyId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for RotateMany<'_> {
    type SqlType = Untyped;
}

impl QueryFragment<Pg> for RotateMany<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::{Array, Integer, Uuid as SqlUuid};
        out.push_sql(
            "SELECT ord, id, user_id, idle_expire_time, expire_time, amr, user_email, \
             user_username, user_role, user_active FROM authd_rotate_sessions(",
        );
        out.push_bind_param::<Array<SqlUuid>, _>(&self.session_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Integer>, _>(&self.generation)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Bytea>>, _>(&self.presented_hash)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Bytea>, _>(&self.successor_hash)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.now)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.idle_expire_time)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.access_expire_time)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Bytea>>, _>(&self.replay_box)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Timestamptz>>, _>(&self.replay_until)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.rotate_ip)?;
        out.push_sql(")");
        Ok(())
    }
}
