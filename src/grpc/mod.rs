//! The gRPC surface: thin tonic handlers that read metadata, call the domain, and map its errors.
//!
//! [`From<Error> for Status`](#impl-From<Error>-for-Status) is the one place where domain errors
//! become status codes. Messages are human-readable and leak no internals: the detail of
//! UNAVAILABLE and INTERNAL goes to the log only.
//!
//! Handlers do not resolve who is calling: the layers (`crate::layers`) have done it once per call
//! and put it into the request's extensions. [`principal`] reads the authenticated caller,
//! [`client_info`] the client (address, user agent, proxy key, deadline) and [`client_address`]
//! ValidateToken's address.

pub mod auth;
pub mod ext_authz;
pub mod user;

use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::access::Caller;
use crate::domain::accounts::Account;
use crate::domain::accounts::RoleArg;
use crate::domain::{AuthFailure, ClientInfo, Error, Principal, Role};
use crate::layers::client::ClientAddress;
use crate::proto;
use crate::proto::ErrorReason;

/// The `ErrorInfo.domain` of authd's errors.
pub use proto::ERROR_DOMAIN;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::Unauthenticated(f) => unauthenticated(f),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::EmailNotVerified => Status::with_error_details(
                Code::FailedPrecondition,
                "email not verified",
                ErrorDetails::with_error_info(
                    ErrorReason::EmailNotVerified.as_str_name(),
                    ERROR_DOMAIN,
                    HashMap::<String, String>::new(),
                ),
            ),
            Error::ResourceExhausted {
                message,
                retry_after,
            } => {
                let mut status = Status::resource_exhausted(message);
                if let Some(after) = retry_after {
                    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                    if let Ok(v) = secs.max(1).to_string().parse() {
                        status.metadata_mut().insert("retry-after", v);
                    }
                }
                status
            }
            Error::DeadlineExceeded => Status::deadline_exceeded("request timed out"),
            Error::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                Status::unavailable("service temporarily unavailable, retry later")
            }
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

fn unauthenticated(f: AuthFailure) -> Status {
    let (message, reason) = match f {
        AuthFailure::TokenMissing => ("missing bearer token", ErrorReason::TokenMissing),
        AuthFailure::TokenInvalid => ("invalid or revoked access token", ErrorReason::TokenInvalid),
        AuthFailure::TokenExpired => ("access token expired", ErrorReason::TokenExpired),
        AuthFailure::BadCredentials => ("invalid credentials", ErrorReason::InvalidCredentials),
        AuthFailure::BadRefreshToken => (
            "invalid, expired or revoked refresh token",
            ErrorReason::RefreshTokenInvalid,
        ),
        AuthFailure::BadResetToken => (
            "invalid, expired or already used reset token",
            ErrorReason::ResetTokenInvalid,
        ),
        AuthFailure::ServiceKeyMissing => ("missing x-api-key", ErrorReason::ServiceKeyMissing),
        AuthFailure::ServiceKeyInvalid => ("invalid service key", ErrorReason::ServiceKeyInvalid),
        AuthFailure::BadAccountToken => (
            "invalid, used or expired token",
            ErrorReason::AccountTokenInvalid,
        ),
        AuthFailure::MfaTokenInvalid => (
            "invalid, expired or used mfa_token",
            ErrorReason::MfaTokenInvalid,
        ),
        AuthFailure::MfaCodeInvalid => ("invalid code", ErrorReason::MfaCodeInvalid),
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

/// The caller of a method that needs a bearer token, as the auth layer (`layers::auth`)
/// authenticated it before the handler ran.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| missing_extension("authenticated caller"))
}

/// The `authorization` metadata value, if it is readable.
pub fn authorization(md: &MetadataMap) -> Option<&str> {
    md.get("authorization").and_then(|v| v.to_str().ok())
}

/// The `x-api-key` metadata value, if it is readable.
pub fn api_key(md: &MetadataMap) -> Option<&str> {
    // A prebuilt name: looking a header up by `&str` parses the name on every call.
    const X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
    AsRef::<http::HeaderMap>::as_ref(md)
        .get(&X_API_KEY)
        .and_then(|v| v.to_str().ok())
}

/// The caller of a service-authenticated call: a client certificate when the request came over TLS
/// with one and `AUTHD_TLS_CLIENT_CA` is set (`client_certificates`; rustls then has verified it
/// against that CA during the handshake: a certificate that does not verify fails the handshake),
/// else its `x-api-key`.
pub fn caller<T>(req: &Request<T>, client_certificates: bool) -> Caller<'_> {
    if client_certificates
        && let Some(certs) = req.peer_certs()
        && let Some(leaf) = certs.first()
    {
        return Caller::ClientCertificate {
            subject: crate::transport::certificate_subject(leaf),
        };
    }
    Caller::ServiceKey(api_key(req.metadata()))
}

/// The client of the call (address, user agent, proxy key, deadline), as the client layer
/// (`layers::client`) resolved it before the handler ran.
pub fn client_info<T>(req: &Request<T>) -> Result<ClientInfo, Status> {
    req.extensions()
        .get::<ClientInfo>()
        .cloned()
        .ok_or_else(|| missing_extension("client info"))
}

/// ValidateToken's client address (`AUTHD_TRUSTED_PROXIES` only, no proxy key), as the client
/// layer resolved it.
pub fn client_address<T>(req: &Request<T>) -> Result<Option<IpAddr>, Status> {
    req.extensions()
        .get::<ClientAddress>()
        .map(|a| a.0)
        .ok_or_else(|| missing_extension("client address"))
}

fn missing_extension(what: &str) -> Status {
    tracing::error!("no {what} in the request extensions: is a layer missing?");
    Status::internal("internal error")
}

/// A UUID as text (lowercase, hyphenated), written straight into the string: the `Display` route
/// through `fmt` costs several times as much, which counts on ValidateToken's path.
pub fn uuid_text(id: uuid::Uuid) -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    id.hyphenated().encode_lower(&mut buf).to_owned()
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A role number from a request, checked later by the domain (after authorization).
pub fn role_arg(n: i32) -> RoleArg {
    match proto::Role::try_from(n) {
        Ok(proto::Role::Unspecified) => RoleArg::Unspecified,
        Ok(proto::Role::User) => RoleArg::Role(Role::User),
        Ok(proto::Role::Moderator) => RoleArg::Role(Role::Moderator),
        Ok(proto::Role::Admin) => RoleArg::Role(Role::Admin),
        Err(_) => RoleArg::Unknown(n),
    }
}

pub fn role_to_proto(r: Role) -> proto::Role {
    match r {
        Role::User => proto::Role::User,
        Role::Moderator => proto::Role::Moderator,
        Role::Admin => proto::Role::Admin,
    }
}

impl From<Account> for proto::User {
    fn from(a: Account) -> Self {
        proto::User {
            id: a.id.to_string(),
            email: a.email,
            username: a.username.unwrap_or_default(),
            first_name: a.first_name,
            last_name: a.last_name,
            role: role_to_proto(a.role) as i32,
            active: a.active,
            create_time: Some(timestamp(a.create_time)),
            update_time: Some(timestamp(a.update_time)),
            last_login_time: a.last_login_time.map(timestamp),
            email_verified: a.email_verified,
            email_verify_time: a.email_verify_time.map(timestamp),
        }
    }
}
