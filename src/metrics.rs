//! Prometheus metrics, recorded with the `metrics` facade and rendered by
//! `metrics-exporter-prometheus` on the HTTP side listener (`GET /metrics`).
//!
//! - gRPC server metrics, named and labelled as go-grpc-prometheus names them:
//!   `grpc_server_started_total`, `grpc_server_handled_total` (with `grpc_code`: `OK`,
//!   `InvalidArgument`, `Unauthenticated`, ...) and the histogram `grpc_server_handling_seconds`,
//!   each with `grpc_service`, `grpc_method` and `grpc_type` (recorded by the gRPC metrics layer, `layers::metrics::GrpcMetricsLayer`);
//! - `authd_logins_total{result}` (success, failure, disabled, throttled) and
//!   `authd_refresh_reuse_detected_total`, counted by the domain;
//! - `authd_ext_authz_checks_total{result}` (allowed, denied, forbidden, misconfigured,
//!   unavailable): Envoy ext_authz Check answers, counted by the domain;
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
//!   (admitted or refused);
//! - `authd_watch_streams`: WatchRevocations streams open on this replica;
//! - `authd_mfa_verifications_total{result}` (ok, invalid, locked, replay): second-factor codes
//!   checked, counted by the domain.
//!
//! Nothing is recorded until [`install_recorder`] runs (the server calls it when
//! `AUTHD_HTTP_LISTEN` is set); before that the `metrics` macros are no-ops.

use std::sync::OnceLock;
use std::time::Duration;

pub use crate::metric_names::*;
use ::metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const GRPC_STARTED: &str = "grpc_server_started_total";
pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
pub const GRPC_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
pub const DB_POOL_CONNECTIONS: &str = "authd_db_pool_connections";

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
        EXT_AUTHZ_CHECKS,
        "Envoy ext_authz Check answers by result: allowed, denied (401), forbidden (403), misconfigured (unknown authd_required_role, 500), unavailable (503)."
    );
    describe_counter!(
        REFRESH_REUSE_DETECTED,
        "Refresh tokens presented again after rotation (the session was revoked)."
    );
    describe_counter!(
        REFRESH_BATCHES,
        "Statements that wrote a batch of refresh rotations (group commit; see AUTHD_REFRESH_BATCH_MAX)."
    );
    describe_counter!(
        REFRESH_BATCHED_ROTATIONS,
        "Refresh rotations written by those statements (divided by authd_refresh_batches_total: the mean batch size)."
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
        WATCH_STREAMS,
        "WatchRevocations streams open on this replica."
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
    describe_gauge!(
        crate::metric_names::MAIL_OUTBOX_DEPTH,
        "Messages waiting in the outbox (neither sent nor failed)."
    );
    describe_gauge!(
        crate::metric_names::MAIL_OLDEST_UNSENT,
        Unit::Seconds,
        "Age of the oldest message waiting in the outbox (0 when none waits)."
    );
    describe_counter!(crate::metric_names::MAIL_SENT, "Mail messages delivered.");
    describe_counter!(
        crate::metric_names::LOG_LINES_DROPPED,
        "Log lines dropped because the log writer's queue was full (its output, e.g. stderr, fell behind)."
    );
    describe_counter!(
        crate::metric_names::EMAIL_VERIFICATION,
        "E-mail verification: result mailed (a link queued), capped (3 links live, none queued), requested (ResendVerification accepted), throttled, verified, invalid_token."
    );
    describe_counter!(
        crate::metric_names::EMAIL_CHANGE,
        "E-mail changes: result requested (UpdateMe), confirmed, conflict (the address was taken meanwhile), invalid_token, admin (applied at once by an admin)."
    );
    describe_counter!(
        crate::metric_names::MAIL_SEND_FAILURES,
        "Failed mail delivery attempts (each retry counts)."
    );
    describe_counter!(
        crate::metric_names::MAIL_FAILED,
        "Mail messages given up after their last attempt (marked failed in the outbox)."
    );
    describe_counter!(
        crate::metric_names::PASSWORD_RESET_REQUESTS,
        "RequestPasswordReset calls accepted (one request each, known address or not)."
    );
    describe_counter!(
        crate::metric_names::PASSWORD_RESET_MAILS,
        "Password-reset links created and queued for mail (active accounts only)."
    );
    describe_counter!(
        crate::metric_names::PASSWORD_RESETS,
        "Passwords set through ResetPassword."
    );
    counter!(crate::metric_names::PASSWORD_RESET_REQUESTS).increment(0);
    counter!(crate::metric_names::PASSWORD_RESET_MAILS).increment(0);
    counter!(crate::metric_names::PASSWORD_RESETS).increment(0);
    describe_counter!(
        crate::metric_names::MFA_VERIFICATIONS,
        "Second-factor codes checked, by result: ok, invalid (wrong code), locked (refused while the account's second factor is locked), replay (a code already used)."
    );
    for result in crate::metric_names::MFA_RESULTS {
        counter!(crate::metric_names::MFA_VERIFICATIONS, "result" => result).increment(0);
    }
    counter!(crate::metric_names::MAIL_SENT).increment(0);
    counter!(crate::metric_names::MAIL_SEND_FAILURES).increment(0);
    counter!(crate::metric_names::MAIL_FAILED).increment(0);
    for result in LOGIN_RESULTS {
        counter!(LOGINS, "result" => result).increment(0);
    }
    for result in EXT_AUTHZ_RESULTS {
        counter!(EXT_AUTHZ_CHECKS, "result" => result).increment(0);
    }
    counter!(REFRESH_REUSE_DETECTED).increment(0);
    counter!(BCRYPT_REJECTED, "reason" => "deadline").increment(0);
    counter!(BCRYPT_REJECTED, "reason" => "client_queue").increment(0);
    counter!(BCRYPT_COMPLETED).increment(0);
    counter!(BCRYPT_PADDED).increment(0);
    gauge!(BCRYPT_EXPECTED_WAIT).set(0.0);
    gauge!(BCRYPT_QUEUE_DEPTH).increment(0.0);
    gauge!(WATCH_STREAMS).increment(0.0);
}

/// Samples the pool's counts into [`DB_POOL_CONNECTIONS`] (called at scrape time).
pub fn record_pool_status(pool: &crate::db::Pool) {
    let s = pool.status();
    gauge!(DB_POOL_CONNECTIONS, "state" => "size").set(s.size as f64);
    gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set(s.size.saturating_sub(s.available) as f64);
    gauge!(DB_POOL_CONNECTIONS, "state" => "waiting").set(s.waiting as f64);
    gauge!(DB_POOL_CONNECTIONS, "state" => "max").set(s.max_size as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn installing_twice_returns_the_same_handle() {
        let a = install_recorder();
        let b = install_recorder();
        counter!("authd_test_counter_total").increment(3);
        assert!(a.render().contains("authd_test_counter_total 3"));
        assert!(b.render().contains("authd_test_counter_total 3"));
    }
}
