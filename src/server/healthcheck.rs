//! `authd healthcheck`: a small gRPC health client that never touches the database.

use std::time::Duration;

use crate::config::Config;

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
