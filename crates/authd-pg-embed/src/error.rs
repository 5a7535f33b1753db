//! [`EmbeddedError`]: every way starting, attaching to or stopping the embedded server can fail,
//! each message saying what to do about it.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

/// Errors starting, attaching to or stopping the embedded PostgreSQL server.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH, via `pg_config --bindir`, \
         or under /usr/lib/postgresql/*/bin: install them (`apt-get install postgresql`, or your \
         distro's PostgreSQL server package), or set DATABASE_URL to use an external PostgreSQL server"
    )]
    BinariesNotFound,

    #[error(
        "authd runs as root and PostgreSQL refuses to run as root, but there is no `postgres` system \
         user to run it as: install your distro's PostgreSQL server package (`apt-get install \
         postgresql` creates that user), create a `postgres` system user, or set DATABASE_URL"
    )]
    NoPostgresUser,

    #[error("could not look up the `postgres` system user: {0}")]
    UserLookup(#[source] nix::Error),

    #[error(
        "the embedded PostgreSQL server runs as system user `{user}`, which cannot enter {blocked} \
         (mode {mode:04o}) on the way to the data directory {data_dir}: choose a data directory it can \
         reach, e.g. AUTHD_DATA_DIR=/var/lib/authd, or set DATABASE_URL"
    )]
    DataDirNotAccessible {
        user: String,
        blocked: PathBuf,
        mode: u32,
        data_dir: PathBuf,
    },

    #[error(
        "refusing the data directory {data_dir}: {reason}. Point AUTHD_DATA_DIR at a directory of \
         its own (authd creates it if missing), or set DATABASE_URL"
    )]
    DataDirRefused { data_dir: PathBuf, reason: String },

    #[error(
        "{file} is missing but the cluster in {pgdata} already requires a password: restore the \
         file from a backup, or set the password of role `authd` by hand and write it there \
         (mode 0600)"
    )]
    PasswordMissing { file: PathBuf, pgdata: PathBuf },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "the cluster in {pgdata} was created by PostgreSQL {data_version}, but the server binaries in \
         {bindir} are PostgreSQL {binary_version}: install the PostgreSQL {data_version} server \
         binaries, or upgrade the cluster with pg_upgrade"
    )]
    VersionMismatch {
        pgdata: PathBuf,
        data_version: String,
        binary_version: String,
        bindir: PathBuf,
    },

    #[error("initdb failed ({status}) for {pgdata}:\n{output}")]
    Initdb {
        pgdata: PathBuf,
        status: ExitStatus,
        output: String,
    },

    #[error("embedded PostgreSQL exited during startup ({status}); last lines of {log}:\n{tail}")]
    StartupExited {
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },

    #[error(
        "embedded PostgreSQL did not accept connections within {secs}s (last error: {last_error}); \
         last lines of {log}:\n{tail}"
    )]
    StartupTimeout {
        secs: u64,
        last_error: String,
        log: PathBuf,
        tail: String,
    },

    #[error(
        "a PostgreSQL server (pid {pid}) holds the cluster in {pgdata} but did not accept connections \
         within {secs}s (last error: {last_error})"
    )]
    ExistingServerUnreachable {
        pid: i32,
        pgdata: PathBuf,
        secs: u64,
        last_error: String,
    },

    #[error("{context}: {source}")]
    Query {
        context: &'static str,
        #[source]
        source: diesel::result::Error,
    },

    #[error(
        "embedded PostgreSQL did not shut down within {secs}s; it keeps shutting down in the background"
    )]
    StopTimeout { secs: u64 },

    #[error("embedded PostgreSQL exited with {status}; last lines of {log}:\n{tail}")]
    Exited {
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
}

/// Wraps an [`io::Error`] with what we were doing.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}
