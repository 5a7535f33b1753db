//! authd: a gRPC authentication service. Accounts, password login, rotating refresh tokens,
//! EdDSA-signed JWT access tokens, token validation for other services, and user administration.
//!
//! Layers: [`grpc`] (tonic handlers) calls [`domain`] (the rules), which calls [`db`] (diesel over
//! PostgreSQL). [`server`] wires them up; [`embedded_pg`] runs a private PostgreSQL when no
//! `DATABASE_URL` is given.

// jsonwebtoken 11 panics at the first sign or verify unless exactly one backend is enabled.
#[cfg(all(feature = "jwt-rust-crypto", feature = "jwt-aws-lc-rs"))]
compile_error!(
    "features `jwt-rust-crypto` and `jwt-aws-lc-rs` are exclusive; with the other one, build with `--no-default-features`"
);
#[cfg(not(any(feature = "jwt-rust-crypto", feature = "jwt-aws-lc-rs")))]
compile_error!(
    "enable exactly one jsonwebtoken backend feature: `jwt-aws-lc-rs` (the default) or `jwt-rust-crypto`"
);

pub mod clock;
pub mod config;
pub mod db;
pub mod domain;
pub mod embedded_pg;
mod grpc;
mod layers;
mod limits;
pub mod metric_names;
pub mod metrics;
pub mod server;
pub mod transport;

/// Code generated from `proto/auth/v1/*.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("auth.v1");

    /// The encoded descriptor set of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/authd_descriptor.bin"));
}
