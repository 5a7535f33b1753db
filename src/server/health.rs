//! `grpc.health.v1` as authd serves it, on the main listener and on `AUTHD_HEALTH_LISTEN`: the
//! statuses live in tonic-health's reporter (readiness `""` and the API services, set by the
//! database monitor and the drain of the server; [`LIVENESS_SERVICE`]); Check is
//! tonic-health's, Watch is [`HealthWatches`]'.

use std::sync::Arc;

use tokio::sync::watch;
use tonic_health::server::HealthReporter;

/// Health service for Kubernetes liveness probes: SERVING while the process is up.
pub const LIVENESS_SERVICE: &str = "liveness";

/// `grpc.health.v1.Health` over tonic-health's statuses, with two changes to its Watch:
///
/// - a Watch for an unknown service answers SERVICE_UNKNOWN and stays open (as the health protocol
///   asks), instead of failing with NOT_FOUND;
/// - when the drain stops accepting connections (`draining` turns true), every Watch stream ends:
///   a readiness stream (`""`, the API services) after a last NOT_SERVING, `liveness` and unknown
///   services without another message. Open Watches (kubelets, load balancers) would otherwise
///   hold their connections, and the drain, until the grace period ran out.
#[derive(Clone)]
pub struct HealthWatches {
    inner: Arc<tonic_health::server::HealthService>,
    draining: watch::Receiver<bool>,
}

impl HealthWatches {
    pub fn new(reporter: HealthReporter, draining: watch::Receiver<bool>) -> Self {
        Self {
            inner: Arc::new(tonic_health::server::HealthService::from_health_reporter(
                reporter,
            )),
            draining,
        }
    }
}

/// The stream type of [`HealthWatches`]' Watch.
pub type HealthWatchStream = tokio_stream::wrappers::ReceiverStream<
    Result<tonic_health::pb::HealthCheckResponse, tonic::Status>,
>;

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for HealthWatches {
    async fn check(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        self.inner.check(request).await
    }

    type WatchStream = HealthWatchStream;

    async fn watch(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthWatchStream>, tonic::Status> {
        use tokio_stream::StreamExt as _;
        use tonic_health::pb::HealthCheckResponse;
        use tonic_health::pb::health_check_response::ServingStatus as Status;

        let readiness = request.get_ref().service != LIVENESS_SERVICE;
        // tonic-health fails a Watch of an unknown service with NOT_FOUND.
        let mut statuses = self.inner.watch(request).await.ok().map(|r| r.into_inner());
        let mut draining = self.draining.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let response = |status: Status| {
                Ok(HealthCheckResponse {
                    status: status as i32,
                })
            };
            let mut last = None;
            if statuses.is_none() && tx.send(response(Status::ServiceUnknown)).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    // The current status goes out before a drain that has begun ends the stream.
                    biased;
                    next = async {
                        match &mut statuses {
                            Some(s) => s.next().await,
                            None => std::future::pending().await,
                        }
                    } => match next {
                        Some(item) => {
                            last = item.as_ref().ok().map(|r| r.status);
                            if tx.send(item).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                    () = async {
                        let _ = draining.wait_for(|d| *d).await;
                    } => break,
                    () = tx.closed() => return,
                }
            }
            if readiness && statuses.is_some() && last != Some(Status::NotServing as i32) {
                let _ = tx.send(response(Status::NotServing)).await;
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}
