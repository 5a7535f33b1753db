//! Connections: clients that open a connection and never finish its opening are closed after
//! `AUTHD_HANDSHAKE_TIMEOUT`, on every listener, while normal clients keep working.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use authd_testkit::*;

/// A loopback port that was free a moment ago.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr")
}

/// Connects to `addr`, waiting for the listener to be bound (the side listeners start with the
/// server, in the background).
async fn connect(addr: SocketAddr) -> TcpStream {
    for _ in 0..200 {
        if let Ok(conn) = TcpStream::connect(addr).await {
            return conn;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}

/// How long a test waits for the server to close a connection; far above the 1 s timeout.
const CLOSE_WITHIN: Duration = Duration::from_secs(30);

/// Opens a connection, writes `opening`, and returns whether the server closed it (EOF or a reset)
/// within [`CLOSE_WITHIN`]. Whatever the server writes before closing (its HTTP/2 SETTINGS) is
/// read and ignored.
async fn closed_by_server(addr: SocketAddr, opening: &[u8]) -> bool {
    closed_after(connect(addr).await, opening).await
}

/// Writes `bytes` on `conn` and returns whether the server then closed it within
/// [`CLOSE_WITHIN`].
async fn closed_after(mut conn: TcpStream, bytes: &[u8]) -> bool {
    conn.write_all(bytes).await.expect("write");
    let read_to_end = async {
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(CLOSE_WITHIN, read_to_end)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_opening_are_closed() {
    let http = free_port();
    let health = free_port();
    let srv = TestServer::start_with(|c| {
        c.handshake_timeout = Duration::from_secs(1);
        c.http_listen = Some(http);
        c.health_listen = Some(health);
        c.grpc_web = true;
    })
    .await;

    let openings: [(&str, &[u8]); 4] = [
        ("nothing", b""),
        ("half an HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\n"),
        (
            "the preface, half a SETTINGS frame",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03",
        ),
        (
            "unfinished HTTP/1 headers",
            b"GET /livez HTTP/1.1\r\nHost: x\r\n",
        ),
    ];
    // Several at once on each listener, as a flood would open them.
    let mut checks = Vec::new();
    for (listener, addr) in [("gRPC", srv.addr), ("HTTP", http), ("health", health)] {
        for (what, opening) in openings {
            for _ in 0..5 {
                checks.push(tokio::spawn(async move {
                    (listener, what, closed_by_server(addr, opening).await)
                }));
            }
        }
    }
    // Meanwhile normal clients are served on every listener.
    drop(connect(health).await);
    let mut health_client = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{health}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    health_client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health listener answers");
    let (user, _) = srv.user_session().await;
    assert!(!user.id.is_empty());
    let mut livez = connect(http).await;
    livez
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    livez.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // On the HTTP listener, a later request on a kept-alive connection gets the same bound: two
    // complete requests are answered, then unfinished headers are cut off.
    let mut keep_alive = connect(http).await;
    for _ in 0..2 {
        keep_alive
            .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"ok\n") {
            let n = keep_alive.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed before the answer");
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"));
    }
    assert!(
        closed_after(keep_alive, b"GET /livez HTTP/1.1\r\nHost: x\r\n").await,
        "the HTTP listener kept a connection whose second request's headers never ended"
    );

    for check in checks {
        let (listener, what, closed) = check.await.unwrap();
        assert!(
            closed,
            "{listener} listener kept a connection that sent {what}"
        );
    }

    // A connection that completed its opening is not cut by the timeout: a client that connected
    // before, and stayed idle for longer than the timeout, still works.
    let channel = srv.channel().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut health_on_main = tonic_health::pb::health_client::HealthClient::new(channel);
    health_on_main
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("an idle HTTP/2 connection outlives the handshake timeout");
    srv.stop().await;
}

async fn count(conn: &mut diesel_async::AsyncPgConnection, sql: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    let rows: Vec<Count> = diesel::sql_query(sql).load(conn).await.expect(sql);
    rows[0].n
}

/// Sessions ever opened to the current database, once PostgreSQL's statistics have settled
/// (backends report them at most once a second).
async fn sessions_opened(conn: &mut diesel_async::AsyncPgConnection) -> i64 {
    let sql =
        "SELECT sessions::bigint AS n FROM pg_stat_database WHERE datname = current_database()";
    let mut last = -1;
    for _ in 0..20 {
        use diesel_async::SimpleAsyncConnection;
        conn.batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        let n = count(conn, sql).await;
        if n == last {
            return n;
        }
        last = n;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_give_their_database_connection_back() {
    use diesel_async::AsyncConnection;
    const CALLS: usize = 200;
    let srv = TestServer::start().await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let mut refresh_tokens = Vec::new();
    for batch in 0..CALLS / 20 {
        let mut logins = Vec::new();
        for _ in 0..20 {
            let mut auth = srv.auth().await;
            let email = email.clone();
            logins.push(tokio::spawn(async move {
                auth.login(login_email(&email, PASSWORD))
                    .await
                    .expect("login")
                    .into_inner()
                    .refresh_token
            }));
        }
        for l in logins {
            refresh_tokens.push(l.await.unwrap());
        }
        assert_eq!(refresh_tokens.len(), (batch + 1) * 20);
    }

    let mut pg = diesel_async::AsyncPgConnection::establish(&srv.url)
        .await
        .expect("connect to the test database");
    let before = sessions_opened(&mut pg).await;

    // Logouts with 1-4 ms deadlines, 20 at a time: many are cancelled inside their transaction.
    let channel = srv.channel().await;
    let mut calls = Vec::new();
    let mut outcomes = Vec::new();
    for (i, token) in refresh_tokens.into_iter().enumerate() {
        let mut auth = authd::proto::auth_service_client::AuthServiceClient::new(channel.clone());
        calls.push(tokio::spawn(async move {
            let mut req = tonic::Request::new(authd::proto::LogoutRequest {
                refresh_token: token,
            });
            req.set_timeout(Duration::from_millis(1 + (i % 4) as u64));
            auth.logout(req).await.map(|_| ()).map_err(|s| s.code())
        }));
        if calls.len() == 20 {
            for c in calls.drain(..) {
                outcomes.push(c.await.unwrap());
            }
        }
    }
    for c in calls {
        outcomes.push(c.await.unwrap());
    }

    // No session is left inside a transaction (the rollbacks run in the background, bounded).
    let mut open = -1;
    for _ in 0..100 {
        open = count(
            &mut pg,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%'",
        )
        .await;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open, 0, "sessions left idle in a transaction");

    // The server still answers, with its pool.
    let (user, _) = srv.user_session().await;
    assert!(!user.id.is_empty());

    // Cancelled calls did not cost a new connection each: at most the pool's size were opened
    // (the pool may not have been full before).
    let opened = sessions_opened(&mut pg).await - before;
    let answered = outcomes.iter().filter(|o| o.is_ok()).count();
    eprintln!(
        "{answered} of {CALLS} logouts answered, {} cut off by their deadline; {opened} database \
         connections opened",
        CALLS - answered
    );
    assert!(
        answered < CALLS,
        "no call was cancelled: the deadlines did not cut any off"
    );
    assert!(
        opened <= i64::from(srv.config.db_pool_size),
        "{opened} database connections opened for {CALLS} cancelled calls (pool size {})",
        srv.config.db_pool_size
    );
    srv.stop().await;
}

/// Opens a Watch of `service` and returns its stream.
async fn watch(
    channel: &tonic::transport::Channel,
    service: &str,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .watch(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("Watch {service:?}: {s:?}"))
        .into_inner()
}

/// Every status the stream sends until it ends; `Err` if it ends with an error.
async fn statuses_until_end(
    mut stream: tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> Result<Vec<i32>, tonic::Status> {
    let mut seen = Vec::new();
    while let Some(r) = stream.message().await? {
        seen.push(r.status);
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_health_watches() {
    use tonic_health::pb::health_check_response::ServingStatus;
    const SERVING: i32 = ServingStatus::Serving as i32;
    const NOT_SERVING: i32 = ServingStatus::NotServing as i32;
    const UNKNOWN: i32 = ServingStatus::ServiceUnknown as i32;
    const GRACE: Duration = Duration::from_secs(60);

    let srv = TestServer::start_with(|c| c.shutdown_grace = GRACE).await;
    let channel = srv.channel().await;

    // An unknown service: SERVICE_UNKNOWN, and the stream stays open.
    let mut unknown = watch(&channel, "no.such.Service").await;
    assert_eq!(
        unknown.message().await.unwrap().map(|r| r.status),
        Some(UNKNOWN)
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), unknown.message())
            .await
            .is_err(),
        "the Watch of an unknown service ended"
    );

    let mut open = Vec::new();
    for service in [
        "",
        "authd.v1.AuthService",
        "authd.v1.UserService",
        "liveness",
    ] {
        let mut stream = watch(&channel, service).await;
        assert_eq!(
            stream.message().await.unwrap().map(|r| r.status),
            Some(SERVING),
            "{service:?}"
        );
        open.push((service, tokio::spawn(statuses_until_end(stream))));
    }
    let unknown = tokio::spawn(statuses_until_end(unknown));

    let started = std::time::Instant::now();
    srv.stop().await;
    let took = started.elapsed();
    assert!(
        took < GRACE / 2,
        "shutdown with open Watches took {took:?} (grace {GRACE:?})"
    );

    for (service, stream) in open {
        let rest = stream.await.unwrap().expect("the Watch ends cleanly");
        if service == "liveness" {
            assert!(rest.is_empty(), "liveness got {rest:?}");
        } else {
            assert_eq!(rest, vec![NOT_SERVING], "{service:?}");
        }
    }
    assert_eq!(
        unknown.await.unwrap().expect("ends cleanly"),
        Vec::<i32>::new()
    );
}

/// A request body of fixed bytes.
struct Fixed(Option<bytes::Bytes>);

impl http_body::Body for Fixed {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// The grpc-status of a response: in its headers (trailers-only) or in its trailers.
async fn grpc_status(response: http::Response<tonic::body::Body>) -> Option<(String, String)> {
    use http_body::Body as _;
    let (parts, body) = response.into_parts();
    let from = |h: &http::HeaderMap| {
        h.get("grpc-status").map(|s| {
            (
                s.to_str().unwrap_or_default().to_owned(),
                h.get("grpc-message")
                    .and_then(|m| m.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
    };
    if let Some(s) = from(&parts.headers) {
        return Some(s);
    }
    let mut body = std::pin::pin!(body);
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Ok(trailers) = frame.ok()?.into_trailers() {
            return from(&trailers);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_invalid_argument() {
    use tower::ServiceExt as _;
    let srv = TestServer::start_with(|c| c.grpc_web = true).await;

    // HTTP/2 gRPC: a frame that announces 100 bytes and ends after 3, from 20 callers at once.
    let channel = srv.channel().await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let channel = channel.clone();
        calls.push(tokio::spawn(async move {
            let body = bytes::Bytes::from_static(&[0, 0, 0, 0, 100, 0x0a, 0x01, b'x']);
            let request = http::Request::builder()
                .method("POST")
                .uri("/authd.v1.AuthService/Login")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(tonic::body::Body::new(Fixed(Some(body))))
                .unwrap();
            let response = channel.oneshot(request).await.expect("an HTTP answer");
            grpc_status(response).await
        }));
    }
    for call in calls {
        let (code, message) = call.await.unwrap().expect("a grpc-status");
        assert_eq!(code, "3", "truncated frame: {message}");
    }

    // gRPC-Web over HTTP/1.1: a body that is not base64.
    for content_type in [
        "application/grpc-web-text",
        "application/grpc-web-text+proto",
    ] {
        let mut conn = TcpStream::connect(srv.addr).await.unwrap();
        let body = "!!!!not base64!!!!";
        let request = format!(
            "POST /authd.v1.AuthService/Login HTTP/1.1\r\nHost: localhost\r\n\
             content-type: {content_type}\r\nx-grpc-web: 1\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        let lower = answer.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 200"), "{answer}");
        assert!(
            lower.contains("grpc-status: 3\r\n"),
            "bad base64 is not INVALID_ARGUMENT: {answer}"
        );
    }
    srv.stop().await;
}
