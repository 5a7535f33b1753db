//! Graceful shutdown: the signal ([`shutdown_signal`]) and the drain ([`drain`]) that turns
//! readiness off, stops accepting, and gives in-flight calls a grace period.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::server::error::StartError;
use crate::server::readiness::Readiness;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::health::LIVENESS_SERVICE;
    use tokio::time::Instant;
    use tonic_health::ServingStatus;
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
    const READINESS: [&str; 3] = [
        "",
        crate::proto::auth_service_server::SERVICE_NAME,
        crate::proto::user_service_server::SERVICE_NAME,
    ];

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
