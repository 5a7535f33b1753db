#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Observability: the HTTP side listener (`/metrics`, `/.well-known/jwks.json`, `/livez`,
//! `/readyz`), the Prometheus metrics (gRPC server metrics as go-grpc-prometheus names them, logins,
//! refresh-token reuse, the pool, the bcrypt queue), request ids, and JSON logs with one line per
//! call. A test binary of its own: it installs the process-wide metrics recorder and a JSON log
//! subscriber that writes into memory. One private PostgreSQL cluster serves every test, each on a
//! database of its own. Metrics are process-wide, so tests that run in parallel only ever assert
//! lower bounds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use authd::api::Authd;
use authd::clock::ManualClock;
use authd::config::Config;
use authd::proto;
use authd::proto::auth_service_client::AuthServiceClient;
use authd::proto::user_service_client::UserServiceClient;
use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PASSWORD: &str = "Correct-Horse-Battery-Staple-42";
const WRONG_PASSWORD: &str = "Wrong-Guess-Mauve-Lantern-77";
const DB_POOL_SIZE: u32 = 5;

// ----- JSON log capture --------------------------------------------------------------------------

use authd_testkit::capture::{Buffer, BufferWriter};

/// The captured log; installs the subscriber (as `main` does for AUTHD_LOG_FORMAT=json) and the
/// metrics recorder on first use.
fn log_buffer() -> &'static Buffer {
    static BUFFER: OnceLock<Buffer> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buf: Buffer = Arc::default();
        let writer = buf.clone();
        authd::server::init_logging("info,authd=debug", "json", move || {
            BufferWriter(writer.clone())
        })
        .expect("install the JSON log subscriber");
        authd::metrics::install_recorder();
        buf
    })
}

fn log_text() -> String {
    let buf = log_buffer().lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&buf).into_owned()
}

/// Every captured line, each of which must be a JSON object.
fn log_lines() -> Vec<serde_json::Value> {
    log_text()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// The "rpc finished" line of the call with this request id; waits for it a little, since the
/// line is written as the response ends.
async fn rpc_line(request_id: &str) -> serde_json::Value {
    for _ in 0..100 {
        let found = log_lines().into_iter().find(|l| {
            l["message"] == "rpc finished" && l["span"]["request_id"].as_str() == Some(request_id)
        });
        if let Some(line) = found {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no log line for request id {request_id}:\n{}", log_text());
}

// ----- the PostgreSQL cluster ----------------------------------------------------------------------

use authd_testkit::{
    db_url, expect_code, fresh_named_database as fresh_database, login_email, unique_email,
};

async fn admin_connection() -> AsyncPgConnection {
    AsyncPgConnection::establish(&db_url("postgres"))
        .await
        .expect("connect to the test cluster")
}

// ----- an in-process server with the HTTP side listener -------------------------------------------

/// A loopback port that was free a moment ago.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr")
}

fn config(url: &str) -> Config {
    let mut c = Config::defaults();
    c.database_url = Some(url.into());
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.http_listen = Some(free_port());
    c.bcrypt_cost = 4;
    c.db_pool_size = DB_POOL_SIZE;
    c.bootstrap_admin_email = None;
    c.bootstrap_admin_password = None;
    c.master_key = None;
    c.rate_limit_per_ip = 0;
    c
}

struct Server {
    addr: SocketAddr,
    http: SocketAddr,
    db_name: String,
    config: Config,
    svc: Arc<Authd>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    async fn start(f: impl FnOnce(&mut Config)) -> Self {
        log_buffer();
        let (db_name, url) = fresh_database().await;
        let mut config = config(&url);
        f(&mut config);
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let shared = Arc::new(config.clone());
        let svc = authd::server::start_service(shared.clone(), &url, clock)
            .await
            .expect("start service");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let serve_svc = svc.clone();
        let handle = tokio::spawn(async move {
            authd::server::serve(serve_svc, shared, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        let server = Server {
            addr,
            http: config.http_listen.expect("http listener configured"),
            db_name,
            config,
            svc,
            shutdown: Some(tx),
            handle: Some(handle),
        };
        // The side listener binds as the server starts.
        for _ in 0..200 {
            if TcpStream::connect(server.http).await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the HTTP listener on {} did not come up", server.http);
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task");
        }
        self.svc.pool().close();
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    async fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel().await)
    }

    async fn get(&self, path: &str) -> HttpResponse {
        http_get(self.http, path).await
    }

    async fn register(&self, email: &str) {
        self.auth()
            .await
            .register(proto::RegisterRequest {
                email: email.into(),
                password: PASSWORD.into(),
                ..Default::default()
            })
            .await
            .expect("register");
    }

    async fn login(&self, email: &str, password: &str) -> Result<proto::LoginResponse, Status> {
        self.auth()
            .await
            .login(login_email(email, password))
            .await
            .map(|r| r.into_inner())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

// ----- a minimal HTTP/1.1 client ------------------------------------------------------------------

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect over HTTP");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("HTTP response in time")
        .expect("read response");
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header/body separator");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

// ----- Prometheus text parsing --------------------------------------------------------------------

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {l}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').expect("closing brace");
                    let labels = rest
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once("=\"").expect("label");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            (name, labels, value)
        })
        .collect()
}

/// The value of the sample with this name and (at least) these labels.
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

#[track_caller]
fn at_least(samples: &[Sample], name: &str, labels: &[(&str, &str)], min: f64) {
    match sample(samples, name, labels) {
        Some(v) => assert!(v >= min, "{name}{labels:?} = {v}, expected >= {min}"),
        None => panic!("no sample {name}{labels:?}"),
    }
}

fn grpc_labels<'a>(service: &'a str, method: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grpc_service", service),
        ("grpc_method", method),
        ("grpc_type", "unary"),
    ]
}

fn with<'a>(
    mut labels: Vec<(&'a str, &'a str)>,
    extra: (&'a str, &'a str),
) -> Vec<(&'a str, &'a str)> {
    labels.push(extra);
    labels
}

/// An Envoy ext_authz Check with service key `key` and bearer `token`, as Envoy sends it.
async fn ext_authz_check(server: &Server, key: &str, token: &str) {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request as HttpReq,
    };
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let check = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(HttpReq {
                http: Some(HttpRequest {
                    headers: [("authorization".to_owned(), format!("Bearer {token}"))].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let mut req = Request::new(check);
    req.metadata_mut()
        .insert("x-api-key", key.parse().expect("metadata"));
    AuthorizationClient::new(server.channel().await)
        .check(req)
        .await
        .expect("Check answers");
}

// ----- tests -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_calls_logins_reuse_pool_and_bcrypt() {
    let server = Server::start(|c| {
        c.refresh_reuse_grace = Duration::ZERO;
        // The clock stands still, so the delay after this one failure never runs out.
        c.login_max_failures = 1;
    })
    .await;

    // OK calls, and failures of each kind.
    let email = unique_email();
    server.register(&email).await;
    let pair = server.login(&email, PASSWORD).await.expect("login");
    let unknown = unique_email();
    expect_code(
        server.login(&unknown, WRONG_PASSWORD).await,
        Code::Unauthenticated,
    );
    expect_code(
        server.login(&unknown, WRONG_PASSWORD).await,
        Code::ResourceExhausted,
    );
    let mut auth = server.auth().await;
    auth.refresh(proto::RefreshRequest {
        refresh_token: pair.refresh_token.clone(),
    })
    .await
    .expect("refresh");
    let reused = auth
        .refresh(proto::RefreshRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await;
    expect_code(reused, Code::Unauthenticated);
    // A disabled account with the right password.
    let disabled = unique_email();
    server.register(&disabled).await;
    diesel::sql_query(format!(
        "UPDATE users SET active = false WHERE email = '{disabled}'"
    ))
    .execute(
        &mut AsyncPgConnection::establish(&db_url(&server.db_name))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    expect_code(
        server.login(&disabled, PASSWORD).await,
        Code::PermissionDenied,
    );
    // Refused by an inner layer (metadata over the limit): counted with the code the client sees.
    let mut req = Request::new(proto::GetJwksRequest {});
    req.metadata_mut()
        .insert("x-padding", "p".repeat(20 * 1024).parse().unwrap());
    expect_code(auth.get_jwks(req).await, Code::ResourceExhausted);
    let mut health = HealthClient::new(server.channel().await);
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check");
    // A server stream.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    watch.message().await.expect("first watch message");
    drop(watch);
    // Envoy ext_authz: one allowed and one denied Check.
    let key = server
        .svc
        .create_service_key(None, "metrics", &authd::api::ClientInfo::default())
        .await
        .expect("service key")
        .1;
    let fresh = server.login(&email, PASSWORD).await.expect("login");
    for token in [fresh.access_token.as_str(), "not-a-token"] {
        ext_authz_check(&server, &key, token).await;
    }

    let response = server.get("/metrics").await;
    assert_eq!(response.status, 200);
    assert!(
        response.headers["content-type"].starts_with("text/plain"),
        "{:?}",
        response.headers
    );
    let text = response.body;
    let s = parse_metrics(&text);
    let auth_svc = "authd.v1.AuthService";

    // go-grpc-prometheus names, labels and code names.
    at_least(
        &s,
        "grpc_server_started_total",
        &grpc_labels(auth_svc, "Register"),
        2.0,
    );
    at_least(
        &s,
        "grpc_server_started_total",
        &grpc_labels(auth_svc, "Login"),
        4.0,
    );
    for (method, code, min) in [
        ("Register", "OK", 2.0),
        ("Login", "OK", 1.0),
        ("Login", "Unauthenticated", 1.0),
        ("Login", "ResourceExhausted", 1.0),
        ("Login", "PermissionDenied", 1.0),
        ("Refresh", "OK", 1.0),
        ("Refresh", "Unauthenticated", 1.0),
        ("GetJwks", "ResourceExhausted", 1.0),
    ] {
        at_least(
            &s,
            "grpc_server_handled_total",
            &with(grpc_labels(auth_svc, method), ("grpc_code", code)),
            min,
        );
    }
    at_least(
        &s,
        "grpc_server_handled_total",
        &[
            ("grpc_service", "grpc.health.v1.Health"),
            ("grpc_method", "Check"),
            ("grpc_type", "unary"),
            ("grpc_code", "OK"),
        ],
        1.0,
    );
    at_least(
        &s,
        "grpc_server_started_total",
        &[
            ("grpc_service", "grpc.health.v1.Health"),
            ("grpc_method", "Watch"),
            ("grpc_type", "server_stream"),
        ],
        1.0,
    );

    // A histogram (buckets, sum, count), not a summary.
    assert!(
        text.contains("# TYPE grpc_server_handling_seconds histogram"),
        "{text}"
    );
    assert!(!text.contains("quantile="), "{text}");
    at_least(
        &s,
        "grpc_server_handling_seconds_bucket",
        &with(grpc_labels(auth_svc, "Login"), ("le", "+Inf")),
        4.0,
    );
    at_least(
        &s,
        "grpc_server_handling_seconds_bucket",
        &with(grpc_labels(auth_svc, "Login"), ("le", "10")),
        4.0,
    );
    at_least(
        &s,
        "grpc_server_handling_seconds_count",
        &grpc_labels(auth_svc, "Login"),
        4.0,
    );
    assert!(
        sample(
            &s,
            "grpc_server_handling_seconds_sum",
            &grpc_labels(auth_svc, "Login")
        )
        .is_some()
    );

    // Domain counters.
    for result in ["success", "failure", "disabled", "throttled"] {
        at_least(&s, "authd_logins_total", &[("result", result)], 1.0);
    }
    at_least(&s, "authd_refresh_reuse_detected_total", &[], 1.0);
    // The refresh above was written by the rotation batcher (a batch of one).
    at_least(&s, "authd_refresh_batches_total", &[], 1.0);
    at_least(&s, "authd_refresh_batched_rotations_total", &[], 1.0);
    for result in ["allowed", "denied"] {
        at_least(
            &s,
            "authd_ext_authz_checks_total",
            &[("result", result)],
            1.0,
        );
    }
    for result in ["forbidden", "misconfigured", "unavailable"] {
        assert!(
            sample(&s, "authd_ext_authz_checks_total", &[("result", result)]).is_some(),
            "authd_ext_authz_checks_total{{result={result}}} is not pre-registered:\n{text}"
        );
    }
    at_least(
        &s,
        "grpc_server_handled_total",
        &[
            ("grpc_service", "envoy.service.auth.v3.Authorization"),
            ("grpc_method", "Check"),
            ("grpc_type", "unary"),
            ("grpc_code", "OK"),
        ],
        2.0,
    );

    // Pool and bcrypt gauges.
    for state in ["size", "in_use", "waiting", "max"] {
        assert!(
            sample(&s, "authd_db_pool_connections", &[("state", state)]).is_some(),
            "no pool gauge {state}:\n{text}"
        );
    }
    assert_eq!(
        sample(&s, "authd_db_pool_connections", &[("state", "max")]),
        Some(f64::from(DB_POOL_SIZE))
    );
    let depth = sample(&s, "authd_bcrypt_queue_depth", &[]).expect("bcrypt queue gauge");
    assert!(depth >= 0.0, "bcrypt queue depth {depth}");

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_over_http_matches_get_jwks() {
    let server = Server::start(|c| c.key_publish_delay = Duration::from_secs(120)).await;
    // Two keys: the first, and one published but not yet signing.
    server.svc.rotate_signing_key(None).await.expect("rotate");

    let grpc = server
        .auth()
        .await
        .get_jwks(proto::GetJwksRequest {})
        .await
        .expect("GetJwks")
        .into_inner();
    assert_eq!(grpc.keys.len(), 2);

    let response = server.get("/.well-known/jwks.json").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.headers["content-type"], "application/json");
    let cache = &response.headers["cache-control"];
    assert!(cache.contains("public"), "{cache}");
    let max_age: u64 = cache
        .split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no max-age in {cache}"));
    assert!(
        max_age < server.config.key_publish_delay.as_secs(),
        "max-age {max_age} is not below the publish delay"
    );

    let doc: serde_json::Value = serde_json::from_str(&response.body).expect("JSON body");
    let expected: Vec<serde_json::Value> = grpc
        .keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "kty": k.kty, "crv": k.crv, "x": k.x, "kid": k.kid, "alg": k.alg, "use": k.r#use,
            })
        })
        .collect();
    assert_eq!(doc, serde_json::json!({ "keys": expected }));
    for key in doc["keys"].as_array().expect("keys") {
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(key["use"], "sig");
    }

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_readiness() {
    let server = Server::start(|_| {}).await;
    let live = server.get("/livez").await;
    assert_eq!(live.status, 200);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(server.get("/nope").await.status, 404);

    // Take the database away: readiness (gRPC and HTTP) goes NOT_SERVING, liveness stays.
    diesel::sql_query(format!("DROP DATABASE {} WITH (FORCE)", server.db_name))
        .execute(&mut admin_connection().await)
        .await
        .expect("drop the database");
    let mut status = 0;
    for _ in 0..120 {
        status = server.get("/readyz").await.status;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(status, 503, "readiness never went NOT_SERVING");
    let grpc = HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        grpc.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    assert_eq!(server.get("/livez").await.status, 200);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_and_calls_logged_as_json() {
    let server = Server::start(|_| {}).await;
    let mut auth = server.auth().await;

    // A client's id comes back, on success and on error.
    let given = format!("obs-{}", uuid::Uuid::new_v4());
    let mut req = Request::new(proto::GetJwksRequest {});
    req.metadata_mut()
        .insert("x-request-id", given.parse().unwrap());
    let ok = auth.get_jwks(req).await.expect("GetJwks");
    assert_eq!(ok.metadata().get("x-request-id").unwrap(), given.as_str());

    let failed_id = format!("obs-{}", uuid::Uuid::new_v4());
    let secret_password = format!("Secret-{}-Password", uuid::Uuid::new_v4().simple());
    let mut req = Request::new(login_email(&unique_email(), &secret_password));
    req.metadata_mut()
        .insert("x-request-id", failed_id.parse().unwrap());
    let status = expect_code(auth.login(req).await, Code::Unauthenticated);
    assert_eq!(
        status.metadata().get("x-request-id").unwrap(),
        failed_id.as_str()
    );

    // Without one (or with an unusable one), an id is generated and returned.
    let ok = auth
        .get_jwks(proto::GetJwksRequest {})
        .await
        .expect("GetJwks");
    let generated = ok
        .metadata()
        .get("x-request-id")
        .expect("generated request id")
        .to_str()
        .unwrap()
        .to_owned();
    uuid::Uuid::parse_str(&generated).expect("a UUID");
    let mut req = Request::new(proto::GetJwksRequest {});
    let too_long = "x".repeat(129);
    req.metadata_mut()
        .insert("x-request-id", too_long.parse().unwrap());
    let ok = auth.get_jwks(req).await.expect("GetJwks");
    let replaced = ok.metadata().get("x-request-id").unwrap().to_str().unwrap();
    uuid::Uuid::parse_str(replaced).expect("an overlong id is replaced by a UUID");

    // Credentials in metadata are never logged.
    let secret_token = format!("tok{}", uuid::Uuid::new_v4().simple());
    let secret_key = format!("key{}", uuid::Uuid::new_v4().simple());
    let mut req = Request::new(proto::GetMeRequest {});
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {secret_token}").parse().unwrap(),
    );
    req.metadata_mut()
        .insert("x-api-key", secret_key.parse().unwrap());
    let secret_call_id = format!("obs-{}", uuid::Uuid::new_v4());
    req.metadata_mut()
        .insert("x-request-id", secret_call_id.parse().unwrap());
    let mut users = UserServiceClient::new(server.channel().await);
    expect_code(users.get_me(req).await, Code::Unauthenticated);

    // Health checks are logged at DEBUG.
    let health_id = format!("obs-{}", uuid::Uuid::new_v4());
    let mut req = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.metadata_mut()
        .insert("x-request-id", health_id.parse().unwrap());
    HealthClient::new(server.channel().await)
        .check(req)
        .await
        .expect("health check");

    // One JSON line per call, with method, code, latency and request id.
    let line = rpc_line(&given).await;
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["span"]["method"], "/authd.v1.AuthService/GetJwks");
    assert_eq!(line["span"]["code"], "OK");
    assert!(line["span"]["latency_ms"].is_number(), "{line}");
    assert!(line["timestamp"].is_string(), "{line}");

    let line = rpc_line(&failed_id).await;
    assert_eq!(line["span"]["method"], "/authd.v1.AuthService/Login");
    assert_eq!(line["span"]["code"], "Unauthenticated");
    assert!(line["span"]["latency_ms"].as_f64().unwrap() >= 0.0);

    let line = rpc_line(&generated).await;
    assert_eq!(line["span"]["code"], "OK");

    let line = rpc_line(&secret_call_id).await;
    assert_eq!(line["span"]["method"], "/authd.v1.UserService/GetMe");
    assert_eq!(line["span"]["code"], "Unauthenticated");

    let line = rpc_line(&health_id).await;
    assert_eq!(line["level"], "DEBUG");
    assert_eq!(line["span"]["method"], "/grpc.health.v1.Health/Check");

    // Every captured line is JSON (log_lines checks), and no secret made it into any.
    let lines = log_lines();
    assert!(!lines.is_empty());
    let text = log_text();
    for secret in [&secret_password, &secret_token, &secret_key] {
        assert!(!text.contains(secret.as_str()), "a secret was logged");
    }
    assert!(
        !text.contains(&too_long),
        "an overlong request id was logged"
    );

    server.stop().await;
}
