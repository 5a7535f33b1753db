//! Start-up and serving: which database to use (DATABASE_URL or the embedded PostgreSQL),
//! migrations, pool, keys and bootstrap admin ([`start_service`]), and the tonic server with health,
//! reflection (`reflection.rs`, its allowlist) and the layer stack ([`serve`]).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::db;
use crate::domain::Authd;
use crate::embedded_pg::{self, EmbeddedOptions, EmbeddedPostgres};
use crate::grpc::auth::AuthApi;
use crate::grpc::ext_authz::ExtAuthzApi;
use crate::grpc::user::UserApi;
use crate::layers;
use crate::limits::MAX_MESSAGE_BYTES;
use crate::proto::auth_service_server::AuthServiceServer;
use crate::proto::user_service_server::UserServiceServer;
use crate::server::background;
use crate::server::error::StartError;
use crate::server::health::{HealthWatches, LIVENESS_SERVICE};
use crate::server::readiness::{self, Readiness};
use crate::server::reflection;
use crate::server::shutdown::{DrainTimings, drain};
use crate::transport::{self, Transport, http2_limits};
use envoy_types::ext_authz::v3::pb::AuthorizationServer;

/// The database in use: an external one, or the embedded PostgreSQL that this process owns.
pub struct Database {
    url: String,
    embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// `DATABASE_URL` when set; otherwise starts (or attaches to) the embedded PostgreSQL.
    pub async fn open(config: &Config) -> Result<Self, StartError> {
        if let Some(url) = config.database_url() {
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
    let svc = Authd::init(config.domain_settings(), pool, clock).await?;
    if let Some((email, password)) = config.bootstrap_admin() {
        svc.ensure_bootstrap_admin(email, password.expose()).await?;
    }
    Ok(svc)
}

/// Serves the API, health and reflection on `listener` until `shutdown` resolves, then lets
/// in-flight calls finish. `config` gives the transport, the listeners, the limits and the drain
/// timings (the domain has its own settings, given to `start_service`).
pub async fn serve(
    svc: Arc<Authd>,
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    // TLS, mTLS and gRPC-Web come from the config; the files are read (and checked) here.
    let transport = Transport::from_config(&config)?;
    let builder = http2_limits(transport.configure(Server::builder())?);
    transport.log_settings();
    let health_listener = match config.health_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?,
        ),
        None => None,
    };
    let reflection_v1 = reflection::v1()?;
    let reflection_v1alpha = reflection::v1alpha()?;

    let (reporter, _) = tonic_health::server::health_reporter();
    // Drain on `shutdown`: see [`drain`]. When `stop_accepting` fires, the server stops accepting
    // and the health Watch streams end.
    let (stop_accepting, mut accepting) = watch::channel(false);
    let health_service = tonic_health::pb::health_server::HealthServer::new(HealthWatches::new(
        reporter.clone(),
        accepting.clone(),
    ));
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    // Readiness starts from a real probe, not tonic-health's default SERVING for "".
    let ready = readiness::probe(&svc).await;
    readiness::set_readiness(&reporter, ready).await;

    let readiness = Readiness::new(reporter.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let monitor = tokio::spawn(readiness::health_monitor(
        svc.clone(),
        readiness.clone(),
        ready,
        stop_rx.clone(),
    ));
    let pruner = tokio::spawn(background::prune_loop(svc.clone(), stop_rx.clone()));
    let sweeper = tokio::spawn(background::replay_sweep_loop(svc.clone(), stop_rx.clone()));
    let syncer = tokio::spawn(background::view_sync_loop(svc.clone(), stop_rx.clone()));
    let mailer = tokio::spawn(background::mail_sender_loop(svc.clone(), stop_rx.clone()));
    let resets = tokio::spawn(background::password_reset_loop(
        svc.clone(),
        stop_rx.clone(),
    ));
    let reloader = tokio::spawn(background::key_reload_loop(svc.clone(), stop_rx));
    // AUTHD_HEALTH_LISTEN: the same health service (same statuses), in plaintext, nothing else.
    let health_only = health_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "plaintext health listener (grpc.health.v1 only)");
        }
        let mut stop = stop_tx.subscribe();
        tokio::spawn(transport::serve_health(
            listener,
            tonic::service::Routes::new(health_service.clone()),
            config.handshake_timeout,
            async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            },
        ))
    });
    // AUTHD_HTTP_LISTEN: metrics, JWKS and probes over HTTP; stops with the gRPC server.
    let http_side = match config.http_listen {
        Some(addr) => Some(
            crate::server::http::spawn(
                addr,
                crate::server::http::HttpSettings::from_config(&config),
                svc.clone(),
                reporter.clone(),
                stop_tx.subscribe(),
            )
            .await?,
        ),
        None => None,
    };

    let auth = AuthServiceServer::new(AuthApi::new(
        svc.clone(),
        config.tls_client_ca.is_some(),
        accepting.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let users = UserServiceServer::new(UserApi::new(svc.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    // Envoy's ext_authz: `envoy.service.auth.v3.Authorization/Check` (see grpc::ext_authz).
    let envoy_ext_authz = AuthorizationServer::new(ExtAuthzApi::new(
        svc.clone(),
        config.tls_client_ca.is_some(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES);

    let server = builder
        .layer(transport.web_layer())
        .layer(layers::grpc_stack(svc.clone(), &config))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(auth)
        .add_service(users)
        .add_service(envoy_ext_authz);
    let stop = async move {
        let _ = accepting.wait_for(|stop| *stop).await;
    };
    let incoming = transport.incoming(listener, config.handshake_timeout);
    let server = async move {
        match incoming {
            transport::listener::Listener::Plain(incoming) => {
                server.serve_with_incoming_shutdown(incoming, stop).await
            }
            transport::listener::Listener::Tls(incoming) => {
                server.serve_with_incoming_shutdown(incoming, stop).await
            }
        }
    };
    let timings = DrainTimings::from_config(&config);
    let result = drain(server, shutdown, &readiness, stop_accepting, timings).await;
    let _ = stop_tx.send(true);
    let _ = monitor.await;
    let _ = pruner.await;
    let _ = sweeper.await;
    let _ = reloader.await;
    let _ = syncer.await;
    let _ = resets.await;
    // A delivery in flight may finish within a few seconds; past that it is cut off, and its
    // message is claimed again once its lease ends (same Message-ID).
    let mailer_abort = mailer.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(5), mailer)
        .await
        .is_err()
    {
        mailer_abort.abort();
    }
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
