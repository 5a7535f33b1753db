//! Process wiring: which database to use (DATABASE_URL or the embedded PostgreSQL), start-up
//! (migrations, pool, keys, bootstrap admin), the tonic server with health and reflection, the
//! database health monitor, and graceful shutdown on SIGTERM/SIGINT.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::db::{self, DbError, Pool};
use crate::domain::{self, Authd, views};
use crate::embedded_pg::{self, EmbeddedError, EmbeddedOptions, EmbeddedPostgres};
use crate::grpc::auth::AuthApi;
use crate::grpc::user::UserApi;
use crate::middleware::{ClientErrorLayer, DeadlineLayer};
use crate::proto;
use crate::proto::auth_service_server::AuthServiceServer;
use crate::proto::user_service_server::UserServiceServer;
use crate::transport::{self, Transport};

/// Largest request message the server decodes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
pub use crate::health::LIVENESS_SERVICE;
/// How often the database is probed for readiness.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long one readiness probe may take before the database counts as lost.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often expired audit events and long-ended sessions are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// How often the sealed successors of refresh-token grace replays are cleared once their window
/// is over.
const REPLAY_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
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
/// HTTP/2 flow-control windows. Messages are at most 64 KiB, so a 128 KiB stream window never
/// stalls a call, and the connection window bounds what one client can make authd buffer
/// (hyper's defaults are 1 MiB each, which 1,000 connections could turn into a gigabyte).
pub const STREAM_WINDOW_BYTES: u32 = 128 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 512 * 1024;

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
    #[error(transparent)]
    Tls(#[from] transport::ConfigError),
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
        if let Some(pg) = self.embedded {
            tracing::info!("stopping the embedded PostgreSQL");
            if let Err(e) = pg.stop().await {
                tracing::warn!(error = %e, "embedded PostgreSQL did not stop cleanly");
            }
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
    // TLS, mTLS and gRPC-Web come from the config; the files are read (and checked) here.
    let transport = Transport::from_config(svc.config())?;
    let builder = http2_limits(transport.configure(Server::builder())?);
    transport.log_settings();
    let health_listener = match svc.config().health_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?,
        ),
        None => None,
    };
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let (reporter, _) = tonic_health::server::health_reporter();
    // Drain on `shutdown`: see [`drain`]. When `stop_accepting` fires, the server stops accepting
    // and the health Watch streams end.
    let (stop_accepting, mut accepting) = watch::channel(false);
    let health_service = tonic_health::pb::health_server::HealthServer::new(
        crate::health::HealthWatches::new(reporter.clone(), accepting.clone()),
    );
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    // Readiness starts from a real probe, not tonic-health's default SERVING for "".
    let ready = probe(svc.pool()).await;
    set_readiness(&reporter, ready).await;

    let readiness = Readiness::new(reporter.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let monitor = tokio::spawn(health_monitor(
        svc.pool().clone(),
        readiness.clone(),
        ready,
        stop_rx.clone(),
    ));
    let pruner = tokio::spawn(prune_loop(svc.clone(), stop_rx.clone()));
    let sweeper = tokio::spawn(replay_sweep_loop(svc.clone(), stop_rx.clone()));
    let syncer = tokio::spawn(view_sync_loop(svc.clone(), stop_rx.clone()));
    let reloader = tokio::spawn(key_reload_loop(svc.clone(), stop_rx));
    // AUTHD_HEALTH_LISTEN: the same health service (same statuses), in plaintext, nothing else.
    let health_only = health_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "plaintext health listener (grpc.health.v1 only)");
        }
        let mut stop = stop_tx.subscribe();
        tokio::spawn(transport::serve_health(
            listener,
            tonic::service::Routes::new(health_service.clone()),
            svc.config().handshake_timeout,
            async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            },
        ))
    });
    // AUTHD_HTTP_LISTEN: metrics, JWKS and probes over HTTP; stops with the gRPC server.
    let http_side = match svc.config().http_listen {
        Some(addr) => Some(
            crate::http::spawn(addr, svc.clone(), reporter.clone(), stop_tx.subscribe()).await?,
        ),
        None => None,
    };

    let auth = AuthServiceServer::new(AuthApi::new(svc.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let users = UserServiceServer::new(UserApi::new(svc.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);

    let server = builder
        .layer(transport.web_layer())
        // Outside the layers that rewrite statuses, so they see the code the client receives.
        .layer(crate::middleware::RpcTraceLayer)
        .layer(crate::metrics::GrpcMetricsLayer)
        .layer(ClientErrorLayer)
        .layer(DeadlineLayer(svc.config().request_timeout))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(auth)
        .add_service(users);
    let stop = async move {
        let _ = accepting.wait_for(|stop| *stop).await;
    };
    let incoming = transport.incoming(listener, svc.config().handshake_timeout);
    let server = async move {
        match incoming {
            crate::listener::Listener::Plain(incoming) => {
                server.serve_with_incoming_shutdown(incoming, stop).await
            }
            crate::listener::Listener::Tls(incoming) => {
                server.serve_with_incoming_shutdown(incoming, stop).await
            }
        }
    };
    let timings = DrainTimings::from_config(svc.config());
    let result = drain(server, shutdown, &readiness, stop_accepting, timings).await;
    let _ = stop_tx.send(true);
    let _ = monitor.await;
    let _ = pruner.await;
    let _ = sweeper.await;
    let _ = reloader.await;
    let _ = syncer.await;
    if let Some(task) = health_only
        && let Ok(Err(e)) = task.await
    {
        tracing::warn!(error = %e, "the plaintext health listener failed");
    }
    if let Some(task) = http_side {
        let _ = task.await;
    }
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

/// The readiness services as the database monitor and the drain change them: the monitor follows
/// the database until a drain begins; from then on they stay NOT_SERVING.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    /// Held while statuses are written, so a monitor update cannot land after the drain's.
    draining: Arc<tokio::sync::Mutex<bool>>,
}

impl Readiness {
    pub fn new(reporter: HealthReporter) -> Self {
        Self {
            reporter,
            draining: Arc::new(tokio::sync::Mutex::new(false)),
        }
    }

    /// Reports the database's state; ignored (returns false) once draining.
    pub async fn database(&self, ready: bool) -> bool {
        let draining = self.draining.lock().await;
        if *draining {
            return false;
        }
        set_readiness(&self.reporter, ready).await;
        true
    }

    /// Readiness NOT_SERVING for good. `liveness` is left alone.
    pub async fn drain(&self) {
        let mut draining = self.draining.lock().await;
        *draining = true;
        set_readiness(&self.reporter, false).await;
    }
}

/// Probes the database every second and flips readiness when the answer changes.
async fn health_monitor(
    pool: Pool,
    readiness: Readiness,
    mut ready: bool,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let now_ready = probe(&pool).await;
        if now_ready != ready && readiness.database(now_ready).await {
            if now_ready {
                tracing::info!("database reachable again; readiness SERVING");
            } else {
                tracing::warn!("database unreachable; readiness NOT_SERVING");
            }
        }
        ready = now_ready;
    }
}

/// How a drain runs: `AUTHD_SHUTDOWN_DELAY` and `AUTHD_SHUTDOWN_GRACE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainTimings {
    /// From the signal to refusing new connections (readiness is NOT_SERVING meanwhile).
    pub delay: Duration,
    /// How long in-flight calls may then take before the server is dropped.
    pub grace: Duration,
}

impl DrainTimings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            delay: config.shutdown_delay,
            grace: config.shutdown_grace,
        }
    }
}

/// Runs `server` until `shutdown` resolves, then drains it:
///
/// 1. readiness (`""` and the API services) goes NOT_SERVING at once and stays so; `liveness`
///    stays SERVING; connections are still accepted, so load balancers see the change;
/// 2. after `timings.delay`, `stop_accepting` fires: `server` closes its listener (new connections
///    are refused) and asks every connection to finish (HTTP/2 GOAWAY); every health Watch stream
///    ends ([`crate::health::HealthWatches`]), so open Watches do not hold their connections open;
/// 3. in-flight calls finish, for at most `timings.grace`; then `server` is dropped.
///
/// Closing the pool and stopping the embedded PostgreSQL come after, in [`run`]. A server that
/// ends by itself (an error) ends the drain early with its result.
pub async fn drain<S, E>(
    server: S,
    shutdown: impl Future<Output = ()>,
    readiness: &Readiness,
    stop_accepting: watch::Sender<bool>,
    timings: DrainTimings,
) -> Result<(), E>
where
    S: Future<Output = Result<(), E>>,
{
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        () = shutdown => {}
    }
    readiness.drain().await;
    tracing::info!(
        delay = ?timings.delay,
        "drain 1/5: readiness NOT_SERVING (liveness SERVING); still accepting connections"
    );
    tokio::select! {
        result = &mut server => return result,
        () = tokio::time::sleep(timings.delay) => {}
    }
    let _ = stop_accepting.send(true);
    tracing::info!(
        grace = ?timings.grace,
        "drain 2/5: refusing new connections; waiting for in-flight calls"
    );
    match tokio::time::timeout(timings.grace, &mut server).await {
        Ok(result) => {
            tracing::info!("drain 3/5: in-flight calls finished");
            result
        }
        Err(_) => {
            tracing::warn!(
                grace = ?timings.grace,
                "drain 3/5: grace period over; abandoning the calls still running"
            );
            Ok(())
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

/// Clears, every [`REPLAY_SWEEP_INTERVAL`], what grace replays of refresh tokens needed once their
/// window is over (issue F, 4b: nothing of a successor stays in the database after it). One indexed
/// UPDATE (a partial index holds only the sessions inside a window); every replica does it.
async fn replay_sweep_loop(svc: Arc<Authd>, mut stop: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REPLAY_SWEEP_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        match svc.clear_replays().await {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "clearing expired refresh replays failed; will retry");
            }
            Err(_) => {}
        }
    }
}

/// Polls the revocation and service-key views every [`views::SYNC_INTERVAL`] (see
/// [`crate::domain::views`]). A failure is logged once per outage; while polls fail the views go
/// stale and token checks fail closed.
async fn view_sync_loop(svc: Arc<Authd>, mut stop: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(views::SYNC_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        match svc.sync_views().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("revocation view refreshed again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "refreshing the revocation view failed; token checks fail closed once it is stale");
            }
            Err(_) => {}
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

/// The HTTP/2 settings of every gRPC listener: stream and window limits, keepalive, rapid-reset
/// protection.
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

/// Raises the soft limit on open files to the hard limit: every client connection is a file
/// descriptor, and the usual soft limit (1024) would refuse connections long before memory runs out.
pub fn raise_open_file_limit() {
    match authd_proto::rlimit::raise_open_file_limit() {
        Ok((from, to)) if from < to => tracing::debug!(from, to, "raised the open-file limit"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
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
/// and server secrets.
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

/// Installs the process-wide log subscriber: [`log_filter`] of `directives`, written to `writer`,
/// human-readable for `format` "text", one JSON object per line for "json" (event fields at the top
/// level, the innermost span's fields, e.g. an RPC's `method`, `request_id`, `code` and
/// `latency_ms`, under `span`).
pub fn init_logging<W>(
    directives: &str,
    format: &str,
    writer: W,
) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter(directives))
        .with_writer(writer);
    if format.eq_ignore_ascii_case("json") {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        // Colours only on a terminal: log collectors store escape codes verbatim.
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    }
}

/// `authd serve`: the whole life of the server process.
pub async fn run(config: Config) -> Result<(), StartError> {
    raise_open_file_limit();
    let config = Arc::new(config);
    let shutdown = shutdown_signal().await?;
    // Bad TLS or CORS settings stop the start-up before the database is touched.
    Transport::from_config(&config)?;
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
        let served = serve(svc.clone(), listener, shutdown).await;
        tracing::info!("drain 4/5: closing the database pool");
        svc.pool().close();
        served
    }
    .await;
    database.close().await;
    tracing::info!(ok = result.is_ok(), "drain 5/5: authd stopped");
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

/// `authd audit identifier-digest`: the keyed hash that LOGIN_FAILED events of unknown accounts
/// store for `identifier`, so that an admin can check a candidate against the audit log.
pub async fn identifier_digest(
    config: Config,
    identifier: domain::service::LoginIdentifier,
) -> Result<String, StartError> {
    let config = Arc::new(config);
    let database = Database::open(&config).await?;
    let result = async {
        let svc = start_service(config.clone(), database.url(), Arc::new(SystemClock)).await?;
        let digest = svc.audit_identifier_digest(&identifier);
        svc.pool().close();
        Ok(digest)
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

/// `authd service-keys create NAME [--trusted-proxy] [--allowed-cidr CIDR]...`: creates a key
/// directly in the database; returns its id and the key. Running servers use it after their next
/// poll of the service-key view (within 250 ms).
pub async fn create_service_key(
    config: Config,
    spec: &domain::service::ServiceKeySpec,
) -> Result<(String, String), StartError> {
    let config = Arc::new(config);
    let database = Database::open(&config).await?;
    let result = async {
        let svc = start_service(config.clone(), database.url(), Arc::new(SystemClock)).await?;
        let client = domain::ClientInfo::new(None, "authd-cli");
        let (info, key) = svc.create_service_key_with(None, spec, &client).await?;
        svc.pool().close();
        Ok((info.id.to_string(), key))
    }
    .await;
    database.close().await;
    result
}

// ----- authd healthcheck ---------------------------------------------------------------------------

/// How long `authd healthcheck` waits for the connection, and then for the answer.
pub const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The address `authd healthcheck` asks when given no `--addr`: `AUTHD_HEALTH_LISTEN` if set
/// (plaintext, health only: the one to probe when the gRPC listener has TLS), else `AUTHD_LISTEN`.
/// A wildcard address (`0.0.0.0`, `[::]`) becomes the loopback address of its family.
pub fn healthcheck_addr(config: &Config) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut addr = config.health_listen.unwrap_or(config.listen);
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    addr
}

/// `authd healthcheck [--service NAME] [--addr HOST:PORT]`: asks `grpc.health.v1.Health/Check`
/// (plaintext) and returns the status name when it is SERVING, else a one-line reason. It reads
/// only the listen addresses from `config` and never touches the database.
pub async fn healthcheck_command(
    config: &Config,
    addr: Option<&str>,
    service: &str,
) -> Result<&'static str, String> {
    let target = match addr {
        Some(a) => a.to_owned(),
        None => healthcheck_addr(config).to_string(),
    };
    let result = healthcheck(&target, service, HEALTHCHECK_TIMEOUT).await;
    let main_listener_has_tls =
        addr.is_none() && config.health_listen.is_none() && config.tls_cert.is_some();
    result.map_err(|reason| {
        if main_listener_has_tls {
            format!(
                "{reason} (the gRPC listener uses TLS, which healthcheck does not speak: set \
                 AUTHD_HEALTH_LISTEN and probe that)"
            )
        } else {
            reason
        }
    })
}

/// Asks the health service at `addr` (`HOST:PORT`, plaintext) about `service`: Ok with the status
/// name when SERVING, else a one-line reason. Connecting and the call are each bounded by `timeout`.
pub async fn healthcheck(
    addr: &str,
    service: &str,
    timeout: Duration,
) -> Result<&'static str, String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Status;
    use tonic_health::pb::health_client::HealthClient;

    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("invalid address {addr:?}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {}", error_chain(&e)))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => {
                    format!("{addr} does not know health service {service:?} (NOT_FOUND)")
                }
                code => format!(
                    "health check of {service:?} at {addr} failed: {code:?}: {}",
                    s.message()
                ),
            })
    };
    // Each step is bounded already; this is a backstop.
    let response = tokio::time::timeout(timeout.saturating_mul(2), call)
        .await
        .map_err(|_| format!("no answer from {addr}"))??;
    match Status::try_from(response.into_inner().status) {
        Ok(Status::Serving) => Ok(Status::Serving.as_str_name()),
        Ok(other) => Err(format!(
            "health service {service:?} at {addr} is {}",
            other.as_str_name()
        )),
        Err(_) => Err(format!(
            "health service {service:?} at {addr} answered an unknown status"
        )),
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = inner.source();
    }
    line
}

#[cfg(test)]
mod drain_tests {
    use super::*;
    use tokio::time::Instant;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_server::Health;
    use tonic_health::server::HealthService;

    async fn status(health: &HealthService, service: &str) -> i32 {
        health
            .check(tonic::Request::new(HealthCheckRequest {
                service: service.into(),
            }))
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1)
    }

    const SERVING: i32 = ServingStatus::Serving as i32;
    const NOT_SERVING: i32 = ServingStatus::NotServing as i32;
    const READINESS: [&str; 3] = ["", "authd.v1.AuthService", "authd.v1.UserService"];

    async fn ready_reporter() -> (Readiness, HealthService) {
        let (reporter, _) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        let health = HealthService::from_health_reporter(reporter.clone());
        let readiness = Readiness::new(reporter);
        assert!(readiness.database(true).await);
        (readiness, health)
    }

    /// A server that, once told to stop accepting, needs `finish` more for its in-flight calls.
    async fn server(mut stop: watch::Receiver<bool>, finish: Option<Duration>) -> Result<(), ()> {
        let _ = stop.wait_for(|s| *s).await;
        match finish {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_off_then_delay_then_in_flight_calls_finish() {
        let (readiness, health) = ready_reporter().await;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (signal_tx, signal_rx) = tokio::sync::oneshot::channel::<()>();
        let timings = DrainTimings {
            delay: Duration::from_secs(5),
            grace: Duration::from_secs(30),
        };
        let drained = {
            let readiness = readiness.clone();
            tokio::spawn(async move {
                drain(
                    server(stop_rx.clone(), Some(Duration::from_secs(2))),
                    async {
                        let _ = signal_rx.await;
                    },
                    &readiness,
                    stop_tx,
                    timings,
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        for s in READINESS {
            assert_eq!(status(&health, s).await, SERVING, "{s:?} before the signal");
        }
        let start = Instant::now();
        let _ = signal_tx.send(());
        tokio::time::sleep(Duration::from_millis(1)).await;
        for s in READINESS {
            assert_eq!(
                status(&health, s).await,
                NOT_SERVING,
                "{s:?} while draining"
            );
        }
        assert_eq!(status(&health, LIVENESS_SERVICE).await, SERVING);
        // The database monitor cannot turn readiness back on.
        assert!(!readiness.database(true).await);
        assert_eq!(status(&health, "").await, NOT_SERVING);

        assert_eq!(drained.await.ok(), Some(Ok(())));
        // delay (5 s), then the in-flight call's 2 s; virtual time, so exact.
        assert_eq!(start.elapsed().as_secs(), 7);
        assert_eq!(status(&health, LIVENESS_SERVICE).await, SERVING);
    }

    #[tokio::test(start_paused = true)]
    async fn grace_bounds_calls_that_do_not_finish() {
        let (readiness, _health) = ready_reporter().await;
        let (stop_tx, stop_rx) = watch::channel(false);
        let timings = DrainTimings {
            delay: Duration::from_secs(1),
            grace: Duration::from_secs(3),
        };
        let start = Instant::now();
        let result = drain(
            server(stop_rx, None),
            std::future::ready(()),
            &readiness,
            stop_tx,
            timings,
        )
        .await;
        assert_eq!(result, Ok(()));
        assert_eq!(start.elapsed().as_secs(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_error_ends_it_without_a_drain() {
        let (readiness, health) = ready_reporter().await;
        let (stop_tx, _stop_rx) = watch::channel(false);
        let timings = DrainTimings {
            delay: Duration::from_secs(1),
            grace: Duration::from_secs(3),
        };
        let result = drain(
            std::future::ready(Err::<(), _>("bind failed")),
            std::future::pending(),
            &readiness,
            stop_tx,
            timings,
        )
        .await;
        assert_eq!(result, Err("bind failed"));
        assert_eq!(status(&health, "").await, SERVING);
    }
}
