//! The gRPC surface: thin tonic handlers that read metadata, call the domain, and map its errors.
//!
//! [`From<Error> for Status`](#impl-From<Error>-for-Status) is the one place where domain errors
//! become status codes. Messages are human-readable and leak no internals: the detail of
//! UNAVAILABLE and INTERNAL goes to the log only.

pub mod auth;
pub mod ext_authz;
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
use crate::domain::{AuthFailure, Authd, ClientInfo, Error, Principal, Role};
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
        AuthFailure::ServiceKeyMissing => ("missing x-api-key", ErrorReason::ServiceKeyMissing),
        AuthFailure::ServiceKeyInvalid => ("invalid service key", ErrorReason::ServiceKeyInvalid),
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
    req.extensions().get::<Principal>().cloned().ok_or_else(|| {
        tracing::error!(
            "no authenticated caller in the request extensions: is the auth layer missing?"
        );
        Status::internal("internal error")
    })
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

/// The client's address and user agent, and the proxy service key the call came through.
///
/// The address is found by walking from the TCP peer leftwards through `x-forwarded-for` (all its
/// lines, as one comma-separated list), as long as the hop at hand is trusted to report the one
/// before it:
/// - a hop in `AUTHD_TRUSTED_PROXIES` is trusted;
/// - the first hop that is not (the caller that presented `x-api-key`) is trusted for one more hop
///   when that key is an unrevoked proxy service key (`trusted_proxy`) whose `allowed_cidrs`
///   contain the hop (empty = anywhere); the call then counts against that key's failure budget;
/// - the first untrusted hop is the client. If an entry that does not parse comes before any
///   untrusted hop, or the list ends, the client is the nearest trusted hop (the last one reached,
///   or the peer itself).
///
/// A key that is unknown, revoked, not a proxy key, or used from outside its CIDRs changes
/// nothing: the header is then read as if no key had been sent. On calls other than ValidateToken
/// such a key is not an error (the call does not need one).
pub fn client_info<T>(req: &Request<T>, svc: &Authd) -> ClientInfo {
    let trusted = &svc.config().trusted_proxies;
    let proxy = svc.proxy_key(api_key(req.metadata()));
    let proxy_cidrs = proxy.as_ref().map(|p| p.allowed_cidrs.as_slice());
    let peer = req.remote_addr().map(|a| a.ip().to_canonical());
    let (ip, via_key) = resolve_client(peer, forwarded_hops(req.metadata()), trusted, proxy_cidrs);
    let ua = req
        .metadata()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut client = ClientInfo::new(ip, ua).via_proxy_key(proxy.filter(|_| via_key).map(|p| p.id));
    client.deadline = req
        .extensions()
        .get::<crate::domain::RequestDeadline>()
        .map(|d| d.0);
    client
}

/// The caller's address as `AUTHD_TRUSTED_PROXIES` alone resolve it (no proxy key): where a service
/// key is presented from.
pub fn client_address<T>(req: &Request<T>, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req.remote_addr().map(|a| a.ip().to_canonical());
    resolve_client(peer, forwarded_hops(req.metadata()), trusted, None).0
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The entries of `x-forwarded-for`, right-most first; `None` for one that does not parse (an IP,
/// or an IP with a port such as `192.0.2.1:443` or `[2001:db8::1]:443`).
fn forwarded_hops(md: &MetadataMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    let lines: Vec<&str> = md
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or(","))
        .collect();
    lines
        .into_iter()
        .rev()
        .flat_map(|v| v.rsplit(','))
        .map(|s| {
            let s = s.trim();
            s.parse::<IpAddr>()
                .or_else(|_| s.parse::<std::net::SocketAddr>().map(|a| a.ip()))
                .ok()
                .map(|ip| ip.to_canonical())
        })
}

/// The walk of [`client_info`]: `hops` right-most first, `proxy_cidrs` the CIDRs of a presented
/// proxy key. Returns the client and whether the proxy key vouched for a hop.
fn resolve_client(
    peer: Option<IpAddr>,
    mut hops: impl Iterator<Item = Option<IpAddr>>,
    trusted: &[IpNet],
    mut proxy_cidrs: Option<&[IpNet]>,
) -> (Option<IpAddr>, bool) {
    let Some(mut current) = peer else {
        return (None, false);
    };
    let mut via_key = false;
    loop {
        let vouched = is_trusted(current, trusted)
            || match proxy_cidrs.take() {
                Some(cidrs) => {
                    via_key = cidrs.is_empty() || cidrs.iter().any(|n| n.contains(&current));
                    via_key
                }
                None => false,
            };
        if !vouched {
            return (Some(current), via_key);
        }
        match hops.next() {
            Some(Some(ip)) => current = ip,
            // The end of the list, or an entry that does not parse: the nearest trusted hop.
            Some(None) | None => return (Some(current), via_key),
        }
    }
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

    fn ip(r: &Request<()>, t: &[IpNet]) -> Option<String> {
        client_address(r, t).map(|i| i.to_string())
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_proxies() {
        let trusted = vec![parse_net("10.0.0.0/8").unwrap()];
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

    #[test]
    fn forwarded_for_walks_from_the_right_past_junk_on_the_left() {
        let trusted = vec![parse_net("10.0.0.0/8").unwrap()];
        // Junk to the left of the client does not matter.
        let r = req("10.1.2.3:5000", &["junk, 198.51.100.9"]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("198.51.100.9"));
        let r = req("10.1.2.3:5000", &["junk", "198.51.100.9, 10.0.0.7"]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("198.51.100.9"));
        // Ports and brackets are accepted; IPv4-mapped IPv6 is IPv4.
        let r = req("10.1.2.3:5000", &["[2001:db8::5]:443"]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("2001:db8::5"));
        let r = req("10.1.2.3:5000", &["192.0.2.1:8443"]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("192.0.2.1"));
        let r = req("10.1.2.3:5000", &["::ffff:192.0.2.2"]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("192.0.2.2"));
        // Junk reached before any untrusted hop: the nearest trusted hop.
        let r = req("10.1.2.3:5000", &["198.51.100.9, junk, 10.0.0.7"]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("10.0.0.7"));
        let r = req("10.1.2.3:5000", &["198.51.100.9, , 10.0.0.7"]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("10.0.0.7"));
        let r = req("10.1.2.3:5000", &["198.51.100.9, junk"]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("10.1.2.3"));
        // Only trusted hops: the left-most of them.
        let r = req("10.1.2.3:5000", &["10.0.0.1, 10.0.0.2"]);
        assert_eq!(ip(&r, &trusted).as_deref(), Some("10.0.0.1"));
        // A non-ASCII line counts as junk.
        let mut r = req("10.1.2.3:5000", &["198.51.100.9"]);
        r.metadata_mut().append(
            "x-forwarded-for",
            tonic::metadata::MetadataValue::try_from(&b"\xff"[..]).unwrap(),
        );
        assert_eq!(ip(&r, &trusted).as_deref(), Some("10.1.2.3"));
    }

    #[test]
    fn a_proxy_key_vouches_for_one_hop_from_its_cidrs() {
        let parse = |v: &[&str]| -> Vec<Option<IpAddr>> {
            v.iter().rev().map(|s| s.parse().ok()).collect()
        };
        let a = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let trusted = vec![parse_net("127.0.0.1").unwrap()];
        let gw = vec![parse_net("192.0.2.0/24").unwrap()];
        let walk = |peer: &str, xff: &[&str], cidrs: Option<&[IpNet]>| {
            resolve_client(a(peer), parse(xff).into_iter(), &trusted, cidrs)
        };
        // The gateway connects directly and names its user.
        assert_eq!(
            walk("192.0.2.5", &["198.51.100.9"], Some(&gw)),
            (a("198.51.100.9"), true)
        );
        // Only one hop: whatever the user sent to the left is not believed.
        assert_eq!(
            walk("192.0.2.5", &["203.0.113.1", "198.51.100.9"], Some(&gw)),
            (a("198.51.100.9"), true)
        );
        // Through a trusted sidecar that appended the gateway's address.
        assert_eq!(
            walk("127.0.0.1", &["198.51.100.9", "192.0.2.5"], Some(&gw)),
            (a("198.51.100.9"), true)
        );
        // From outside its CIDRs: the header is read as without a key.
        assert_eq!(
            walk("203.0.113.7", &["198.51.100.9"], Some(&gw)),
            (a("203.0.113.7"), false)
        );
        // Empty CIDRs: anywhere.
        assert_eq!(
            walk("203.0.113.7", &["198.51.100.9"], Some(&[])),
            (a("198.51.100.9"), true)
        );
        // No proxy key: the peer.
        assert_eq!(
            walk("192.0.2.5", &["198.51.100.9"], None),
            (a("192.0.2.5"), false)
        );
        // No header: the gateway itself, still through its key.
        assert_eq!(walk("192.0.2.5", &[], Some(&gw)), (a("192.0.2.5"), true));
        // No peer address: unknown.
        assert_eq!(
            resolve_client(None, std::iter::empty(), &trusted, Some(&gw)),
            (None, false)
        );
    }
}
