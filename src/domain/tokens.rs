//! Access tokens: RFC 9068 JWTs signed with EdDSA (Ed25519), and the keyring that signs and verifies them.
//!
//! Verification pins the algorithm to EdDSA, requires header `typ: at+jwt` and a known `kid`, refuses
//! headers that try to bring their own key (`jwk`, `jku`, `x5u`, `x5c`) or `crit` extensions, and checks
//! `iss`, `aud`, `exp` and `nbf` against the injected clock with a leeway of [`LEEWAY_SECS`].

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeZone, Utc};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Error, Result, Role};
use crate::db::models::SigningKey;

/// The JOSE `typ` of access tokens (RFC 9068 section 2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: i64 = 2;
/// Tokens longer than this are rejected before parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    pub sid: String,
    pub role: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
}

/// A token that passed every check except the session's revocation state, which the caller checks.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// The `kid` that verified it.
    pub key_id: String,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub role: Role,
    pub email: String,
    pub username: Option<String>,
    pub issue_time: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Invalid,
    Expired,
}

/// A public key as published in JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    pub kid: String,
    /// base64url of the 32-byte Ed25519 public key.
    pub x: String,
}

/// A freshly generated Ed25519 key pair, ready to store.
pub struct GeneratedKey {
    pub kid: String,
    pub private_pkcs8: Vec<u8>,
    pub public: Vec<u8>,
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

/// The signing key in use and every key that may verify.
pub struct Keyring {
    signer: Option<(String, EncodingKey)>,
    verifiers: HashMap<String, DecodingKey>,
    jwks: Vec<PublicJwk>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("signing_kid", &self.signer.as_ref().map(|(k, _)| k))
            .field(
                "verifying_kids",
                &self.jwks.iter().map(|j| &j.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// Builds the keyring from unretired key rows: the newest key already active at `now` signs;
    /// every row verifies and is published.
    pub fn from_rows(rows: &[SigningKey], now: DateTime<Utc>) -> Result<Self> {
        let mut verifiers = HashMap::new();
        let mut jwks = Vec::new();
        let mut signer: Option<(DateTime<Utc>, String, EncodingKey)> = None;
        for row in rows {
            if row.algorithm != "EdDSA" || row.public_key.len() != 32 {
                return Err(Error::internal(format!(
                    "signing key {} is not an Ed25519 key",
                    row.kid
                )));
            }
            verifiers.insert(row.kid.clone(), DecodingKey::from_ed_der(&row.public_key));
            jwks.push(PublicJwk {
                kid: row.kid.clone(),
                x: URL_SAFE_NO_PAD.encode(&row.public_key),
            });
            let newer = signer
                .as_ref()
                .is_none_or(|(t, _, _)| row.activate_time > *t);
            if row.activate_time <= now && newer {
                signer = Some((
                    row.activate_time,
                    row.kid.clone(),
                    EncodingKey::from_ed_der(&row.private_key),
                ));
            }
        }
        Ok(Self {
            signer: signer.map(|(_, kid, key)| (kid, key)),
            verifiers,
            jwks,
        })
    }

    /// The published keys.
    pub fn jwks(&self) -> &[PublicJwk] {
        &self.jwks
    }

    /// Signs `claims` with the active key.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String> {
        let (kid, key) = self
            .signer
            .as_ref()
            .ok_or_else(|| Error::internal("no active signing key"))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, claims, key)
            .map_err(|e| Error::internal(format!("cannot sign token: {e}")))
    }

    /// Verifies signature, header and claims of an access token at `now`.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: DateTime<Utc>,
    ) -> std::result::Result<VerifiedToken, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if header.alg != Algorithm::EdDSA
            || !typ_ok
            || header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
            || header.crit.is_some()
        {
            return Err(TokenError::Invalid);
        }
        let (key_id, key) = header
            .kid
            .and_then(|kid| self.verifiers.get(&kid).map(|key| (kid, key)))
            .ok_or(TokenError::Invalid)?;

        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        // Time is checked below against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "nbf", "sub", "iss", "aud"]);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &validation)
            .map_err(|_| TokenError::Invalid)?;
        let c = data.claims;

        let now_s = now.timestamp();
        if c.nbf > now_s + LEEWAY_SECS || c.iat > now_s + LEEWAY_SECS {
            return Err(TokenError::Invalid);
        }
        // Saturating: a signed `exp` near i64::MAX must not overflow (found in review, confirmed with
        // the fuzz harness; seed fuzz/seeds/token_validation/m2-regress-exp-i64-max).
        if now_s >= c.exp.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        let user_id = Uuid::parse_str(&c.sub).map_err(|_| TokenError::Invalid)?;
        let session_id = Uuid::parse_str(&c.sid).map_err(|_| TokenError::Invalid)?;
        let role = Role::parse(&c.role).ok_or(TokenError::Invalid)?;
        let ts = |s: i64| Utc.timestamp_opt(s, 0).single().ok_or(TokenError::Invalid);
        Ok(VerifiedToken {
            key_id,
            user_id,
            session_id,
            role,
            email: c.email,
            username: c.preferred_username,
            issue_time: ts(c.iat)?,
            expire_time: ts(c.exp)?,
        })
    }
}

/// A bounded cache of verified access tokens (`AUTHD_TOKEN_CACHE_SIZE` entries), keyed by the
/// SHA-256 of the token and kept until the token's `exp` plus leeway. Verifying an EdDSA signature
/// costs about as much as the rest of a ValidateToken call; a cached token costs a hash and a
/// lookup. Only the signature and claims are cached: revocation is checked on every call.
pub struct TokenCache(moka::sync::Cache<[u8; 32], Arc<VerifiedToken>>);

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.0.entry_count())
            .finish()
    }
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 caches nothing.
    pub fn new(capacity: u64) -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExpiry)
                .build(),
        )
    }

    /// The cache key of a token: its SHA-256.
    pub fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// A token verified before: `None` if unknown (or its key left `keyring`, which then forgets
    /// it), else the verified token, or `Expired` once past `exp` plus leeway at `now`.
    pub fn get(
        &self,
        keyring: &Keyring,
        digest: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Option<std::result::Result<Arc<VerifiedToken>, TokenError>> {
        let v = self.0.get(digest)?;
        if !keyring.verifiers.contains_key(&v.key_id) {
            self.0.invalidate(digest);
            return None;
        }
        if now.timestamp() >= v.expire_time.timestamp().saturating_add(LEEWAY_SECS) {
            return Some(Err(TokenError::Expired));
        }
        Some(Ok(v))
    }

    /// Remembers a token that passed [`Keyring::verify`] (and any further checks of the caller).
    pub fn insert(&self, digest: [u8; 32], token: Arc<VerifiedToken>) {
        self.0.insert(digest, token);
    }
}

/// Expires a cached token when it does.
struct UntilExpiry;

impl moka::Expiry<[u8; 32], Arc<VerifiedToken>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<VerifiedToken>,
        _created_at: std::time::Instant,
    ) -> Option<std::time::Duration> {
        let until = value.expire_time + chrono::Duration::seconds(LEEWAY_SECS);
        Some((until - Utc::now()).to_std().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(now: DateTime<Utc>) -> Keyring {
        let k = generate_key().unwrap();
        let row = SigningKey {
            kid: k.kid,
            algorithm: "EdDSA".into(),
            private_key: k.private_pkcs8,
            public_key: k.public,
            create_time: now,
            activate_time: now,
            retire_time: None,
            encrypted: false,
        };
        Keyring::from_rows(&[row], now).unwrap()
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
        }
    }

    #[test]
    fn cached_verification() {
        let now = Utc::now();
        let kr = keyring(now);
        let cache = TokenCache::new(100);
        let t = kr.sign(&claims(now)).unwrap();
        let d = TokenCache::digest(&t);
        assert!(cache.get(&kr, &d, now).is_none());
        let v = Arc::new(kr.verify(&t, "authd", "authd", now).unwrap());
        cache.insert(d, v.clone());
        let hit = cache.get(&kr, &d, now).unwrap().unwrap();
        assert!(Arc::ptr_eq(&hit, &v));
        // Expiry still applies to a cached token.
        let later = now + chrono::Duration::seconds(901 + LEEWAY_SECS);
        assert_eq!(
            cache.get(&kr, &d, later).unwrap().unwrap_err(),
            TokenError::Expired
        );
        // A keyring without the verifying key does not see (and drops) the cached token.
        let other = keyring(now);
        assert!(cache.get(&other, &d, now).is_none());
        assert!(cache.get(&kr, &d, now).is_none());
    }

    #[test]
    fn round_trip_and_expiry() {
        let now = Utc::now();
        let kr = keyring(now);
        let t = kr.sign(&claims(now)).unwrap();
        let v = kr.verify(&t, "authd", "authd", now).unwrap();
        assert_eq!(v.role, Role::User);
        assert_eq!(
            kr.verify(
                &t,
                "authd",
                "authd",
                now + chrono::Duration::seconds(901 + LEEWAY_SECS)
            )
            .unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(
            kr.verify(&t, "other", "authd", now).unwrap_err(),
            TokenError::Invalid
        );
        assert_eq!(
            kr.verify(&t, "authd", "other", now).unwrap_err(),
            TokenError::Invalid
        );
        // Not yet valid (issued in the future).
        assert_eq!(
            kr.verify(&t, "authd", "authd", now - chrono::Duration::seconds(60))
                .unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn a_foreign_key_does_not_verify() {
        let now = Utc::now();
        let t = keyring(now).sign(&claims(now)).unwrap();
        assert_eq!(
            keyring(now).verify(&t, "authd", "authd", now).unwrap_err(),
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
}
