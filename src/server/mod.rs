//! Process wiring. [`app`] starts the service and serves it; [`background`] holds the loops of a
//! serving process, [`readiness`] the health statuses, [`shutdown`] the signal and the drain;
//! [`logging`] sets up tracing; [`cli`] and [`healthcheck`] are the commands of the binary;
//! [`health`] is the gRPC health service and [`http`] the HTTP side listener (metrics, JWKS,
//! probes). Arrows point out of here: server → grpc, layers, transport → domain → db.

mod app;
mod background;
mod cli;
mod error;
mod health;
mod healthcheck;
pub mod http;
mod logging;
mod readiness;
mod shutdown;

pub use app::{Database, serve, start_service};
pub use cli::{
    create_admin, create_service_key, identifier_digest, migrate, raise_open_file_limit,
    rotate_signing_key, run,
};
pub use error::StartError;
pub use health::LIVENESS_SERVICE;
pub use healthcheck::{HEALTHCHECK_TIMEOUT, healthcheck, healthcheck_addr, healthcheck_command};
pub use logging::{SECRET_LEAKING_LOG_TARGETS, init_logging, log_filter};
pub use readiness::Readiness;
pub use shutdown::{DrainTimings, drain, shutdown_signal};
