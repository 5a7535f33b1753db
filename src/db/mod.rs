//! Persistence: the diesel schema and models, the connection pool, migrations, and query functions.
//!
//! Every query function takes `&mut AsyncPgConnection` so callers decide about pooling and transactions.
//! Errors leave this layer as [`DbError`], which already tells "the database is unreachable" apart from
//! constraint violations and genuine bugs.

pub mod account_tokens;
pub mod audit;
pub mod keys;
pub mod mfa;
pub mod models;
pub mod outbox;
pub mod password_resets;
pub mod rotations;
pub mod schema;
pub mod service_keys;
pub mod sessions;
pub mod throttle;
pub mod users;
pub mod verification_requests;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::{Hook, HookError};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool as DeadPool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub use diesel_async::AsyncPgConnection as PgConn;

/// The migrations in `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory-lock key that serializes migrations across replicas ("authd" + 1 in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6175_7468_6401;

/// A pool of PostgreSQL connections.
pub type Pool = DeadPool<AsyncPgConnection>;
/// A connection checked out of the [`Pool`].
pub type PooledConn = Object<AsyncPgConnection>;

/// What can go wrong in this layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had: the server is down, unreachable, or the pool timed out.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint rejected the write.
    #[error("unique constraint {constraint:?} violated")]
    UniqueViolation { constraint: String },
    /// The statement ran into `statement_timeout`.
    #[error("database statement timed out")]
    Timeout,
    /// Anything else: a bug or a schema mismatch.
    #[error("database error: {0}")]
    Query(DieselError),
}

impl From<DieselError> for DbError {
    fn from(e: DieselError) -> Self {
        match e {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                DbError::UniqueViolation {
                    constraint: info.constraint_name().unwrap_or_default().to_owned(),
                }
            }
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                connection_lost();
                DbError::Unavailable(info.message().to_owned())
            }
            DieselError::DatabaseError(_, ref info)
                if info.message().contains("statement timeout") =>
            {
                DbError::Timeout
            }
            DieselError::DatabaseError(_, ref info) if is_connection_message(info.message()) => {
                connection_lost();
                DbError::Unavailable(info.message().to_owned())
            }
            DieselError::BrokenTransactionManager => {
                DbError::Unavailable("broken transaction manager".into())
            }
            other => DbError::Query(other),
        }
    }
}

/// When a query last failed because its connection was lost (nanoseconds since [`epoch`]; 0 = never).
static CONNECTION_LOST_AT: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Records that a connection was found dead: the server restarted or went away. Every pooled
/// connection opened before this moment is then discarded at its next checkout (see [`build_pool`]),
/// so one failed query, not one per pooled connection, reveals a restart.
fn connection_lost() {
    let at = u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX);
    CONNECTION_LOST_AT.fetch_max(at.max(1), Ordering::Relaxed);
}

/// Whether a connection created at `created` predates the last lost connection.
fn predates_connection_loss(created: Instant) -> bool {
    let lost = AtomicU64::load(&CONNECTION_LOST_AT, Ordering::Relaxed);
    lost != 0 && created <= epoch() + Duration::from_nanos(lost)
}

fn is_connection_message(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("connection closed")
        || m.contains("terminating connection")
        || m.contains("connection reset")
        || m.contains("broken pipe")
        || m.contains("the database system is shutting down")
        || m.contains("the database system is starting up")
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> Self {
        DbError::Unavailable(e.to_string())
    }
}

impl From<diesel::ConnectionError> for DbError {
    fn from(e: diesel::ConnectionError) -> Self {
        DbError::Unavailable(e.to_string())
    }
}

/// Builds the pool. Each new connection gets `statement_timeout` and
/// `idle_in_transaction_session_timeout`, so no statement or abandoned transaction holds locks for long.
/// `timeout` bounds the wait for a pooled connection, the connect, and each statement.
///
/// Checkouts do not ping the server (`RecyclingMethod::Fast`: a ping is a round trip on every
/// request). Instead, once any query finds its connection dead, every connection opened before
/// that moment is dropped at its next checkout; the revocation-view poll (every 250 ms) and the
/// readiness probe find a restart long before most requests would.
pub fn build_pool(url: &str, max_size: u32, timeout: Duration) -> Result<Pool, DbError> {
    let statement_ms = timeout.as_millis().max(1);
    let idle_tx_ms = statement_ms.saturating_mul(2);
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    manager_config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        Box::pin(async move {
            let mut conn = tokio::time::timeout(timeout, AsyncPgConnection::establish(&url))
                .await
                .map_err(|_| {
                    diesel::ConnectionError::BadConnection("connect timed out".into())
                })??;
            conn.batch_execute(&format!(
                "SET statement_timeout = {statement_ms}; \
                 SET idle_in_transaction_session_timeout = {idle_tx_ms}"
            ))
            .await
            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            // PostgreSQL 14+: notice a vanished client even while waiting on a lock. Older servers
            // lack the setting; statement_timeout still bounds the wait there.
            let _ = conn
                .batch_execute("SET client_connection_check_interval = 1000")
                .await;
            Ok(conn)
        })
    });
    manager_config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::new_with_config(url, manager_config);
    DeadPool::builder(manager)
        .pre_recycle(Hook::sync_fn(|_, metrics| {
            if predates_connection_loss(metrics.created) {
                Err(HookError::Message(
                    "opened before a connection was lost".into(),
                ))
            } else {
                Ok(())
            }
        }))
        .max_size(max_size as usize)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Unavailable(format!("cannot build pool: {e}")))
}

/// A pooled connection that is safe to abandon mid-transaction.
///
/// diesel-async transactions are not cancel-safe: when a request future is dropped (client
/// cancellation, server timeout) inside a transaction, the connection would go back to the pool
/// with the transaction open and its locks held until the next checkout noticed. On drop, this
/// guard keeps such a connection out of the pool and, in a background task, sends `ROLLBACK` and
/// resets diesel's transaction state; the connection goes back to the pool only when the rollback
/// answered within [`ROLLBACK_TIMEOUT`]. Otherwise (or without a tokio runtime) it is closed, so
/// PostgreSQL rolls the transaction back itself: no transaction stays open either way, and
/// cancelled calls do not cost a new database connection each.
///
/// The same holds for a statement sent outside a transaction: [`Conn::guarded`] marks the
/// connection busy while it runs, and a busy connection is rolled back the same way on drop
/// (`ROLLBACK` waits for the abandoned statement to end), rather than handed to the next request
/// with the abandoned statement still running (or waiting on a lock) in front of its own.
pub struct Conn {
    object: std::mem::ManuallyDrop<PooledConn>,
    busy: bool,
}

impl Conn {
    /// Runs `f`; if the caller is dropped before it finishes, the connection is closed on drop.
    pub async fn guarded<T>(&mut self, f: impl AsyncFnOnce(&mut AsyncPgConnection) -> T) -> T {
        self.busy = true;
        let out = f(&mut self.object).await;
        self.busy = false;
        out
    }
}

impl std::ops::Deref for Conn {
    type Target = AsyncPgConnection;
    fn deref(&self) -> &AsyncPgConnection {
        &self.object
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        &mut self.object
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        use diesel_async::pooled_connection::PoolableConnection;
        // SAFETY: `self.object` is never touched again after this line; we are in `drop`.
        let mut c = unsafe { std::mem::ManuallyDrop::take(&mut self.object) };
        if self.busy || c.is_broken() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(roll_back_abandoned(c));
                }
                Err(_) => drop(deadpool::managed::Object::take(c)),
            }
        }
    }
}

/// How long the rollback of an abandoned connection may take before the connection is closed
/// instead.
pub const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Rolls back whatever a cancelled call left on `c` and returns it to the pool; closes it if the
/// rollback fails or takes longer than [`ROLLBACK_TIMEOUT`]. `ROLLBACK` outside a transaction is
/// only a warning, so this also just waits for an abandoned statement to end.
async fn roll_back_abandoned(c: PooledConn) {
    use diesel_async::pooled_connection::PoolableConnection;
    // Should this task be dropped before it finishes (the runtime shutting down), the connection
    // is closed, never returned with its transaction open.
    let mut guard = CloseUnlessReleased(Some(c));
    let Some(c) = guard.0.as_mut() else {
        return;
    };
    let rolled_back = tokio::time::timeout(ROLLBACK_TIMEOUT, c.batch_execute("ROLLBACK")).await;
    if let Ok(Ok(())) = rolled_back {
        // The server is outside any transaction now; make diesel's bookkeeping say so too
        // (depth 0, and not "broken" by a BEGIN or COMMIT that was cancelled halfway).
        *AsyncConnection::transaction_state(&mut **c) =
            diesel_async::AnsiTransactionManager::default();
        if !c.is_broken() {
            ::metrics::counter!(ABANDONED_METRIC, "outcome" => "rolled_back").increment(1);
            tracing::debug!("rolled back a connection abandoned by a cancelled call");
            drop(guard.0.take()); // back to the pool
            return;
        }
    }
    ::metrics::counter!(ABANDONED_METRIC, "outcome" => "closed").increment(1);
    tracing::debug!(
        rolled_back = matches!(rolled_back, Ok(Ok(()))),
        "closing a connection abandoned by a cancelled call"
    );
}

/// Closes the connection it holds when dropped, unless it was taken out first.
struct CloseUnlessReleased(Option<PooledConn>);

impl Drop for CloseUnlessReleased {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            drop(deadpool::managed::Object::take(c));
        }
    }
}

/// Counter of connections abandoned inside a transaction or statement, by `outcome`:
/// `rolled_back` (returned to the pool) or `closed`.
pub const ABANDONED_METRIC: &str = "authd_db_abandoned_connections_total";

/// Checks a connection out of the pool.
///
/// The whole checkout is bounded by the pool's wait timeout (`AUTHD_DB_TIMEOUT`): deadpool bounds
/// the wait for a free slot, each recycle check and each connect separately, so a checkout that
/// first finds several dead idle connections (a database that vanished without closing them) could
/// otherwise take a multiple of it. Past the bound the caller gets [`DbError::Unavailable`].
pub async fn conn(pool: &Pool) -> Result<Conn, DbError> {
    let object = match pool.timeouts().wait.filter(|t| !t.is_zero()) {
        Some(limit) => tokio::time::timeout(limit, pool.get())
            .await
            .map_err(|_| {
                DbError::Unavailable("timed out waiting for a database connection".into())
            })??,
        None => pool.get().await?,
    };
    Ok(Conn {
        object: std::mem::ManuallyDrop::new(object),
        busy: false,
    })
}

/// How often a replica waiting for another one's migrations asks for the lock again.
const MIGRATION_LOCK_POLL: Duration = Duration::from_millis(200);

/// Runs pending migrations under a session-level advisory lock, so that replicas starting together
/// apply each migration exactly once. Returns how many were applied.
pub async fn run_migrations(url: &str) -> Result<usize, DbError> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || -> Result<usize, DbError> {
        let mut conn: AsyncConnectionWrapper<AsyncPgConnection> =
            diesel::connection::Connection::establish(&url)?;
        // Poll with pg_try_advisory_lock instead of waiting in pg_advisory_lock: a waiting
        // statement is an open transaction, and a migration that builds an index CONCURRENTLY
        // waits for every open transaction to end, while the waiter waits for its lock: a
        // deadlock when replicas start together. Each poll is a transaction of a few microseconds.
        loop {
            let got: Locked = diesel::RunQueryDsl::get_result(
                diesel::sql_query(format!(
                    "SELECT pg_try_advisory_lock({MIGRATION_LOCK_KEY}) AS locked"
                )),
                &mut conn,
            )?;
            if got.locked {
                break;
            }
            std::thread::sleep(MIGRATION_LOCK_POLL);
        }
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|v| v.len())
            .map_err(|e| DbError::Query(DieselError::QueryBuilderError(e)));
        // The lock also ends with the connection; unlock explicitly anyway.
        let _ = diesel::RunQueryDsl::execute(
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")),
            &mut conn,
        );
        applied
    })
    .await
    .map_err(|e| DbError::Unavailable(format!("migration task failed: {e}")))?
}

/// Advisory-lock key that lets one replica at a time run the prune ("authd" + 0x10 in ASCII).
pub const PRUNE_LOCK_KEY: i64 = 0x6175_7468_6410;

#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}

/// Takes the session-level advisory lock `key` if no other session holds it (no waiting).
/// Whoever gets `true` must call [`advisory_unlock`] on the same connection.
pub async fn try_advisory_lock(conn: &mut AsyncPgConnection, key: i64) -> Result<bool, DbError> {
    let r: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<diesel::sql_types::BigInt, _>(key)
        .get_result(conn)
        .await?;
    Ok(r.locked)
}

/// Releases a lock taken by [`try_advisory_lock`]. (A connection that broke meanwhile released it
/// when it closed.)
pub async fn advisory_unlock(conn: &mut AsyncPgConnection, key: i64) -> Result<(), DbError> {
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<diesel::sql_types::BigInt, _>(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// `SELECT 1` on a pooled connection: the readiness probe.
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    let mut conn = conn(pool).await?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}
