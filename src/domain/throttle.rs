//! Brute-force defence for password checks, and the per-IP request rate limit.
//!
//! **Password guessing** (Login, and the `current_password` checks of UpdateMe, ChangePassword and
//! DeleteMe) is throttled per *key* (the normalized identifier string, hashed, or the user for
//! re-checks), whether or not an account exists, so throttling reveals nothing about accounts, and
//! per *client*: the [`ClientKey`](super::ClientKey) (an IPv4 address, or an IPv6 /64). State lives
//! in the database, so every replica agrees.
//!
//! **Reservation (ASVS 15.4.2).** A check is reserved *before* bcrypt runs, in one short
//! transaction that first locks the key's `login_guard` row: so the reservations of one key are
//! decided one at a time, whatever the concurrency and the number of replicas. An allowed
//! reservation is counted as a failure at once; a success takes it back ([`Reservation::succeeded`]),
//! a failure leaves it counted. Concurrent guesses therefore get no more password checks than
//! sequential ones, and a reservation abandoned by a cancelled call stays a failure: nothing stays
//! locked by it beyond the usual delays. A reservation whose password was never checked (the bcrypt
//! pool refused it) is taken back ([`Reservation::unchecked`]).
//!
//! The rules a reservation must pass:
//! - *One client:* after `AUTHD_LOGIN_MAX_FAILURES` consecutive failures for a key, that client
//!   waits 1 s, doubling with each further failure, capped at 15 min, from its last failure. A
//!   success resets its count.
//! - *All clients (distributed guessing):* once a key has `AUTHD_LOGIN_MAX_FAILURES_PER_HOUR`
//!   failures in the last hour, the key gets one password check per D in total, across all
//!   clients: D starts at 1 s and doubles with every such check, up to 15 min. D goes back to 1 s
//!   once the key has had no failure for an hour.
//! - *Known clients* (a successful check for that account in the last 30 days, recorded for its
//!   e-mail, username and re-check keys) are exempt from the identifier-wide slot; the per-client
//!   rule still applies to them.
//!
//! While refused, no password is checked (no bcrypt work) and the reply is RESOURCE_EXHAUSTED
//! with `retry-after`.
//!
//! **Request rate:** Register, Login and Refresh share a token bucket per client of
//! `AUTHD_RATE_LIMIT_PER_IP` requests per minute (burst of the same size), kept in memory per replica.
//! A client is a [`ClientKey`]: an IPv4 address, or an IPv6 /64 (one subscriber's allocation, which
//! it can change at will inside). Failed service-key checks take from the same bucket.
//!
//! **Proxy service keys** (a gateway that names its users' addresses in `x-forwarded-for`) get a
//! failure budget of their own, [`ProxyKeyBudget`]: `AUTHD_PROXY_KEY_MAX_FAILURES_PER_MINUTE`
//! password checks that may fail, per key, kept in memory per replica. Every password check made
//! through the key reserves one before bcrypt runs and gives it back if the password was right, so
//! concurrent guesses get no more checks than sequential ones, and a stolen key cannot multiply
//! guesses by inventing client addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use uuid::Uuid;

use super::{ClientKey, Error, Result};
use crate::db::DbError;
use crate::db::throttle::{self as db, Guard};

/// The first delay after the failure limit; it doubles with every further failure.
pub const BASE_DELAY_SECS: i64 = 1;
/// No lock outlasts this, counted from the last failure (per client) or the last check (per key).
pub const MAX_LOCK_SECS: i64 = 15 * 60;
/// A client with a successful check for an account stays exempt from the identifier-wide slot
/// this long.
pub const KNOWN_CLIENT_DAYS: i64 = 30;

/// Thresholds of the password-guessing throttle.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub max_failures: u32,
    pub max_failures_per_hour: u32,
}

/// The throttle key of a login identifier (already normalized by the caller). The identifier is
/// hashed: any string a client sends (even one with NUL bytes) makes a valid, bounded key, and the
/// throttle table holds no identifiers.
pub fn login_key(kind: &str, normalized: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(normalized.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("login:{kind}:{hex}")
}

/// The throttle key of a signed-in user's password re-checks.
pub fn reauth_key(user_id: Uuid) -> String {
    format!("reauth:{user_id}")
}

/// Every key under which an account's password is checked: its e-mail, its username (if any) and
/// its re-checks. A success for one makes the client known for all of them.
pub fn account_keys(user_id: Uuid, email: &str, username: Option<&str>) -> Vec<String> {
    let mut keys = vec![login_key("email", email), reauth_key(user_id)];
    if let Some(u) = username {
        keys.push(login_key("username", &u.to_lowercase()));
    }
    keys
}

fn exhausted(wait: Duration) -> Error {
    Error::ResourceExhausted {
        message: "too many failed attempts; retry later".into(),
        // Exact; the reply rounds it up to whole seconds, so a client that obeys it is let in.
        retry_after: Some(wait.to_std().unwrap_or(StdDuration::from_secs(1))),
    }
}

/// The escalating delay owed after `failures` consecutive failures.
pub fn delay_after(policy: Policy, failures: i32) -> Option<Duration> {
    let over = i64::from(failures) - i64::from(policy.max_failures);
    if over < 0 {
        return None;
    }
    let secs = BASE_DELAY_SECS.saturating_mul(1i64 << over.min(30));
    Some(Duration::seconds(secs.min(MAX_LOCK_SECS)))
}

/// What a reservation found, under the key's lock.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// This client's consecutive failures and its last failure.
    pub client: Option<(i32, DateTime<Utc>)>,
    /// The key's failures (from every client) in the last hour.
    pub recent: i64,
    /// Whether this client had a success for the account in the last 30 days.
    pub known: bool,
    pub guard: Guard,
}

/// The decision on one reservation: the key's slot state to store, or how long to wait.
pub fn decide(
    policy: Policy,
    seen: Seen,
    now: DateTime<Utc>,
) -> std::result::Result<Guard, Duration> {
    if let Some((failures, last)) = seen.client
        && let Some(delay) = delay_after(policy, failures)
        && now < last + delay
    {
        return Err(last + delay - now);
    }
    let mut guard = seen.guard;
    if seen.recent == 0 {
        // Quiet for an hour: the identifier-wide slot starts again from the bottom.
        guard = Guard {
            next_check_time: None,
            slot_delay_secs: BASE_DELAY_SECS as i32,
        };
    }
    if seen.recent >= i64::from(policy.max_failures_per_hour) && !seen.known {
        if let Some(next) = guard.next_check_time
            && now < next
        {
            return Err(next - now);
        }
        let d = i64::from(guard.slot_delay_secs).clamp(BASE_DELAY_SECS, MAX_LOCK_SECS);
        guard = Guard {
            next_check_time: Some(now + Duration::seconds(d)),
            slot_delay_secs: (d * 2).min(MAX_LOCK_SECS) as i32,
        };
    }
    Ok(guard)
}

/// An allowed password check, counted as a failure until [`Reservation::succeeded`] says otherwise.
#[derive(Debug)]
#[must_use = "a reservation is a failure unless taken back"]
pub struct Reservation {
    key: String,
    client: String,
    failure_id: i64,
}

/// Reserves one password check of `key` from `client` (a [`ClientKey`](super::ClientKey) string),
/// or refuses (RESOURCE_EXHAUSTED with `retry-after`). Atomic: see the module docs.
pub async fn reserve(
    conn: &mut AsyncPgConnection,
    policy: Policy,
    key: &str,
    client: &str,
    now: DateTime<Utc>,
) -> Result<Reservation> {
    let decided = conn
        .transaction::<_, DbError, _>(async |conn| {
            let guard = db::lock_guard(conn, key, now).await?;
            let recent = db::failures_since(conn, key, now - Duration::hours(1)).await?;
            // Whether the client is known matters only past the cap.
            let known = recent >= i64::from(policy.max_failures_per_hour)
                && !client.is_empty()
                && db::is_known(conn, key, client, now - Duration::days(KNOWN_CLIENT_DAYS)).await?;
            let seen = Seen {
                client: db::get(conn, key, client).await?,
                recent,
                known,
                guard,
            };
            match decide(policy, seen, now) {
                Ok(next) => {
                    if next != guard {
                        db::set_guard(conn, key, next, now).await?;
                    }
                    Ok(Ok(db::record_failure(conn, key, client, now).await?))
                }
                Err(wait) => Ok(Err(wait)),
            }
        })
        .await?;
    match decided {
        Ok(failure_id) => Ok(Reservation {
            key: key.to_owned(),
            client: client.to_owned(),
            failure_id,
        }),
        Err(wait) => Err(exhausted(wait)),
    }
}

impl Reservation {
    /// The password was right: the client's count starts again, the reservation is no failure, and
    /// the client becomes known (exempt from the identifier-wide slot) for `account_keys`.
    pub async fn succeeded(
        self,
        conn: &mut AsyncPgConnection,
        account_keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<()> {
        db::reset(conn, &self.key, &self.client, self.failure_id).await?;
        if !self.client.is_empty() && !account_keys.is_empty() {
            db::remember_client(conn, account_keys, &self.client, now).await?;
        }
        Ok(())
    }

    /// The password was wrong: the reservation stays counted as the failure it is.
    pub fn failed(self) {}

    /// No password was checked (e.g. the bcrypt pool refused the job): the reservation is taken
    /// back. The identifier-wide slot it may have taken stays taken.
    pub async fn unchecked(self, conn: &mut AsyncPgConnection) -> Result<()> {
        Ok(db::uncount(conn, &self.key, &self.client, self.failure_id).await?)
    }
}

/// The per-client token bucket of Register, Login and Refresh (keyed by [`ClientKey`]).
pub struct IpRateLimiter {
    limiter: Option<DefaultKeyedRateLimiter<ClientKey>>,
}

impl std::fmt::Debug for IpRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpRateLimiter")
            .field("enabled", &self.limiter.is_some())
            .finish()
    }
}

impl IpRateLimiter {
    /// `per_minute == 0` turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(per_minute)
                .map(|n| DefaultKeyedRateLimiter::dashmap(Quota::per_minute(n))),
        }
    }

    /// Takes one token for the client of `ip` (its address, or its IPv6 /64), or refuses with the
    /// time until the next one.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<()> {
        let (Some(limiter), Some(ip)) = (&self.limiter, ip) else {
            return Ok(());
        };
        limiter
            .check_key(&ClientKey::of(ip))
            .map_err(|not_until| Error::ResourceExhausted {
                message: "too many requests from this address; retry later".into(),
                retry_after: Some(not_until.wait_time_from(DefaultClock::default().now())),
            })
    }

    /// Forgets addresses whose buckets are full again, so memory stays bounded.
    pub fn housekeeping(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// The failure budget of proxy service keys (see the module docs): a token bucket per key of
/// `per_minute` tokens, refilled continuously, on the injected clock.
#[derive(Debug)]
pub struct ProxyKeyBudget {
    per_minute: u32,
    buckets: Buckets,
}

/// Proxy key id -> its bucket.
type Buckets = Arc<Mutex<HashMap<Uuid, Bucket>>>;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: DateTime<Utc>,
}

/// A password check's place in its proxy key's budget. Dropping it gives the place back (the check
/// did not fail, or never ran); [`ProxyReservation::failed`] keeps it spent.
#[derive(Debug)]
#[must_use]
pub struct ProxyReservation {
    key: Option<(Uuid, Buckets)>,
    capacity: f64,
}

impl ProxyReservation {
    /// The check failed: the place stays used.
    pub fn failed(mut self) {
        self.key = None;
    }
}

impl Drop for ProxyReservation {
    fn drop(&mut self) {
        if let Some((id, buckets)) = self.key.take() {
            let mut map = buckets.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(b) = map.get_mut(&id) {
                b.tokens = (b.tokens + 1.0).min(self.capacity);
            }
        }
    }
}

impl ProxyKeyBudget {
    /// `per_minute == 0` turns the budget off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Reserves a password check made through proxy key `key` (none: not through a proxy key), or
    /// refuses with RESOURCE_EXHAUSTED and the time until the budget has room again.
    pub fn reserve(&self, key: Option<Uuid>, now: DateTime<Utc>) -> Result<ProxyReservation> {
        let capacity = f64::from(self.per_minute);
        let (Some(id), true) = (key, self.per_minute > 0) else {
            return Ok(ProxyReservation {
                key: None,
                capacity,
            });
        };
        let per_ms = capacity / 60_000.0;
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = map.entry(id).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed_ms = (now - b.at).num_milliseconds().max(0) as f64;
        b.tokens = (b.tokens + elapsed_ms * per_ms).min(capacity);
        b.at = b.at.max(now);
        if b.tokens < 1.0 {
            let wait_ms = ((1.0 - b.tokens) / per_ms).ceil();
            return Err(Error::ResourceExhausted {
                message:
                    "this proxy key's budget of failed password checks is used up; retry later"
                        .into(),
                retry_after: Some(StdDuration::from_millis(wait_ms as u64)),
            });
        }
        b.tokens -= 1.0;
        Ok(ProxyReservation {
            key: Some((id, self.buckets.clone())),
            capacity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_escalate_and_cap() {
        let p = Policy {
            max_failures: 5,
            max_failures_per_hour: 100,
        };
        assert_eq!(delay_after(p, 4), None);
        assert_eq!(delay_after(p, 5), Some(Duration::seconds(1)));
        assert_eq!(delay_after(p, 6), Some(Duration::seconds(2)));
        assert_eq!(delay_after(p, 9), Some(Duration::seconds(16)));
        assert_eq!(delay_after(p, 15), Some(Duration::seconds(900)));
        assert_eq!(delay_after(p, 500), Some(Duration::seconds(900)));
    }

    fn seen(recent: i64, known: bool, guard: Guard) -> Seen {
        Seen {
            client: None,
            recent,
            known,
            guard,
        }
    }

    #[test]
    fn past_the_hourly_cap_one_check_per_doubling_slot() {
        let p = Policy {
            max_failures: 5,
            max_failures_per_hour: 8,
        };
        let now = Utc::now();
        let free = Guard {
            next_check_time: None,
            slot_delay_secs: 1,
        };
        // Under the cap the slot is not used.
        assert_eq!(decide(p, seen(7, false, free), now), Ok(free));
        // At the cap: the first check takes the slot for D = 1 s, and D doubles.
        let taken = decide(p, seen(8, false, free), now).unwrap();
        assert_eq!(
            taken,
            Guard {
                next_check_time: Some(now + Duration::seconds(1)),
                slot_delay_secs: 2,
            }
        );
        assert_eq!(
            decide(p, seen(9, false, taken), now),
            Err(Duration::seconds(1))
        );
        // A known client passes without taking the slot.
        assert_eq!(decide(p, seen(9, true, taken), now), Ok(taken));
        // D is capped at 15 min.
        let long = Guard {
            next_check_time: Some(now),
            slot_delay_secs: 900,
        };
        assert_eq!(
            decide(p, seen(50, false, long), now)
                .unwrap()
                .slot_delay_secs,
            900
        );
        // An hour without failures resets it.
        assert_eq!(decide(p, seen(0, false, long), now), Ok(free));
        // The per-client delay applies to known clients too.
        let s = Seen {
            client: Some((5, now)),
            ..seen(0, true, free)
        };
        assert_eq!(decide(p, s, now), Err(Duration::seconds(1)));
    }

    #[test]
    fn rate_limiter_refuses_past_the_bucket() {
        let l = IpRateLimiter::new(3);
        let ip = Some(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..3 {
            assert!(l.check(ip).is_ok());
        }
        match l.check(ip) {
            Err(Error::ResourceExhausted {
                retry_after: Some(d),
                ..
            }) => {
                assert!(d <= StdDuration::from_secs(20));
            }
            other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
        }
        // Another address has its own bucket; 0 turns the limit off.
        assert!(l.check(Some(IpAddr::from([127, 0, 0, 2]))).is_ok());
        assert!(IpRateLimiter::new(0).check(ip).is_ok());
    }

    #[test]
    fn rate_limiter_keys_ipv6_by_64() {
        let l = IpRateLimiter::new(2);
        let a = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(l.check(a("2001:db8:1:2::1")).is_ok());
        assert!(l.check(a("2001:db8:1:2:ffff::9")).is_ok());
        assert!(l.check(a("2001:db8:1:2:abcd::1")).is_err());
        assert!(l.check(a("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn proxy_budget_refunds_successes_and_refills_with_time() {
        let budget = ProxyKeyBudget::new(3);
        let key = Some(Uuid::new_v4());
        let t0 = Utc::now();
        // Right passwords give their place back.
        for _ in 0..10 {
            drop(budget.reserve(key, t0).unwrap());
        }
        for _ in 0..3 {
            budget.reserve(key, t0).unwrap().failed();
        }
        match budget.reserve(key, t0) {
            Err(Error::ResourceExhausted {
                retry_after: Some(d),
                ..
            }) => assert!(d <= StdDuration::from_secs(20) && d > StdDuration::ZERO),
            other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
        }
        // Other keys, and calls through no key, are unaffected; 3 per minute = one per 20 s.
        assert!(budget.reserve(Some(Uuid::new_v4()), t0).is_ok());
        assert!(budget.reserve(None, t0).is_ok());
        assert!(budget.reserve(key, t0 + Duration::seconds(19)).is_err());
        budget
            .reserve(key, t0 + Duration::seconds(21))
            .unwrap()
            .failed();
        assert!(ProxyKeyBudget::new(0).reserve(key, t0).is_ok());
    }
}
