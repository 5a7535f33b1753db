//! [`ClientLayer`]: who the client is, resolved once per call before the handler runs, and put
//! into the request's extensions; handlers read it with `grpc::client_info` (or, for
//! ValidateToken, `grpc::client_address`).
//!
//! What is resolved depends on the method (see [`Resolve`]):
//! - ValidateToken, the hot path, gets only its [`ClientAddress`]: the peer walked through
//!   `x-forwarded-for` by `AUTHD_TRUSTED_PROXIES` alone. That is exactly the work it did before
//!   the layer existed: no proxy-key lookup (no second SHA-256 of `x-api-key`), no user agent.
//!   WatchRevocations, authenticated the same way, gets the same.
//! - GetJwks, and the services that are not authd's (health, reflection), get nothing.
//! - Every other AuthService and UserService method gets the full [`ClientInfo`]: the address
//!   (where a proxy service key may vouch for one more hop, see [`resolve_client`]), the user
//!   agent, the proxy key and the call's deadline (set by the deadline layer, which runs first).
//!
//! The resolution is synchronous (the proxy keys are an in-memory view), so the layer adds no
//! future of its own.

use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderMap;
use ipnet::IpNet;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::config::TrustedProxies;
use crate::domain::{Authd, ClientInfo, RequestDeadline};
use crate::proto::{auth_service_server, user_service_server};
use envoy_types::pb::envoy::service::auth::v3::authorization_server;

/// The caller's address as `AUTHD_TRUSTED_PROXIES` alone resolve it (no proxy key): where a
/// service key is presented from. What ValidateToken gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub Option<IpAddr>);

/// How much of the client a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    Nothing,
    /// [`ClientAddress`] only.
    Address,
    /// The full [`ClientInfo`].
    Full,
}

/// What a call to `path` (`/package.Service/Method`) gets resolved.
pub fn resolve_for(path: &str) -> Resolve {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return Resolve::Nothing;
    };
    if service == auth_service_server::SERVICE_NAME {
        match method {
            // Service-authenticated like ValidateToken: where the key is presented from.
            "ValidateToken" | "WatchRevocations" => Resolve::Address,
            "GetJwks" => Resolve::Nothing,
            _ => Resolve::Full,
        }
    } else if service == user_service_server::SERVICE_NAME {
        Resolve::Full
    } else if service == authorization_server::SERVICE_NAME {
        // Envoy's ext_authz Check is service-authenticated like ValidateToken.
        Resolve::Address
    } else {
        Resolve::Nothing
    }
}

/// See the module doc. `trusted` is `AUTHD_TRUSTED_PROXIES`; `svc` looks up proxy service keys.
#[derive(Debug, Clone)]
pub struct ClientLayer {
    pub svc: Arc<Authd>,
    pub trusted: Arc<TrustedProxies>,
}

impl<S> tower::Layer<S> for ClientLayer {
    type Service = Client<S>;
    fn layer(&self, inner: S) -> Client<S> {
        Client {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client<S> {
    inner: S,
    layer: ClientLayer,
}

impl<S, Req> tower::Service<http::Request<Req>> for Client<S>
where
    S: tower::Service<http::Request<Req>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Req>) -> Self::Future {
        match resolve_for(req.uri().path()) {
            Resolve::Nothing => {}
            Resolve::Address => {
                // These methods never read the deadline (only `ClientInfo` carries it on); taking
                // it out keeps the extensions within their first allocation (a fourth entry
                // regrows the map, a tenth of a cached ValidateToken's own work).
                req.extensions_mut().remove::<RequestDeadline>();
                let peer = peer_address(req.extensions());
                let address = resolve_client(
                    peer,
                    forwarded_hops(req.headers()),
                    &self.layer.trusted,
                    None,
                )
                .0;
                req.extensions_mut().insert(ClientAddress(address));
            }
            Resolve::Full => {
                let deadline = req.extensions_mut().remove::<RequestDeadline>();
                let mut client = self.client_info(&req);
                client.deadline = deadline.map(|d| d.0);
                req.extensions_mut().insert(client);
            }
        }
        self.inner.call(req)
    }
}

impl<S> Client<S> {
    /// The full [`ClientInfo`] of a call (see [`resolve_client`] for the address).
    fn client_info<Req>(&self, req: &http::Request<Req>) -> ClientInfo {
        let headers = req.headers();
        let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        let proxy = self.layer.svc.proxy_key(api_key);
        let proxy_cidrs = proxy.as_ref().map(|p| p.allowed_cidrs.as_slice());
        let peer = peer_address(req.extensions());
        let (ip, via_key) = resolve_client(
            peer,
            forwarded_hops(headers),
            &self.layer.trusted,
            proxy_cidrs,
        );
        let ua = headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        ClientInfo::new(ip, ua).via_proxy_key(proxy.filter(|_| via_key).map(|p| p.id))
    }
}

/// The TCP peer of a call, as `tonic::Request::remote_addr` finds it (plain or TLS).
fn peer_address(ext: &http::Extensions) -> Option<IpAddr> {
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
        .map(|a| a.ip().to_canonical())
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The entries of `x-forwarded-for`, right-most first; `None` for one that does not parse (an IP,
/// or an IP with a port such as `192.0.2.1:443` or `[2001:db8::1]:443`).
fn forwarded_hops(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .rev()
        .map(|v| v.to_str().unwrap_or(","))
        .flat_map(|v| v.rsplit(','))
        .map(|s| {
            let s = s.trim();
            s.parse::<IpAddr>()
                .or_else(|_| s.parse::<std::net::SocketAddr>().map(|a| a.ip()))
                .ok()
                .map(|ip| ip.to_canonical())
        })
}

/// The client's address: the walk from the TCP peer leftwards through `x-forwarded-for` (all its
/// lines, as one comma-separated list), as long as the hop at hand is trusted to report the one
/// before it. `hops` come right-most first; `proxy_cidrs` are the CIDRs of a presented proxy key.
///
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
///
/// Returns the client and whether the proxy key vouched for a hop.
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

#[cfg(test)]
mod tests;
