//! [`StartError`]: why the process could not start or serve.

use crate::db::DbError;
use crate::domain;
use crate::embedded_pg::EmbeddedError;
use crate::transport;

/// Why the process could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("start-up: {0}")]
    Domain(#[from] domain::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Tls(#[from] transport::ConfigError),
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    #[error("cannot read the password from standard input: {0}")]
    Stdin(std::io::Error),
}
