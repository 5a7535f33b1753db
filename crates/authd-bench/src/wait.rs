//! `--wait-serving`: polls the health service ("") at a short interval until it answers SERVING,
//! and reports how long that took, measured from the tool's start or from a given instant (the
//! benchmark script passes the time it exec'd the server, to measure start-up).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The outcome, as printed with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Waited {
    pub addr: String,
    pub serving: bool,
    /// Seconds from the reference instant until the SERVING reply (or until giving up).
    pub elapsed_s: f64,
    /// Health checks and connection attempts made.
    pub attempts: u64,
    /// The last reason it was not yet SERVING.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

fn unix_ns_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Polls until SERVING or `limit` has passed since this call.
pub async fn wait_serving(
    endpoint: Endpoint,
    limit: Duration,
    interval: Duration,
    since_unix_ns: Option<u128>,
) -> Waited {
    let started = Instant::now();
    // The reference instant as an offset before `started`.
    let head_start = since_unix_ns
        .map(|t0| {
            Duration::from_nanos(u64::try_from(unix_ns_now().saturating_sub(t0)).unwrap_or(0))
        })
        .unwrap_or_default();
    let probe_timeout = interval.max(Duration::from_millis(200));
    let endpoint = endpoint.connect_timeout(probe_timeout);
    let mut channel: Option<Channel> = None;
    let mut attempts = 0u64;
    let mut last_error: Option<String>;
    loop {
        attempts += 1;
        let round = Instant::now();
        let ch = match &channel {
            Some(c) => Ok(c.clone()),
            None => endpoint
                .connect()
                .await
                .map_err(|e| format!("connect: {e}")),
        };
        match ch {
            Ok(ch) => {
                channel = Some(ch.clone());
                let mut req = Request::new(HealthCheckRequest {
                    service: String::new(),
                });
                req.set_timeout(probe_timeout);
                match tokio::time::timeout(probe_timeout, HealthClient::new(ch).check(req)).await {
                    Ok(Ok(reply)) if reply.get_ref().status == ServingStatus::Serving as i32 => {
                        return Waited {
                            addr: endpoint.uri().to_string(),
                            serving: true,
                            elapsed_s: (head_start + started.elapsed()).as_secs_f64(),
                            attempts,
                            last_error: None,
                        };
                    }
                    Ok(Ok(reply)) => {
                        last_error = Some(format!("status {}", reply.get_ref().status));
                    }
                    Ok(Err(s)) => {
                        last_error = Some(format!("{:?}: {}", s.code(), s.message()));
                        channel = None;
                    }
                    Err(_) => {
                        last_error = Some("health check timed out".into());
                        channel = None;
                    }
                }
            }
            Err(e) => last_error = Some(e),
        }
        if started.elapsed() >= limit {
            return Waited {
                addr: endpoint.uri().to_string(),
                serving: false,
                elapsed_s: (head_start + started.elapsed()).as_secs_f64(),
                attempts,
                last_error,
            };
        }
        tokio::time::sleep(interval.saturating_sub(round.elapsed())).await;
    }
}
