//! How the gRPC listeners speak: TLS and mutual TLS (`AUTHD_TLS_*`), gRPC-Web with a CORS origin
//! allowlist (`AUTHD_GRPC_WEB`, `AUTHD_CORS_ORIGINS`), and the optional plaintext listener that
//! serves only `grpc.health.v1` (`AUTHD_HEALTH_LISTEN`) for probes that cannot speak TLS.
//!
//! Every file is read, and every setting checked, once at start-up ([`Transport::from_config`]);
//! errors name the setting and the file, never the file's contents.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, Bytes, StdError};
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::Layer;
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

use crate::config::Config;
use crate::limits::{
    CONNECTION_WINDOW_BYTES, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST_BYTES, MAX_LOCAL_ERROR_RESET_STREAMS, MAX_PENDING_ACCEPT_RESET_STREAMS,
    STREAM_WINDOW_BYTES,
};
use listener::{Incoming, Listener, TlsIncoming};

pub(crate) mod listener;
mod tls;

pub use tls::certificate_subject;
use tls::{Tls, load_tls};

/// How long browsers may cache a CORS preflight answer.
pub const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// Request headers a browser may send on a cross-origin gRPC-Web call.
pub const CORS_ALLOW_HEADERS: [&str; 7] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "authorization",
    "x-api-key",
    "grpc-timeout",
    "x-request-id",
];
/// Response headers a browser script may read on a cross-origin gRPC-Web call. A trailers-only
/// reply (an error) carries its status in headers, so they must be exposed.
pub const CORS_EXPOSE_HEADERS: [&str; 5] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
    "retry-after",
];

/// A TLS, mTLS or gRPC-Web setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{set} is set but {missing} is not: TLS needs both a certificate chain and a private key"
    )]
    Incomplete {
        set: &'static str,
        missing: &'static str,
    },
    #[error("{var} needs TLS: set AUTHD_TLS_CERT and AUTHD_TLS_KEY too")]
    NeedsTls { var: &'static str },
    #[error(
        "AUTHD_TLS_REQUIRE_CLIENT_CERT=true needs AUTHD_TLS_CLIENT_CA (the CA that signs client certificates)"
    )]
    RequireWithoutCa,
    #[error("cannot read {var} file {}: {source}", path.display())]
    Read {
        var: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{var} file {} is not usable: {reason}", path.display())]
    Invalid {
        var: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the TLS settings were refused (AUTHD_TLS_CERT {}, AUTHD_TLS_KEY {}{}): {reason}", cert.display(), key.display(), ca.as_ref().map(|p| format!(", AUTHD_TLS_CLIENT_CA {}", p.display())).unwrap_or_default())]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        ca: Option<PathBuf>,
        reason: String,
    },
    #[error("AUTHD_CORS_ORIGINS: {origin:?} is not an origin: {reason}")]
    Origin {
        origin: String,
        reason: &'static str,
    },
}

/// The listener settings, read and checked.
#[derive(Clone)]
pub struct Transport {
    tls: Option<Tls>,
    /// `Some` when gRPC-Web is on: the CORS policy in front of it.
    web: Option<CorsLayer>,
    /// How many origins may call gRPC-Web cross-origin.
    cors_origins: usize,
    /// AUTHD_CORS_ORIGINS is set while gRPC-Web is off.
    cors_ignored: bool,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("tls", &self.tls.is_some())
            .field(
                "client_ca",
                &self.tls.as_ref().is_some_and(|t| t.ca.is_some()),
            )
            .field("grpc_web", &self.web.is_some())
            .finish()
    }
}

/// An unset or empty path setting is off.
pub(super) fn path_setting(p: &Option<PathBuf>) -> Option<&Path> {
    p.as_deref().filter(|p| !p.as_os_str().is_empty())
}

impl Transport {
    /// Reads the certificate, key and CA files and checks every TLS and gRPC-Web setting.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let tls = load_tls(config)?;
        let origins = config
            .cors_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .map(parse_origin)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            tls,
            cors_origins: origins.len(),
            cors_ignored: !config.grpc_web && !origins.is_empty(),
            web: config.grpc_web.then(|| cors_layer(origins)),
        })
    }

    /// Logs what the gRPC listener speaks.
    pub fn log_settings(&self) {
        tracing::info!(
            tls = self.tls(),
            client_ca = self.client_ca(),
            require_client_cert = self.tls.as_ref().is_some_and(|t| t.require),
            grpc_web = self.grpc_web(),
            cors_origins = self.cors_origins,
            "gRPC listener settings"
        );
        if self.grpc_web() && self.cors_origins == 0 {
            tracing::info!(
                "gRPC-Web is on with no AUTHD_CORS_ORIGINS: browsers may call only from the same origin"
            );
        }
        if self.cors_ignored {
            tracing::warn!("AUTHD_CORS_ORIGINS is set but AUTHD_GRPC_WEB is off; ignoring it");
        }
    }

    /// Whether the gRPC listener speaks TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether client certificates are verified (mTLS).
    pub fn client_ca(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.ca.is_some())
    }

    /// Whether gRPC-Web is served.
    pub fn grpc_web(&self) -> bool {
        self.web.is_some()
    }

    /// The accepted connections of the gRPC listener, plaintext or TLS: each must finish its TLS
    /// handshake (with TLS) and its opening ([`listener::HandshakeDeadline`]) within
    /// `handshake_timeout` of being accepted. Serve them with a server from
    /// [`Transport::configure`].
    pub fn incoming(&self, listener: TcpListener, handshake_timeout: Duration) -> Listener {
        match &self.tls {
            None => Listener::Plain(Incoming::new(listener, Some(handshake_timeout))),
            Some(tls) => Listener::Tls(TlsIncoming::new(
                Incoming::new(listener, None),
                tls.acceptor.clone(),
                handshake_timeout,
            )),
        }
    }

    /// `server` with HTTP/1.1 (for gRPC-Web, if on). TLS is not tonic's: [`Transport::incoming`]
    /// accepts it.
    pub fn configure<L>(&self, server: Server<L>) -> Result<Server<L>, ConfigError> {
        Ok(server.accept_http1(self.web.is_some()))
    }

    /// The layer that serves gRPC-Web behind the CORS policy, or passes everything through when
    /// gRPC-Web is off. Put it outermost, so the layers inside it see plain gRPC.
    pub fn web_layer(&self) -> WebLayer {
        WebLayer {
            cors: self.web.clone(),
        }
    }
}

/// The CORS policy of gRPC-Web: the allowlisted origins ([`parse_origin`]: never a wildcard), POST,
/// the gRPC-Web headers. No credentials (cookies): authd's credentials travel in headers.
fn cors_layer(origins: Vec<HeaderValue>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::POST])
        .allow_headers(CORS_ALLOW_HEADERS.map(HeaderName::from_static))
        .expose_headers(CORS_EXPOSE_HEADERS.map(HeaderName::from_static))
        .max_age(CORS_MAX_AGE)
}

/// `https://app.example.com[:port]` (lower-cased, a trailing `/` dropped), as browsers send it in
/// `Origin`.
pub fn parse_origin(raw: &str) -> Result<HeaderValue, ConfigError> {
    let err = |reason| ConfigError::Origin {
        origin: raw.to_owned(),
        reason,
    };
    let origin = raw.trim();
    let origin = origin
        .strip_suffix('/')
        .unwrap_or(origin)
        .to_ascii_lowercase();
    if origin == "*" || origin == "null" {
        return Err(err(
            "wildcards and \"null\" are not allowed; list each origin",
        ));
    }
    let host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| err("it must start with https:// or http://"))?;
    if host.is_empty()
        || host.contains(|c: char| matches!(c, '/' | '?' | '#' | '@' | '*') || c.is_whitespace())
    {
        return Err(err("an origin is scheme://host[:port], with no path"));
    }
    HeaderValue::from_str(&origin)
        .map_err(|_| err("it contains characters not allowed in a header"))
}

/// [`Transport::web_layer`].
#[derive(Debug, Clone)]
pub struct WebLayer {
    cors: Option<CorsLayer>,
}

impl<S> Layer<S> for WebLayer {
    type Service = Web<S>;
    fn layer(&self, inner: S) -> Web<S> {
        match &self.cors {
            None => Web::Off(inner),
            Some(cors) => Web::On(Box::new(cors.layer(GrpcWebLayer::new().layer(inner)))),
        }
    }
}

/// gRPC only, or gRPC and gRPC-Web behind CORS.
#[derive(Debug, Clone)]
pub enum Web<S> {
    Off(S),
    On(Box<Cors<GrpcWebService<S>>>),
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<Body>> for Web<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + fmt::Display,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<http::Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Web::Off(s) => s.poll_ready(cx),
            Web::On(s) => tower::Service::<http::Request<Body>>::poll_ready(s.as_mut(), cx),
        }
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self {
            Web::Off(s) => {
                let fut = s.call(req);
                Box::pin(async move { fut.await.map(|r| r.map(Body::new)) })
            }
            Web::On(s) => Box::pin(s.call(req)),
        }
    }
}

/// Serves `routes` (the health service) in plaintext on `listener` until `stop` resolves, with the
/// same HTTP/2 limits as the main listener.
pub async fn serve_health(
    listener: TcpListener,
    routes: Routes,
    handshake_timeout: Duration,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    http2_limits(Server::builder())
        .add_routes(routes)
        .serve_with_incoming_shutdown(Incoming::new(listener, Some(handshake_timeout)), stop)
        .await
}

/// The HTTP/2 settings of every gRPC listener: stream and window limits, keepalive, rapid-reset
/// protection (the numbers are in [`crate::limits`]).
pub fn http2_limits<L>(builder: Server<L>) -> Server<L> {
    builder
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .tcp_nodelay(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            parse_origin(" https://App.Example.com/ ").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            parse_origin("http://localhost:3000").unwrap(),
            "http://localhost:3000"
        );
        for bad in [
            "*",
            "null",
            "app.example.com",
            "https://",
            "https://app.example.com/path",
            "https://*.example.com",
            "ftp://x",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad} accepted");
        }
    }
}
