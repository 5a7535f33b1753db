//! Process wiring: which database to use (DATABASE_URL or the embedded PostgreSQL), start-up
//! (migrations, pool, keys, bootstrap admin), the tonic server with health and reflection, the
//! database health monitor, and graceful shutdown on SIGTERM/SIGINT.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::db::{self, DbError, Pool};
use crate::domain::{self, Authd};
use crate::embedded_pg::{self, EmbeddedError, EmbeddedOptions, EmbeddedPostgres};
use crate::grpc::auth::AuthApi;
use crate::grpc::user::UserApi;
use crate::middleware::{ClientErrorLayer, DeadlineLayer};
use crate::proto;
use crate::proto::auth_service_server::AuthServiceServer;
use crate::proto::user_service_server::UserServiceServer;

/// Largest request message the server decodes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Health service for Kubernetes liveness probes: SERVING while the process is up.
pub const LIVENESS_SERVICE: &str = "liveness";
/// How often the database is probed for readiness.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long one readiness probe may take before the database counts as lost.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often expired audit events and long-ended sessions are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// How often the signing keys are re-read, so a rotation on any replica is picked up.
pub const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Header blocks larger than this are refused by HTTP/2 itself; the gRPC limit on metadata
/// (`middleware::MAX_METADATA_BYTES`) is lower, so clients get a proper gRPC status first.
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// Concurrent streams (calls) per HTTP/2 connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 keepalive: ping idle connections, drop them if the ping is not answered.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Rapid-reset protection (CVE-2023-44487): streams reset by the client before they were
/// accepted, and streams the server had to reset for protocol errors, per connection.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 50;
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// Why the process could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("start-up: {0}")]
    Domain(#[from] domain::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    #[error("cannot read the password from standard input: {0}")]
    Stdin(std::io::Error),
}

/// The database in use: an external one, or the embedded PostgreSQL that this process owns.
pub struct Database {
    url: String,
    embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// `DATABASE_URL` when set; otherwise starts (or attaches to) the embedded PostgreSQL.
    pub async fn open(config: &Config) -> Result<Self, StartError> {
        if let Some(url) = config.database_url.as_deref().filter(|u| !u.is_empty()) {
            return Ok(Self {
                url: url.to_owned(),
                embedded: None,
            });
        }
        let data_dir = config
            .data_dir
            .clone()
            .unwrap_or_else(embedded_pg::default_data_dir);
        tracing::info!(data_dir = %data_dir.display(), "DATABASE_URL not set; using the embedded PostgreSQL");
        let pg = EmbeddedPostgres::start(EmbeddedOptions {
            data_dir,
            ephemeral: false,
            max_connections: (config.db_pool_size * 2 + 20).max(50),
        })
        .await?;
        Ok(Self {
            url: pg.database_url("authd"),
            embedded: Some(pg),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the embedded PostgreSQL, if this process started it.
    pub async fn close(self) {
        if let Some(pg) = self.embedded
            && let Err(e) = pg.stop().await
        {
            tracing::warn!(error = %e, "embedded PostgreSQL did not stop cleanly");
        }
    }
}

/// Migrations, the pool, the keyring and the bootstrap admin: everything before serving.
pub async fn start_service(
    config: Arc<Config>,
    url: &str,
    clock: SharedClock,
) -> Result<Arc<Authd>, StartError> {
    let applied = db::run_migrations(url).await?;
    if applied > 0 {
        tracing::info!(applied, "migrations applied");
    }
    let pool = db::build_pool(url, config.db_pool_size, config.db_timeout)?;
    let svc = Authd::init(pool, config.clone(), clock).await?;
    if let Some((email, password)) = config.bootstrap_admin() {
        svc.ensure_bootstrap_admin(email, password).await?;
    }
    Ok(svc)
}

/// Serves the API, health and reflection on `listener` until `shutdown` resolves, then lets
/// in-flight calls finish.
pub async fn serve(
    svc: Arc<Authd>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    // Readiness starts from a real probe, not tonic-health's default SERVING for "".
    let ready = probe(svc.pool()).await;
    set_readiness(&reporter, ready).await;

    let (stop_tx, stop_rx) = watch::channel(false);
    let monitor = tokio::spawn(health_monitor(
        svc.pool().clone(),
        reporter.clone(),
        ready,
        stop_rx.clone(),
    ));
    let pruner = tokio::spawn(prune_loop(svc.clone(), stop_rx.clone()));
    let reloader = tokio::spawn(key_reload_loop(svc.clone(), stop_rx));

    let auth = AuthServiceServer::new(AuthApi::new(svc.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let users = UserServiceServer::new(UserApi::new(svc.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);

    let result = Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .tcp_nodelay(true)
        .layer(ClientErrorLayer)
        .layer(DeadlineLayer(svc.config().request_timeout))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(auth)
        .add_service(users)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    let _ = stop_tx.send(true);
    let _ = monitor.await;
    let _ = pruner.await;
    let _ = reloader.await;
    result.map_err(StartError::from)
}

async fn probe(pool: &Pool) -> bool {
    matches!(
        tokio::time::timeout(HEALTH_PROBE_TIMEOUT, db::ping(pool)).await,
        Ok(Ok(()))
    )
}

async fn set_readiness(reporter: &HealthReporter, ready: bool) {
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(
            <AuthServiceServer<AuthApi> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    reporter
        .set_service_status(
            <UserServiceServer<UserApi> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// Probes the database every second and flips readiness when the answer changes.
async fn health_monitor(
    pool: Pool,
    reporter: HealthReporter,
    mut ready: bool,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let now_ready = probe(&pool).await;
        if now_ready != ready {
            if now_ready {
                tracing::info!("database reachable again; readiness SERVING");
            } else {
                tracing::warn!("database unreachable; readiness NOT_SERVING");
            }
            set_readiness(&reporter, now_ready).await;
            ready = now_ready;
        }
    }
}

/// Prunes audit events past `AUTHD_AUDIT_RETENTION` and sessions that ended over a day ago, shortly
/// after start and then hourly. Every replica does it; the deletes are idempotent.
async fn prune_loop(svc: Arc<Authd>, mut stop: watch::Receiver<bool>) {
    let mut wait = Duration::from_secs(30);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        wait = PRUNE_INTERVAL;
        match svc.prune().await {
            Ok((events, sessions)) if events + sessions > 0 => {
                tracing::info!(events, sessions, "pruned old audit events and sessions");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning failed; will retry"),
        }
    }
}

/// Re-reads the signing keys every [`KEY_RELOAD_INTERVAL`]: a rotation by any replica, or a new key
/// reaching its activation time, takes effect within seconds. Also trims the rate limiter's memory.
async fn key_reload_loop(svc: Arc<Authd>, mut stop: watch::Receiver<bool>) {
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(KEY_RELOAD_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = svc.reload_keys().await {
            tracing::warn!(error = %e, "reloading signing keys failed; keeping the current ones");
        }
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(30) {
            svc.rate_limit_housekeeping();
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        }
    })
}

/// Log targets held at INFO whatever `AUTHD_LOG` asks for: at DEBUG `tokio_postgres` logs every
/// query's parameters, which include password hashes and, without a master key, the signing keys
/// and the refresh-token secret.
pub const SECRET_LEAKING_LOG_TARGETS: [&str; 1] = ["tokio_postgres::query"];

/// The log filter for `directives` (`AUTHD_LOG`, `EnvFilter` syntax; `info` if it does not
/// parse), with [`SECRET_LEAKING_LOG_TARGETS`] held at INFO.
pub fn log_filter(directives: &str) -> tracing_subscriber::EnvFilter {
    let mut filter = tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for target in SECRET_LEAKING_LOG_TARGETS {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// `authd serve`: the whole life of the server process.
pub async fn run(config: Config) -> Result<(), StartError> {
    let config = Arc::new(config);
    let shutdown = shutdown_signal().await?;
    let database = Database::open(&config).await?;
    let result = async {
        let svc = start_service(config.clone(), database.url(), Arc::new(SystemClock)).await?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        tracing::info!(addr = %config.listen, "authd listening");
        serve(svc.clone(), listener, shutdown).await?;
        svc.pool().close();
        Ok(())
    }
    .await;
    database.close().await;
    tracing::info!("authd stopped");
    result
}

/// `authd migrate`.
pub async fn migrate(config: Config) -> Result<usize, StartError> {
    let database = Database::open(&config).await?;
    let result = db::run_migrations(database.url()).await;
    database.close().await;
    Ok(result?)
}

/// `authd users create-admin`: creates an admin directly in the database; returns its id.
pub async fn create_admin(
    config: Config,
    email: &str,
    password: &str,
) -> Result<String, StartError> {
    let config = Arc::new(config);
    let database = Database::open(&config).await?;
    let result = async {
        let svc = start_service(config.clone(), database.url(), Arc::new(SystemClock)).await?;
        let client = domain::ClientInfo::new(None, "authd-cli");
        let input = domain::service::NewAccount {
            email: email.to_owned(),
            password: password.to_owned(),
            ..Default::default()
        };
        let account = svc
            .create_account(
                input,
                domain::Role::Admin,
                None,
                &client,
                "created with the CLI",
            )
            .await?;
        svc.pool().close();
        Ok(account.id.to_string())
    }
    .await;
    database.close().await;
    result
}

/// `authd signing-keys rotate`: adds a signing key; returns its kid and activation time.
pub async fn rotate_signing_key(
    config: Config,
) -> Result<(String, chrono::DateTime<chrono::Utc>), StartError> {
    let config = Arc::new(config);
    let database = Database::open(&config).await?;
    let result = async {
        let svc = start_service(config.clone(), database.url(), Arc::new(SystemClock)).await?;
        let rotated = svc.rotate_signing_key(None).await?;
        svc.pool().close();
        Ok(rotated)
    }
    .await;
    database.close().await;
    result
}

/// `authd service-keys create NAME`: creates a key directly in the database; returns the key.
pub async fn create_service_key(
    config: Config,
    name: &str,
) -> Result<(String, String), StartError> {
    let config = Arc::new(config);
    let database = Database::open(&config).await?;
    let result = async {
        let svc = start_service(config.clone(), database.url(), Arc::new(SystemClock)).await?;
        let client = domain::ClientInfo::new(None, "authd-cli");
        let (info, key) = svc.create_service_key(None, name, &client).await?;
        svc.pool().close();
        Ok((info.id.to_string(), key))
    }
    .await;
    database.close().await;
    result
}
