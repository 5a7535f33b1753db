//! Envoy ext_authz decisions (`envoy.service.auth.v3.Authorization/Check`, served by
//! `grpc::ext_authz`): the same two steps as ValidateToken, with a per-route role on top.
//!
//! 1. **The caller** (Envoy) is authenticated exactly like a ValidateToken caller: a verified client
//!    certificate or an `x-api-key` service key (unless `AUTHD_VALIDATE_REQUIRE_KEY=false`). A
//!    caller that fails this gets an error, i.e. a failed RPC: Envoy (fail-closed) answers 403.
//! 2. **The token** from the HTTP request's `authorization: Bearer …` gets the same live check as
//!    ValidateToken and bearer-authenticated calls ([`Authd::authenticate`]): verified-token cache
//!    and revocation view, no database round trip on the hot path, revocations within 1 s.
//!
//! Every outcome after step 1 is a [`Decision`], never an error: Envoy would let a failed RPC
//! through when `failure_mode_allow: true`, so even a stale revocation view is a denial (HTTP 503).

use std::net::IpAddr;

use crate::domain::access::Caller;
use crate::domain::{AuthFailure, Authd, Error, Principal, Result, Role};
use crate::metric_names::{EXT_AUTHZ_CHECKS, EXT_AUTHZ_RESULTS};

/// The role a route requires (Envoy's per-route `context_extensions` key `authd_required_role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequiredRole {
    /// No role named: any authenticated user passes.
    Any,
    /// This role or a more powerful one (`User < Moderator < Admin`).
    AtLeast(Role),
    /// A value authd does not know: a configuration error, denied (see [`Decision::Misconfigured`]).
    Unknown,
}

/// What Check answers once the caller is authenticated.
#[derive(Debug, Clone)]
pub enum Decision {
    /// A live token with a sufficient role: forward the request, with the caller's identity.
    Allow(Principal),
    /// Missing, malformed, invalid, expired or revoked token: HTTP 401.
    Deny(AuthFailure),
    /// A live token whose role is below the route's: HTTP 403.
    Forbidden { role: Role, required: Role },
    /// The route names a role authd does not know (`authd_required_role`): denied, and logged.
    Misconfigured,
    /// authd cannot decide now (stale revocation view, database down): HTTP 503.
    Unavailable,
}

impl Decision {
    /// The `result` label of [`EXT_AUTHZ_CHECKS`].
    pub fn result(&self) -> &'static str {
        let i = match self {
            Decision::Allow(_) => 0,
            Decision::Deny(_) => 1,
            Decision::Forbidden { .. } => 2,
            Decision::Misconfigured => 3,
            Decision::Unavailable => 4,
        };
        EXT_AUTHZ_RESULTS[i]
    }
}

impl Authd {
    /// Envoy ext_authz Check: see the module doc. `authorization` is the HTTP request's header.
    /// Errors are about the caller only (UNAUTHENTICATED without a valid key; RESOURCE_EXHAUSTED
    /// when its address is over the rate limit for bad keys).
    pub async fn ext_authz_check(
        &self,
        caller: Caller<'_>,
        source: Option<IpAddr>,
        authorization: Option<&str>,
        required: RequiredRole,
    ) -> Result<Decision> {
        let decision = match self.authenticate_verifier(caller, source).await {
            Ok(()) => self.ext_authz_decide(authorization, required).await,
            // A stale view cannot vouch for the key either; still a denial, not a failed RPC.
            Err(Error::Unavailable(detail)) => {
                tracing::warn!(%detail, "ext_authz check answered 503");
                Decision::Unavailable
            }
            Err(e) => return Err(e),
        };
        metrics::counter!(EXT_AUTHZ_CHECKS, "result" => decision.result()).increment(1);
        Ok(decision)
    }

    async fn ext_authz_decide(
        &self,
        authorization: Option<&str>,
        required: RequiredRole,
    ) -> Decision {
        if required == RequiredRole::Unknown {
            tracing::error!(
                "ext_authz: the route's authd_required_role is not ROLE_USER, ROLE_MODERATOR or ROLE_ADMIN; \
                 every request on it is denied (fix the Envoy configuration)"
            );
            return Decision::Misconfigured;
        }
        match self.authenticate(authorization).await {
            Ok(p) => match required {
                RequiredRole::AtLeast(role) if p.role < role => Decision::Forbidden {
                    role: p.role,
                    required: role,
                },
                _ => Decision::Allow(p),
            },
            Err(Error::Unauthenticated(f)) => Decision::Deny(f),
            Err(Error::Unavailable(detail) | Error::Internal(detail)) => {
                tracing::warn!(%detail, "ext_authz check answered 503");
                Decision::Unavailable
            }
            Err(e) => {
                tracing::warn!(error = %e, "ext_authz check answered 503");
                Decision::Unavailable
            }
        }
    }
}
