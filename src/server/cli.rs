//! The commands of the `authd` binary other than the healthcheck: `serve` ([`run`]), `migrate`,
//! and the administrative commands that work directly on the database.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::db;
use crate::domain;
use crate::server::app::{Database, serve, start_service};
use crate::server::error::StartError;
use crate::server::shutdown::shutdown_signal;
use crate::transport::Transport;

/// Raises the soft limit on open files to the hard limit: every client connection is a file
/// descriptor, and the usual soft limit (1024) would refuse connections long before memory runs out.
pub fn raise_open_file_limit() {
    match authd_proto::rlimit::raise_open_file_limit() {
        Ok((from, to)) if from < to => tracing::debug!(from, to, "raised the open-file limit"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
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
        let served = serve(svc.clone(), config.clone(), listener, shutdown).await;
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
        let input = domain::accounts::NewAccount {
            email: email.to_owned(),
            password: password.to_owned(),
            // CLI-created admins are verified.
            email_verified: true,
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
    identifier: domain::sessions::LoginIdentifier,
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
    spec: &domain::service_keys::ServiceKeySpec,
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
