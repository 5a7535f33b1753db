//! Remote mode: every call asks authd's ValidateToken (with the service key), for services that
//! prefer not to hold keys or a stream.
//!
//! Nothing is cached: each call costs one round trip to authd, and a revocation holds exactly as
//! quickly as authd's own view sees it (within a second on every replica). A service for which
//! that round trip is too dear uses local mode.
//!
//! ValidateToken answers `valid = false` for every token it refuses, without saying why. So that
//! clients still learn when to refresh, a refused token whose payload (read without verification)
//! has an `exp` in the past gets TOKEN_EXPIRED; every other refusal is TOKEN_INVALID. The unverified
//! payload only ever chooses between two refusals, never grants anything.

use std::sync::Arc;
use std::time::Duration;

use authd_proto::auth_service_client::AuthServiceClient;
use authd_proto::{ValidateTokenRequest, ValidateTokenResponse};
use authd_token::{LEEWAY_SECS, MAX_TOKEN_BYTES, Role};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use tonic::transport::Channel;
use uuid::Uuid;

use crate::clock::Clock;
use crate::key::ServiceKey;
use crate::principal::Principal;
use crate::reject::Rejection;

#[derive(Clone)]
pub(crate) struct Remote {
    pub(crate) client: AuthServiceClient<Channel>,
    pub(crate) key: ServiceKey,
    pub(crate) timeout: Duration,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Remote {
    pub(crate) async fn check(self, token: String) -> Result<Principal, Rejection> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::Invalid);
        }
        let refusal = self.refusal(&token);
        let mut req = tonic::Request::new(ValidateTokenRequest {
            access_token: token,
        });
        self.key.add_to(req.metadata_mut());
        let mut client = self.client;
        let reply = match tokio::time::timeout(self.timeout, client.validate_token(req)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                // A bad service key is this service's misconfiguration, not the caller's fault.
                tracing::warn!(code = ?status.code(), message = status.message(), "authd-client: ValidateToken failed");
                return Err(Rejection::Unavailable);
            }
            Err(_) => {
                tracing::warn!("authd-client: ValidateToken timed out");
                return Err(Rejection::Unavailable);
            }
        };
        principal(reply).ok_or(refusal)
    }

    /// The refusal for a token ValidateToken called invalid: see the module doc.
    fn refusal(&self, token: &str) -> Rejection {
        match unverified_exp(token) {
            Some(exp) if self.clock.now().timestamp() >= exp.saturating_add(LEEWAY_SECS) => {
                Rejection::Expired
            }
            _ => Rejection::Invalid,
        }
    }
}

/// The principal of a `valid` answer; `None` if it is not valid or does not parse.
pub(crate) fn principal(r: ValidateTokenResponse) -> Option<Principal> {
    if !r.valid {
        return None;
    }
    let time = |t: Option<prost_types::Timestamp>| -> Option<DateTime<Utc>> {
        let t = t?;
        DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
    };
    let role = match authd_proto::Role::try_from(r.role).ok()? {
        authd_proto::Role::User => Role::User,
        authd_proto::Role::Moderator => Role::Moderator,
        authd_proto::Role::Admin => Role::Admin,
        authd_proto::Role::Unspecified => return None,
    };
    // An authd older than the second factor sends no amr: its sessions are password logins.
    let amr = if r.amr.is_empty() {
        authd_token::default_amr()
    } else {
        r.amr
    };
    Some(Principal::build(
        Uuid::parse_str(&r.user_id).ok()?,
        Uuid::parse_str(&r.session_id).ok()?,
        role,
        r.email,
        Some(r.username),
        (time(r.issue_time)?, time(r.expire_time)?),
        amr,
    ))
}

fn unverified_exp(token: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Exp {
        exp: i64,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Exp>(&bytes).ok().map(|e| e.exp)
}
