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

use base64::Engine as _;
use http::{HeaderName, HeaderValue, Method};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, Bytes, StdError};
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::Layer;
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

use crate::config::Config;
use crate::listener::{Incoming, Listener, TlsIncoming};

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

#[derive(Clone)]
struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    ca: Option<PathBuf>,
    require: bool,
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
fn path_setting(p: &Option<PathBuf>) -> Option<&Path> {
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
    /// handshake (with TLS) and its opening ([`crate::listener::HandshakeDeadline`]) within
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

fn load_tls(config: &Config) -> Result<Option<Tls>, ConfigError> {
    let cert = path_setting(&config.tls_cert);
    let key = path_setting(&config.tls_key);
    let ca = path_setting(&config.tls_client_ca);
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            return Err(ConfigError::Incomplete {
                set: "AUTHD_TLS_CERT",
                missing: "AUTHD_TLS_KEY",
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Incomplete {
                set: "AUTHD_TLS_KEY",
                missing: "AUTHD_TLS_CERT",
            });
        }
        (None, None) => {
            if ca.is_some() {
                return Err(ConfigError::NeedsTls {
                    var: "AUTHD_TLS_CLIENT_CA",
                });
            }
            if config.tls_require_client_cert {
                return Err(ConfigError::NeedsTls {
                    var: "AUTHD_TLS_REQUIRE_CLIENT_CERT",
                });
            }
            return Ok(None);
        }
    };
    if config.tls_require_client_cert && ca.is_none() {
        return Err(ConfigError::RequireWithoutCa);
    }

    let cert_pem = read_pem("AUTHD_TLS_CERT", cert, PemKind::Certificates)?;
    let key_pem = read_pem("AUTHD_TLS_KEY", key, PemKind::PrivateKey)?;
    let ca_pem = ca
        .map(|ca| read_pem("AUTHD_TLS_CLIENT_CA", ca, PemKind::Certificates))
        .transpose()?;
    // Built now, so a key that does not match its certificate (or a CA bundle with no usable
    // certificate) stops the start-up instead of failing every handshake.
    let server_config = server_config(
        &cert_pem,
        &key_pem,
        ca_pem.as_deref(),
        config.tls_require_client_cert,
    )
    .map_err(|reason| ConfigError::Rejected {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        ca: ca.map(Path::to_path_buf),
        reason,
    })?;
    Ok(Some(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server_config)),
        ca: ca.map(Path::to_path_buf),
        require: config.tls_require_client_cert,
    }))
}

/// The rustls configuration tonic would build from the same files: ring, TLS 1.2 and 1.3, ALPN
/// `h2`, client certificates verified against `ca_pem` (required, or optional) when given. The
/// reason of an error never holds the files' contents.
fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    ca_pem: Option<&[u8]>,
    require_client_cert: bool,
) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot parse the certificate chain: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("cannot parse the private key: {e}"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca_pem) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_slice_iter(ca_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("cannot parse the client CA: {e}"))?;
            roots.add_parsable_certificates(cas);
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            );
            let verifier = if require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols.push(b"h2".to_vec());
    Ok(config)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PemKind {
    Certificates,
    PrivateKey,
}

/// Reads a PEM file and checks that it holds what `kind` says, so the error names the file. The
/// contents never appear in an error.
fn read_pem(var: &'static str, path: &Path, kind: PemKind) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        var,
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| ConfigError::Invalid {
        var,
        path: path.to_path_buf(),
        reason,
    };
    let blocks = pem_labels(&bytes).map_err(|r| invalid(r.to_owned()))?;
    match kind {
        PemKind::Certificates => {
            if !blocks.iter().any(|l| l == "CERTIFICATE") {
                return Err(invalid("no PEM CERTIFICATE block found".into()));
            }
        }
        PemKind::PrivateKey => {
            if blocks.iter().any(|l| l == "ENCRYPTED PRIVATE KEY") {
                return Err(invalid(
                    "encrypted private keys are not supported; store the key unencrypted and \
                     protect the file instead"
                        .into(),
                ));
            }
            let keys = blocks
                .iter()
                .filter(|l| {
                    matches!(
                        l.as_str(),
                        "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY"
                    )
                })
                .count();
            if keys == 0 {
                return Err(invalid(
                    "no PEM private key found (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                        .into(),
                ));
            }
            if keys > 1 {
                return Err(invalid("more than one private key found".into()));
            }
        }
    }
    Ok(bytes)
}

/// The labels of the PEM blocks in `bytes`, checking that each block's body is base64.
fn pem_labels(bytes: &[u8]) -> Result<Vec<String>, &'static str> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "not PEM text (a DER file must be converted to PEM)")?;
    let mut labels = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some((label, body)) = &mut open {
            if let Some(end) = line
                .strip_prefix("-----END ")
                .and_then(|l| l.strip_suffix("-----"))
            {
                if end != label {
                    return Err("a PEM block ends with a different label than it begins with");
                }
                let decoded = base64::engine::general_purpose::STANDARD.decode(body.as_bytes());
                if !matches!(decoded, Ok(der) if !der.is_empty()) {
                    return Err("a PEM block is not valid base64");
                }
                labels.push(std::mem::take(label));
                open = None;
            } else if line.contains(':') {
                return Err("PEM headers (a legacy encrypted key?) are not supported");
            } else {
                body.push_str(line);
            }
        } else if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            open = Some((label.to_owned(), String::new()));
        }
    }
    if open.is_some() {
        return Err("a PEM block has no END line");
    }
    Ok(labels)
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
    crate::server::http2_limits(Server::builder())
        .add_routes(routes)
        .serve_with_incoming_shutdown(Incoming::new(listener, Some(handshake_timeout)), stop)
        .await
}

/// A name for a verified client certificate, for logs: `CN=<common name>` of its subject, or
/// `sha256:<fingerprint>` when it has none.
pub fn certificate_subject(der: &[u8]) -> String {
    match common_name(der) {
        Some(cn) => format!("CN={cn}"),
        None => {
            let digest = Sha256::digest(der);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}")
        }
    }
}

/// One DER element: (tag, contents, rest).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The subject's commonName of an X.509 certificate, if it has one.
fn common_name(der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const CN_OID: [u8; 3] = [0x55, 0x04, 0x03];
    let (SEQUENCE, cert, _) = der_next(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = der_next(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // Optional [0] version, then serialNumber, signature, issuer, validity, subject.
    let (tag, _, after) = der_next(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        rest = der_next(rest)?.2;
    }
    let (SEQUENCE, subject, _) = der_next(rest)? else {
        return None;
    };
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (tag, set, next) = der_next(rdns)?;
        rdns = next;
        if tag != SET {
            continue;
        }
        let mut atvs = set;
        while !atvs.is_empty() {
            let (tag, atv, next) = der_next(atvs)?;
            atvs = next;
            if tag != SEQUENCE {
                continue;
            }
            let (OID, oid, value) = der_next(atv)? else {
                continue;
            };
            if oid != CN_OID {
                continue;
            }
            let (tag, value, _) = der_next(value)?;
            // UTF8String, PrintableString, TeletexString, IA5String.
            if matches!(tag, 0x0c | 0x13 | 0x14 | 0x16) {
                return std::str::from_utf8(value)
                    .ok()
                    .map(|s| s.chars().filter(|c| !c.is_control()).collect());
            }
        }
    }
    None
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

    #[test]
    fn pem_checks() {
        let ok = b"junk\n-----BEGIN CERTIFICATE-----\nAAEC\nAwQ=\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_labels(ok).unwrap(), vec!["CERTIFICATE".to_owned()]);
        assert!(
            pem_labels(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err()
        );
        assert!(pem_labels(b"-----BEGIN CERTIFICATE-----\nAAEC\n").is_err());
        assert!(pem_labels(b"-----BEGIN A-----\nAAEC\n-----END B-----\n").is_err());
        assert!(pem_labels(&[0x30, 0x82, 0xff, 0xff]).is_err());
        assert!(pem_labels(b"nothing here").unwrap().is_empty());
    }

    #[test]
    fn subject_of_garbage_is_a_fingerprint() {
        assert!(certificate_subject(b"not a certificate").starts_with("sha256:"));
        assert!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
    }
}
