//! [`KeyDigests`]: the SHA-256 of recently presented, valid service keys, so that a ValidateToken
//! (or any other call with an `x-api-key`) does not hash its key with SHA-256 on every call.
//!
//! Service keys are stored, and looked up in the revocation view, by SHA-256 only. This cache maps
//! a fast keyed hash of the presented key (foldhash, seeded at random per process) to the key's
//! SHA-256, and keeps the key itself to compare it in full, in constant time, on every hit: a hash
//! collision is a miss, never a wrong digest. Only keys that were valid when first seen go in, so
//! callers guessing keys cannot fill it; it holds at most [`CAPACITY`] keys and starts over when
//! full. The digest of a key never changes; whether the key is still valid (unrevoked, allowed from
//! this address) is decided by the view on every call, as before.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::domain::fastkey::{FastKeys, Prehashed, same_bytes};
use crate::domain::opaque::HashedToken;

/// Most keys remembered; a deployment has a few dozen services at most.
pub const CAPACITY: usize = 1024;

struct Entry {
    key: Box<[u8]>,
    digest: HashedToken,
}

/// See the module docs. Its `Debug` shows only how many keys it holds.
pub struct KeyDigests {
    keys: FastKeys,
    map: RwLock<HashMap<u64, Arc<Entry>, Prehashed>>,
}

impl std::fmt::Debug for KeyDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.read().map_or(0, |m| m.len());
        f.debug_struct("KeyDigests").field("keys", &n).finish()
    }
}

impl Default for KeyDigests {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyDigests {
    pub fn new() -> Self {
        Self {
            keys: FastKeys::default(),
            map: RwLock::new(HashMap::with_hasher(Prehashed)),
        }
    }

    /// The SHA-256 of `key`: remembered if `key` was [`KeyDigests::remember`]ed, else computed.
    /// The flag says whether it was remembered.
    pub fn digest(&self, key: &str) -> (HashedToken, bool) {
        let h = self.keys.of(key);
        let hit = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&h)
            .cloned();
        match hit {
            Some(e) if same_bytes(&e.key, key.as_bytes()) => (e.digest.clone(), true),
            _ => (HashedToken::of(key), false),
        }
    }

    /// Remembers the digest of a key that proved valid.
    pub fn remember(&self, key: &str, digest: HashedToken) {
        let h = self.keys.of(key);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(
            h,
            Arc::new(Entry {
                key: key.as_bytes().into(),
                digest,
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_digests_are_the_sha256_and_need_the_whole_key() {
        let d = KeyDigests::new();
        let key = "sk_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
        let (h, hit) = d.digest(key);
        assert!(!hit);
        assert!(h.matches(HashedToken::of(key).as_bytes()));
        d.remember(key, h.clone());
        let (h2, hit) = d.digest(key);
        assert!(hit);
        assert_eq!(h, h2);
        assert!(!d.digest("sk_other").1);
        // A planted entry for another key under this key's hash is a miss.
        let other = "sk_zzz";
        d.map.write().unwrap().insert(
            d.keys.of(other),
            Arc::new(Entry {
                key: key.as_bytes().into(),
                digest: HashedToken::of(key),
            }),
        );
        let (h3, hit) = d.digest(other);
        assert!(!hit);
        assert!(h3.matches(HashedToken::of(other).as_bytes()));
        assert_eq!(format!("{d:?}"), "KeyDigests { keys: 2 }");
    }

    #[test]
    fn bounded() {
        let d = KeyDigests::new();
        for i in 0..CAPACITY + 10 {
            let k = format!("sk_{i}");
            d.remember(&k, HashedToken::of(&k));
        }
        assert!(d.map.read().unwrap().len() <= CAPACITY);
    }
}
