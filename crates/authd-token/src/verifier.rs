//! [`Verifier`]: the RFC 9068 / RFC 8725 checks of an access token against a set of Ed25519 public
//! keys, at a time the caller passes in.
//!
//! Verification pins the algorithm to EdDSA, requires header `typ: at+jwt` and a known `kid`, refuses
//! headers that try to bring their own key (`jwk`, `jku`, `x5u`, `x5c`) or `crit` extensions, and checks
//! `iss`, `aud`, `exp` and `nbf` against `now` with a leeway of [`LEEWAY_SECS`].
//!
//! The cheap checks come first: header, a known `kid`, then `exp`, `iss` and `aud` read from the
//! unverified payload. A token that fails them is refused without the signature check (the answer
//! is a refusal either way, and an expired token costs a fraction of a signature); the claims are
//! checked again, from the verified payload, after the signature.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use uuid::Uuid;

use crate::{
    ACCESS_TOKEN_TYP, AccessClaims, Jwks, LEEWAY_SECS, MAX_TOKEN_BYTES, PublicJwk, Role,
    VerifiedToken,
};

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Malformed, badly signed, of the wrong type, issuer or audience, not yet valid, or signed by
    /// an unknown (or retired) key.
    #[error("invalid access token")]
    Invalid,
    /// Past `exp` (plus leeway): refresh and retry. Checked before the signature, so a badly signed
    /// token past its `exp` is refused as expired too.
    #[error("access token expired")]
    Expired,
}

/// One key that may verify tokens: its `kid`, the raw 32-byte Ed25519 public key, and until when it
/// verifies (`None`: for as long as the verifier holds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub ed25519: [u8; 32],
    /// From this time on the key verifies nothing (authd retires a key once every token it may have
    /// signed has expired).
    pub valid_until: Option<DateTime<Utc>>,
}

impl PublicKey {
    /// A key without an end of validity.
    pub fn new(kid: impl Into<String>, ed25519: [u8; 32]) -> Self {
        Self {
            kid: kid.into(),
            ed25519,
            valid_until: None,
        }
    }

    /// The same key, verifying only before `valid_until` (`None`: no end).
    pub fn valid_until(mut self, valid_until: Option<DateTime<Utc>>) -> Self {
        self.valid_until = valid_until;
        self
    }
}

struct Key {
    decoding: DecodingKey,
    valid_until: Option<DateTime<Utc>>,
}

/// Verifies access tokens against a set of Ed25519 public keys, found by the token's `kid`.
/// Cheap to query from many threads; rebuild it to change the keys.
pub struct Verifier {
    keys: HashMap<String, Key, foldhash::fast::RandomState>,
    jwks: Vec<PublicJwk>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "kids",
                &self.jwks.iter().map(|j| &j.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Verifier {
    /// A verifier of `keys` (a later key with the same `kid` replaces an earlier one).
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut v = Self {
            keys: HashMap::default(),
            jwks: Vec::new(),
        };
        for k in keys {
            let jwk = PublicJwk::ed25519(&k.kid, &k.ed25519);
            // jsonwebtoken's `from_ed_der` takes the raw 32-byte key, not DER.
            let key = Key {
                decoding: DecodingKey::from_ed_der(&k.ed25519),
                valid_until: k.valid_until,
            };
            if v.keys.insert(k.kid.clone(), key).is_some() {
                v.jwks.retain(|j| j.kid != k.kid);
            }
            v.jwks.push(jwk);
        }
        v
    }

    /// A verifier of the Ed25519 signature keys of a JWKS document; other keys are skipped.
    pub fn from_jwks(set: &Jwks) -> Self {
        Self::new(set.keys.iter().filter_map(|jwk| {
            jwk.ed25519_public_key()
                .map(|x| PublicKey::new(jwk.kid.clone(), x))
        }))
    }

    /// The keys, as published (in the order given).
    pub fn jwks(&self) -> &[PublicJwk] {
        &self.jwks
    }

    /// The keys as a JWKS document.
    pub fn jwk_set(&self) -> Jwks {
        Jwks {
            keys: self.jwks.clone(),
        }
    }

    /// Whether `kid` is one of the keys and still verifies at `now`.
    pub fn accepts_key(&self, kid: &str, now: DateTime<Utc>) -> bool {
        self.keys.get(kid).is_some_and(|k| key_valid(k, now))
    }

    /// Verifies signature, header and claims of an access token at `now`. Revocation of its
    /// session is not checked (a token cannot know it): that is the caller's part.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: DateTime<Utc>,
    ) -> Result<VerifiedToken, TokenError> {
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
            .and_then(|kid| self.keys.get(&kid).map(|key| (kid, key)))
            .ok_or(TokenError::Invalid)?;
        cheap_claims(token, issuer, audience, now)?;

        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        // Time is checked below against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "nbf", "sub", "iss", "aud"]);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation)
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
        // After the expiry check: a retired key's tokens have expired, and say so.
        if !key_valid(key, now) {
            return Err(TokenError::Invalid);
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
            amr: c.amr,
        })
    }
}

/// The claims that cost no signature check, read from the unverified payload: `exp` (against `now`
/// with [`LEEWAY_SECS`]), `iss` and `aud`. Anything unreadable is left to the full check.
fn cheap_claims(
    token: &str,
    issuer: &str,
    audience: &str,
    now: DateTime<Utc>,
) -> Result<(), TokenError> {
    use base64::Engine;

    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Audience {
        One(String),
        Many(Vec<String>),
    }
    #[derive(serde::Deserialize)]
    struct Cheap {
        exp: Option<i64>,
        iss: Option<String>,
        aud: Option<Audience>,
    }
    let Some(payload) = token.split('.').nth(1) else {
        return Err(TokenError::Invalid);
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Invalid)?;
    let Ok(c) = serde_json::from_slice::<Cheap>(&raw) else {
        // Not the shape this check reads: the full decode below decides (and refuses).
        return Ok(());
    };
    if c.exp
        .is_some_and(|exp| now.timestamp() >= exp.saturating_add(LEEWAY_SECS))
    {
        return Err(TokenError::Expired);
    }
    if c.iss.as_deref().is_some_and(|iss| iss != issuer) {
        return Err(TokenError::Invalid);
    }
    let aud_ok = match &c.aud {
        None => true,
        Some(Audience::One(a)) => a == audience,
        Some(Audience::Many(list)) => list.iter().any(|a| a == audience),
    };
    if !aud_ok {
        return Err(TokenError::Invalid);
    }
    Ok(())
}

fn key_valid(key: &Key, now: DateTime<Utc>) -> bool {
    key.valid_until.is_none_or(|t| now < t)
}

#[cfg(test)]
mod tests;
