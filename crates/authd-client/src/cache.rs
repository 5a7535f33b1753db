//! [`TokenCache`]: verified tokens, so that a token's Ed25519 signature is checked once, not on
//! every call.
//!
//! A bounded map from the token string to its [`Principal`], in 16 shards (each a `RwLock` over a
//! hash map with a randomly seeded fast hasher), so that a lookup takes a `&str`, allocates nothing
//! and rarely contends. The key is the whole token: a cached answer is only ever given for the
//! exact bytes that were verified. Only verified tokens are inserted, so garbage cannot fill it.
//!
//! What a hit still checks, on every call, is up to the caller (the `local` module): `exp` against
//! the clock and the session against the revoked set. A change of keys clears the cache.
//!
//! Bound: at most `capacity` entries (rounded up to a multiple of the shard count). A full shard
//! first drops its expired entries, then an arbitrary one.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::principal::Principal;

const SHARDS: usize = 16;

type Map = HashMap<Box<str>, Principal, foldhash::fast::RandomState>;

pub(crate) struct TokenCache {
    shards: [RwLock<Map>; SHARDS],
    per_shard: usize,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| RwLock::new(Map::default())),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, token: &str) -> &RwLock<Map> {
        // A JWT ends in base64url of a random-looking signature: its second-to-last character
        // spreads tokens over the shards without hashing twice. (Its last one carries 2 bits.)
        let b = token.as_bytes();
        let i = if b.len() >= 2 { b[b.len() - 2] } else { 0 };
        &self.shards[usize::from(i) % SHARDS]
    }

    pub(crate) fn get(&self, token: &str) -> Option<Principal> {
        let shard = self.shard(token).read().unwrap_or_else(|e| e.into_inner());
        shard.get(token).cloned()
    }

    /// Inserts a verified token. `now_secs` lets a full shard drop what has expired.
    pub(crate) fn insert(&self, token: &str, principal: Principal, now_secs: i64) {
        let mut shard = self.shard(token).write().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(token) {
            shard.retain(|_, p| p.exp_secs().saturating_add(authd_token::LEEWAY_SECS) > now_secs);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().cloned()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(token.into(), principal);
    }

    pub(crate) fn clear(&self) {
        for s in &self.shards {
            s.write().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authd_token::Role;
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    fn p(exp: i64) -> Principal {
        let t = Utc.timestamp_opt(exp, 0).unwrap();
        Principal::new(Uuid::nil(), Uuid::nil(), Role::User, "a@b.c", None, t, t)
    }

    #[test]
    fn bounded_and_keyed_by_the_whole_token() {
        let c = TokenCache::new(32);
        for i in 0..1000 {
            c.insert(&format!("tok{i:04}xx"), p(100), 0);
        }
        assert!(c.len() <= 32, "{}", c.len());
        c.insert("abc.def.ghi", p(100), 0);
        assert!(c.get("abc.def.ghi").is_some());
        assert!(c.get("abc.def.gh").is_none());
        assert!(c.get("abc.def.ghiX").is_none());
        c.clear();
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_full_shard_drops_expired_entries_first() {
        let c = TokenCache::new(SHARDS); // one entry per shard
        c.insert("old-aa", p(10), 0);
        c.insert("new-aa", p(1000), 100); // same shard ('a'); "old" has expired at 100
        assert!(c.get("new-aa").is_some());
        assert!(c.get("old-aa").is_none());
    }
}
