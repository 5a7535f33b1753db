//! authd: a gRPC authentication service. Accounts, password login, rotating refresh tokens,
//! EdDSA-signed JWT access tokens, token validation for other services, and user administration.
//!
//! Layers: `grpc` (tonic handlers) calls `domain` (the rules), which calls `db` (diesel over
//! PostgreSQL); the three are private to the crate. [`server`] wires them up; [`embedded_pg`] runs a
//! private PostgreSQL when no `DATABASE_URL` is given. The outside (the binary, the testkit, tests,
//! benchmarks and fuzz targets) uses [`server`], [`config`], [`clock`], [`proto`] and the names
//! [`api`] re-exports.

// jsonwebtoken 11 panics at the first sign or verify unless exactly one backend is enabled.
#[cfg(all(feature = "jwt-rust-crypto", feature = "jwt-aws-lc-rs"))]
compile_error!(
    "features `jwt-rust-crypto` and `jwt-aws-lc-rs` are exclusive; with the other one, build with `--no-default-features`"
);
#[cfg(not(any(feature = "jwt-rust-crypto", feature = "jwt-aws-lc-rs")))]
compile_error!(
    "enable exactly one jsonwebtoken backend feature: `jwt-aws-lc-rs` (the default) or `jwt-rust-crypto`"
);

pub mod api;
pub mod build_info;
pub mod clock;
pub mod config;
mod db;
mod domain;
pub mod embedded_pg;
mod grpc;
mod layers;
mod limits;
pub mod metric_names;
pub mod metrics;
mod secret;
pub mod server;
pub mod transport;

/// The API (package `authd.v1`): the generated code and descriptor set of the `authd-proto` crate,
/// so that `authd::proto::...` names it.
pub use authd_proto as proto;
