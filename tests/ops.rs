//! Operations tests: graceful drain, the `healthcheck` subcommand, database outages and several
//! replicas on one database.
//!
//! Every test runs the real `authd` binary as child processes on 127.0.0.1 and has a PostgreSQL
//! cluster of its own (a persistent one, so it can be stopped and started again), so stopping it
//! disturbs no other test. Waits poll with deadlines; the only time bounds asserted are the ones
//! the operations contract states ("within 10 s", "within 1 s", "within delay + grace").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use authd::api::views;
use authd::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use authd::proto;
use authd::proto::auth_service_client::AuthServiceClient;
use authd::proto::user_service_client::UserServiceClient;
use authd_testkit::{Count, unique_email, with_bearer};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BIN: &str = env!("CARGO_BIN_EXE_authd");
const PASSWORD: &str = "Correct-Horse-Battery-Staple-42";
const ADMIN_EMAIL: &str = "ops-admin@example.com";
const READINESS: [&str; 3] = ["", "authd.v1.AuthService", "authd.v1.UserService"];
const SERVING: i32 = ServingStatus::Serving as i32;
const NOT_SERVING: i32 = ServingStatus::NotServing as i32;
/// How long a process may take to start serving (migrations, first key, maybe initdb).
const START_TIMEOUT: Duration = Duration::from_secs(60);

// ----- a private PostgreSQL cluster ------------------------------------------------------------

struct Cluster {
    dir: TempDir,
    url: String,
    pg: Option<EmbeddedPostgres>,
}

impl Cluster {
    async fn start() -> Self {
        let dir = temp_dir("authd-ops-");
        let pg = start_pg(dir.path()).await;
        let url = pg.database_url("authd");
        Cluster {
            dir,
            url,
            pg: Some(pg),
        }
    }

    async fn stop(&mut self) {
        self.pg
            .take()
            .expect("cluster running")
            .stop()
            .await
            .expect("stop the cluster");
    }

    async fn restart(&mut self) {
        assert!(self.pg.is_none(), "cluster already running");
        let pg = start_pg(self.dir.path()).await;
        assert_eq!(pg.database_url("authd"), self.url);
        self.pg = Some(pg);
    }

    async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("connect to the test cluster")
    }
}

async fn start_pg(dir: &Path) -> EmbeddedPostgres {
    EmbeddedPostgres::start(EmbeddedOptions {
        data_dir: dir.to_path_buf(),
        ephemeral: false,
        max_connections: 100,
    })
    .await
    .expect("start a private PostgreSQL cluster")
}

/// Under /tmp: when the tests run as root the server runs as `postgres`, which must reach it.
fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("temp dir")
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    let rows: Vec<Count> = diesel::sql_query(sql).load(conn).await.expect(sql);
    rows[0].n
}

// ----- authd processes -------------------------------------------------------------------------

/// An `authd serve` child process; killed if the test ends without stopping it.
struct Authd {
    child: Child,
    addr: SocketAddr,
    env: Vec<(String, String)>,
    logs: TempDir,
    starts: u32,
}

/// The environment every child starts from: fast bcrypt, no rate limit, a short drain delay.
fn command(env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("AUTHD_") || n == "DATABASE_URL" {
            cmd.env_remove(&name);
        }
    }
    cmd.env("AUTHD_BCRYPT_COST", "4")
        .env("AUTHD_RATE_LIMIT_PER_IP", "0")
        .env("AUTHD_SHUTDOWN_DELAY", "1s")
        .env("AUTHD_LOG", "info")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("pick a port")
        .port()
}

impl Authd {
    /// Starts the process; does not wait for it.
    fn spawn(env: Vec<(String, String)>) -> Self {
        let logs = temp_dir("authd-ops-log-");
        let (child, addr) = Self::launch(&env, logs.path(), 0);
        Authd {
            child,
            addr,
            env,
            logs,
            starts: 1,
        }
    }

    fn launch(env: &[(String, String)], logs: &Path, n: u32) -> (Child, SocketAddr) {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(logs.join(format!("authd-{n}.log"))).expect("log file");
        let mut cmd = command(env);
        cmd.env("AUTHD_LISTEN", addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        (cmd.spawn().expect("spawn authd"), addr)
    }

    fn log_path(&self) -> PathBuf {
        self.logs
            .path()
            .join(format!("authd-{}.log", self.starts - 1))
    }

    /// This run's log (stderr).
    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process and waits until readiness is SERVING.
    async fn start(env: Vec<(String, String)>) -> Self {
        let mut p = Self::spawn(env);
        p.wait_serving().await;
        p
    }

    /// Waits until readiness is SERVING; starts again on another port if the one picked was taken.
    async fn wait_serving(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let log = self.log();
                if log.contains("cannot listen") && self.starts < 5 {
                    let (child, addr) = Self::launch(&self.env, self.logs.path(), self.starts);
                    self.child = child;
                    self.addr = addr;
                    self.starts += 1;
                    continue;
                }
                panic!("authd exited during start-up ({status}); log:\n{log}");
            }
            if codes(health(self.addr, "").await) == Ok(SERVING) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "authd not SERVING within {START_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.child.id().expect("running") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal");
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("authd still running after {within:?}; log:\n{}", self.log()),
        }
    }

    /// SIGTERM, and a clean exit.
    async fn stop(mut self) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "exit {status}; log:\n{}", self.log());
    }

    async fn channel(&self) -> Channel {
        channel(self.addr).await.expect("connect to authd")
    }

    async fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel().await)
    }

    async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel().await)
    }

    async fn readiness(&self) -> Vec<Result<i32, Code>> {
        let mut out = Vec::new();
        for s in READINESS {
            out.push(health(self.addr, s).await.map_err(|s| s.code()));
        }
        out
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

    async fn login(&self, email: &str) -> proto::LoginResponse {
        self.auth()
            .await
            .login(login(email))
            .await
            .unwrap_or_else(|e| panic!("login: {e:?}; log:\n{}", self.log()))
            .into_inner()
    }

    async fn refresh(&self, refresh_token: &str) -> Result<proto::LoginResponse, Status> {
        self.auth()
            .await
            .refresh(proto::RefreshRequest {
                refresh_token: refresh_token.into(),
            })
            .await
            .map(|r| r.into_inner().into())
    }

    async fn validate(&self, key: &str, access_token: &str) -> Result<bool, Status> {
        let mut req = Request::new(proto::ValidateTokenRequest {
            access_token: access_token.into(),
        });
        req.metadata_mut()
            .insert("x-api-key", key.parse().expect("metadata"));
        self.auth()
            .await
            .validate_token(req)
            .await
            .map(|r| r.into_inner().valid)
    }

    async fn get_me(&self, access_token: &str) -> Result<proto::User, Status> {
        self.users()
            .await
            .get_me(with_bearer(proto::GetMeRequest {}, access_token))
            .await
            .map(|r| r.into_inner())
    }

    /// The published key ids, sorted.
    async fn jwks(&self) -> Vec<(String, String)> {
        let mut keys: Vec<(String, String)> = self
            .auth()
            .await
            .get_jwks(proto::GetJwksRequest {})
            .await
            .expect("GetJwks")
            .into_inner()
            .keys
            .into_iter()
            .map(|k| (k.kid, k.x))
            .collect();
        keys.sort();
        keys
    }
}

async fn channel(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
}

/// Health/Check on a new connection; a failed connection counts as UNAVAILABLE.
async fn health(addr: SocketAddr, service: &str) -> Result<i32, Status> {
    let channel = channel(addr)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    health_on(&channel, service).await
}

async fn health_on(channel: &Channel, service: &str) -> Result<i32, Status> {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// A result with only the status code of a failure, for comparisons.
fn codes<T>(r: Result<T, Status>) -> Result<T, Code> {
    r.map_err(|s| s.code())
}

fn login(email: &str) -> proto::LoginRequest {
    proto::LoginRequest {
        identifier: Some(proto::login_request::Identifier::Email(email.into())),
        password: PASSWORD.into(),
    }
}

/// Runs an `authd` CLI subcommand to completion.
async fn cli(env: &[(String, String)], args: &[&str]) -> std::process::Output {
    let mut cmd = command(env);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("CLI finished")
        .expect("run the CLI")
}

/// `authd service-keys create`: the key.
async fn service_key(url: &str) -> String {
    let out = cli(
        &env(&[("DATABASE_URL", url)]),
        &["service-keys", "create", "ops-tests"],
    )
    .await;
    assert!(
        out.status.success(),
        "service-keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Running replicas see a key created by the CLI at their next poll of the service-key view
    // (every 250 ms); give them ample time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Polls `check` until it holds or `within` has passed.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that `call` fails with UNAVAILABLE, and within `bound` (it must not hang).
async fn expect_unavailable<T: std::fmt::Debug>(
    what: &str,
    bound: Duration,
    call: impl Future<Output = Result<T, Status>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(bound, call).await;
    let elapsed = started.elapsed();
    match result {
        Err(_) => panic!("{what}: no answer within {bound:?}"),
        Ok(Ok(v)) => panic!("{what}: expected UNAVAILABLE, got OK: {v:?}"),
        Ok(Err(s)) => assert_eq!(s.code(), Code::Unavailable, "{what} ({elapsed:?}): {s:?}"),
    }
}

/// Processes whose command line mentions `needle` (what `pgrep -f` finds).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
    }
    found
}

// ----- database outage -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_outage_fails_fast_and_recovers() {
    let mut cluster = Cluster::start().await;
    let db_timeout = Duration::from_secs(2);
    // One replica checks service keys, one does not: either way ValidateToken needs the database.
    let keyed = Authd::spawn(env(&[
        ("DATABASE_URL", &cluster.url),
        ("AUTHD_DB_TIMEOUT", "2s"),
    ]));
    let keyless = Authd::spawn(env(&[
        ("DATABASE_URL", &cluster.url),
        ("AUTHD_DB_TIMEOUT", "2s"),
        ("AUTHD_VALIDATE_REQUIRE_KEY", "false"),
    ]));
    let (mut keyed, mut keyless) = (keyed, keyless);
    keyed.wait_serving().await;
    keyless.wait_serving().await;

    let key = service_key(&cluster.url).await;
    let email = unique_email();
    keyed.register(&email).await;
    let pair = keyed.login(&email).await;
    assert_eq!(
        codes(keyed.validate(&key, &pair.access_token).await),
        Ok(true)
    );
    assert_eq!(
        codes(keyless.validate("", &pair.access_token).await),
        Ok(true)
    );
    // The last write before the outage.
    let last_email = unique_email();
    keyless.register(&last_email).await;

    cluster.stop().await;
    let stopped = Instant::now();

    for p in [&keyed, &keyless] {
        let not_ready = vec![Ok(NOT_SERVING); 3];
        assert!(
            eventually(Duration::from_secs(5), || async {
                p.readiness().await == not_ready
            })
            .await,
            "readiness not NOT_SERVING: {:?}; log:\n{}",
            p.readiness().await,
            p.log()
        );
        assert_eq!(codes(health(p.addr, "liveness").await), Ok(SERVING));
    }

    // Calls that need the database fail fast: at most the pool's wait (AUTHD_DB_TIMEOUT) plus
    // slack, never a hang until the request deadline.
    let bound = db_timeout + Duration::from_secs(1);
    expect_unavailable("Login", bound, async {
        keyed.auth().await.login(login(&email)).await
    })
    .await;
    expect_unavailable("GetMe", bound, keyed.get_me(&pair.access_token)).await;
    // ValidateToken answers from the in-memory revocation view, which stays trusted for
    // MAX_STALENESS after its last refresh, and fails closed after that.
    tokio::time::sleep_until((stopped + views::MAX_STALENESS + Duration::from_millis(300)).into())
        .await;
    expect_unavailable(
        "ValidateToken (service key)",
        bound,
        keyed.validate(&key, &pair.access_token),
    )
    .await;
    // Fails closed: no valid=true for a token whose session cannot be checked.
    expect_unavailable(
        "ValidateToken (no key)",
        bound,
        keyless.validate("", &pair.access_token),
    )
    .await;
    expect_unavailable("Refresh", bound, keyed.refresh(&pair.refresh_token)).await;
    expect_unavailable("Register", bound, async {
        keyed
            .auth()
            .await
            .register(proto::RegisterRequest {
                email: unique_email(),
                password: PASSWORD.into(),
                ..Default::default()
            })
            .await
    })
    .await;
    // Verifiers can still fetch the keys.
    assert!(!keyed.jwks().await.is_empty());

    // PostgreSQL returns: readiness SERVING again within 10 s, without a restart of authd.
    cluster.restart().await;
    for p in [&keyed, &keyless] {
        let ready = vec![Ok(SERVING); 3];
        assert!(
            eventually(Duration::from_secs(10), || async {
                p.readiness().await == ready
            })
            .await,
            "readiness not SERVING 10 s after PostgreSQL returned: {:?}; log:\n{}",
            p.readiness().await,
            p.log()
        );
    }

    // Nothing committed before the outage was lost.
    assert_eq!(
        keyed.get_me(&pair.access_token).await.expect("GetMe").email,
        email
    );
    assert_eq!(
        codes(keyed.validate(&key, &pair.access_token).await),
        Ok(true)
    );
    assert_eq!(
        codes(keyless.validate("", &pair.access_token).await),
        Ok(true)
    );
    let next = keyless
        .refresh(&pair.refresh_token)
        .await
        .expect("Refresh with the pre-outage refresh token");
    assert_eq!(
        codes(keyed.validate(&key, &next.access_token).await),
        Ok(true)
    );
    keyed.login(&email).await;
    keyed.login(&last_email).await;

    keyed.stop().await;
    keyless.stop().await;
    cluster.stop().await;
}

// ----- drain -----------------------------------------------------------------------------------

/// Holds `ACCESS EXCLUSIVE` on `users`, so calls that read users wait for it.
async fn lock_users(cluster: &Cluster) -> AsyncPgConnection {
    let mut conn = cluster.conn().await;
    conn.batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock users");
    conn
}

/// Waits until some statement of database `authd` waits for a lock.
async fn wait_for_lock_waiter(cluster: &Cluster) {
    let mut conn = cluster.conn().await;
    let sql = "SELECT count(*) AS n FROM pg_stat_activity \
               WHERE datname = 'authd' AND wait_event_type = 'Lock'";
    let mut waiting = false;
    for _ in 0..200 {
        if count(&mut conn, sql).await > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waiting, "the in-flight call never reached the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_lets_in_flight_calls_finish() {
    let cluster = Cluster::start().await;
    let delay = Duration::from_secs(3);
    let grace = Duration::from_secs(20);
    let mut p = Authd::start(env(&[
        ("DATABASE_URL", &cluster.url),
        ("AUTHD_SHUTDOWN_DELAY", "3s"),
        ("AUTHD_SHUTDOWN_GRACE", "20s"),
        ("AUTHD_DB_TIMEOUT", "30s"),
        ("AUTHD_REQUEST_TIMEOUT", "30s"),
    ]))
    .await;
    let email = unique_email();
    p.register(&email).await;

    // An in-flight call: a Login that waits for the lock on `users`.
    let mut lock = lock_users(&cluster).await;
    let mut client = p.auth().await;
    let request = login(&email);
    let in_flight = tokio::spawn(async move { client.login(request).await });
    wait_for_lock_waiter(&cluster).await;

    p.sigterm();
    let signalled = Instant::now();

    // During the delay new connections are still accepted, and readiness says NOT_SERVING as soon
    // as the signal has been handled.
    let fresh = channel(p.addr)
        .await
        .expect("a new connection during the delay");
    let flipped = eventually(delay / 2, || async {
        codes(health_on(&fresh, "").await) == Ok(NOT_SERVING)
    })
    .await;
    assert!(flipped, "readiness still SERVING; log:\n{}", p.log());
    for s in READINESS {
        assert_eq!(
            health_on(&fresh, s).await.map_err(|e| e.code()),
            Ok(NOT_SERVING),
            "{s:?} right after SIGTERM"
        );
    }
    assert_eq!(codes(health_on(&fresh, "liveness").await), Ok(SERVING));

    // Then new connections are refused, while the call is still in flight. Readiness never comes
    // back meanwhile, whatever the database monitor sees.
    let refused = eventually(delay + Duration::from_secs(5), || async {
        if let Ok(status) = health_on(&fresh, "").await {
            assert_eq!(status, NOT_SERVING, "readiness came back during the drain");
        }
        matches!(
            tokio::net::TcpStream::connect(p.addr).await,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
    })
    .await;
    assert!(refused, "new connections still accepted; log:\n{}", p.log());
    assert!(!in_flight.is_finished(), "the in-flight call ended early");
    assert!(p.child.try_wait().expect("try_wait").is_none());

    // The call completes normally once it can.
    lock.batch_execute("ROLLBACK").await.expect("unlock");
    let pair = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the in-flight call finished")
        .expect("task")
        .expect("the in-flight Login succeeded")
        .into_inner();
    assert!(!pair.access_token.is_empty());

    let status = p.wait_exit(delay + grace).await;
    assert!(status.success(), "exit {status}; log:\n{}", p.log());
    assert!(signalled.elapsed() < delay + grace);
    let log = p.log();
    for phase in [
        "drain 1/5",
        "drain 2/5",
        "drain 3/5: in-flight calls finished",
        "drain 4/5",
        "drain 5/5",
    ] {
        assert!(log.contains(phase), "no {phase:?} in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_grace_bounds_calls_that_do_not_finish() {
    let cluster = Cluster::start().await;
    let (delay, grace) = (Duration::from_secs(1), Duration::from_secs(2));
    let mut p = Authd::start(env(&[
        ("DATABASE_URL", &cluster.url),
        ("AUTHD_SHUTDOWN_DELAY", "1s"),
        ("AUTHD_SHUTDOWN_GRACE", "2s"),
        ("AUTHD_DB_TIMEOUT", "60s"),
        ("AUTHD_REQUEST_TIMEOUT", "60s"),
    ]))
    .await;
    let email = unique_email();
    p.register(&email).await;

    let mut lock = lock_users(&cluster).await;
    let mut client = p.auth().await;
    let request = login(&email);
    let in_flight = tokio::spawn(async move { client.login(request).await });
    wait_for_lock_waiter(&cluster).await;

    p.sigterm();
    // The lock is never released while authd runs: the grace period ends the wait.
    let status = p.wait_exit(delay + grace + Duration::from_secs(10)).await;
    assert!(status.success(), "exit {status}; log:\n{}", p.log());
    assert!(p.log().contains("grace period over"), "{}", p.log());
    let answer = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the abandoned call ended")
        .expect("task");
    assert!(answer.is_err(), "{answer:?}");
    lock.batch_execute("ROLLBACK").await.expect("unlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_stops_the_embedded_postgres() {
    let data_dir = temp_dir("authd-ops-embedded-");
    let dir = data_dir.path().to_str().unwrap().to_owned();
    let mut p = Authd::start(env(&[("AUTHD_DATA_DIR", &dir)])).await;
    let email = unique_email();
    p.register(&email).await;
    p.login(&email).await;
    assert!(
        !processes_mentioning(&dir).is_empty(),
        "no PostgreSQL process for {dir}"
    );

    // SIGINT (Ctrl-C) drains like SIGTERM.
    p.signal(nix::sys::signal::Signal::SIGINT);
    let status = p.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status}; log:\n{}", p.log());
    let log = p.log();
    assert!(log.contains("SIGINT received"), "{log}");
    assert!(log.contains("embedded PostgreSQL stopped"), "{log}");
    // Gone when authd is: authd waited for it.
    assert_eq!(processes_mentioning(&dir), Vec::<String>::new(), "{log}");
}

// ----- healthcheck subcommand --------------------------------------------------------------------

async fn healthcheck(envs: &[(String, String)], args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["healthcheck"];
    all.extend_from_slice(args);
    let out = cli(envs, &all).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthcheck_subcommand() {
    let mut cluster = Cluster::start().await;
    let p = Authd::start(env(&[
        ("DATABASE_URL", &cluster.url),
        ("AUTHD_DB_TIMEOUT", "2s"),
    ]))
    .await;
    let addr = p.addr.to_string();
    // No database settings at all, and an empty data dir that must stay empty.
    let untouched = temp_dir("authd-ops-hc-");
    let hc_env = env(&[("AUTHD_DATA_DIR", untouched.path().to_str().unwrap())]);

    let (ok, out, err) = healthcheck(&hc_env, &["--addr", &addr]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "SERVING");
    for service in ["authd.v1.AuthService", "authd.v1.UserService", "liveness"] {
        let (ok, _, err) = healthcheck(&hc_env, &["--addr", &addr, "--service", service]).await;
        assert!(ok, "{service}: {err}");
    }
    // The default address is AUTHD_LISTEN, a wildcard meaning loopback.
    let wildcard = env(&[
        ("AUTHD_LISTEN", &format!("0.0.0.0:{}", p.addr.port())),
        ("AUTHD_DATA_DIR", untouched.path().to_str().unwrap()),
    ]);
    let (ok, _, err) = healthcheck(&wildcard, &[]).await;
    assert!(ok, "default address: {err}");

    let (ok, _, err) = healthcheck(&hc_env, &["--addr", &addr, "--service", "nope"]).await;
    assert!(!ok);
    assert!(
        err.contains("NOT_FOUND") && err.lines().count() == 1,
        "{err}"
    );

    let nobody = format!("127.0.0.1:{}", free_port());
    let (ok, _, err) = healthcheck(&hc_env, &["--addr", &nobody]).await;
    assert!(!ok);
    assert!(
        err.contains("cannot connect") && err.lines().count() == 1,
        "{err}"
    );

    // NOT_SERVING while the database is down; liveness still SERVING.
    cluster.stop().await;
    let not_serving = eventually(Duration::from_secs(10), || async {
        let (ok, _, err) = healthcheck(&hc_env, &["--addr", &addr]).await;
        !ok && err.contains("NOT_SERVING")
    })
    .await;
    assert!(not_serving, "healthcheck never reported NOT_SERVING");
    let (ok, _, err) = healthcheck(&hc_env, &["--addr", &addr, "--service", "liveness"]).await;
    assert!(ok, "liveness: {err}");

    assert_eq!(
        std::fs::read_dir(untouched.path()).unwrap().count(),
        0,
        "healthcheck touched the data dir"
    );
    p.stop().await;
}

// ----- several replicas ------------------------------------------------------------------------

fn migration_count() -> i64 {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations dir")
        .flatten()
        .filter(|e| e.path().join("up.sql").is_file())
        .count() as i64
}

/// `n` replicas on one (empty) database, all started at the same moment.
async fn replicas(cluster: &Cluster, n: usize, extra: &[(&str, &str)]) -> Vec<Authd> {
    let mut pairs = vec![
        ("DATABASE_URL", cluster.url.as_str()),
        ("AUTHD_BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL),
        ("AUTHD_BOOTSTRAP_ADMIN_PASSWORD", PASSWORD),
    ];
    pairs.extend_from_slice(extra);
    let mut all: Vec<Authd> = (0..n).map(|_| Authd::spawn(env(&pairs))).collect();
    for p in &mut all {
        p.wait_serving().await;
    }
    all
}

/// Migrations ran exactly once although every replica started with them pending.
async fn assert_migrated_once(cluster: &Cluster, all: &[Authd]) {
    let mut conn = cluster.conn().await;
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM (SELECT version FROM __diesel_schema_migrations \
             GROUP BY version HAVING count(*) > 1) dup"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM __diesel_schema_migrations"
        )
        .await,
        migration_count()
    );
    let appliers = all
        .iter()
        .filter(|p| p.log().contains("migrations applied"))
        .count();
    assert_eq!(appliers, 1, "replicas that applied migrations");
}

/// Sends the same refresh token to every replica at once (`per_replica` calls each).
async fn refresh_race(
    all: &[Authd],
    per_replica: usize,
    token: &str,
) -> Vec<Result<proto::LoginResponse, Status>> {
    let mut clients = Vec::new();
    for p in all {
        for _ in 0..per_replica {
            clients.push(p.auth().await);
        }
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let barrier = barrier.clone();
            let token = token.to_owned();
            tokio::spawn(async move {
                barrier.wait().await;
                c.refresh(proto::RefreshRequest {
                    refresh_token: token,
                })
                .await
                .map(|r| proto::LoginResponse::from(r.into_inner()))
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_the_database() {
    let cluster = Cluster::start().await;
    let all = replicas(&cluster, 3, &[]).await;
    assert_migrated_once(&cluster, &all).await;
    let (r1, r2, r3) = (&all[0], &all[1], &all[2]);

    // One signing key, published by all.
    let jwks = r1.jwks().await;
    assert_eq!(jwks.len(), 1, "{jwks:?}");
    assert_eq!(r2.jwks().await, jwks);
    assert_eq!(r3.jwks().await, jwks);

    // Tokens issued by one replica are good on the others.
    let key = service_key(&cluster.url).await;
    let email = unique_email();
    r1.register(&email).await;
    let pair = r2.login(&email).await;
    assert_eq!(codes(r3.validate(&key, &pair.access_token).await), Ok(true));
    assert_eq!(
        r1.get_me(&pair.access_token).await.expect("GetMe").email,
        email
    );

    // Logout on replica 1: replica 2 says valid=false within 1 s.
    r1.auth()
        .await
        .logout(proto::LogoutRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .expect("logout");
    let revoked = eventually(Duration::from_secs(1), || async {
        codes(r2.validate(&key, &pair.access_token).await) == Ok(false)
    })
    .await;
    assert!(revoked, "replica 2 still accepts a logged-out token");

    // A refresh race inside the reuse grace window (5 s): one successor, handed to every caller.
    let pair = r3.login(&email).await;
    let results = refresh_race(&all, 2, &pair.refresh_token).await;
    let tokens: Vec<String> = results
        .into_iter()
        .map(|r| r.expect("refresh inside the grace window").refresh_token)
        .collect();
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "different successors: {tokens:?}"
    );
    assert_ne!(tokens[0], pair.refresh_token);
    r1.refresh(&tokens[0])
        .await
        .expect("the successor refreshes");

    // A key rotation on one replica (the RPC, by the bootstrap admin) reaches the others.
    let admin = r1.login(ADMIN_EMAIL).await;
    let kid = r1
        .auth()
        .await
        .rotate_signing_key(with_bearer(
            proto::RotateSigningKeyRequest {},
            &admin.access_token,
        ))
        .await
        .expect("RotateSigningKey")
        .into_inner()
        .kid;
    // ... and one from the CLI, which no replica serves.
    let out = cli(
        &env(&[("DATABASE_URL", &cluster.url)]),
        &["signing-keys", "rotate"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_kid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    for p in &all {
        let seen = eventually(Duration::from_secs(5), || async {
            let kids: Vec<String> = p.jwks().await.into_iter().map(|(k, _)| k).collect();
            kids.contains(&kid) && kids.contains(&cli_kid)
        })
        .await;
        assert!(
            seen,
            "rotations not in JWKS at {}: {:?}",
            p.addr,
            p.jwks().await
        );
    }
    let jwks = r1.jwks().await;
    assert_eq!(jwks.len(), 3);
    assert_eq!(r2.jwks().await, jwks);
    assert_eq!(r3.jwks().await, jwks);

    for p in all {
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_strict_refresh_race_has_one_winner() {
    let cluster = Cluster::start().await;
    let all = replicas(&cluster, 2, &[("AUTHD_REFRESH_REUSE_GRACE", "0")]).await;
    assert_migrated_once(&cluster, &all).await;

    let email = unique_email();
    all[0].register(&email).await;
    for round in 0..3 {
        let pair = all[round % 2].login(&email).await;
        let results = refresh_race(&all, 2, &pair.refresh_token).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let unauthenticated = results
            .iter()
            .filter(|r| matches!(r, Err(s) if s.code() == Code::Unauthenticated))
            .count();
        assert_eq!(
            (ok, unauthenticated),
            (1, results.len() - 1),
            "round {round}: {results:?}"
        );
    }

    for p in all {
        p.stop().await;
    }
}
