//! The in-process `TestServer`: the real server on 127.0.0.1:0 over a fresh database of the test
//! cluster ([`crate::cluster`]), with a [`ManualClock`] the test moves, and real tonic clients.

use std::net::SocketAddr;
use std::sync::Arc;

use authd::api::Authd;
use authd::clock::ManualClock;
use authd::config::Config;
use authd::proto;
use authd::proto::auth_service_client::AuthServiceClient;
use authd::proto::user_service_client::UserServiceClient;
use authd::server;
use chrono::Utc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use crate::cluster::{connect_db, fresh_database};
use crate::requests::{PASSWORD, login_email, unique_email, with_bearer, with_key};

/// The configuration tests start from: bcrypt cost 4, the given database.
pub fn test_config(url: &str) -> Config {
    let mut c = Config::defaults();
    c.database_url = Some(url.into());
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
    // Fixtures create accounts many at a time; the bcrypt pool's fail-fast queue has its own tests.
    c.bcrypt_queue = Some(100_000);
    // Register queues a verification message: without an SMTP URL it becomes an `.eml` file, in a
    // directory of this test's own (named after its database), never the shared data directory.
    let db_name = url.rsplit('/').next().unwrap_or("authd");
    c.mail_dir = Some(std::env::temp_dir().join("authd-test-mail").join(db_name));
    // The password-reset limits have their own tests.
    c.password_reset_per_address = 0;
    c.password_reset_per_ip = 0;
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
        Self::start_at(config, clock, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// [`TestServer::start_on`] at a given address, e.g. the one of a server that was stopped, so
    /// that clients holding its address see a restart.
    pub async fn start_at(config: Config, clock: Arc<ManualClock>, addr: SocketAddr) -> Self {
        let url = config
            .database_url()
            .expect("tests always set a database url")
            .to_owned();
        let shared = Arc::new(config.clone());
        let svc = server::start_service(shared.clone(), &url, clock.clone())
            .await
            .expect("start service");
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let serve_svc = svc.clone();
        let handle = tokio::spawn(async move {
            server::serve(serve_svc, shared, listener, async {
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

    /// A connection to this server's database, for tests that inspect or change rows directly.
    pub async fn db(&self) -> diesel_async::AsyncPgConnection {
        connect_db(&self.url).await
    }

    /// Runs one SQL statement on this server's database (a test's direct change), panicking with
    /// the statement if it fails.
    pub async fn exec(&self, sql: &str) {
        use diesel_async::RunQueryDsl;
        diesel::sql_query(sql)
            .execute(&mut self.db().await)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
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
    pub async fn login(&self, email: &str, password: &str) -> proto::LoginResponse {
        self.auth()
            .await
            .login(login_email(email, password))
            .await
            .expect("login")
            .into_inner()
    }

    /// Registers a fresh user and logs in.
    pub async fn user_session(&self) -> (proto::User, proto::LoginResponse) {
        let email = unique_email();
        let user = self.register(&email, PASSWORD).await;
        let pair = self.login(&email, PASSWORD).await;
        (user, pair)
    }

    /// Creates an admin directly (as `authd users create-admin` does) and logs in.
    pub async fn admin_session(&self) -> proto::LoginResponse {
        let email = unique_email();
        self.create_admin(&email, PASSWORD).await;
        self.login(&email, PASSWORD).await
    }

    /// Creates an admin directly, whether or not other admins exist; returns its id.
    pub async fn create_admin(&self, email: &str, password: &str) -> String {
        let account = self
            .svc
            .create_account(
                authd::api::NewAccount {
                    email: email.into(),
                    password: password.into(),
                    // As `authd users create-admin` does.
                    email_verified: true,
                    ..Default::default()
                },
                authd::api::Role::Admin,
                None,
                &authd::api::ClientInfo::default(),
                "test admin",
            )
            .await
            .expect("create admin");
        account.id.to_string()
    }

    /// A service key created through the domain (as the CLI does).
    pub async fn service_key(&self) -> String {
        self.svc
            .create_service_key(None, "tests", &authd::api::ClientInfo::default())
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

    /// ListMySessions with `access_token`: the caller's live sessions.
    pub async fn my_sessions(&self, access_token: &str) -> Vec<proto::Session> {
        self.users()
            .await
            .list_my_sessions(with_bearer(proto::ListMySessionsRequest {}, access_token))
            .await
            .expect("ListMySessions")
            .into_inner()
            .sessions
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
