#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Logs never contain secrets. A test binary of its own, because it installs the process-wide
//! tracing subscriber: `trace` for authd, `debug` for every other crate (`log` records of
//! dependencies included), written into memory. A full flow runs against the real server with a
//! master key set; afterwards no password, token, token fragment, service key, master key, signing
//! key or server secret may appear in the captured text, in any common encoding, nor in an audit
//! event. A second start without a master key must log a warning naming AUTHD_MASTER_KEY.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration as StdDuration;

use authd::api::Authd;
use authd::clock::ManualClock;
use authd::config::Config;
use authd::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use authd::proto;
use authd::proto::auth_service_client::AuthServiceClient;
use authd::proto::user_service_client::UserServiceClient;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chrono::{Duration, Utc};
use diesel::sql_types::{Bool, Bytea, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

// ----- log capture -------------------------------------------------------------------------------

use authd_testkit::capture::{Buffer, BufferWriter};
use authd_testkit::{TextRow, hex, open_sealed};

/// The captured log, installing the subscriber on first use.
fn buffer() -> &'static Buffer {
    static BUFFER: OnceLock<Buffer> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buf: Buffer = Arc::default();
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter(authd::server::log_filter("debug,authd=trace"))
            .with_writer(move || BufferWriter(writer.clone()))
            .with_ansi(false)
            .with_target(true)
            .try_init()
            .expect("install the capturing subscriber");
        buf
    })
}

fn log_len() -> usize {
    buffer().lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// The captured text from byte `from` on.
fn log_text(from: usize) -> String {
    let buf = buffer().lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&buf[from.min(buf.len())..]).into_owned()
}

// ----- a small in-process server (the api harness lives in another test binary) -----------------

const PASSWORD: &str = "Correct-Horse-Battery-Staple-42";
const NEW_PASSWORD: &str = "Tr0ub4dor&3-Quantum-Walrus";
const WRONG_PASSWORD: &str = "Wrong-Guess-Mauve-Lantern-77";
const WRONG_CURRENT_PASSWORD: &str = "Not-My-Password-Ochre-Falcon-19";
const UNKNOWN_ACCOUNT_PASSWORD: &str = "Nobody-Home-Velvet-Cactus-31";
const WEAK_PASSWORD: &str = "qwertyuiop1";
const ADMIN_PASSWORD: &str = "Bootstrap-Admin-Granite-Otter-58";
const CREATED_USER_PASSWORD: &str = "Admin-Made-Saffron-Kettle-64";

struct Server {
    addr: SocketAddr,
    svc: Arc<Authd>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    async fn start(config: Config, clock: Arc<ManualClock>) -> Self {
        let url = config.database_url().expect("database url").to_owned();
        let shared = Arc::new(config);
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
        Server {
            addr,
            svc,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
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

    async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel().await)
    }

    async fn login(
        &self,
        identifier: &str,
        password: &str,
    ) -> Result<proto::LoginResponse, Status> {
        let identifier = if identifier.contains('@') {
            proto::login_request::Identifier::Email(identifier.into())
        } else {
            proto::login_request::Identifier::Username(identifier.into())
        };
        self.auth()
            .await
            .login(proto::LoginRequest {
                identifier: Some(identifier),
                password: password.into(),
            })
            .await
            .map(|r| r.into_inner())
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

    async fn validate(
        &self,
        key: &str,
        access_token: &str,
    ) -> Result<proto::ValidateTokenResponse, Status> {
        self.auth()
            .await
            .validate_token(with_key(
                proto::ValidateTokenRequest {
                    access_token: access_token.into(),
                },
                key,
            ))
            .await
            .map(|r| r.into_inner())
    }

    async fn get_me(&self, token: &str) -> Result<proto::User, Status> {
        self.users()
            .await
            .get_me(with_bearer(proto::GetMeRequest {}, token))
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

fn with_bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    r
}

fn with_key<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-api-key", key.parse().expect("metadata"));
    r
}

#[track_caller]
fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) {
    match result {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(s) => assert_eq!(s.code(), code, "unexpected status: {s:?}"),
    }
}

fn config(url: &str) -> Config {
    let mut c = Config::defaults();
    c.database_url = Some(url.into());
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.bcrypt_cost = 4;
    c.db_pool_size = 5;
    // `stop` drains: no need to give a load balancer time to notice.
    c.shutdown_delay = std::time::Duration::ZERO;
    c.bootstrap_admin_email = None;
    c.bootstrap_admin_password = None;
    c.master_key = None;
    c
}

async fn create_database(pg: &EmbeddedPostgres, name: &str) -> String {
    let mut admin = AsyncPgConnection::establish(&pg.database_url("postgres"))
        .await
        .expect("connect to the cluster");
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create database");
    pg.database_url(name)
}

// ----- what must never be logged -----------------------------------------------------------------

/// Secrets to look for, each with a label for the failure message.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: &str, needle: &str) {
        assert!(needle.len() >= 8, "needle for {what} too short to search");
        self.0.push((what.to_owned(), needle.to_owned()));
    }

    /// A text secret: verbatim and as bytes in the usual encodings.
    fn text(&mut self, what: &str, secret: &str) {
        self.add(what, secret);
        self.bytes(what, secret.as_bytes());
    }

    /// A byte secret: hex, base64 (every alphabet, padded or not), and Rust's `Debug` of a byte
    /// slice (`1, 2, 3`), as a log of a `Vec<u8>` or a query parameter would show it.
    fn bytes(&mut self, what: &str, secret: &[u8]) {
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        self.add(&format!("{what} (hex)"), &hex);
        self.add(&format!("{what} (HEX)"), &hex.to_uppercase());
        for (name, engine) in [
            ("base64", &STANDARD),
            ("base64 unpadded", &STANDARD_NO_PAD),
            ("base64url", &URL_SAFE),
            ("base64url unpadded", &URL_SAFE_NO_PAD),
        ] {
            self.add(&format!("{what} ({name})"), &engine.encode(secret));
        }
        let debug = format!("{secret:?}");
        let inner = debug.trim_start_matches('[').trim_end_matches(']');
        self.add(&format!("{what} (Debug)"), inner);
    }

    /// A random byte secret: as [`Self::bytes`], and also the first 12 bytes of its `Debug` form,
    /// in case a log truncated it. (Not for structured data such as PKCS#8, whose first bytes are
    /// the same for every key.)
    fn random_bytes(&mut self, what: &str, secret: &[u8]) {
        self.bytes(what, secret);
        let prefix = format!("{:?}", &secret[..secret.len().min(12)]);
        self.add(
            &format!("{what} (Debug prefix)"),
            prefix.trim_end_matches(']'),
        );
    }

    /// An access token: whole, its claims, its signature, and the ends of its signature.
    fn access_token(&mut self, what: &str, token: &str) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{what} is not a JWS");
        self.add(what, token);
        self.add(&format!("{what} payload"), parts[1]);
        self.add(
            &format!("{what} header+payload"),
            &token[..token.rfind('.').expect("dot")],
        );
        self.fragment(&format!("{what} signature"), parts[2]);
    }

    /// An opaque token (`rt_…`, `sk_…`): whole, and its random part and the ends of it.
    fn opaque(&mut self, what: &str, token: &str) {
        self.add(what, token);
        let random = &token[3..];
        self.fragment(&format!("{what} random part"), random);
        let raw = URL_SAFE_NO_PAD
            .decode(random)
            .expect("base64url random part");
        self.random_bytes(&format!("{what} raw bytes"), &raw);
    }

    /// A base64url string, and its first and last 12 characters.
    fn fragment(&mut self, what: &str, s: &str) {
        self.add(what, s);
        self.add(&format!("{what} (first 12)"), &s[..12]);
        self.add(&format!("{what} (last 12)"), &s[s.len() - 12..]);
    }

    /// Panics listing every secret found in `haystack`.
    fn assert_absent(&self, haystack: &str, where_: &str) {
        let found: Vec<&str> = self
            .0
            .iter()
            .filter(|(_, needle)| haystack.contains(needle.as_str()))
            .map(|(what, _)| what.as_str())
            .collect();
        if !found.is_empty() {
            let excerpts: Vec<String> = self
                .0
                .iter()
                .filter(|(_, needle)| haystack.contains(needle.as_str()))
                .take(3)
                .filter_map(|(_, needle)| {
                    haystack
                        .lines()
                        .find(|l| l.contains(needle.as_str()))
                        .map(|l| l.chars().take(400).collect::<String>())
                })
                .collect();
            panic!(
                "{} secret(s) found in {where_}: {found:?}\nfirst lines:\n{}",
                found.len(),
                excerpts.join("\n")
            );
        }
    }
}

#[derive(diesel::QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = Text)]
    kid: String,
    #[diesel(sql_type = Bytea)]
    private_key: Vec<u8>,
    #[diesel(sql_type = Bool)]
    encrypted: bool,
}

#[derive(diesel::QueryableByName)]
struct SecretRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Bytea)]
    value: Vec<u8>,
    #[diesel(sql_type = Bool)]
    encrypted: bool,
}

/// The plaintext key material in the database at `url`: every signing key (PKCS#8 and its seed)
/// and every server secret, opened with `master` where sealed.
async fn key_material(url: &str, master: Option<&[u8; 32]>, secrets: &mut Secrets) {
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    let keys: Vec<KeyRow> =
        diesel::sql_query("SELECT kid, private_key, encrypted FROM signing_keys")
            .load(&mut conn)
            .await
            .expect("signing keys");
    assert!(!keys.is_empty());
    for k in keys {
        let der = match (k.encrypted, master) {
            (true, Some(m)) => open_sealed(m, &k.private_key, &format!("signing_key:{}", k.kid)),
            (false, _) => k.private_key.clone(),
            (true, None) => panic!("sealed key without a master key"),
        };
        // PKCS#8 of Ed25519: a 16-byte prefix, then the 32-byte seed (then, in v2, the public key).
        assert!(
            der.len() >= 48 && der[14..16] == [0x04, 0x20],
            "Ed25519 PKCS#8"
        );
        secrets.bytes(&format!("signing key {} (PKCS#8)", k.kid), &der);
        secrets.random_bytes(&format!("signing key {} (seed)", k.kid), &der[16..48]);
    }
    let rows: Vec<SecretRow> =
        diesel::sql_query("SELECT name, value, encrypted FROM server_secrets")
            .load(&mut conn)
            .await
            .expect("server secrets");
    for s in rows {
        let value = match (s.encrypted, master) {
            (true, Some(m)) => open_sealed(m, &s.value, &format!("server_secret:{}", s.name)),
            (false, _) => s.value.clone(),
            (true, None) => panic!("sealed secret without a master key"),
        };
        secrets.random_bytes(&format!("server secret {}", s.name), &value);
    }
}

/// The stored password hashes: not passwords, but what an offline guesser needs, so not for logs.
async fn password_hashes(url: &str, secrets: &mut Secrets) {
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    let rows: Vec<TextRow> = diesel::sql_query("SELECT password_hash AS t FROM users")
        .load(&mut conn)
        .await
        .expect("password hashes");
    assert!(!rows.is_empty());
    for r in rows {
        assert!(r.t.starts_with("$2"), "a bcrypt hash");
        secrets.text("password hash", &r.t);
        // The salt and hash part alone (after `$2b$04$`).
        secrets.add("password hash body", &r.t[7..]);
    }
}

/// Every audit event of the database at `url`, as JSON text.
async fn audit_dump(url: &str) -> String {
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    let rows: Vec<TextRow> =
        diesel::sql_query("SELECT row_to_json(e)::text AS t FROM audit_events e")
            .load(&mut conn)
            .await
            .expect("audit events");
    assert!(!rows.is_empty(), "the flow records audit events");
    rows.into_iter().map(|r| r.t).collect::<Vec<_>>().join("\n")
}

// ----- the test ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_never_contain_secrets() {
    let start = log_len();
    let pg = EmbeddedPostgres::start(EmbeddedOptions {
        data_dir: std::env::temp_dir(),
        ephemeral: true,
        max_connections: 50,
    })
    .await
    .expect("start PostgreSQL");

    let mut secrets = Secrets::default();
    let mut master_bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut master_bytes);
    let master = STANDARD.encode(master_bytes);
    secrets.text("master key", &master);
    secrets.add("master key (hex)", &hex(&master_bytes));
    secrets.random_bytes("master key bytes", &master_bytes);
    for (what, p) in [
        ("password", PASSWORD),
        ("new password", NEW_PASSWORD),
        ("wrong password", WRONG_PASSWORD),
        ("wrong current password", WRONG_CURRENT_PASSWORD),
        ("unknown account's password", UNKNOWN_ACCOUNT_PASSWORD),
        ("weak password", WEAK_PASSWORD),
        ("admin password", ADMIN_PASSWORD),
        ("created user's password", CREATED_USER_PASSWORD),
    ] {
        secrets.text(what, p);
    }

    // ----- a full flow, with a master key -----
    let url = create_database(&pg, "authd_logs").await;
    let mut c = config(&url);
    c.master_key = Some(master.clone().into());
    c.bootstrap_admin_email = Some("root@example.com".into());
    c.bootstrap_admin_password = Some(ADMIN_PASSWORD.into());
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let srv = Server::start(c.clone(), clock.clone()).await;
    let started = log_text(start);
    assert!(
        !started.contains("AUTHD_MASTER_KEY is not set"),
        "warned about a missing master key although one is set"
    );

    // Register, including a refused weak password.
    let email = "logged-user@example.com";
    let username = "logged_user";
    srv.auth()
        .await
        .register(proto::RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
            username: username.into(),
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
        })
        .await
        .expect("register");
    expect_code(
        srv.auth()
            .await
            .register(proto::RegisterRequest {
                email: "weak@example.com".into(),
                password: WEAK_PASSWORD.into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );

    // Login: good (by e-mail and username), wrong password, unknown account.
    let by_email = srv.login(email, PASSWORD).await.expect("login");
    let by_username = srv
        .login(username, PASSWORD)
        .await
        .expect("login by username");
    expect_code(
        srv.login(email, WRONG_PASSWORD).await,
        Code::Unauthenticated,
    );
    expect_code(
        srv.login("nobody@example.com", UNKNOWN_ACCOUNT_PASSWORD)
            .await,
        Code::Unauthenticated,
    );

    // Refresh, the grace-window replay, then a reuse after the window (revokes the session).
    let rotated = srv.refresh(&by_email.refresh_token).await.expect("refresh");
    let replayed = srv
        .refresh(&by_email.refresh_token)
        .await
        .expect("replay within the grace window");
    clock.advance(Duration::seconds(30));
    expect_code(
        srv.refresh(&by_email.refresh_token).await,
        Code::Unauthenticated,
    );
    expect_code(
        srv.refresh(&rotated.refresh_token).await,
        Code::Unauthenticated,
    );

    // GetMe, with a good token and with a tampered one.
    srv.get_me(&by_username.access_token).await.expect("GetMe");
    let mut tampered = by_username.access_token.clone();
    let last = tampered.pop().expect("char");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    expect_code(srv.get_me(&tampered).await, Code::Unauthenticated);

    // UpdateMe with the password (and with a wrong one), ChangePassword.
    srv.users()
        .await
        .update_me(with_bearer(
            proto::UpdateMeRequest {
                email: Some("logged-user-2@example.com".into()),
                first_name: Some("Augusta".into()),
                current_password: PASSWORD.into(),
                ..Default::default()
            },
            &by_username.access_token,
        ))
        .await
        .expect("UpdateMe");
    expect_code(
        srv.users()
            .await
            .update_me(with_bearer(
                proto::UpdateMeRequest {
                    email: Some("logged-user-3@example.com".into()),
                    current_password: WRONG_CURRENT_PASSWORD.into(),
                    ..Default::default()
                },
                &by_username.access_token,
            ))
            .await,
        Code::Unauthenticated,
    );
    srv.users()
        .await
        .change_password(with_bearer(
            proto::ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: NEW_PASSWORD.into(),
            },
            &by_username.access_token,
        ))
        .await
        .expect("ChangePassword");
    let after_change = srv
        .login(username, NEW_PASSWORD)
        .await
        .expect("login with the new password");

    // Admin (bootstrap): a service key, ValidateToken, a user with a password, a key rotation.
    let admin = srv
        .login("root@example.com", ADMIN_PASSWORD)
        .await
        .expect("admin login");
    let service_key = srv
        .auth()
        .await
        .create_service_key(with_bearer(
            proto::CreateServiceKeyRequest {
                name: "billing".into(),
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .expect("CreateServiceKey")
        .into_inner()
        .key;
    let v = srv
        .validate(&service_key, &after_change.access_token)
        .await
        .expect("ValidateToken");
    assert!(v.valid);
    let v = srv
        .validate(&service_key, &after_change.refresh_token)
        .await
        .expect("ValidateToken with a refresh token");
    assert!(!v.valid);
    let v = srv
        .validate(&service_key, &tampered)
        .await
        .expect("ValidateToken with a tampered token");
    assert!(!v.valid);
    let bogus_key = format!("sk_{}", URL_SAFE_NO_PAD.encode([0x42u8; 32]));
    expect_code(
        srv.validate(&bogus_key, &after_change.access_token).await,
        Code::Unauthenticated,
    );
    srv.users()
        .await
        .create_user(with_bearer(
            proto::CreateUserRequest {
                email: "created@example.com".into(),
                password: CREATED_USER_PASSWORD.into(),
                role: proto::Role::User as i32,
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .expect("CreateUser");
    let created = srv
        .login("created@example.com", CREATED_USER_PASSWORD)
        .await
        .expect("login created user");
    srv.auth()
        .await
        .rotate_signing_key(with_bearer(
            proto::RotateSigningKeyRequest {},
            &admin.access_token,
        ))
        .await
        .expect("RotateSigningKey");

    // Logout (by refresh token, and by bearer), DeleteMe.
    srv.auth()
        .await
        .logout(Request::new(proto::LogoutRequest {
            refresh_token: after_change.refresh_token.clone(),
        }))
        .await
        .expect("Logout by refresh token");
    srv.auth()
        .await
        .logout(with_bearer(
            proto::LogoutRequest::default(),
            &created.access_token,
        ))
        .await
        .expect("Logout by bearer");
    let last_session = srv
        .login(username, NEW_PASSWORD)
        .await
        .expect("login before DeleteMe");
    password_hashes(&url, &mut secrets).await;
    expect_code(
        srv.users()
            .await
            .delete_me(with_bearer(
                proto::DeleteMeRequest {
                    password: WRONG_CURRENT_PASSWORD.into(),
                },
                &last_session.access_token,
            ))
            .await,
        Code::Unauthenticated,
    );
    srv.users()
        .await
        .delete_me(with_bearer(
            proto::DeleteMeRequest {
                password: NEW_PASSWORD.into(),
            },
            &last_session.access_token,
        ))
        .await
        .expect("DeleteMe");

    // Let the background loops (key reload, health) run a little, then restart once.
    tokio::time::sleep(StdDuration::from_millis(2500)).await;
    srv.stop().await;
    let srv = Server::start(c.clone(), clock.clone()).await;
    srv.login("root@example.com", ADMIN_PASSWORD)
        .await
        .expect("admin login after restart");
    srv.stop().await;

    for (what, pair) in [
        ("login by e-mail", &by_email),
        ("login by username", &by_username),
        ("refresh", &rotated),
        ("grace replay", &replayed),
        ("login after ChangePassword", &after_change),
        ("admin login", &admin),
        ("created user login", &created),
        ("session deleted by DeleteMe", &last_session),
    ] {
        secrets.access_token(&format!("{what}: access token"), &pair.access_token);
        secrets.opaque(&format!("{what}: refresh token"), &pair.refresh_token);
    }
    secrets.add("tampered access token", &tampered);
    secrets.opaque("service key", &service_key);
    secrets.opaque("bogus service key", &bogus_key);
    key_material(&url, Some(&master_bytes), &mut secrets).await;

    // ----- a start without a master key warns -----
    let before_plain = log_len();
    let plain_url = create_database(&pg, "authd_logs_plain").await;
    let plain = Server::start(config(&plain_url), Arc::new(ManualClock::new(Utc::now()))).await;
    plain.stop().await;
    let plain_log = log_text(before_plain);
    let warning = plain_log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("AUTHD_MASTER_KEY"))
        .unwrap_or_else(|| panic!("no AUTHD_MASTER_KEY warning in:\n{plain_log}"));
    assert!(warning.contains("not set"), "unexpected warning: {warning}");
    // Its plaintext keys are not logged either.
    key_material(&plain_url, None, &mut secrets).await;
    password_hashes(&url, &mut secrets).await;

    // ----- the search -----
    let log = log_text(start);
    // The capture demonstrably works: authd's own lines and other crates' debug lines are there.
    assert!(
        log.len() > 10_000,
        "suspiciously little log: {} bytes",
        log.len()
    );
    for line in [
        "keyring loaded",
        "signing key rotated",
        "refresh token reuse detected",
        "bootstrap admin created",
    ] {
        assert!(log.contains(line), "expected log line {line:?} missing");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("DEBUG") && !l.contains(" authd")),
        "no debug lines from other crates were captured"
    );
    secrets.assert_absent(&log, "the log");
    secrets.assert_absent(&audit_dump(&url).await, "the audit events");

    pg.stop().await.expect("stop PostgreSQL");
}

/// The filter holds the query-parameter logger of `tokio_postgres` at INFO even when asked for
/// DEBUG, while everything else gets what was asked for.
#[test]
fn the_log_filter_silences_query_parameters() {
    let buf: Buffer = Arc::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(authd::server::log_filter(
            "debug,tokio_postgres=trace,tokio_postgres::query=trace",
        ))
        .with_writer(move || BufferWriter(writer.clone()))
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::debug!(target: "tokio_postgres::query", "executing statement s1 with parameters: [SECRET]");
        tracing::info!(target: "tokio_postgres::query", "info from tokio_postgres::query");
        tracing::debug!(target: "tokio_postgres::prepare", "debug from tokio_postgres::prepare");
        tracing::debug!(target: "h2::codec", "debug from h2");
    });
    let text = String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert!(!text.contains("SECRET"), "{text}");
    for line in [
        "info from tokio_postgres::query",
        "debug from tokio_postgres::prepare",
        "debug from h2",
    ] {
        assert!(text.contains(line), "{line:?} missing from {text}");
    }
    // An unparsable filter falls back to INFO, still with the clamp.
    let buf: Buffer = Arc::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(authd::server::log_filter("=[bad"))
        .with_writer(move || BufferWriter(writer.clone()))
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(target: "authd", "info line");
        tracing::debug!(target: "authd", "debug line");
    });
    let text = String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert!(
        text.contains("info line") && !text.contains("debug line"),
        "{text}"
    );
}
