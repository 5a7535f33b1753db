//! Test harness: one private PostgreSQL cluster per test process (the same `embedded_pg` module the
//! server uses), a template database with the migrations applied once, a fresh copy of it for each
//! test, and the real server in-process on 127.0.0.1:0 with real tonic clients.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use authd::clock::ManualClock;
use authd::config::Config;
use authd::domain::Authd;
use authd::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use authd::proto;
use authd::proto::auth_service_client::AuthServiceClient;
use authd::proto::user_service_client::UserServiceClient;
use authd::server;
use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

/// A password that strength estimators accept, so fixtures survive stricter policies.
pub const PASSWORD: &str = "Correct-Horse-Battery-Staple-42";
pub const OTHER_PASSWORD: &str = "Tr0ub4dor&3-Quantum-Walrus";
pub const TEMPLATE_DB: &str = "authd_template";
const DB_PLACEHOLDER: &str = "__authd_db__";

struct Cluster {
    url_template: String,
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        // The cluster lives on a thread of its own, with its own runtime, for the whole process. The
        // embedded module's watchdog stops it when the test process exits.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("cluster runtime");
            rt.block_on(async move {
                let pg = EmbeddedPostgres::start(EmbeddedOptions {
                    data_dir: std::env::temp_dir(),
                    ephemeral: true,
                    max_connections: 400,
                })
                .await
                .expect("start the test PostgreSQL cluster");
                let template = pg.database_url(DB_PLACEHOLDER);
                let mut admin = AsyncPgConnection::establish(&pg.database_url("postgres"))
                    .await
                    .expect("connect to the test cluster");
                diesel::sql_query(format!("CREATE DATABASE {TEMPLATE_DB}"))
                    .execute(&mut admin)
                    .await
                    .expect("create template database");
                authd::db::run_migrations(&template.replace(DB_PLACEHOLDER, TEMPLATE_DB))
                    .await
                    .expect("migrate template database");
                tx.send(template).expect("hand over cluster url");
                // Keep `pg` alive for the life of the process.
                std::future::pending::<()>().await;
                drop(pg);
            });
        });
        Cluster {
            url_template: rx.recv().expect("test cluster failed to start"),
        }
    })
}

/// The URL of database `name` in the test cluster.
pub fn db_url(name: &str) -> String {
    cluster().url_template.replace(DB_PLACEHOLDER, name)
}

/// A fresh database, copied from the migrated template.
pub async fn fresh_database() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = AsyncPgConnection::establish(&db_url("postgres"))
        .await
        .expect("connect to the test cluster");
    let mut attempt = 0;
    loop {
        match diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"))
            .execute(&mut admin)
            .await
        {
            Ok(_) => break,
            // Another CREATE DATABASE may be copying the template at this very moment.
            Err(e) if attempt < 50 && e.to_string().contains("being accessed by other users") => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create test database: {e}"),
        }
    }
    db_url(&name)
}

/// The configuration tests start from: bcrypt cost 4, the given database.
pub fn test_config(url: &str) -> Config {
    let mut c = Config::defaults();
    c.database_url = Some(url.to_owned());
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.bcrypt_cost = 4;
    c.db_pool_size = 5;
    // `stop` drains: no need to give a load balancer time to notice.
    c.shutdown_delay = std::time::Duration::ZERO;
    c.bootstrap_admin_email = None;
    c.bootstrap_admin_password = None;
    c.validate_require_key = true;
    // Brute-force defences are on by default; tests that are not about them must not trip them.
    // The throttle tests set their own limits.
    c.rate_limit_per_ip = 0;
    c.login_max_failures = 1_000_000;
    c.login_max_failures_per_hour = 1_000_000;
    c
}

/// A running server, in-process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub config: Config,
    pub clock: Arc<ManualClock>,
    pub svc: Arc<Authd>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server on a fresh database with the test defaults.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server on a fresh database, with the config adjusted by `f`.
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> Self {
        let url = fresh_database().await;
        let mut config = test_config(&url);
        f(&mut config);
        Self::start_on(config, Arc::new(ManualClock::new(Utc::now()))).await
    }

    /// A server with exactly this config and clock (e.g. a restart on an existing database).
    pub async fn start_on(config: Config, clock: Arc<ManualClock>) -> Self {
        let url = config
            .database_url
            .clone()
            .expect("tests always set a database url");
        let svc = server::start_service(Arc::new(config.clone()), &url, clock.clone())
            .await
            .expect("start service");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let serve_svc = svc.clone();
        let handle = tokio::spawn(async move {
            server::serve(serve_svc, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        TestServer {
            addr,
            url,
            config,
            clock,
            svc,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Stops the server and waits for it, closing its pool.
    pub async fn stop(mut self) {
        self.shutdown_now().await;
    }

    async fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        self.svc.pool().close();
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel().await)
    }

    pub async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel().await)
    }

    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// Registers an account and returns it.
    pub async fn register(&self, email: &str, password: &str) -> proto::User {
        self.auth()
            .await
            .register(proto::RegisterRequest {
                email: email.into(),
                password: password.into(),
                ..Default::default()
            })
            .await
            .expect("register")
            .into_inner()
            .user
            .expect("user in RegisterResponse")
    }

    /// Logs in by e-mail.
    pub async fn login(&self, email: &str, password: &str) -> proto::TokenPair {
        self.auth()
            .await
            .login(login_email(email, password))
            .await
            .expect("login")
            .into_inner()
    }

    /// Registers a fresh user and logs in.
    pub async fn user_session(&self) -> (proto::User, proto::TokenPair) {
        let email = unique_email();
        let user = self.register(&email, PASSWORD).await;
        let pair = self.login(&email, PASSWORD).await;
        (user, pair)
    }

    /// Creates an admin directly (as the bootstrap does) and logs in.
    pub async fn admin_session(&self) -> proto::TokenPair {
        let email = unique_email();
        self.svc
            .ensure_bootstrap_admin(&email, PASSWORD)
            .await
            .expect("create admin");
        self.login(&email, PASSWORD).await
    }

    /// A service key created through the domain (as the CLI does).
    pub async fn service_key(&self) -> String {
        self.svc
            .create_service_key(None, "tests", &authd::domain::ClientInfo::default())
            .await
            .expect("create service key")
            .1
    }

    /// ValidateToken with a fresh service key.
    pub async fn validate(&self, access_token: &str) -> proto::ValidateTokenResponse {
        let key = self.service_key().await;
        self.auth()
            .await
            .validate_token(with_key(
                proto::ValidateTokenRequest {
                    access_token: access_token.into(),
                },
                &key,
            ))
            .await
            .expect("validate")
            .into_inner()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn login_email(email: &str, password: &str) -> proto::LoginRequest {
    proto::LoginRequest {
        identifier: Some(proto::login_request::Identifier::Email(email.into())),
        password: password.into(),
    }
}

pub fn login_username(username: &str, password: &str) -> proto::LoginRequest {
    proto::LoginRequest {
        identifier: Some(proto::login_request::Identifier::Username(username.into())),
        password: password.into(),
    }
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

pub fn unique_username() -> String {
    format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A request with `authorization: Bearer <token>`.
pub fn with_bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    r
}

/// A request with `x-api-key: <key>`.
pub fn with_key<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-api-key", key.parse().expect("metadata"));
    r
}

/// The `ErrorInfo.reason` of a status, if any.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// Asserts the code of a failed call and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "unexpected status: {s:?}");
            s
        }
    }
}
