//! The gRPC surface: thin tonic handlers that read metadata, call the domain, and map its errors.
//!
//! [`From<Error> for Status`](#impl-From<Error>-for-Status) is the one place where domain errors
//! become status codes. Messages are human-readable and leak no internals: the detail of
//! UNAVAILABLE and INTERNAL goes to the log only.

pub mod auth;
pub mod user;

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use chrono::{DateTime, Utc};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::Config;
use crate::domain::accounts::RoleArg;
use crate::domain::service::{Account, Caller};
use crate::domain::{AuthFailure, ClientInfo, Error, Role};
use crate::proto;

/// The `ErrorInfo.domain` of authd's errors.
pub const ERROR_DOMAIN: &str = "authd";

/// ErrorInfo reasons on UNAUTHENTICATED replies.
pub mod reason {
    pub const TOKEN_MISSING: &str = "TOKEN_MISSING";
    pub const TOKEN_INVALID: &str = "TOKEN_INVALID";
    pub const TOKEN_EXPIRED: &str = "TOKEN_EXPIRED";
    pub const INVALID_CREDENTIALS: &str = "INVALID_CREDENTIALS";
    pub const REFRESH_TOKEN_INVALID: &str = "REFRESH_TOKEN_INVALID";
    pub const SERVICE_KEY_MISSING: &str = "SERVICE_KEY_MISSING";
    pub const SERVICE_KEY_INVALID: &str = "SERVICE_KEY_INVALID";
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::Unauthenticated(f) => unauthenticated(f),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
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
        AuthFailure::TokenMissing => ("missing bearer token", reason::TOKEN_MISSING),
        AuthFailure::TokenInvalid => ("invalid or revoked access token", reason::TOKEN_INVALID),
        AuthFailure::TokenExpired => ("access token expired", reason::TOKEN_EXPIRED),
        AuthFailure::BadCredentials => ("invalid credentials", reason::INVALID_CREDENTIALS),
        AuthFailure::BadRefreshToken => (
            "invalid, expired or revoked refresh token",
            reason::REFRESH_TOKEN_INVALID,
        ),
        AuthFailure::ServiceKeyMissing => ("missing x-api-key", reason::SERVICE_KEY_MISSING),
        AuthFailure::ServiceKeyInvalid => ("invalid service key", reason::SERVICE_KEY_INVALID),
    };
    Status::with_error_details(
        Code::Unauthenticated,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new()),
    )
}

/// The `authorization` metadata value, if it is readable.
pub fn authorization(md: &MetadataMap) -> Option<&str> {
    md.get("authorization").and_then(|v| v.to_str().ok())
}

/// The `x-api-key` metadata value, if it is readable.
pub fn api_key(md: &MetadataMap) -> Option<&str> {
    md.get("x-api-key").and_then(|v| v.to_str().ok())
}

/// The caller of a service-authenticated call: a client certificate when the request came over TLS
/// with one and `AUTHD_TLS_CLIENT_CA` is set (rustls then has verified it against that CA during the
/// handshake: a certificate that does not verify fails the handshake), else its `x-api-key`.
pub fn caller<'a, T>(req: &'a Request<T>, config: &Config) -> Caller<'a> {
    if config.tls_client_ca.is_some()
        && let Some(certs) = req.peer_certs()
        && let Some(leaf) = certs.first()
    {
        return Caller::ClientCertificate {
            subject: crate::transport::certificate_subject(leaf),
        };
    }
    Caller::ServiceKey(api_key(req.metadata()))
}

/// The client's address and user agent. The address is the TCP peer, unless the peer is a trusted
/// proxy (`AUTHD_TRUSTED_PROXIES`): then it is the right-most address of `x-forwarded-for` that is
/// not itself a trusted proxy.
pub fn client_info<T>(req: &Request<T>, trusted: &[IpNet]) -> ClientInfo {
    let peer = req.remote_addr().map(|a| a.ip().to_canonical());
    let ip = match peer {
        Some(p) if is_trusted(p, trusted) => forwarded_for(req.metadata(), trusted).or(Some(p)),
        other => other,
    };
    let ua = req
        .metadata()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut client = ClientInfo::new(ip, ua);
    client.deadline = req
        .extensions()
        .get::<crate::domain::RequestDeadline>()
        .map(|d| d.0);
    client
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client of a proxied request: walk `x-forwarded-for` from the right, skipping trusted proxies.
fn forwarded_for(md: &MetadataMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let hops: Vec<IpAddr> = md
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| {
            let s = s.trim();
            s.parse::<IpAddr>()
                .or_else(|_| s.parse::<std::net::SocketAddr>().map(|a| a.ip()))
                .map(|ip| ip.to_canonical())
        })
        .collect::<Result<_, _>>()
        .ok()?;
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(**ip, trusted))
        .or(hops.first())
        .copied()
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_net;

    fn req(peer: &str, xff: &[&str]) -> Request<()> {
        let mut r = Request::new(());
        for v in xff {
            r.metadata_mut()
                .append("x-forwarded-for", v.parse().unwrap());
        }
        r.extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(peer.parse().unwrap()),
            });
        r
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_proxies() {
        let trusted = vec![parse_net("10.0.0.0/8").unwrap()];
        let ip = |r: &Request<()>, t: &[IpNet]| client_info(r, t).ip.map(|i| i.to_string());
        // Untrusted peer: the header is ignored.
        let r = req("203.0.113.9:5000", &["198.51.100.1"]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("203.0.113.9"));
        // Trusted peer: right-most untrusted hop.
        let r = req("10.1.2.3:5000", &["198.51.100.1, 192.0.2.7, 10.9.9.9"]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("192.0.2.7"));
        // Several header lines are one list.
        let r = req("10.1.2.3:5000", &["198.51.100.1", "192.0.2.8"]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("192.0.2.8"));
        // Garbage falls back to the peer.
        let r = req("10.1.2.3:5000", &["not-an-ip"]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("10.1.2.3"));
        // No header: the peer.
        let r = req("10.1.2.3:5000", &[]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("10.1.2.3"));
        // Nothing trusted: the peer.
        let r = req("10.1.2.3:5000", &["198.51.100.1"]);
        assert_eq!(ip(&r, &[]).as_deref(), Some("10.1.2.3"));
    }
}
