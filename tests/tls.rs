//! TLS, mutual TLS, the plaintext health listener and gRPC-Web with CORS: the real server in-process
//! on loopback, an ephemeral embedded PostgreSQL, and certificates generated here with rcgen.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use authd::api::Authd;
use authd::clock::SystemClock;
use authd::config::Config;
use authd::proto;
use authd::proto::auth_service_client::AuthServiceClient;
use authd::proto::user_service_client::UserServiceClient;
use authd::server;
use authd::transport::Transport;
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const PASSWORD: &str = "Correct-Horse-Battery-Staple-42";
const ALLOWED_ORIGIN: &str = "https://app.example.com";
/// No test waits longer than this for a connection or a call.
const PATIENCE: Duration = Duration::from_secs(20);

// Database: the shared private cluster of `authd-testkit`, a fresh copy of the migrated template
// per test.
use authd_testkit::{fresh_database, unique_email, with_bearer};

// ---------------------------------------------------------------------------------------------
// Certificates: a CA, a server certificate for localhost/127.0.0.1, a client certificate from the
// CA, and a client certificate from another CA. Written to files once per process.

struct Pki {
    _dir: tempfile::TempDir,
    ca_path: PathBuf,
    ca_pem: String,
    server_cert: PathBuf,
    server_key: PathBuf,
    /// A private key that belongs to no certificate here.
    stray_key: PathBuf,
    client: (String, String),
    /// The client certificate, DER.
    client_der: Vec<u8>,
    foreign_client: (String, String),
}

fn new_ca(name: &str) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params, key)
}

fn leaf(
    sans: &[&str],
    cn: &str,
    eku: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (String, String) {
    let (cert, key, _) = leaf_der(sans, cn, eku, issuer);
    (cert, key)
}

/// (certificate PEM, key PEM, certificate DER)
fn leaf_der(
    sans: &[&str],
    cn: &str,
    eku: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (ca_params, ca_key) = new_ca("authd test CA");
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let ca = Issuer::new(ca_params, ca_key);
        let (other_params, other_key) = new_ca("some other CA");
        let other = Issuer::new(other_params, other_key);

        let (server_cert, server_key) = leaf(
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
        );
        let (client_cert, client_key, client_der) = leaf_der(
            &["billing.internal"],
            "billing-service",
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca,
        );
        let foreign_client = leaf(
            &["intruder.internal"],
            "intruder",
            ExtendedKeyUsagePurpose::ClientAuth,
            &other,
        );
        Pki {
            ca_path: write(dir.path(), "ca.pem", &ca_pem),
            server_cert: write(dir.path(), "server.pem", &server_cert),
            server_key: write(dir.path(), "server.key", &server_key),
            stray_key: write(
                dir.path(),
                "stray.key",
                &KeyPair::generate().unwrap().serialize_pem(),
            ),
            ca_pem,
            client: (client_cert, client_key),
            client_der,
            foreign_client,
            _dir: dir,
        }
    })
}

/// Which client certificate a TLS client presents.
#[derive(Clone, Copy, Debug)]
enum ClientCert {
    None,
    FromCa,
    FromOtherCa,
}

// ---------------------------------------------------------------------------------------------
// The server, in-process.

fn test_config(url: &str) -> Config {
    let mut c = Config::defaults();
    c.database_url = Some(url.into());
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.bcrypt_cost = 4;
    c.db_pool_size = 5;
    c.validate_require_key = true;
    c.rate_limit_per_ip = 0;
    c.login_max_failures = 1_000_000;
    c.login_max_failures_per_hour = 1_000_000;
    c
}

/// Server TLS with the test CA's server certificate.
fn with_tls(c: &mut Config) {
    let pki = pki();
    c.tls_cert = Some(pki.server_cert.clone());
    c.tls_key = Some(pki.server_key.clone());
}

/// Server TLS, client certificates verified against the test CA, mandatory or not.
fn with_mtls(require: bool) -> impl FnOnce(&mut Config) {
    move |c| {
        with_tls(c);
        c.tls_client_ca = Some(pki().ca_path.clone());
        c.tls_require_client_cert = require;
    }
}

/// A port that was free a moment ago (for AUTHD_HEALTH_LISTEN, which the server binds itself).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct TestServer {
    addr: SocketAddr,
    svc: Arc<Authd>,
    config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    async fn start(f: impl FnOnce(&mut Config)) -> Self {
        let url = fresh_database().await;
        let mut config = test_config(&url);
        f(&mut config);
        let shared = Arc::new(config.clone());
        let svc = server::start_service(shared.clone(), &url, Arc::new(SystemClock))
            .await
            .expect("start service");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let serve_svc = svc.clone();
        let handle = tokio::spawn(async move {
            server::serve(serve_svc, shared, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        let server = TestServer {
            addr,
            svc,
            config,
            shutdown: Some(tx),
            handle: Some(handle),
        };
        if let Some(health) = server.config.health_listen {
            // `serve` binds the health listener itself; wait until it answers.
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while TcpStream::connect(health).await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "health listener never came up"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        server
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
        self.svc.pool().close();
    }

    /// A plaintext channel to `addr`.
    async fn plaintext(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(PATIENCE)
            .timeout(PATIENCE)
            .connect()
            .await
    }

    /// A TLS channel that trusts the test CA, for the name "localhost".
    async fn tls(&self, cert: ClientCert) -> Result<Channel, tonic::transport::Error> {
        let pki = pki();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_pem))
            .domain_name("localhost");
        match cert {
            ClientCert::None => {}
            ClientCert::FromCa => {
                tls = tls.identity(Identity::from_pem(&pki.client.0, &pki.client.1))
            }
            ClientCert::FromOtherCa => {
                tls = tls.identity(Identity::from_pem(
                    &pki.foreign_client.0,
                    &pki.foreign_client.1,
                ));
            }
        }
        Channel::from_shared(format!("https://127.0.0.1:{}", self.addr.port()))
            .unwrap()
            .tls_config(tls)?
            .connect_timeout(PATIENCE)
            .timeout(PATIENCE)
            .connect()
            .await
    }

    async fn tls_ok(&self, cert: ClientCert) -> Channel {
        self.tls(cert)
            .await
            .unwrap_or_else(|e| panic!("TLS connect with {cert:?}: {e:?}"))
    }

    async fn service_key(&self) -> String {
        self.svc
            .create_service_key(None, "tests", &authd::api::ClientInfo::default())
            .await
            .expect("create service key")
            .1
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn with_key<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("x-api-key", key.parse().unwrap());
    r
}

/// Registers a fresh user on `channel`, logs in, and returns the user and the token pair.
async fn register_and_login(channel: Channel) -> (proto::User, proto::LoginResponse) {
    let mut auth = AuthServiceClient::new(channel);
    let email = unique_email();
    let user = auth
        .register(proto::RegisterRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner()
        .user
        .expect("user");
    let pair = auth
        .login(proto::LoginRequest {
            identifier: Some(proto::login_request::Identifier::Email(email)),
            password: PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner();
    (user, pair)
}

/// Connects and makes one call; `Err` with a description if either fails (or hangs).
async fn try_call(
    connect: impl Future<Output = Result<Channel, tonic::transport::Error>>,
) -> Result<(), String> {
    let attempt = async {
        let channel = connect.await.map_err(|e| format!("connect: {e:?}"))?;
        AuthServiceClient::new(channel)
            .get_jwks(proto::GetJwksRequest {})
            .await
            .map(|_| ())
            .map_err(|s| format!("call: {s:?}"))
    };
    let result = tokio::time::timeout(PATIENCE, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
    if let Err(e) = &result {
        eprintln!("connection or call failed: {e}");
    }
    result
}

/// The handshake failed: the server sent a TLS alert (CertificateRequired, UnknownCA, ...), not a
/// gRPC status.
#[track_caller]
fn assert_tls_refusal(result: Result<(), String>) {
    match result {
        Ok(()) => panic!("the server accepted the TLS client"),
        Err(e) => assert!(e.contains("alert"), "not a TLS refusal: {e}"),
    }
}

#[track_caller]
fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "unexpected status: {s:?}");
            s
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server TLS.

#[tokio::test]
async fn tls_client_can_register_login_and_get_me() {
    let server = TestServer::start(with_tls).await;
    let channel = server.tls_ok(ClientCert::None).await;
    let (user, pair) = register_and_login(channel.clone()).await;
    let me = UserServiceClient::new(channel)
        .get_me(with_bearer(proto::GetMeRequest {}, &pair.access_token))
        .await
        .expect("GetMe over TLS")
        .into_inner();
    assert_eq!(me.id, user.id);
    assert_eq!(me.email, user.email);
    server.stop().await;
}

#[tokio::test]
async fn plaintext_client_cannot_use_the_tls_port() {
    let server = TestServer::start(with_tls).await;
    let result = try_call(TestServer::plaintext(server.addr)).await;
    assert!(result.is_err(), "plaintext gRPC was served on the TLS port");
    // The TLS port itself works.
    try_call(server.tls(ClientCert::None)).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_is_refused() {
    // Sanity check of the client side: a client whose root is another CA fails the handshake.
    let server = TestServer::start(with_tls).await;
    let other_ca = new_ca("untrusted root");
    let other_ca_pem = other_ca.0.self_signed(&other_ca.1).unwrap().pem();
    let connect = async {
        Channel::from_shared(format!("https://127.0.0.1:{}", server.addr.port()))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(other_ca_pem))
                    .domain_name("localhost"),
            )?
            .connect_timeout(PATIENCE)
            .connect()
            .await
    };
    assert!(try_call(connect).await.is_err());
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Mutual TLS.

#[tokio::test]
async fn required_client_certificates() {
    let server = TestServer::start(with_mtls(true)).await;

    // A certificate from the configured CA: full service.
    let channel = server.tls_ok(ClientCert::FromCa).await;
    let (_, pair) = register_and_login(channel.clone()).await;
    UserServiceClient::new(channel)
        .get_me(with_bearer(proto::GetMeRequest {}, &pair.access_token))
        .await
        .expect("GetMe over mTLS");

    // No certificate: the handshake is refused (with TLS 1.3 the client learns it on first use).
    let no_cert = try_call(server.tls(ClientCert::None)).await;
    assert_tls_refusal(no_cert);

    // A certificate from another CA: refused too.
    let foreign = try_call(server.tls(ClientCert::FromOtherCa)).await;
    assert_tls_refusal(foreign);

    // And the good client still works afterwards.
    try_call(server.tls(ClientCert::FromCa)).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn optional_client_certificates() {
    let server = TestServer::start(with_mtls(false)).await;

    // No certificate: served.
    let plain_tls = server.tls_ok(ClientCert::None).await;
    let (_, pair) = register_and_login(plain_tls.clone()).await;
    // A certificate from another CA is still refused: presented certificates must verify.
    assert_tls_refusal(try_call(server.tls(ClientCert::FromOtherCa)).await);
    // A certificate from the CA: served.
    let mtls = server.tls_ok(ClientCert::FromCa).await;

    let request = || proto::ValidateTokenRequest {
        access_token: pair.access_token.clone(),
    };

    // Over mTLS, the client certificate stands in for the service key.
    let answer = AuthServiceClient::new(mtls.clone())
        .validate_token(request())
        .await
        .expect("ValidateToken over mTLS without x-api-key")
        .into_inner();
    assert!(answer.valid);
    assert!(!answer.user_id.is_empty());
    // A certificate caller gets real answers: a bad token is not valid.
    let bad = AuthServiceClient::new(mtls.clone())
        .validate_token(proto::ValidateTokenRequest {
            access_token: "not-a-token".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!bad.valid);

    // Without a client certificate the key is still required...
    let mut auth = AuthServiceClient::new(plain_tls.clone());
    let status = expect_code(auth.validate_token(request()).await, Code::Unauthenticated);
    assert!(status.message().contains("x-api-key"), "{status:?}");
    // ...a wrong one is refused...
    expect_code(
        auth.validate_token(with_key(request(), "not-a-key")).await,
        Code::Unauthenticated,
    );
    // ...and a real one works.
    let key = server.service_key().await;
    let answer = auth
        .validate_token(with_key(request(), &key))
        .await
        .expect("ValidateToken with a service key")
        .into_inner();
    assert!(answer.valid);
    server.stop().await;
}

#[tokio::test]
async fn client_certificates_mean_nothing_without_a_client_ca() {
    // TLS without AUTHD_TLS_CLIENT_CA: the server asks for no certificate, so a client that has
    // one still needs the service key.
    let server = TestServer::start(with_tls).await;
    let channel = server.tls_ok(ClientCert::FromCa).await;
    let (_, pair) = register_and_login(channel.clone()).await;
    expect_code(
        AuthServiceClient::new(channel)
            .validate_token(proto::ValidateTokenRequest {
                access_token: pair.access_token,
            })
            .await,
        Code::Unauthenticated,
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The plaintext health listener.

async fn health_status(channel: Channel, service: &str) -> ServingStatus {
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("health check {service:?}: {s:?}"))
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

#[tokio::test]
async fn health_listener_serves_only_health_in_plaintext() {
    let health_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server = TestServer::start(|c| {
        with_tls(c);
        c.health_listen = Some(health_addr);
    })
    .await;

    let health = TestServer::plaintext(health_addr)
        .await
        .expect("plaintext health");
    assert_eq!(
        health_status(health.clone(), "").await,
        ServingStatus::Serving
    );

    // The same statuses as the main (TLS) listener.
    let main = server.tls_ok(ClientCert::None).await;
    for service in [
        "",
        "liveness",
        "authd.v1.AuthService",
        "authd.v1.UserService",
    ] {
        assert_eq!(
            health_status(health.clone(), service).await,
            health_status(main.clone(), service).await,
            "{service:?}"
        );
    }

    // Nothing else is served there: not the API...
    expect_code(
        AuthServiceClient::new(health.clone())
            .get_jwks(proto::GetJwksRequest {})
            .await,
        Code::Unimplemented,
    );
    expect_code(
        UserServiceClient::new(health.clone())
            .get_me(proto::GetMeRequest {})
            .await,
        Code::Unimplemented,
    );
    // ...nor reflection.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_request};
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let reflection = ServerReflectionClient::new(health.clone())
        .server_reflection_info(tokio_stream::iter(vec![list.clone()]))
        .await;
    expect_code(reflection.map(|_| ()), Code::Unimplemented);
    // (On the main listener reflection works, so the difference is the listener.)
    ServerReflectionClient::new(main)
        .server_reflection_info(tokio_stream::iter(vec![list]))
        .await
        .expect("reflection on the main listener");

    // The main port is TLS only.
    assert!(try_call(TestServer::plaintext(server.addr)).await.is_err());
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// gRPC-Web, over raw HTTP/1.1.

struct HttpResponse {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request (with `Connection: close`) and reads everything the server sends.
async fn http1_raw(addr: SocketAddr, head: &str, body: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = head.as_bytes().to_vec();
    request.extend_from_slice(body);
    stream.write_all(&request).await.unwrap();
    let mut out = Vec::new();
    // A server that does not speak HTTP/1.1 may reset the connection; what arrived is the answer.
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out))
        .await
        .expect("the server neither answered nor closed the connection");
    out
}

fn parse_http1(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP/1.1 response: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size_str = std::str::from_utf8(&rest[..line_end]).unwrap();
            let size_str = size_str.split(';').next().unwrap().trim();
            let size = usize::from_str_radix(size_str, 16).unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    HttpResponse {
        status_line,
        headers,
        body,
    }
}

/// A gRPC-Web frame: flag, 4-byte big-endian length, payload.
fn grpc_web_frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn grpc_web_frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !body.is_empty() {
        let flag = body[0];
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        frames.push((flag, body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    frames
}

fn grpc_web_get_jwks(addr: SocketAddr, origin: Option<&str>) -> (String, Vec<u8>) {
    let body = grpc_web_frame(0, &proto::GetJwksRequest {}.encode_to_vec());
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /authd.v1.AuthService/GetJwks HTTP/1.1\r\n\
         Host: {addr}\r\n\
         Content-Type: application/grpc-web+proto\r\n\
         Accept: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\n\
         {origin}\
         Content-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    (head, body)
}

#[tokio::test]
async fn grpc_web_over_http1_with_cors() {
    let server = TestServer::start(|c| {
        c.grpc_web = true;
        c.cors_origins = vec![ALLOWED_ORIGIN.into(), "http://localhost:3000".into()];
    })
    .await;

    // A gRPC-Web call.
    let (head, body) = grpc_web_get_jwks(server.addr, Some(ALLOWED_ORIGIN));
    let resp = parse_http1(&http1_raw(server.addr, &head, &body).await);
    assert!(
        resp.status_line.starts_with("HTTP/1.1 200"),
        "{}",
        resp.status_line
    );
    assert!(
        resp.header("content-type")
            .is_some_and(|v| v.starts_with("application/grpc-web")),
        "{:?}",
        resp.headers
    );
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some(ALLOWED_ORIGIN)
    );
    let exposed = resp
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for h in [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "x-request-id",
    ] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }
    let frames = grpc_web_frames(&resp.body);
    let data = frames
        .iter()
        .find(|(flag, _)| *flag == 0)
        .expect("a data frame");
    let jwks = proto::GetJwksResponse::decode(&data.1[..]).unwrap();
    assert!(!jwks.keys.is_empty());
    let trailers = frames
        .iter()
        .find(|(flag, _)| *flag == 0x80)
        .expect("a trailers frame");
    let trailers = String::from_utf8(trailers.1.clone())
        .unwrap()
        .to_ascii_lowercase();
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");

    // CORS preflight from an allowlisted origin.
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /authd.v1.AuthService/GetJwks HTTP/1.1\r\n\
             Host: {}\r\n\
             Origin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: content-type,x-grpc-web,x-user-agent,authorization\r\n\
             Connection: close\r\n\r\n",
            server.addr
        )
    };
    let resp = parse_http1(&http1_raw(server.addr, &preflight(ALLOWED_ORIGIN), b"").await);
    assert!(
        resp.status_line.starts_with("HTTP/1.1 200"),
        "{}",
        resp.status_line
    );
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some(ALLOWED_ORIGIN)
    );
    let allowed = resp
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for h in [
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "authorization",
        "x-api-key",
        "grpc-timeout",
        "x-request-id",
    ] {
        assert!(allowed.contains(h), "{h} not allowed: {allowed}");
    }
    assert!(
        resp.header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST"))
    );

    // An origin that is not on the list gets no Access-Control-Allow-Origin, on the preflight or
    // on the call itself.
    let resp =
        parse_http1(&http1_raw(server.addr, &preflight("https://evil.example.com"), b"").await);
    assert_eq!(
        resp.header("access-control-allow-origin"),
        None,
        "{:?}",
        resp.headers
    );
    let (head, body) = grpc_web_get_jwks(server.addr, Some("https://evil.example.com"));
    let resp = parse_http1(&http1_raw(server.addr, &head, &body).await);
    assert_eq!(
        resp.header("access-control-allow-origin"),
        None,
        "{:?}",
        resp.headers
    );

    // Ordinary gRPC (HTTP/2) still works on the same port.
    try_call(TestServer::plaintext(server.addr)).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn grpc_web_with_no_origins_is_same_origin_only() {
    let server = TestServer::start(|c| c.grpc_web = true).await;
    let (head, body) = grpc_web_get_jwks(server.addr, None);
    let resp = parse_http1(&http1_raw(server.addr, &head, &body).await);
    assert!(
        resp.status_line.starts_with("HTTP/1.1 200"),
        "{}",
        resp.status_line
    );
    let preflight = format!(
        "OPTIONS /authd.v1.AuthService/GetJwks HTTP/1.1\r\nHost: {}\r\nOrigin: {ALLOWED_ORIGIN}\r\n\
         Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let resp = parse_http1(&http1_raw(server.addr, &preflight, b"").await);
    assert_eq!(resp.header("access-control-allow-origin"), None);
    server.stop().await;
}

#[tokio::test]
async fn grpc_web_off_is_not_served() {
    let server = TestServer::start(|c| {
        c.grpc_web = false;
        c.cors_origins = vec![ALLOWED_ORIGIN.into()];
    })
    .await;
    let (head, body) = grpc_web_get_jwks(server.addr, Some(ALLOWED_ORIGIN));
    let raw = http1_raw(server.addr, &head, &body).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.starts_with("HTTP/1.1 200"),
        "gRPC-Web was served: {text:?}"
    );
    assert!(!text.contains("grpc-status"), "{text:?}");
    // gRPC itself is unaffected.
    try_call(TestServer::plaintext(server.addr)).await.unwrap();
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Start-up errors: clear, naming the setting and the file, never the contents.

fn config_error(f: impl FnOnce(&mut Config)) -> String {
    let mut c = Config::defaults();
    f(&mut c);
    Transport::from_config(&c)
        .expect_err("the settings should be refused")
        .to_string()
}

#[test]
fn tls_settings_are_checked_at_start_up() {
    let pki = pki();

    let e = config_error(|c| c.tls_cert = Some(pki.server_cert.clone()));
    assert!(e.contains("AUTHD_TLS_KEY"), "{e}");
    let e = config_error(|c| c.tls_key = Some(pki.server_key.clone()));
    assert!(e.contains("AUTHD_TLS_CERT"), "{e}");
    let e = config_error(|c| c.tls_client_ca = Some(pki.ca_path.clone()));
    assert!(e.contains("AUTHD_TLS_CLIENT_CA"), "{e}");
    let e = config_error(|c| {
        with_tls(c);
        c.tls_require_client_cert = true;
    });
    assert!(e.contains("AUTHD_TLS_CLIENT_CA"), "{e}");

    // Unreadable file: named.
    let missing = pki.server_cert.with_file_name("missing.pem");
    let e = config_error(|c| {
        with_tls(c);
        c.tls_cert = Some(missing.clone());
    });
    assert!(
        e.contains("AUTHD_TLS_CERT") && e.contains("missing.pem"),
        "{e}"
    );

    // A certificate where the key should be: named, and no PEM in the message.
    let e = config_error(|c| {
        with_tls(c);
        c.tls_key = Some(pki.server_cert.clone());
    });
    assert!(
        e.contains("AUTHD_TLS_KEY") && e.contains("server.pem"),
        "{e}"
    );
    assert!(!e.contains("-----"), "{e}");

    // A key where the certificate should be.
    let e = config_error(|c| {
        with_tls(c);
        c.tls_cert = Some(pki.server_key.clone());
    });
    assert!(
        e.contains("AUTHD_TLS_CERT") && e.contains("server.key"),
        "{e}"
    );
    assert!(!e.contains("PRIVATE"), "{e}");

    // A key that does not belong to the certificate.
    let e = config_error(|c| {
        with_tls(c);
        c.tls_key = Some(pki.stray_key.clone());
    });
    assert!(e.contains("stray.key") && e.contains("refused"), "{e}");
    let key_pem = std::fs::read_to_string(&pki.stray_key).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!e.contains(key_body), "{e}");

    // The CA file must hold certificates.
    let e = config_error(|c| {
        with_tls(c);
        c.tls_client_ca = Some(pki.server_key.clone());
    });
    assert!(e.contains("AUTHD_TLS_CLIENT_CA"), "{e}");

    // Good settings pass.
    let mut c = Config::defaults();
    with_mtls(true)(&mut c);
    let t = Transport::from_config(&c).unwrap();
    assert!(t.tls() && t.client_ca() && !t.grpc_web());
}

#[test]
fn client_certificate_subject_is_its_common_name() {
    assert_eq!(
        authd::transport::certificate_subject(&pki().client_der),
        "CN=billing-service"
    );
}

#[test]
fn cors_origins_are_checked_at_start_up() {
    let e = config_error(|c| {
        c.grpc_web = true;
        c.cors_origins = vec!["*".into()];
    });
    assert!(e.contains("AUTHD_CORS_ORIGINS"), "{e}");
    let e = config_error(|c| {
        c.grpc_web = true;
        c.cors_origins = vec!["https://ok.example.com".into(), "app.example.com".into()];
    });
    assert!(e.contains("app.example.com"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Silent clients on the TLS listener

/// Whether the server closes `conn` (EOF, a reset or a TLS alert) within [`PATIENCE`]; whatever it
/// sends first (its HTTP/2 SETTINGS) is read and ignored.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(mut conn: S) -> bool {
    let read_to_end = async {
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, read_to_end).await.is_ok()
}

/// A TLS connection to the server that trusts the test CA and offers `h2`.
async fn tls_connection(addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki().ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn tls_connections_that_stall_are_closed() {
    let server = TestServer::start(|c| {
        with_tls(c);
        c.handshake_timeout = Duration::from_secs(1);
    })
    .await;

    let mut checks = Vec::new();
    for _ in 0..5 {
        let addr = server.addr;
        // No TLS handshake at all.
        checks.push(tokio::spawn(async move {
            (
                "nothing",
                closed_by_server(TcpStream::connect(addr).await.unwrap()).await,
            )
        }));
        // Half a ClientHello.
        checks.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap();
            ("half a ClientHello", closed_by_server(tcp).await)
        }));
        // A complete TLS handshake, then half an HTTP/2 preface inside it.
        checks.push(tokio::spawn(async move {
            let mut tls = tls_connection(addr).await;
            tls.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
            tls.flush().await.unwrap();
            ("TLS, then half a preface", closed_by_server(tls).await)
        }));
    }
    // Meanwhile a normal TLS client works, and keeps working when idle past the timeout.
    let channel = server.tls_ok(ClientCert::None).await;
    register_and_login(channel.clone()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    register_and_login(channel).await;

    for check in checks {
        let (what, closed) = check.await.unwrap();
        assert!(
            closed,
            "the TLS listener kept a connection that sent {what}"
        );
    }
    server.stop().await;
}
