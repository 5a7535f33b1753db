//! In-memory views that keep token checks off the database: the sessions that ended recently
//! (revoked or deleted) and the unrevoked service keys.
//!
//! ValidateToken and every bearer-token check consult these instead of reading `sessions` and
//! `service_keys` per call. Each replica refreshes its views every [`SYNC_INTERVAL`] by polling:
//! - **sessions:** the `session_revocations` tombstones written by trigger (migration
//!   `000004_revocation_view`) since the last poll's watermark, a transaction-id horizon that no
//!   tombstone can appear behind (see [`crate::db::sessions::revocations_since`]);
//! - **service keys:** the whole (small) set of unrevoked keys, new ones included. The view is the
//!   only place a presented key is looked up: a key it does not hold is refused without a database
//!   query, so random keys cost nothing but a hash. A key created on another replica (or by the CLI)
//!   is therefore usable here after the next poll (within [`SYNC_INTERVAL`]); one created on this
//!   replica at once.
//!
//! **Why polling rather than LISTEN/NOTIFY:** a notification is lost while the listening
//! connection is down, so a listener must poll to catch up anyway, and must still prove that it is
//! current to fail closed. A poll is that proof: one indexed query every 250 ms per replica, which
//! bounds how late a revocation made on another replica is seen (well inside the 1 s target) and
//! needs no dedicated connection outside the pool.
//!
//! **Fail closed:** when no poll has succeeded for [`MAX_STALENESS`] the views are stale and checks
//! that rely on them answer UNAVAILABLE rather than a possibly revoked "valid".
//!
//! **This replica's own changes** are visible at once: whoever revokes a session or a key here calls
//! [`Views::sync`] right after committing.
//!
//! A session stays in the view for [`Views::retention`]: the access-token lifetime plus leeway and a
//! margin, after which none of its access tokens can still verify.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use uuid::Uuid;

use super::opaque::HashedToken;
use super::{Error, Result};
use crate::db::{self, DbError, service_keys, sessions};

/// How often a replica polls.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// How old the last successful poll may be before token checks fail closed.
pub const MAX_STALENESS: Duration = Duration::from_secs(3);
/// How often sessions past their retention are dropped from memory.
const TRIM_INTERVAL: Duration = Duration::from_secs(30);
/// Extra time a tombstone is kept beyond the longest access-token lifetime (clock skew).
const RETENTION_MARGIN_SECS: i64 = 300;

/// An unrevoked service key.
#[derive(Debug)]
pub struct ServiceKeyEntry {
    pub id: Uuid,
    hash: Vec<u8>,
    /// The last use recorded in the database (unix seconds; `i64::MIN` = never).
    last_use: AtomicI64,
    /// A gateway's key: may name the end user's address in `x-forwarded-for`.
    pub trusted_proxy: bool,
    /// Where the key may be used from; empty = anywhere.
    pub allowed_cidrs: Vec<IpNet>,
}

impl ServiceKeyEntry {
    /// Whether the key may be used from `source` (the caller's address).
    pub fn allows(&self, source: Option<IpAddr>) -> bool {
        self.allowed_cidrs.is_empty()
            || source.is_some_and(|ip| self.allowed_cidrs.iter().any(|n| n.contains(&ip)))
    }

    /// Constant-time comparison with the presented key's hash.
    pub fn matches(&self, presented: &HashedToken) -> bool {
        presented.matches(&self.hash)
    }

    /// Whether this use should be written to `last_use_time`: true at most once per `debounce` per
    /// key and replica (the write itself also skips rows touched within `debounce`).
    pub fn claim_touch(&self, now: DateTime<Utc>, debounce: chrono::Duration) -> bool {
        let now_s = now.timestamp();
        let last = self.last_use.load(Ordering::Relaxed);
        last.saturating_add(debounce.num_seconds()) <= now_s
            && self
                .last_use
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

type KeyMap = HashMap<Vec<u8>, Arc<ServiceKeyEntry>>;

/// See the module docs.
#[derive(Debug)]
pub struct Views {
    /// Session id -> when it ended.
    ended: RwLock<HashMap<Uuid, DateTime<Utc>>>,
    /// The next poll's watermark; the lock also serializes polls.
    watermark: tokio::sync::Mutex<i64>,
    service_keys: RwLock<Arc<KeyMap>>,
    created: Instant,
    /// When the last successful poll began (nanoseconds after `created`; 0 = never).
    synced_at: AtomicU64,
    /// When the view was last trimmed (nanoseconds after `created`).
    trimmed_at: AtomicU64,
    retention: chrono::Duration,
}

impl Views {
    /// Empty views, stale until the first [`Views::sync`]. `access_token_ttl` sets the retention.
    pub fn new(access_token_ttl: Duration) -> Self {
        let ttl_secs = i64::try_from(access_token_ttl.as_secs()).unwrap_or(i64::MAX / 2);
        Self {
            ended: RwLock::new(HashMap::new()),
            watermark: tokio::sync::Mutex::new(0),
            service_keys: RwLock::new(Arc::new(HashMap::new())),
            created: Instant::now(),
            synced_at: AtomicU64::new(0),
            trimmed_at: AtomicU64::new(0),
            retention: chrono::Duration::seconds(
                ttl_secs
                    .saturating_add(super::tokens::LEEWAY_SECS)
                    .saturating_add(RETENTION_MARGIN_SECS),
            ),
        }
    }

    /// How long an ended session is remembered; tombstones older than this may be deleted.
    pub fn retention(&self) -> chrono::Duration {
        self.retention
    }

    /// Polls the database once and applies what changed.
    pub async fn sync(
        &self,
        conn: &mut db::PgConn,
        now: DateTime<Utc>,
    ) -> std::result::Result<(), DbError> {
        let began = self.elapsed_nanos();
        let mut watermark = self.watermark.lock().await;
        let since = now - self.retention;
        let batch = sessions::revocations_since(conn, *watermark, since).await?;
        let keys = service_keys::list_active(conn).await?;
        {
            let mut ended = self.ended.write().unwrap_or_else(|e| e.into_inner());
            ended.extend(batch.ended);
            let trimmed = self.trimmed_at.load(Ordering::Relaxed);
            if began.saturating_sub(trimmed) >= TRIM_INTERVAL.as_nanos() as u64 {
                ended.retain(|_, at| *at > since);
                self.trimmed_at.store(began, Ordering::Relaxed);
            }
        }
        *watermark = (*watermark).max(batch.watermark);
        self.replace_keys(keys);
        self.synced_at.fetch_max(began.max(1), Ordering::Relaxed);
        Ok(())
    }

    fn replace_keys(&self, rows: Vec<crate::db::models::ServiceKey>) {
        let old = self.keys();
        let map: KeyMap = rows
            .into_iter()
            .filter_map(|k| {
                let recorded = k.last_use_time.map_or(i64::MIN, |t| t.timestamp());
                let known = old
                    .get(&k.key_hash)
                    .map_or(i64::MIN, |e| e.last_use.load(Ordering::Relaxed));
                // Stored CIDRs were validated on creation. Should one not parse, the key is left out
                // of the view (refused everywhere) rather than allowed from anywhere.
                let Ok(allowed_cidrs) = k
                    .allowed_cidrs
                    .iter()
                    .map(|c| c.parse::<IpNet>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                else {
                    tracing::warn!(key_id = %k.id, "service key has an unreadable allowed_cidrs entry; refused");
                    return None;
                };
                let entry = ServiceKeyEntry {
                    id: k.id,
                    hash: k.key_hash.clone(),
                    last_use: AtomicI64::new(recorded.max(known)),
                    trusted_proxy: k.trusted_proxy,
                    allowed_cidrs,
                };
                Some((k.key_hash, Arc::new(entry)))
            })
            .collect();
        *self.service_keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    fn keys(&self) -> Arc<KeyMap> {
        self.service_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn elapsed_nanos(&self) -> u64 {
        u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// How long ago the last successful poll began; `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        match self.synced_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_nanos(
                self.elapsed_nanos().saturating_sub(at),
            )),
        }
    }

    /// UNAVAILABLE when the views may be missing a revocation (no successful poll for
    /// [`MAX_STALENESS`]).
    pub fn check_fresh(&self) -> Result<()> {
        match self.age() {
            Some(age) if age <= MAX_STALENESS => Ok(()),
            age => Err(Error::Unavailable(format!(
                "revocation view is stale (last refreshed {age:?} ago)"
            ))),
        }
    }

    /// Whether the session ended (revoked, or deleted with its account) within the retention.
    pub fn has_ended(&self, session_id: Uuid) -> bool {
        self.ended
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&session_id)
    }

    /// The unrevoked service key with this hash.
    pub fn service_key(&self, hash: &HashedToken) -> Option<Arc<ServiceKeyEntry>> {
        self.service_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash.as_bytes())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_until_synced() {
        let v = Views::new(Duration::from_secs(900));
        assert!(v.age().is_none());
        assert!(matches!(v.check_fresh(), Err(Error::Unavailable(_))));
        v.synced_at
            .store(v.elapsed_nanos().max(1), Ordering::Relaxed);
        assert!(v.check_fresh().is_ok());
    }

    #[test]
    fn touches_are_debounced() {
        let e = ServiceKeyEntry {
            id: Uuid::nil(),
            hash: vec![0; 32],
            last_use: AtomicI64::new(i64::MIN),
            trusted_proxy: false,
            allowed_cidrs: Vec::new(),
        };
        let t0 = Utc::now();
        let minute = chrono::Duration::seconds(60);
        assert!(e.claim_touch(t0, minute));
        assert!(!e.claim_touch(t0, minute));
        assert!(!e.claim_touch(t0 + chrono::Duration::seconds(59), minute));
        assert!(e.claim_touch(t0 + minute, minute));
    }

    #[test]
    fn retention_covers_the_token_lifetime() {
        let v = Views::new(Duration::from_secs(900));
        assert!(v.retention() > chrono::Duration::seconds(900 + super::super::tokens::LEEWAY_SECS));
    }
}
