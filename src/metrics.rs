//! Prometheus metrics, recorded with the `metrics` facade and rendered by
//! `metrics-exporter-prometheus` on the HTTP side listener (`GET /metrics`).
//!
//! - gRPC server metrics, named and labelled as go-grpc-prometheus names them:
//!   `grpc_server_started_total`, `grpc_server_handled_total` (with `grpc_code`: `OK`,
//!   `InvalidArgument`, `Unauthenticated`, ...) and the histogram `grpc_server_handling_seconds`,
//!   each with `grpc_service`, `grpc_method` and `grpc_type` (recorded by [`GrpcMetricsLayer`]);
//! - `authd_logins_total{result}` (success, failure, disabled, throttled) and
//!   `authd_refresh_reuse_detected_total`, counted by the domain;
//! - `authd_db_pool_connections{state}` (size, in_use, waiting, max), sampled at scrape time;
//! - `authd_db_abandoned_connections_total{outcome}`: connections a cancelled call left inside a
//!   transaction or statement, `rolled_back` (and back in the pool) or `closed` (see
//!   [`crate::db::Conn`]);
//! - `authd_bcrypt_queue_depth`: bcrypt hashes and verifications admitted to the bcrypt pool and not
//!   yet finished (waiting plus running);
//! - `authd_bcrypt_rejected_total{reason}`: bcrypt jobs refused with RESOURCE_EXHAUSTED, because
//!   their expected wait plus run time did not fit their deadline (`deadline`) or their client had
//!   `AUTHD_BCRYPT_QUEUE` checks waiting already (`client_queue`);
//! - `authd_bcrypt_completed_total`: bcrypt runs finished by the pool (a padded failure counts two);
//! - `authd_bcrypt_padded_total`: failed checks against a hash cheaper than `AUTHD_BCRYPT_COST` that
//!   were padded with a dummy check at the configured cost;
//! - `authd_bcrypt_expected_wait_seconds`: the expected wait computed for the latest password check
//!   (admitted or refused).
//!
//! Nothing is recorded until [`install_recorder`] runs (the server calls it when
//! `AUTHD_HTTP_LISTEN` is set); before that the `metrics` macros are no-ops.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use prost::Message;
use tonic::Code;

use crate::middleware::{Completion, CompletionBody, grpc_code_name, observe_response};

pub const GRPC_STARTED: &str = "grpc_server_started_total";
pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
pub const GRPC_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
pub const LOGINS: &str = "authd_logins_total";
pub const REFRESH_REUSE_DETECTED: &str = "authd_refresh_reuse_detected_total";
pub const DB_POOL_CONNECTIONS: &str = "authd_db_pool_connections";
pub const BCRYPT_QUEUE_DEPTH: &str = "authd_bcrypt_queue_depth";
pub const BCRYPT_REJECTED: &str = "authd_bcrypt_rejected_total";
pub const BCRYPT_COMPLETED: &str = "authd_bcrypt_completed_total";
pub const BCRYPT_PADDED: &str = "authd_bcrypt_padded_total";
pub const BCRYPT_EXPECTED_WAIT: &str = "authd_bcrypt_expected_wait_seconds";

/// The `result` label values of [`LOGINS`].
pub const LOGIN_RESULTS: [&str; 4] = ["success", "failure", "disabled", "throttled"];

/// Histogram buckets (seconds). Without them the exporter would emit summaries.
pub const HANDLING_SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the recorder's upkeep (draining histogram samples) runs.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder as the global `metrics` recorder, once per process, and
/// returns the handle that renders it. Later calls return the same handle. If another recorder
/// was installed first, the handle renders an empty registry (and a warning is logged).
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(&HANDLING_SECONDS_BUCKETS) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "invalid histogram buckets; using summaries");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(e) = ::metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "another metrics recorder is installed; /metrics stays empty");
            }
            describe();
            crate::build_info::record();
            let upkeep = handle.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("authd-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                })
            {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
            }
            handle
        })
        .clone()
}

/// HELP texts, and zero values for the series that should exist before their first event.
fn describe() {
    describe_counter!(GRPC_STARTED, "Total number of RPCs started on the server.");
    describe_counter!(
        GRPC_HANDLED,
        "Total number of RPCs completed on the server, regardless of success or failure."
    );
    describe_histogram!(
        GRPC_HANDLING_SECONDS,
        Unit::Seconds,
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server."
    );
    describe_counter!(
        LOGINS,
        "Password logins by result: success, failure (wrong password or unknown account), disabled, throttled."
    );
    describe_counter!(
        REFRESH_REUSE_DETECTED,
        "Refresh tokens presented again after rotation (the session was revoked)."
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Database pool connections: size (open), in_use, waiting (callers queued for one), max."
    );
    describe_counter!(
        crate::db::ABANDONED_METRIC,
        "Database connections a cancelled call left inside a transaction or statement: rolled_back (and back in the pool) or closed."
    );
    describe_gauge!(
        BCRYPT_QUEUE_DEPTH,
        "bcrypt hashes and verifications admitted to the bcrypt pool and not yet finished (waiting plus running)."
    );
    describe_counter!(
        BCRYPT_REJECTED,
        "bcrypt hashes and verifications refused (RESOURCE_EXHAUSTED): reason deadline (the expected wait plus run time exceeds the call's deadline) or client_queue (the client's queue is full)."
    );
    describe_counter!(
        BCRYPT_COMPLETED,
        "bcrypt runs finished by the bcrypt pool (a padded failed check counts two)."
    );
    describe_counter!(
        BCRYPT_PADDED,
        "Failed password checks against a hash cheaper than the configured cost, padded with a dummy check at the configured cost."
    );
    describe_gauge!(
        BCRYPT_EXPECTED_WAIT,
        Unit::Seconds,
        "Expected wait in the bcrypt pool computed for the latest password check (admitted or refused)."
    );
    for result in LOGIN_RESULTS {
        counter!(LOGINS, "result" => result).increment(0);
    }
    counter!(REFRESH_REUSE_DETECTED).increment(0);
    counter!(BCRYPT_REJECTED, "reason" => "deadline").increment(0);
    counter!(BCRYPT_REJECTED, "reason" => "client_queue").increment(0);
    counter!(BCRYPT_COMPLETED).increment(0);
    counter!(BCRYPT_PADDED).increment(0);
    gauge!(BCRYPT_EXPECTED_WAIT).set(0.0);
    gauge!(BCRYPT_QUEUE_DEPTH).increment(0.0);
}

/// Samples the pool's counts into [`DB_POOL_CONNECTIONS`] (called at scrape time).
pub fn record_pool_status(pool: &crate::db::Pool) {
    let s = pool.status();
    gauge!(DB_POOL_CONNECTIONS, "state" => "size").set(s.size as f64);
    gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set(s.size.saturating_sub(s.available) as f64);
    gauge!(DB_POOL_CONNECTIONS, "state" => "waiting").set(s.waiting as f64);
    gauge!(DB_POOL_CONNECTIONS, "state" => "max").set(s.max_size as f64);
}

// ----- gRPC server metrics -------------------------------------------------------------------------

/// The labels of one gRPC method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodLabels {
    pub service: &'static str,
    pub method: &'static str,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub kind: &'static str,
}

/// Paths that name no served method are counted under this, so a client cannot create series.
const UNKNOWN_METHOD: MethodLabels = MethodLabels {
    service: "unknown",
    method: "unknown",
    kind: "unknown",
};

/// The served methods (API, health, reflection), from their descriptor sets.
fn method_table() -> &'static HashMap<String, MethodLabels> {
    static TABLE: OnceLock<HashMap<String, MethodLabels>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = HashMap::new();
        for set in [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    let full = if package.is_empty() {
                        service.name().to_owned()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    let full: &'static str = Box::leak(full.into_boxed_str());
                    for m in &service.method {
                        let kind = match (m.client_streaming(), m.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        let name: &'static str = Box::leak(m.name().to_owned().into_boxed_str());
                        table.insert(
                            format!("/{full}/{name}"),
                            MethodLabels {
                                service: full,
                                method: name,
                                kind,
                            },
                        );
                    }
                }
            }
        }
        table
    })
}

/// The labels of a request path such as `/authd.v1.AuthService/Login`.
pub fn method_labels(path: &str) -> MethodLabels {
    method_table().get(path).copied().unwrap_or(UNKNOWN_METHOD)
}

/// Records the go-grpc-prometheus server metrics of every call. Place it outside the layers that
/// rewrite statuses, so it counts the code the client receives.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl<S, Req, B> tower::Service<http::Request<Req>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<Req>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<CompletionBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Req>) -> Self::Future {
        let m = method_labels(req.uri().path());
        counter!(
            GRPC_STARTED,
            "grpc_service" => m.service,
            "grpc_method" => m.method,
            "grpc_type" => m.kind
        )
        .increment(1);
        let start = Instant::now();
        let mut completion = Completion::new(move |code: Code| {
            counter!(
                GRPC_HANDLED,
                "grpc_service" => m.service,
                "grpc_method" => m.method,
                "grpc_type" => m.kind,
                "grpc_code" => grpc_code_name(code)
            )
            .increment(1);
            histogram!(
                GRPC_HANDLING_SECONDS,
                "grpc_service" => m.service,
                "grpc_method" => m.method,
                "grpc_type" => m.kind
            )
            .record(start.elapsed().as_secs_f64());
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(response) => Ok(observe_response(response, completion)),
                Err(e) => {
                    completion.finish(Code::Unknown);
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_come_from_the_descriptors() {
        assert_eq!(
            method_labels("/authd.v1.AuthService/Login"),
            MethodLabels {
                service: "authd.v1.AuthService",
                method: "Login",
                kind: "unary"
            }
        );
        assert_eq!(
            method_labels("/grpc.health.v1.Health/Watch").kind,
            "server_stream"
        );
        assert_eq!(
            method_labels("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").kind,
            "bidi_stream"
        );
        assert_eq!(method_labels("/authd.v1.AuthService/Nope"), UNKNOWN_METHOD);
        assert_eq!(method_labels("/x"), UNKNOWN_METHOD);
    }

    #[test]
    fn installing_twice_returns_the_same_handle() {
        let a = install_recorder();
        let b = install_recorder();
        counter!("authd_test_counter_total").increment(3);
        assert!(a.render().contains("authd_test_counter_total 3"));
        assert!(b.render().contains("authd_test_counter_total 3"));
    }
}
