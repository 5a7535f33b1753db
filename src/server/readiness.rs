//! Readiness: the health statuses of `""` and the API services, following the database (probed
//! every second) until a drain begins; from then on NOT_SERVING.
//!
//! Ready means that calls can be answered: the database answers a ping **and** the revocation view
//! is fresh (token checks fail closed on a stale view, see [`crate::domain::views`]). After an
//! outage the probe refreshes a stale view itself, so readiness never turns SERVING while every
//! token check would still answer UNAVAILABLE until the view's next poll.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::db;
use crate::domain::Authd;
use crate::grpc::auth::AuthApi;
use crate::grpc::user::UserApi;
use crate::proto::auth_service_server::AuthServiceServer;
use crate::proto::user_service_server::UserServiceServer;

/// How often the database is probed for readiness.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long one readiness probe may take before the database counts as lost.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether calls can be answered: the database answers, and the revocation view is fresh (or is
/// refreshed now). Bounded by [`HEALTH_PROBE_TIMEOUT`].
pub(crate) async fn probe(svc: &Authd) -> bool {
    let ready = async {
        db::ping(svc.pool()).await.is_ok()
            && (svc.views().check_fresh().is_ok() || svc.sync_views().await.is_ok())
    };
    tokio::time::timeout(HEALTH_PROBE_TIMEOUT, ready)
        .await
        .unwrap_or(false)
}

pub(crate) async fn set_readiness(reporter: &HealthReporter, ready: bool) {
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
pub(crate) async fn health_monitor(
    svc: Arc<Authd>,
    readiness: Readiness,
    mut ready: bool,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let now_ready = probe(&svc).await;
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
