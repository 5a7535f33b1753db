//! Access tokens, the server's side: the [`Keyring`] that signs them (the private key lives here) and
//! verifies them, key generation, and the [`TokenCache`] of verified tokens.
//!
//! The token model and the RFC 9068 checks themselves (claims, roles, JWKs, [`Verifier`], leeway)
//! live in the `authd-token` crate, so that clients verify exactly as the server does; they are
//! re-exported here. The keyring is built by the key store (`keystore.rs`) from the key rows: the
//! verifier from their plain public keys, the signer from the newest active private key.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, Header};
use sha2::{Digest, Sha256};

use super::fastkey::{FastKeys, SecretMap, same_bytes};
use super::{Error, Result};

pub use authd_token::{
    ACCESS_TOKEN_TYP, AMR_OTP, AMR_PASSWORD, AccessClaims, LEEWAY_SECS, MAX_TOKEN_BYTES, PublicJwk,
    PublicKey, TokenError, VerifiedToken, Verifier,
};

/// A freshly generated Ed25519 key pair, ready to store.
pub struct GeneratedKey {
    pub kid: String,
    pub private_pkcs8: Vec<u8>,
    pub public: Vec<u8>,
}

impl GeneratedKey {
    /// Its public half, for a [`Verifier`].
    pub fn public_key(&self) -> Result<PublicKey> {
        public_key(&self.kid, &self.public)
    }

    /// Its private half, for a [`Keyring`].
    pub fn signer(&self) -> Result<Signer> {
        Signer::from_pkcs8(&self.kid, &self.private_pkcs8)
    }
}

/// Generates an Ed25519 key; its `kid` is the RFC 7638 JWK thumbprint.
pub fn generate_key() -> Result<GeneratedKey> {
    let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let der = sk
        .to_pkcs8_der()
        .map_err(|e| Error::internal(format!("cannot encode signing key: {e}")))?;
    let public = sk.verifying_key().to_bytes().to_vec();
    Ok(GeneratedKey {
        kid: thumbprint(&public),
        private_pkcs8: der.as_bytes().to_vec(),
        public,
    })
}

fn thumbprint(public: &[u8]) -> String {
    let x = URL_SAFE_NO_PAD.encode(public);
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// The verifying key `kid` from its stored public key, which must be a raw 32-byte Ed25519 key.
pub fn public_key(kid: &str, public: &[u8]) -> Result<PublicKey> {
    let ed25519: [u8; 32] = public
        .try_into()
        .map_err(|_| Error::internal(format!("signing key {kid} is not an Ed25519 key")))?;
    Ok(PublicKey::new(kid, ed25519))
}

/// The private key that signs access tokens, and its `kid`.
///
/// The key is decoded once, here, and the JWS header (`alg`, `typ`, `kid`) is encoded once.
/// `jsonwebtoken::encode` decodes the PKCS#8 key and derives its public half (a scalar
/// multiplication) on every call: about 97,000 instructions, a fifth of a whole Refresh (callgrind,
/// issue J). The key is held by jsonwebtoken's own backend ([`SigningKey`]), and Ed25519 signatures
/// are deterministic (RFC 8032), so the tokens are byte for byte the ones `jsonwebtoken::encode`
/// makes with the same key (a unit test checks it); they are still verified by `jsonwebtoken`.
pub struct Signer {
    kid: String,
    key: SigningKey,
    /// `base64url(JSON header)`, the first part of every token.
    header: String,
}

/// A decoded Ed25519 private key of the build's jsonwebtoken backend (feature `jwt-aws-lc-rs`:
/// AWS-LC, about half the instructions per signature of RustCrypto's ed25519-dalek here).
#[cfg(feature = "jwt-aws-lc-rs")]
struct SigningKey(aws_lc_rs::signature::Ed25519KeyPair);
#[cfg(not(feature = "jwt-aws-lc-rs"))]
struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    #[cfg(feature = "jwt-aws-lc-rs")]
    fn from_pkcs8(der: &[u8]) -> std::result::Result<Self, String> {
        aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(der)
            .map(Self)
            .map_err(|e| e.to_string())
    }

    #[cfg(not(feature = "jwt-aws-lc-rs"))]
    fn from_pkcs8(der: &[u8]) -> std::result::Result<Self, String> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        ed25519_dalek::SigningKey::from_pkcs8_der(der)
            .map(Self)
            .map_err(|e| e.to_string())
    }

    #[cfg(feature = "jwt-aws-lc-rs")]
    fn sign(&self, message: &[u8]) -> aws_lc_rs::signature::Signature {
        self.0.sign(message)
    }

    #[cfg(not(feature = "jwt-aws-lc-rs"))]
    fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        self.0.sign(message).to_bytes()
    }
}

impl Signer {
    /// The signer of `kid` from its PKCS#8 (DER) private key.
    pub fn from_pkcs8(kid: &str, private_pkcs8: &[u8]) -> Result<Self> {
        let key = SigningKey::from_pkcs8(private_pkcs8).map_err(|e| {
            Error::internal(format!("signing key {kid} is not an Ed25519 key: {e}"))
        })?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(kid.to_owned());
        let header = serde_json::to_vec(&header)
            .map_err(|e| Error::internal(format!("cannot encode the token header: {e}")))?;
        Ok(Self {
            kid: kid.to_owned(),
            key,
            header: URL_SAFE_NO_PAD.encode(header),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `header.claims.signature`, each part base64url without padding (RFC 7515 compact form).
    fn sign(&self, claims: &AccessClaims) -> Result<String> {
        let claims = serde_json::to_vec(claims)
            .map_err(|e| Error::internal(format!("cannot encode token claims: {e}")))?;
        let b64 = |n: usize| n.div_ceil(3) * 4;
        // The header, the claims and the 64-byte signature, each base64url, and two dots.
        let mut token = String::with_capacity(self.header.len() + b64(claims.len()) + b64(64) + 2);
        token.push_str(&self.header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        let signature = self.key.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }
}

/// The signing key in use (if any is active yet) and every key that may verify.
pub struct Keyring {
    signer: Option<Signer>,
    verifier: Verifier,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("signing_kid", &self.signer.as_ref().map(Signer::kid))
            .field(
                "verifying_kids",
                &self.jwks().iter().map(|j| &j.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    pub fn new(signer: Option<Signer>, verifier: Verifier) -> Self {
        Self { signer, verifier }
    }

    /// The verifying side alone.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The published keys.
    pub fn jwks(&self) -> &[PublicJwk] {
        self.verifier.jwks()
    }

    /// Signs `claims` with the active key.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String> {
        self.signer
            .as_ref()
            .ok_or_else(|| Error::internal("no active signing key"))?
            .sign(claims)
    }

    /// Verifies signature, header and claims of an access token at `now` ([`Verifier::verify`]).
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: DateTime<Utc>,
    ) -> std::result::Result<VerifiedToken, TokenError> {
        self.verifier.verify(token, issuer, audience, now)
    }
}

/// A bounded cache of verified access tokens (`AUTHD_TOKEN_CACHE_SIZE` entries), read as expired
/// from the token's `exp` plus leeway and dropped first when room is needed, and a brief one of
/// recent failures (as many entries, for [`FAILURE_TTL`]). Both are [`SecretMap`]s: a read takes
/// no lock but its shard's read lock and does no bookkeeping. Verifying an EdDSA signature costs about as much as the rest of a
/// ValidateToken call; a cached token costs a fast keyed hash (foldhash, seeded at random per
/// process, so nobody can aim collisions), a lookup and a full, constant-time comparison of the
/// token with the one cached under that hash: a collision is a miss, never a wrong answer. Only the
/// signature and claims are cached: revocation is checked on every call.
///
/// A failure (bad signature, unknown session, expired) is remembered for [`FAILURE_TTL`] with the
/// keyring it was judged with: a client retrying a dead token costs a lookup, and a key published
/// since (a new keyring) is never hidden by an old failure.
pub struct TokenCache {
    keys: FastKeys,
    verified: SecretMap<Cached>,
    failed: SecretMap<Failed>,
}

/// How long a failed verification is remembered (wall-clock time, like any cache lifetime).
pub const FAILURE_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// A cached token. It reads as expired from `dead_at` on (by the injected clock), and is dropped
/// when its shard needs the room.
#[derive(Clone)]
struct Cached {
    text: Arc<str>,
    token: Arc<VerifiedToken>,
    /// `exp` plus leeway, in Unix seconds.
    dead_at: i64,
}

/// A token refused recently, with the keyring that refused it.
#[derive(Clone)]
struct Failed {
    text: Arc<str>,
    error: TokenError,
    keyring: std::sync::Weak<Keyring>,
    at: std::time::Instant,
}

impl Failed {
    /// Whether it is older than [`FAILURE_TTL`] at `now` (wall-clock time).
    fn stale_at(&self, now: std::time::Instant) -> bool {
        now.saturating_duration_since(self.at) >= FAILURE_TTL
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.verified.len())
            .field("failures", &self.failed.len())
            .finish()
    }
}

fn same_text(cached: &str, presented: &str) -> bool {
    same_bytes(cached.as_bytes(), presented.as_bytes())
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (and as many recent failures); 0 caches nothing.
    pub fn new(capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        Self {
            keys: FastKeys::default(),
            verified: SecretMap::new(capacity),
            failed: SecretMap::new(capacity),
        }
    }

    /// The cache key of a token: its fast keyed hash (see the type's docs).
    pub fn key(&self, token: &str) -> u64 {
        // The last 48 characters of a JWT are its signature's, unique to each token; hashing only
        // them is a twelfth of the work on a 600-byte token. Any text may still share them: the
        // full comparison on every hit tells them apart.
        let tail = token.get(token.len().saturating_sub(48)..).unwrap_or(token);
        self.keys.of(tail)
    }

    /// A token verified before: `None` if unknown (or its key no longer verifies in `keyring`,
    /// which then forgets it), else the verified token, or `Expired` once past `exp` plus leeway
    /// at `now`.
    pub fn get(
        &self,
        keyring: &Keyring,
        token: &str,
        now: DateTime<Utc>,
    ) -> Option<std::result::Result<Arc<VerifiedToken>, TokenError>> {
        let key = self.key(token);
        let hit = self.verified.get(key)?;
        if !same_text(&hit.text, token) {
            return None;
        }
        let v = hit.token;
        if !keyring.verifier.accepts_key(&v.key_id, now) {
            self.verified.remove(key);
            return None;
        }
        if now.timestamp() >= hit.dead_at {
            return Some(Err(TokenError::Expired));
        }
        Some(Ok(v))
    }

    /// Remembers a token that passed [`Keyring::verify`] at `now` (and any further checks of the
    /// caller), until its `exp` plus leeway.
    pub fn insert(&self, token: &str, verified: Arc<VerifiedToken>, now: DateTime<Utc>) {
        let dead_at = verified.expire_time.timestamp().saturating_add(LEEWAY_SECS);
        let now = now.timestamp();
        if now >= dead_at {
            return;
        }
        self.verified.insert(
            self.key(token),
            Cached {
                text: Arc::from(token),
                token: verified,
                dead_at,
            },
            |c| now >= c.dead_at,
        );
    }

    /// Why `token` was refused, if it was within [`FAILURE_TTL`] under this same `keyring`.
    pub fn failure(&self, keyring: &Arc<Keyring>, token: &str) -> Option<TokenError> {
        let f = self.failed.get(self.key(token))?;
        (!f.stale_at(std::time::Instant::now())
            && std::ptr::eq(f.keyring.as_ptr(), Arc::as_ptr(keyring))
            && same_text(&f.text, token))
        .then_some(f.error)
    }

    /// Remembers that `keyring` (or the session check after it) refused `token` with `error`.
    pub fn insert_failure(&self, keyring: &Arc<Keyring>, token: &str, error: TokenError) {
        // One clock reading: a full shard checks every entry against it (a flood of bad tokens
        // keeps the shards full).
        let now = std::time::Instant::now();
        self.failed.insert(
            self.key(token),
            Failed {
                text: Arc::from(token),
                error,
                keyring: Arc::downgrade(keyring),
                at: now,
            },
            |f| f.stale_at(now),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authd_token::Role;
    use uuid::Uuid;

    fn keyring() -> Keyring {
        keyring_of(&generate_key().unwrap())
    }

    fn keyring_of(k: &GeneratedKey) -> Keyring {
        Keyring::new(
            Some(k.signer().unwrap()),
            Verifier::new([k.public_key().unwrap()]),
        )
    }

    #[test]
    fn tokens_are_byte_for_byte_jsonwebtokens_and_verify() {
        let now = Utc::now();
        let k = generate_key().unwrap();
        let kr = keyring_of(&k);
        for c in [claims(now), {
            let mut c = claims(now);
            c.preferred_username = Some("zoë".into());
            c.amr = vec![AMR_PASSWORD.into(), AMR_OTP.into()];
            c
        }] {
            let ours = kr.sign(&c).unwrap();
            let mut header = Header::new(Algorithm::EdDSA);
            header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
            header.kid = Some(k.kid.clone());
            let theirs = jsonwebtoken::encode(
                &header,
                &c,
                &jsonwebtoken::EncodingKey::from_ed_der(&k.private_pkcs8),
            )
            .unwrap();
            assert_eq!(ours, theirs);
            let v = kr.verify(&ours, "authd", "authd", now).unwrap();
            assert_eq!((v.amr, v.username), (c.amr, c.preferred_username));
        }
        assert!(Signer::from_pkcs8("x", b"not a key").is_err());
    }

    fn claims(now: DateTime<Utc>) -> AccessClaims {
        AccessClaims {
            iss: "authd".into(),
            aud: "authd".into(),
            sub: Uuid::new_v4().to_string(),
            exp: now.timestamp() + 900,
            iat: now.timestamp(),
            nbf: now.timestamp(),
            jti: Uuid::new_v4().to_string(),
            client_id: "authd".into(),
            sid: Uuid::new_v4().to_string(),
            role: "user".into(),
            email: "a@example.com".into(),
            preferred_username: None,
            amr: vec!["pwd".into()],
        }
    }

    #[test]
    fn cached_verification() {
        let now = Utc::now();
        let kr = keyring();
        let cache = TokenCache::new(100);
        let t = kr.sign(&claims(now)).unwrap();
        assert!(cache.get(&kr, &t, now).is_none());
        let v = Arc::new(kr.verify(&t, "authd", "authd", now).unwrap());
        cache.insert(&t, v.clone(), now);
        let hit = cache.get(&kr, &t, now).unwrap().unwrap();
        assert!(Arc::ptr_eq(&hit, &v));
        // Expiry still applies to a cached token.
        let later = now + chrono::Duration::seconds(901 + LEEWAY_SECS);
        assert_eq!(
            cache.get(&kr, &t, later).unwrap().unwrap_err(),
            TokenError::Expired
        );
        // A keyring without the verifying key does not see (and drops) the cached token.
        let other = keyring();
        assert!(cache.get(&other, &t, now).is_none());
        assert!(cache.get(&kr, &t, now).is_none());
    }

    #[test]
    fn the_cache_lifetime_follows_the_given_clock() {
        // A token inserted at a `now` past its expiry is not kept at all, whatever the wall clock.
        let now = Utc::now();
        let kr = keyring();
        let cache = TokenCache::new(100);
        let t = kr.sign(&claims(now)).unwrap();
        let v = Arc::new(kr.verify(&t, "authd", "authd", now).unwrap());
        cache.insert(&t, v, now + chrono::Duration::hours(1));
        assert!(cache.verified.get(cache.key(&t)).is_none());
    }

    #[test]
    fn a_hit_needs_the_same_token_not_just_the_same_hash() {
        let now = Utc::now();
        let kr = keyring();
        let cache = TokenCache::new(100);
        let t = kr.sign(&claims(now)).unwrap();
        let v = Arc::new(kr.verify(&t, "authd", "authd", now).unwrap());
        // Another token's entry planted under this token's key (a forced collision): a miss.
        let other = kr.sign(&claims(now)).unwrap();
        cache.verified.insert(
            cache.key(&t),
            Cached {
                text: Arc::from(other.as_str()),
                token: v,
                dead_at: i64::MAX,
            },
            |_| false,
        );
        assert!(cache.get(&kr, &t, now).is_none());
    }

    #[test]
    fn failures_are_remembered_per_keyring() {
        let kr = Arc::new(keyring());
        let cache = TokenCache::new(100);
        assert_eq!(cache.failure(&kr, "garbage"), None);
        cache.insert_failure(&kr, "garbage", TokenError::Invalid);
        assert_eq!(cache.failure(&kr, "garbage"), Some(TokenError::Invalid));
        assert_eq!(cache.failure(&kr, "garbagf"), None);
        // A new keyring (keys reloaded) judges again.
        assert_eq!(cache.failure(&Arc::new(keyring()), "garbage"), None);
        // A failure older than FAILURE_TTL is forgotten.
        if let Some(past) = std::time::Instant::now().checked_sub(FAILURE_TTL) {
            cache.failed.insert(
                cache.key("old"),
                Failed {
                    text: Arc::from("old"),
                    error: TokenError::Invalid,
                    keyring: Arc::downgrade(&kr),
                    at: past,
                },
                |_| false,
            );
            assert_eq!(cache.failure(&kr, "old"), None);
        }
        // Capacity 0 remembers nothing.
        let none = TokenCache::new(0);
        none.insert_failure(&kr, "garbage", TokenError::Invalid);
        assert_eq!(none.failure(&kr, "garbage"), None);
    }

    #[test]
    fn sign_then_verify() {
        let now = Utc::now();
        let kr = keyring();
        let t = kr.sign(&claims(now)).unwrap();
        let v = kr.verify(&t, "authd", "authd", now).unwrap();
        assert_eq!(v.role, Role::User);
        assert_eq!(Some(v.key_id.as_str()), kr.signer.as_ref().map(Signer::kid));
        // A keyring that publishes a key but has none active yet cannot sign.
        let k = generate_key().unwrap();
        let idle = Keyring::new(None, Verifier::new([k.public_key().unwrap()]));
        assert!(idle.sign(&claims(now)).is_err());
        assert_eq!(
            keyring().verify(&t, "authd", "authd", now).unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn kid_is_the_jwk_thumbprint() {
        // RFC 8037 appendix A.3 test vector.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(
            thumbprint(&x),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn stored_public_keys_must_be_ed25519() {
        assert!(public_key("k", &[0u8; 32]).is_ok());
        assert!(public_key("k", &[0u8; 31]).is_err());
    }
}
