//! Access checks: bearer authentication of API calls, service keys, and ValidateToken for other
//! services, over the verified-token cache. The revocation check itself lives in
//! `sessions/revocation.rs`.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{self, service_keys, sessions};
use crate::domain::opaque::MAX_OPAQUE_BYTES;
use crate::domain::service_keys::SERVICE_KEY_TOUCH_SECS;
use crate::domain::tokens::{self, TokenError, VerifiedToken};
use crate::domain::views::ServiceKeyEntry;
use crate::domain::{AuthFailure, Authd, Error, Principal, Result};

/// The answer of ValidateToken; `None` means "not a live access token".
pub type Introspection = Option<Arc<VerifiedToken>>;

/// Who calls ValidateToken, as the transport established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A TLS client whose certificate verified against `AUTHD_TLS_CLIENT_CA`: any certificate that
    /// CA signed is a trusted service, so no service key is needed.
    ClientCertificate { subject: String },
    /// Any other caller, with the `x-api-key` it sent, if any.
    ServiceKey(Option<&'a str>),
}

/// The error of a refused access token.
fn invalid(e: TokenError) -> Error {
    Error::Unauthenticated(match e {
        TokenError::Expired => AuthFailure::TokenExpired,
        TokenError::Invalid => AuthFailure::TokenInvalid,
    })
}

impl Authd {
    /// Verifies an access token: signature and claims (once per token, then from the cache), and,
    /// the first time this replica sees it, that its session exists and is not revoked in the
    /// database, so that a correctly signed token of a session that never existed is refused too.
    /// Revocation after that is the revocation view's job: see [`Authd::live_access_token`].
    pub(in crate::domain) async fn verify_access_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Arc<VerifiedToken>> {
        if token.is_empty() || token.len() > tokens::MAX_TOKEN_BYTES {
            return Err(invalid(TokenError::Invalid));
        }
        let keyring = self.keyring();
        if let Some(hit) = self.token_cache.get(&keyring, token, now) {
            return hit.map_err(invalid);
        }
        if let Some(e) = self.token_cache.failure(&keyring, token) {
            return Err(invalid(e));
        }
        // Boxed: the future of a database query is large, and the cached path above, which is
        // nearly every call, would otherwise carry (and copy) its space.
        Box::pin(self.verify_uncached(token, keyring, now)).await
    }

    /// [`Authd::verify_access_token`] for a token neither cache knows.
    async fn verify_uncached(
        &self,
        token: &str,
        keyring: Arc<tokens::Keyring>,
        now: DateTime<Utc>,
    ) -> Result<Arc<VerifiedToken>> {
        let refuse = |e: TokenError| {
            self.token_cache.insert_failure(&keyring, token, e);
            invalid(e)
        };
        let v = keyring
            .verify(
                token,
                &self.settings.tokens.issuer,
                &self.settings.tokens.audience,
                now,
            )
            .map_err(refuse)?;
        if !sessions::is_active(&mut *self.conn().await?, v.session_id).await? {
            return Err(refuse(TokenError::Invalid));
        }
        let v = Arc::new(v);
        self.token_cache.insert(token, v.clone(), now);
        Ok(v)
    }

    /// Authenticates an `authorization` metadata value: a valid access token of a live session.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        let value = authorization
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(Error::Unauthenticated(AuthFailure::TokenMissing))?;
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => return Err(Error::Unauthenticated(AuthFailure::TokenInvalid)),
        };
        let v = self.live_access_token(token, self.now()).await?;
        Ok(Principal {
            user_id: v.user_id,
            session_id: v.session_id,
            role: v.role,
            email: v.email.clone(),
            amr: v.amr.clone(),
        })
    }

    /// Authenticates a service key (`x-api-key`) presented from `source` (the caller's address as
    /// `AUTHD_TRUSTED_PROXIES` resolve it). Answered from the in-memory view alone: a key it does not
    /// hold (unknown, revoked, or created on another replica since the last poll, 250 ms ago at
    /// most) is refused without a database query. A refused key, or one used from outside its
    /// `allowed_cidrs`, takes a token from the caller's per-IP rate limit, so guessing keys is as
    /// slow as any other abuse from one address.
    pub async fn authenticate_service_key(
        &self,
        key: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<Uuid> {
        self.authenticate_service_key_at(key, source, self.now())
    }

    /// [`Authd::authenticate_service_key`] at `now` (one clock reading for a whole call).
    fn authenticate_service_key_at(
        &self,
        key: Option<&str>,
        source: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<Uuid> {
        let key = key
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(Error::Unauthenticated(AuthFailure::ServiceKeyMissing))?;
        self.views.check_fresh()?;
        let entry = (key.len() <= MAX_OPAQUE_BYTES)
            .then(|| self.key_digests.digest(key))
            .and_then(|(hash, remembered)| {
                let entry = self.views.service_key(&hash).filter(|e| e.matches(&hash))?;
                if !remembered {
                    self.key_digests.remember(key, hash);
                }
                Some(entry)
            })
            .filter(|e| e.allows(source));
        let Some(entry) = entry else {
            self.rate_limiter.check(source)?;
            return Err(Error::Unauthenticated(AuthFailure::ServiceKeyInvalid));
        };
        let debounce = chrono::Duration::seconds(SERVICE_KEY_TOUCH_SECS);
        if entry.claim_touch(now, debounce) {
            // Off the request path: the caller does not wait for this write.
            let (pool, id) = (self.pool.clone(), entry.id);
            tokio::spawn(async move {
                let touched = async {
                    let mut conn = db::conn(&pool).await?;
                    service_keys::touch(&mut conn, id, now, debounce).await
                };
                if let Err(e) = touched.await {
                    tracing::debug!(error = %e, "recording a service key's last use failed");
                }
            });
        }
        Ok(entry.id)
    }

    /// The unrevoked proxy service key (`trusted_proxy`) presented as `x-api-key`, from the in-memory
    /// view (no database query). `None` for anything else: no key, an unknown or revoked key, a key
    /// that is not a proxy key, or a view that may be stale (the key may have been revoked). The
    /// caller checks the key's `allowed_cidrs` against the address the key was presented from.
    pub fn proxy_key(&self, key: Option<&str>) -> Option<Arc<ServiceKeyEntry>> {
        let key = key.map(str::trim).filter(|k| !k.is_empty())?;
        if key.len() > MAX_OPAQUE_BYTES || self.views.check_fresh().is_err() {
            return None;
        }
        let (hash, remembered) = self.key_digests.digest(key);
        let entry = self.views.service_key(&hash).filter(|e| e.matches(&hash))?;
        if !remembered {
            self.key_digests.remember(key, hash);
        }
        Some(entry).filter(|e| e.trusted_proxy)
    }

    /// The caller of ValidateToken or WatchRevocations, a service that verifies tokens: a verified
    /// client certificate, or a service key presented from `source` (see
    /// [`Authd::authenticate_service_key`]). Anyone when `AUTHD_VALIDATE_REQUIRE_KEY=false`.
    pub async fn authenticate_verifier(
        &self,
        caller: Caller<'_>,
        source: Option<IpAddr>,
    ) -> Result<()> {
        self.authenticate_verifier_at(caller, source, self.now())
    }

    /// [`Authd::authenticate_verifier`] at `now`.
    fn authenticate_verifier_at(
        &self,
        caller: Caller<'_>,
        source: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if self.settings.access.validate_require_key {
            match caller {
                Caller::ClientCertificate { subject } => {
                    tracing::debug!(%subject, "caller trusted by its client certificate");
                }
                Caller::ServiceKey(key) => {
                    self.authenticate_service_key_at(key, source, now)?;
                }
            }
        }
        Ok(())
    }

    /// ValidateToken: the caller first (a verified client certificate, or a service key; unless
    /// `AUTHD_VALIDATE_REQUIRE_KEY=false`), then the token.
    /// `source` is the caller's address (see [`Authd::authenticate_service_key`]).
    pub async fn validate_token(
        &self,
        caller: Caller<'_>,
        source: Option<IpAddr>,
        token: &str,
    ) -> Result<Introspection> {
        // One clock reading for the whole call.
        let now = self.now();
        self.authenticate_verifier_at(caller, source, now)?;
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::invalid("access_token is required"));
        }
        if token.len() > tokens::MAX_TOKEN_BYTES {
            return Err(Error::invalid(format!(
                "access_token must be at most {} bytes",
                tokens::MAX_TOKEN_BYTES
            )));
        }
        match self.live_access_token(token, now).await {
            Ok(v) => Ok(Some(v)),
            Err(Error::Unauthenticated(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
