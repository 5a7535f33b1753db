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
//! **How long a tombstone lasts.** A revoked token must never validate again before its own `exp`,
//! whatever the replicas' settings: replicas with different `AUTHD_ACCESS_TOKEN_TTL` share one
//! database, and a token issued by a long-TTL replica may be cached (verified) by a short-TTL one.
//! So the session row records the latest `exp` of any access token issued for it (at login, at
//! every refresh and grace replay, by whichever replica issued it), the revocation trigger copies it
//! into the tombstone as `keep_until`, and every replica keeps the tombstone until `keep_until` plus
//! [`Views::retention`] (the verification leeway and a clock-skew margin), never by its own TTL.
//! Trimming runs on the injected clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use uuid::Uuid;

use super::opaque::HashedToken;
use super::revocation_feed::{Feed, Position, Tombstone};
use super::{Error, Result};
use crate::db::{self, DbError, service_keys, sessions};

/// How often a replica polls.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// How old the last successful poll may be before token checks fail closed.
pub const MAX_STALENESS: Duration = Duration::from_secs(3);
/// How often (on the injected clock) tombstones past their retention are dropped from memory.
const TRIM_INTERVAL_SECS: i64 = 30;
/// Extra time a tombstone is kept beyond the `exp` of its session's last access token (clock skew
/// between the replicas).
const RETENTION_MARGIN_SECS: i64 = 300;

/// A map is shrunk when its capacity exceeds this many times what it holds (and [`SHRINK_MIN`]).
const SHRINK_FACTOR: usize = 4;
/// Below this capacity a map is never shrunk: small maps cost nothing worth returning.
const SHRINK_MIN: usize = 1024;

/// Returns the memory of a map that a burst grew and the trim emptied: a `HashMap` never shrinks
/// by itself, so after 100,000 revocations it would keep their buckets for ever. Shrinks to twice
/// the live entries, leaving room to grow without rehashing at once.
fn shrink_after_burst<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    let cap = map.capacity();
    if cap > SHRINK_MIN && cap > map.len().saturating_mul(SHRINK_FACTOR) {
        map.shrink_to(map.len().saturating_mul(2).max(SHRINK_MIN / 2));
    }
}

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

/// Keyed by the SHA-256 of the key; read on every service-key call, so hashed with foldhash, not
/// SipHash.
type KeyMap = HashMap<Vec<u8>, Arc<ServiceKeyEntry>, foldhash::fast::RandomState>;

/// See the module docs.
#[derive(Debug)]
pub struct Views {
    /// Ended session id -> the latest `exp` of its access tokens (the tombstone's `keep_until`).
    ended: RwLock<HashMap<Uuid, DateTime<Utc>>>,
    /// The next poll's watermark; the lock also serializes polls.
    watermark: tokio::sync::Mutex<i64>,
    service_keys: RwLock<Arc<KeyMap>>,
    created: Instant,
    /// When the last successful poll began (nanoseconds after `created`; 0 = never).
    synced_at: AtomicU64,
    /// When the view was last trimmed (unix seconds on the injected clock).
    trimmed_at: AtomicI64,
    retention: chrono::Duration,
    /// What each poll added, for the WatchRevocations streams.
    feed: Feed,
}

impl Default for Views {
    fn default() -> Self {
        Self::new()
    }
}

impl Views {
    /// Empty views, stale until the first [`Views::sync`].
    pub fn new() -> Self {
        Self {
            ended: RwLock::new(HashMap::new()),
            watermark: tokio::sync::Mutex::new(0),
            service_keys: RwLock::new(Arc::new(KeyMap::default())),
            created: Instant::now(),
            synced_at: AtomicU64::new(0),
            trimmed_at: AtomicI64::new(i64::MIN),
            retention: chrono::Duration::seconds(
                super::tokens::LEEWAY_SECS.saturating_add(RETENTION_MARGIN_SECS),
            ),
            feed: Feed::default(),
        }
    }

    /// How long a tombstone is kept past its `keep_until` (the `exp` of its session's last access
    /// token): the verification leeway plus a clock-skew margin. Tombstones older than that may go.
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
        let batch = sessions::revocations_since(conn, *watermark, now - self.retention).await?;
        let keys = service_keys::list_active(conn).await?;
        let next = (*watermark).max(batch.watermark);
        self.apply(batch.ended, now, next);
        *watermark = next;
        self.replace_keys(keys);
        self.synced_at.fetch_max(began.max(1), Ordering::Relaxed);
        Ok(())
    }

    /// Adds tombstones (session, keep until) and publishes to the feed those that are new (or kept
    /// longer than before) with the view's `watermark` after this poll; every
    /// [`TRIM_INTERVAL_SECS`] of the clock drops those kept until more than [`Views::retention`]
    /// before `now`.
    fn apply(&self, tombstones: Vec<Tombstone>, now: DateTime<Utc>, watermark: i64) {
        let mut ended = self.ended.write().unwrap_or_else(|e| e.into_inner());
        let mut added = Vec::new();
        for (id, until) in tombstones {
            match ended.entry(id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(until);
                    added.push((id, until));
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    if until > *o.get() {
                        o.insert(until);
                        added.push((id, until));
                    }
                }
            }
        }
        // Under the view's lock: a snapshot sees the map and the feed's position together.
        self.feed.publish(added, watermark);
        let now_s = now.timestamp();
        if now_s.saturating_sub(self.trimmed_at.load(Ordering::Relaxed)) >= TRIM_INTERVAL_SECS {
            let cutoff = now - self.retention;
            ended.retain(|_, until| *until > cutoff);
            shrink_after_burst(&mut ended);
            self.trimmed_at.store(now_s, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    fn ended_capacity(&self) -> usize {
        self.ended
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .capacity()
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

    /// The feed of what each poll added (see [`crate::domain::revocation_feed`]).
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Every tombstone the view holds, and the feed's position they correspond to: a stream that
    /// sends these has delivered every tombstone below the position's watermark, and continues
    /// with the feed's records after its sequence number.
    pub fn snapshot(&self) -> (Vec<Tombstone>, Position) {
        let ended = self.ended.read().unwrap_or_else(|e| e.into_inner());
        let at = self.feed.position();
        (ended.iter().map(|(id, until)| (*id, *until)).collect(), at)
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
        let v = Views::new();
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

    /// Issue J: after a burst of 100,000 revocations has been trimmed, the map gives its memory back.
    #[test]
    fn ended_map_shrinks_after_a_burst() {
        let v = Views::new();
        let t0 = Utc::now();
        let burst: Vec<_> = (0..100_000)
            .map(|_| (Uuid::new_v4(), t0 + chrono::Duration::seconds(1)))
            .collect();
        v.apply(burst, t0, 1);
        let grown = v.ended_capacity();
        assert!(grown >= 100_000, "capacity {grown}");
        // A day later every tombstone is past retention; one survivor arrives with the poll.
        let later = t0 + chrono::Duration::days(1);
        v.apply(
            vec![(Uuid::new_v4(), later + chrono::Duration::hours(1))],
            later,
            2,
        );
        let shrunk = v.ended_capacity();
        assert!(shrunk <= 2 * SHRINK_MIN, "capacity {shrunk} after the trim");
    }

    /// Issue H: each poll publishes to the feed what it added (a tombstone read again is not
    /// published again; one kept longer is), with the view's watermark; a snapshot and the feed's
    /// position agree.
    #[test]
    fn polls_publish_what_they_added() {
        use crate::domain::revocation_feed::Catchup;
        let v = Views::new();
        let t0 = Utc::now();
        let secs = chrono::Duration::seconds;
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        v.apply(vec![(a, t0 + secs(60))], t0, 10);
        v.apply(vec![(a, t0 + secs(60)), (b, t0 + secs(60))], t0, 12);
        v.apply(vec![(a, t0 + secs(30))], t0, 13);
        v.apply(vec![(a, t0 + secs(90))], t0, 14);
        let Catchup::Records(records, at) = v.feed().since(0) else {
            panic!("fell behind")
        };
        let published: Vec<Vec<Tombstone>> = records.iter().map(|r| r.ended.clone()).collect();
        assert_eq!(
            published,
            [
                vec![(a, t0 + secs(60))],
                vec![(b, t0 + secs(60))],
                vec![(a, t0 + secs(90))]
            ]
        );
        assert_eq!((at.seq, at.watermark), (3, 14));
        let (mut snap, pos) = v.snapshot();
        snap.sort();
        let mut want = vec![(a, t0 + secs(90)), (b, t0 + secs(60))];
        want.sort();
        assert_eq!((snap, pos), (want, at));
    }

    /// Issue F, item 5: a tombstone lasts until its session's last access token expires, however
    /// long ago it was revoked and whatever this replica's own token lifetime is.
    #[test]
    fn tombstones_last_until_the_sessions_last_token_expires() {
        let v = Views::new();
        let t0 = Utc::now();
        let secs = chrono::Duration::seconds;
        // A session whose last token (issued by a 15-minute replica) expires at t0 + 900 s, and one
        // whose last token expired at t0 + 1 s.
        let long = Uuid::new_v4();
        let short = Uuid::new_v4();
        v.apply(vec![(long, t0 + secs(900)), (short, t0 + secs(1))], t0, 1);
        assert!(v.has_ended(long) && v.has_ended(short));
        // 330 s later (past a 1 s replica's old retention of ttl + leeway + 300 s): the long one stays.
        v.apply(vec![], t0 + secs(330), 1);
        assert!(
            v.has_ended(long),
            "tombstone dropped before the token's exp"
        );
        assert!(!v.has_ended(short), "past its keep_until and the retention");
        // Until its exp, plus the leeway and the margin (302 s), at every trim.
        for at in [600, 899, 1100, 1190] {
            v.apply(vec![], t0 + secs(at), 1);
            assert!(v.has_ended(long), "dropped at t0 + {at} s");
        }
        v.apply(
            vec![],
            t0 + secs(900) + v.retention() + secs(TRIM_INTERVAL_SECS),
            1,
        );
        assert!(!v.has_ended(long), "kept forever");
        // A later tombstone of the same session never shortens the earlier one.
        let s = Uuid::new_v4();
        v.apply(
            vec![(s, t0 + secs(5000)), (s, t0 + secs(10))],
            t0 + secs(4000),
            1,
        );
        v.apply(vec![], t0 + secs(4000 + TRIM_INTERVAL_SECS), 1);
        assert!(v.has_ended(s));
    }
}
