//! Process wiring. [`app`] starts the service and serves it; [`background`] holds the loops of a
//! serving process, [`readiness`] the health statuses, [`shutdown`] the signal and the drain;
//! [`logging`] sets up tracing and its writer thread; [`cli`] and [`healthcheck`] are the
//! commands of the binary; [`health`] is the gRPC health service, [`reflection`] server
//! reflection and its allowlist, and [`http`] the HTTP side listener (metrics, JWKS, probes).
//! Arrows point out of here: server → grpc, layers, transport → domain → db.

mod app;
mod background;
mod cli;
mod error;
mod health;
mod healthcheck;
mod http;
mod logging;
mod readiness;
mod reflection;
mod shutdown;

/// Applies pending migrations to the database at `url` (what `authd migrate` and start-up do).
pub use crate::db::run_migrations;
pub use app::{serve, start_service};
pub use cli::{
    create_admin, create_service_key, identifier_digest, migrate, rotate_signing_key, run,
};
pub use error::StartError;
pub use healthcheck::healthcheck_command;
pub use logging::{BackgroundWriter, LogFlushGuard, background_writer, init_logging, log_filter};
pub use reflection::REFLECTED_SERVICES;
