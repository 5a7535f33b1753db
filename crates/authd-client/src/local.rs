//! Local mode: the state that WatchRevocations feeds (the `watch` module) and the check that the
//! layer runs on every call ([`LocalState::check`]).
//!
//! The state is the current [`Verifier`] (the published keys), the set of revoked sessions (each
//! until its last access token expires), the time of the last message from the stream, whether the
//! first snapshot is complete, and the [`TokenCache`].
//!
//! A check, in order:
//! 1. **fail closed:** before the first snapshot completes, or when no message (heartbeats come
//!    every second) has arrived for longer than `stale_after`, UNAVAILABLE;
//! 2. the cached principal of this exact token, else a full verification (signature, header,
//!    issuer, audience, times: [`Verifier::verify`]) whose result is cached;
//! 3. on every call, cached or not: `exp` against the clock, and the session against the revoked
//!    set. A revocation therefore takes effect on the very next call after it arrives; the cache
//!    never needs to be searched for the session's tokens.
//!
//! A cached hit takes two clock reads, two uncontended read locks and two hash lookups, and
//! allocates nothing (the principal is a reference-counted handle).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use authd_proto::WatchRevocationsResponse;
use authd_token::{Jwks, LEEWAY_SECS, PublicJwk, TokenError, Verifier};
use uuid::Uuid;

use crate::cache::TokenCache;
use crate::clock::Clock;
use crate::principal::Principal;
use crate::reject::Rejection;

/// How often (at most) expired entries are dropped from the revoked set.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

type Revoked = HashMap<Uuid, i64, foldhash::fast::RandomState>;

pub(crate) struct LocalState {
    issuer: String,
    audience: String,
    clock: Arc<dyn Clock>,
    stale_after: Duration,
    verifier: RwLock<Arc<Verifier>>,
    /// Session id -> the unix time at which its last access token expires.
    revoked: RwLock<Revoked>,
    /// The monotonic time of the last message, in nanoseconds (0: none yet).
    last_message: AtomicU64,
    last_prune: AtomicU64,
    ready: AtomicBool,
    cache: TokenCache,
}

impl LocalState {
    pub(crate) fn new(
        issuer: String,
        audience: String,
        clock: Arc<dyn Clock>,
        stale_after: Duration,
        cache_capacity: usize,
    ) -> Self {
        Self {
            issuer,
            audience,
            clock,
            stale_after,
            verifier: RwLock::new(Arc::new(Verifier::new([]))),
            revoked: RwLock::new(Revoked::default()),
            last_message: AtomicU64::new(0),
            last_prune: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            cache: TokenCache::new(cache_capacity),
        }
    }

    fn mono_nanos(&self) -> u64 {
        u64::try_from(self.clock.monotonic().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether the stream delivered its snapshot and spoke within `stale_after`.
    pub(crate) fn is_fresh(&self) -> bool {
        if !self.ready.load(Ordering::Acquire) {
            return false;
        }
        let last = self.last_message.load(Ordering::Acquire);
        let now = self.mono_nanos();
        Duration::from_nanos(now.saturating_sub(last)) <= self.stale_after
    }

    fn is_revoked(&self, session: Uuid) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&session)
    }

    /// Checks a bearer token (without the `Bearer ` prefix). See the module doc.
    pub(crate) fn check(&self, token: &str) -> Result<Principal, Rejection> {
        if !self.is_fresh() {
            return Err(Rejection::Unavailable);
        }
        let now = self.clock.now();
        let now_s = now.timestamp();
        let principal = match self.cache.get(token) {
            Some(p) => {
                if now_s >= p.exp_secs().saturating_add(LEEWAY_SECS) {
                    return Err(Rejection::Expired);
                }
                p
            }
            None => {
                let verifier = self
                    .verifier
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let v = verifier
                    .verify(token, &self.issuer, &self.audience, now)
                    .map_err(|e| match e {
                        TokenError::Expired => Rejection::Expired,
                        TokenError::Invalid => Rejection::Invalid,
                    })?;
                let p = Principal::from(v);
                self.cache.insert(token, p.clone(), now_s);
                p
            }
        };
        if self.is_revoked(principal.session_id()) {
            return Err(Rejection::Invalid);
        }
        Ok(principal)
    }

    /// Applies one message of the stream; returns its resume token, if it has one.
    pub(crate) fn apply(&self, msg: WatchRevocationsResponse) -> Option<String> {
        if let Some(set) = msg.jwks {
            let jwks = Jwks {
                keys: set
                    .keys
                    .into_iter()
                    .map(|k| PublicJwk {
                        kty: k.kty,
                        crv: k.crv,
                        x: k.x,
                        kid: k.kid,
                        alg: Some(k.alg).filter(|a| !a.is_empty()),
                        key_use: Some(k.r#use).filter(|u| !u.is_empty()),
                    })
                    .collect(),
            };
            let verifier = Verifier::from_jwks(&jwks);
            let mut current = self.verifier.write().unwrap_or_else(|e| e.into_inner());
            if current.jwks() != verifier.jwks() {
                tracing::debug!(
                    keys = verifier.jwks().len(),
                    "authd-client: signing keys updated"
                );
                *current = Arc::new(verifier);
                drop(current);
                // A removed key must not keep verifying through the cache.
                self.cache.clear();
            }
        }
        let now_s = self.clock.now().timestamp();
        if !msg.revoked_sessions.is_empty() {
            let mut revoked = self.revoked.write().unwrap_or_else(|e| e.into_inner());
            for s in msg.revoked_sessions {
                let Ok(id) = Uuid::parse_str(&s.session_id) else {
                    tracing::warn!("authd-client: skipped a revoked session with a malformed id");
                    continue;
                };
                // Without an expiry, keep it for as long as any token could live (a day).
                let until = s.expire_time.map_or(now_s + 86_400, |t| t.seconds);
                let e = revoked.entry(id).or_insert(until);
                *e = (*e).max(until);
            }
        }
        let mono = self.mono_nanos();
        let last_prune = self.last_prune.load(Ordering::Relaxed);
        if Duration::from_nanos(mono.saturating_sub(last_prune)) >= PRUNE_EVERY {
            self.last_prune.store(mono, Ordering::Relaxed);
            self.revoked
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, until| until.saturating_add(LEEWAY_SECS) > now_s);
        }
        self.last_message.store(mono, Ordering::Release);
        if msg.snapshot_complete {
            self.ready.store(true, Ordering::Release);
        }
        Some(msg.resume_token).filter(|t| !t.is_empty())
    }

    #[cfg(test)]
    pub(crate) fn revoked_len(&self) -> usize {
        self.revoked.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests;
