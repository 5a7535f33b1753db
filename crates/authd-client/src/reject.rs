//! [`Rejection`]: why the layer refused a call, and the status it answers, with the same
//! `google.rpc.ErrorInfo` (domain `authd`, reasons TOKEN_MISSING, TOKEN_INVALID, TOKEN_EXPIRED) as
//! authd's own bearer-protected methods, so that one client-side rule (refresh on TOKEN_EXPIRED,
//! log in again otherwise) serves both.

use std::collections::HashMap;

use authd_proto::{ERROR_DOMAIN, ErrorReason};
use authd_token::Role;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No `authorization` metadata: UNAUTHENTICATED, TOKEN_MISSING.
    Missing,
    /// Malformed, badly signed, wrong issuer or audience, unknown key, or revoked session:
    /// UNAUTHENTICATED, TOKEN_INVALID.
    Invalid,
    /// Past its `exp`: UNAUTHENTICATED, TOKEN_EXPIRED (refresh and retry).
    Expired,
    /// Authenticated, but the method requires a higher role: PERMISSION_DENIED.
    Forbidden(Role),
    /// The layer cannot vouch for revocations (the stream is silent, or has not delivered its
    /// snapshot yet), or ValidateToken could not be reached: UNAVAILABLE.
    Unavailable,
}

impl Rejection {
    /// The status sent to the caller.
    pub fn into_status(self) -> Status {
        let (message, reason) = match self {
            Rejection::Missing => ("missing bearer token", ErrorReason::TokenMissing),
            Rejection::Invalid => ("invalid or revoked access token", ErrorReason::TokenInvalid),
            Rejection::Expired => ("access token expired", ErrorReason::TokenExpired),
            Rejection::Forbidden(role) => {
                return Status::permission_denied(format!("this method requires the {role} role"));
            }
            Rejection::Unavailable => {
                return Status::unavailable(
                    "cannot check access tokens right now (authd unreachable), retry later",
                );
            }
        };
        Status::with_error_details(
            Code::Unauthenticated,
            message,
            ErrorDetails::with_error_info(
                reason.as_str_name(),
                ERROR_DOMAIN,
                HashMap::<String, String>::new(),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_authds_error_info() {
        for (r, reason) in [
            (Rejection::Missing, "TOKEN_MISSING"),
            (Rejection::Invalid, "TOKEN_INVALID"),
            (Rejection::Expired, "TOKEN_EXPIRED"),
        ] {
            let s = r.into_status();
            assert_eq!(s.code(), Code::Unauthenticated);
            let info = s.get_details_error_info().unwrap();
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, "authd");
        }
        let s = Rejection::Forbidden(Role::Admin).into_status();
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(
            Rejection::Unavailable.into_status().code(),
            Code::Unavailable
        );
    }
}
