//! The optional HTTP side listener (`AUTHD_HTTP_LISTEN`, off by default), plain HTTP/1.1:
//!
//! - `GET /metrics`: Prometheus text format (see [`crate::metrics`]);
//! - `GET /.well-known/jwks.json`: the same keys as GetJwks, as a JSON Web Key Set, cacheable for
//!   less than the key publish delay (min(300 s, `AUTHD_KEY_PUBLISH_DELAY` / 2)), so a cache
//!   always learns a new key before it starts signing;
//! - `GET /livez`: 200 while the process runs;
//! - `GET /readyz`: 200 while the gRPC readiness (health service `""`) is SERVING, else 503.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::server::{HealthReporter, HealthService};

use crate::config::Config;
use crate::domain::Authd;
use crate::server::error::StartError;

/// JWKS responses are never cached for longer than this.
pub const MAX_JWKS_CACHE: Duration = Duration::from_secs(300);
/// How long shutdown waits for open HTTP connections before it drops them.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The options of the side listener, from [`Config`].
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// `AUTHD_KEY_PUBLISH_DELAY`: bounds how long the JWKS may be cached.
    pub key_publish_delay: Duration,
    /// `AUTHD_HANDSHAKE_TIMEOUT`: the wait for a request's headers.
    pub handshake_timeout: Duration,
}

impl HttpSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            key_publish_delay: config.key_publish_delay,
            handshake_timeout: config.handshake_timeout,
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    settings: HttpSettings,
    svc: Arc<Authd>,
    metrics: PrometheusHandle,
    health: Arc<HealthService>,
}

impl HttpState {
    /// `reporter` is the gRPC health reporter: `/readyz` answers what health service `""` says.
    pub fn new(
        settings: HttpSettings,
        svc: Arc<Authd>,
        metrics: PrometheusHandle,
        reporter: HealthReporter,
    ) -> Self {
        Self {
            settings,
            svc,
            metrics,
            health: Arc::new(HealthService::from_health_reporter(reporter)),
        }
    }
}

/// The `Cache-Control` max-age of the JWKS for a key publish delay: half the delay, at most
/// [`MAX_JWKS_CACHE`]. A verifier that honours it has a new key long before it signs. Envoy's
/// jwt_authn ignores it (it caches for its own `cache_duration`, 600 s by default), which is why the
/// default publish delay (15 min) is longer than that: see the README's key rotation rule.
pub fn jwks_max_age(publish_delay: Duration) -> Duration {
    (publish_delay / 2).min(MAX_JWKS_CACHE)
}

/// The routes of the side listener.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<HttpState>) -> Response {
    crate::metrics::record_pool_status(state.svc.pool());
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

/// The JWKS document: the same keys and fields as GetJwks.
pub fn jwks_document(svc: &Authd) -> serde_json::Value {
    let keys: Vec<serde_json::Value> = svc
        .jwks()
        .into_iter()
        .map(|k| {
            serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": k.x,
                "kid": k.kid,
                "alg": "EdDSA",
                "use": "sig",
            })
        })
        .collect();
    serde_json::json!({ "keys": keys })
}

async fn jwks(State(state): State<HttpState>) -> Response {
    let max_age = jwks_max_age(state.settings.key_publish_delay).as_secs();
    (
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CACHE_CONTROL, format!("public, max-age={max_age}")),
        ],
        jwks_document(&state.svc).to_string(),
    )
        .into_response()
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    let serving = matches!(
        state.health.check(request).await,
        Ok(r) if r.get_ref().status == ServingStatus::Serving as i32
    );
    if serving {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // A connection whose request headers (of any request: these are all GETs without a body) do
    // not arrive within AUTHD_HANDSHAKE_TIMEOUT is closed (axum sets no header timeout of its own).
    let timeout = state.settings.handshake_timeout;
    let listener =
        crate::transport::listener::Incoming::new(listener, Some(timeout)).each_http1_request();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr`, installs the metrics recorder, and serves the side listener in a task until
/// `stop` changes (the gRPC server has stopped). Open connections get [`SHUTDOWN_WAIT`] to finish.
pub async fn spawn(
    addr: SocketAddr,
    settings: HttpSettings,
    svc: Arc<Authd>,
    reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    let state = HttpState::new(settings, svc, crate::metrics::install_recorder(), reporter);
    tracing::info!(addr = %local, "HTTP listener (metrics, JWKS, probes) listening");
    let (stopped_tx, mut stopped_rx) = watch::channel(false);
    Ok(tokio::spawn(async move {
        let server = serve(listener, state, async move {
            let _ = stop.changed().await;
            let _ = stopped_tx.send(true);
        });
        tokio::pin!(server);
        let result = tokio::select! {
            r = &mut server => r,
            _ = async {
                let _ = stopped_rx.changed().await;
                tokio::time::sleep(SHUTDOWN_WAIT).await;
            } => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "HTTP listener failed");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_cache_lifetime_stays_below_the_publish_delay() {
        assert_eq!(
            jwks_max_age(Duration::from_secs(900)),
            Duration::from_secs(300)
        );
        assert_eq!(
            jwks_max_age(Duration::from_secs(600)),
            Duration::from_secs(300)
        );
        // The Envoy CI test's 10 s delay.
        assert_eq!(
            jwks_max_age(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(
            jwks_max_age(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(jwks_max_age(Duration::ZERO), Duration::ZERO);
    }
}
