//! In-memory lookups of secrets (access tokens, service keys) by a fast keyed hash, each hit
//! confirmed by a full constant-time comparison.
//!
//! The token cache (`tokens::TokenCache`) and the service-key digest cache (`key_digests`) find a
//! presented secret by [`FastKeys::of`]: foldhash, seeded at random per process, so nobody outside
//! can aim collisions. A hash only says where to look: every hit is confirmed with [`same_bytes`]
//! against the secret kept in the entry, so a collision is a miss, never a wrong answer. The maps
//! are keyed by that `u64` and do not hash it again ([`Prehashed`]); [`SecretMap`] is such a map,
//! bounded and sharded, with no bookkeeping on reads.
//!
//! [`same_bytes`] compares 8 bytes at a time with no data-dependent branch. `subtle`'s byte-wise
//! slice comparison costs about 12 instructions a byte; on a 600-byte access token it was the
//! largest single cost of a cached ValidateToken (issue J, P1).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::RwLock;

use subtle::ConstantTimeEq;

/// Whether `a` and `b` are equal, in a time that depends only on their lengths. Lengths are not
/// secret here (a token's length is public), so different lengths answer at once.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a8, a_rest) = a.as_chunks::<8>();
    let (b8, b_rest) = b.as_chunks::<8>();
    let mut diff = 0u64;
    for (x, y) in a8.iter().zip(b8) {
        diff |= u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y);
    }
    for (x, y) in a_rest.iter().zip(b_rest) {
        diff |= u64::from(x ^ y);
    }
    diff.ct_eq(&0).into()
}

/// The keyed hash of secrets, seeded at random when built (once per cache, per process).
#[derive(Clone, Default)]
pub struct FastKeys(foldhash::fast::RandomState);

impl FastKeys {
    /// Where `secret` is looked up.
    pub fn of(&self, secret: &str) -> u64 {
        self.0.hash_one(secret)
    }
}

impl std::fmt::Debug for FastKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastKeys([seed redacted])")
    }
}

/// The hasher of maps keyed by a [`FastKeys`] hash: the key is already a keyed, uniform hash, so
/// it is used as it is (hashing it again with the standard SipHash cost more than the lookup).
#[derive(Clone, Copy, Debug, Default)]
pub struct Prehashed;

impl BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;
    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher(0)
    }
}

/// See [`Prehashed`].
#[derive(Debug)]
pub struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are meant; anything else is still hashed, only less well.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Shards of a [`SecretMap`]; a power of two.
const SHARDS: usize = 16;

/// A bounded map from [`FastKeys`] hashes to cached entries, in [`SHARDS`] shards each under its
/// own lock, so that concurrent lookups rarely meet. A lookup is a read lock, one probe and a clone
/// of the entry (an `Arc` or two): no bookkeeping on reads. A full shard makes room on insert by
/// dropping the entries its caller calls stale, then, if still full, whichever entry comes first:
/// it never holds more than its capacity.
pub struct SecretMap<V> {
    shards: Box<[RwLock<HashMap<u64, V, Prehashed>>]>,
    per_shard: usize,
}

impl<V: Clone> std::fmt::Debug for SecretMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretMap")
            .field("entries", &self.len())
            .finish()
    }
}

impl<V: Clone> SecretMap<V> {
    /// A map of at most `capacity` entries (rounded up to a multiple of [`SHARDS`]); 0 holds
    /// nothing.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, key: u64) -> &RwLock<HashMap<u64, V, Prehashed>> {
        // Bits the shard's own table does not use (its index takes the low bits, its tags the top
        // seven), so that each shard still sees uniform hashes.
        &self.shards[(key >> 32) as usize % SHARDS]
    }

    pub fn get(&self, key: u64) -> Option<V> {
        self.shard(key)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
    }

    pub fn remove(&self, key: u64) {
        self.shard(key)
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    /// Inserts `value` under `key` (replacing what was there). A full shard first drops the entries
    /// `stale` is true of, then, if still full, an arbitrary one.
    pub fn insert(&self, key: u64, value: V, stale: impl Fn(&V) -> bool) {
        if self.per_shard == 0 {
            return;
        }
        let mut map = self.shard(key).write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.per_shard && !map.contains_key(&key) {
            map.retain(|_, v| !stale(v));
            if map.len() >= self.per_shard
                && let Some(victim) = map.keys().next().copied()
            {
                map.remove(&victim);
            }
        }
        map.insert(key, value);
    }

    /// How many entries it holds.
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

    #[test]
    fn same_bytes_is_equality() {
        let text: Vec<u8> = (0..=255u8).cycle().take(601).collect();
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 600, 601] {
            let a = &text[..len];
            assert!(same_bytes(a, a));
            let copy = a.to_vec();
            assert!(same_bytes(a, copy.as_slice()));
            for i in 0..len {
                let mut b = a.to_vec();
                b[i] ^= 0x01;
                assert!(!same_bytes(a, &b), "len {len}, byte {i}");
                b[i] ^= 0x81;
                assert!(!same_bytes(a, &b), "len {len}, byte {i}");
            }
            if len > 0 {
                assert!(!same_bytes(a, &a[..len - 1]));
            }
        }
    }

    #[test]
    fn keys_are_seeded_and_prehashed_keeps_them() {
        let (k1, k2) = (FastKeys::default(), FastKeys::default());
        assert_eq!(k1.of("sk_a"), k1.clone().of("sk_a"));
        assert_ne!(k1.of("sk_a"), k2.of("sk_a"));
        assert_eq!(Prehashed.hash_one(42u64), 42);
        assert_eq!(format!("{k1:?}"), "FastKeys([seed redacted])");
        let mut m = std::collections::HashMap::with_hasher(Prehashed);
        m.insert(k1.of("x"), 1);
        assert_eq!(m.get(&k1.of("x")), Some(&1));
    }

    #[test]
    fn secret_maps_are_bounded_and_drop_stale_entries_first() {
        let keys = FastKeys::default();
        let m = SecretMap::new(64);
        for i in 0..1000u32 {
            m.insert(keys.of(&i.to_string()), i, |_| false);
        }
        assert!(m.len() <= 64, "{}", m.len());
        assert_eq!(m.get(keys.of("999")), Some(999));
        // Stale entries go first: the live one survives a full shard.
        let m = SecretMap::new(SHARDS * 4);
        let live = keys.of("live");
        m.insert(live, 0, |_| false);
        for i in 1..200u32 {
            m.insert(keys.of(&format!("k{i}")), i, |v| *v != 0);
        }
        assert_eq!(m.get(live), Some(0));
        m.remove(live);
        assert_eq!(m.get(live), None);
        assert_eq!(SecretMap::<u32>::new(0).len(), 0);
        let none = SecretMap::new(0);
        none.insert(live, 1, |_| false);
        assert_eq!(none.get(live), None);
    }
}
