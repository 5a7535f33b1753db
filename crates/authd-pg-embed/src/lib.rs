//! Embedded PostgreSQL: the private database cluster authd runs when no `DATABASE_URL` is given,
//! and the one the tests and benchmarks run against.
//!
//! A crate of its own because it has nothing to do with authentication: the server (through
//! `authd::embedded_pg`, a re-export) and the test kit both use it, and it depends on no part of
//! authd. This crate owns everything about that cluster and nothing else:
//!
//! * finding the server binaries (`initdb`, `postgres`),
//! * the on-disk layout under the authd data dir: `<data_dir>/pgdata` (the cluster, created with
//!   `initdb` on first start and reused afterwards), `<data_dir>/run` (the Unix socket directory;
//!   the server listens on no TCP address) and `<data_dir>/postgres.log` (server output),
//! * running the server as the unprivileged `postgres` system user when authd runs as root,
//! * password authentication: the cluster accepts only `scram-sha-256` logins, with a random
//!   password generated at the first start and kept in `<data_dir>/pg_password` (mode 0600, owned
//!   by the user authd runs as, who passes it in its connection URL). No `trust`: other processes of
//!   the server's system user (or of the user running authd) are not superuser by merely reaching
//!   the socket. A cluster created with `trust` by an older authd is switched over at its next
//!   start (password set, `pg_hba.conf` rewritten, configuration reloaded),
//! * refusing a data directory that is a symlink, or that belongs to another (non-root) user and is
//!   not empty: as root, authd would otherwise take over whatever the path points to,
//! * the server's lifetime: it is started under a tiny `sh` watchdog whose stdin is a pipe held by
//!   this process. When the pipe closes -- [`EmbeddedPostgres::stop`], drop, normal exit, panic or
//!   SIGKILL of authd -- the watchdog asks the server for a fast shutdown, waits for it and, for
//!   ephemeral clusters, deletes the cluster's directory. No stray servers are left behind, which
//!   also holds for test processes that never run destructors,
//! * attaching to a server that already runs on the same data dir (e.g. `authd migrate` while
//!   `authd serve` is running), without owning it,
//! * making sure the `authd` database exists.
//!
//! Schema migrations and connection pooling live elsewhere; this crate only hands out URLs
//! (see [`EmbeddedPostgres::database_url`]).
//!
//! | File | What it holds |
//! |---|---|
//! | `lib.rs` | the public API: [`EmbeddedOptions`], [`EmbeddedPostgres`] (start, attach, stop) |
//! | `error.rs` | [`EmbeddedError`] |
//! | `binaries.rs` | finding `initdb` and `postgres`, and the ones matching an existing cluster |
//! | `datadir.rs` | the data directory's checks and ownership, the user the server runs as |
//! | `cluster.rs` | `initdb` and the server's settings |
//! | `auth.rs` | the superuser's password file, `pg_hba.conf`, moving `trust` clusters to passwords |
//! | `process.rs` | the watchdog process, readiness, the server log |
//! | `attach.rs` | attaching to a server already running on the cluster |
//! | `conn.rs` | socket path, connection URL, connecting, the `authd` database |

mod attach;
mod auth;
mod binaries;
mod cluster;
mod conn;
mod datadir;
mod error;
mod process;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use tokio::process::Command;

pub use crate::auth::PASSWORD_FILE;
pub use crate::datadir::default_data_dir;
pub use crate::error::EmbeddedError;

use crate::attach::probe_running_server;
use crate::auth::{hba_trusts, require_passwords, superuser_password};
use crate::binaries::find_binaries;
use crate::cluster::{init_cluster, server_settings};
use crate::conn::{
    MAX_SOCKET_PATH, OWNER_SETTING, PORT, ensure_database, socket_path_fits, url_for,
};
use crate::datadir::{RunAs, ephemeral_parent, make_private_dir, prepare_data_dir};
use crate::error::io_err;
use crate::process::{STOP_TIMEOUT, WATCHDOG_SCRIPT, Watchdog, open_log, wait_ready};

/// How to start the embedded server.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The authd data dir; the cluster lives in `<data_dir>/pgdata`. Ignored when `ephemeral`.
    pub data_dir: PathBuf,
    /// A throw-away cluster in a fresh temp dir, tuned for speed over durability (`fsync=off`)
    /// and deleted when the server stops (also when this process exits or is killed).
    pub ephemeral: bool,
    /// PostgreSQL's `max_connections`.
    pub max_connections: u32,
}

/// A running embedded PostgreSQL server, owned (started by us) or attached (already running).
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    /// The superuser's password (from [`PASSWORD_FILE`]); never shown by Debug.
    password: String,
    socket_dir: PathBuf,
    port: u16,
    ephemeral: bool,
    /// `None` when attached to a server some other process owns.
    watchdog: Option<Watchdog>,
}

impl std::fmt::Debug for EmbeddedPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPostgres")
            .field("data_dir", &self.data_dir)
            .field("socket_dir", &self.socket_dir)
            .field("port", &self.port)
            .field("ephemeral", &self.ephemeral)
            .field("owned", &self.watchdog.is_some())
            .finish()
    }
}

impl EmbeddedPostgres {
    /// Starts the cluster (running `initdb` first if needed), or attaches to the server already
    /// running on it, and makes sure the `authd` database exists.
    pub async fn start(opts: EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let started = Instant::now();
        let run_as = RunAs::detect()?;

        // Directory layout. For ephemeral clusters the temp dir guard removes the directory again
        // if we fail before the watchdog (which then owns the deletion) is running.
        let (data_dir, mut temp_guard) = if opts.ephemeral {
            let dir = tempfile::Builder::new()
                .prefix("authd-test-")
                .tempdir_in(ephemeral_parent(&run_as))
                .map_err(io_err(
                    "creating a temp dir for the ephemeral PostgreSQL cluster",
                ))?;
            let path = dir.path().to_path_buf();
            run_as.check_traversable(&path, &path)?;
            (path, Some(dir))
        } else {
            (prepare_data_dir(&opts.data_dir, &run_as)?, None)
        };
        run_as.own_private_dir(&data_dir)?;
        let pgdata = data_dir.join("pgdata");
        let initialized = pgdata.join("PG_VERSION").is_file();
        let password = superuser_password(&data_dir, &pgdata, initialized)?;

        if !opts.ephemeral
            && let Some((socket_dir, port, mut conn)) =
                probe_running_server(&pgdata, &password).await?
        {
            if hba_trusts(&pgdata)? {
                tracing::warn!(
                    pgdata = %pgdata.display(),
                    "the running PostgreSQL server still uses trust authentication; authd switches it to passwords when it next starts the server"
                );
            }
            ensure_database(&mut conn).await?;
            tracing::info!(
                data_dir = %data_dir.display(),
                socket_dir = %socket_dir.display(),
                "attached to the PostgreSQL server already running on this data dir (not owned; stop leaves it running)"
            );
            return Ok(Self {
                data_dir,
                password,
                socket_dir,
                port,
                ephemeral: false,
                watchdog: None,
            });
        }

        let mut bins = find_binaries().await?;
        if initialized {
            bins = bins.matching_cluster(&pgdata).await?;
        } else {
            init_cluster(
                &bins,
                &data_dir,
                &pgdata,
                &run_as,
                opts.ephemeral,
                &password,
            )
            .await?;
        }
        run_as.own_private_dir(&pgdata)?;

        // Socket directory: `<data_dir>/run` unless the socket path would be too long.
        let run_dir = data_dir.join("run");
        // Like the ephemeral cluster, a fallback socket dir is removed by the watchdog once it runs.
        let (socket_dir, socket_guard) = if socket_path_fits(&run_dir) {
            make_private_dir(&run_dir)?;
            run_as.own_private_dir(&run_dir)?;
            (run_dir, None)
        } else {
            let dir = tempfile::Builder::new()
                .prefix("authd-pg-")
                .tempdir_in("/tmp")
                .map_err(io_err("creating a fallback socket directory under /tmp"))?;
            run_as.own_private_dir(dir.path())?;
            tracing::warn!(
                wanted = %run_dir.display(),
                using = %dir.path().display(),
                "the PostgreSQL socket path under the data dir would exceed {MAX_SOCKET_PATH} bytes; using a private socket directory under /tmp instead"
            );
            (dir.path().to_path_buf(), Some(dir))
        };

        let log_path = data_dir.join("postgres.log");
        let (log_file, log) = open_log(&log_path, &run_as)?;

        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("authd-pg-watchdog")
            .arg(&bins.postgres)
            .arg("-D")
            .arg(&pgdata);
        // Tells our server apart from one another process started on the same cluster.
        let owner_token = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        for setting in server_settings(&socket_dir, opts.max_connections, opts.ephemeral) {
            cmd.arg("-c").arg(setting);
        }
        cmd.arg("-c").arg(format!("{OWNER_SETTING}={owner_token}"));
        run_as.apply(&mut cmd);
        if opts.ephemeral {
            cmd.env("AUTHD_PG_REMOVE", &data_dir);
        }
        if socket_guard.is_some() {
            cmd.env("AUTHD_PG_RMDIR", &socket_dir);
        }
        let log_err = log_file
            .try_clone()
            .map_err(io_err(format!("duplicating {}", log_path.display())))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .current_dir(&data_dir)
            // Own process group: a terminal's Ctrl-C reaches authd only, which then stops us cleanly.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(io_err("starting the PostgreSQL watchdog (/bin/sh)"))?;
        let stdin = child.stdin.take();
        // From here on the watchdog deletes these.
        if let Some(guard) = temp_guard.take() {
            let _ = guard.keep();
        }
        if let Some(guard) = socket_guard {
            let _ = guard.keep();
        }
        let mut watchdog = Watchdog { child, stdin, log };
        let ready = wait_ready(
            &mut watchdog,
            &url_for(&socket_dir, PORT, "postgres", &password),
            &owner_token,
        )
        .await;
        let mut this = Self {
            data_dir,
            password,
            socket_dir,
            port: PORT,
            ephemeral: opts.ephemeral,
            watchdog: Some(watchdog),
        };

        let mut conn = match ready {
            Ok(conn) => conn,
            Err(err) => {
                if let Some(watchdog) = this.watchdog.as_mut() {
                    // Quietly: the server is not up (or already gone); the watchdog cleans up.
                    drop(watchdog.stdin.take());
                }
                // Lost a race against another process starting the same cluster? Attach to it.
                if !opts.ephemeral
                    && matches!(err, EmbeddedError::StartupExited { .. })
                    && let Ok(Some((socket_dir, port, mut conn))) =
                        probe_running_server(&pgdata, &this.password).await
                {
                    ensure_database(&mut conn).await?;
                    tracing::info!(data_dir = %this.data_dir.display(), "attached to a PostgreSQL server started concurrently on this data dir");
                    this.watchdog = None;
                    this.socket_dir = socket_dir;
                    this.port = port;
                    return Ok(this);
                }
                return Err(err);
            }
        };
        if hba_trusts(&pgdata)? {
            require_passwords(&mut conn, &pgdata, &this.password, &run_as).await?;
        }
        ensure_database(&mut conn).await?;
        drop(conn);
        tracing::info!(
            data_dir = %this.data_dir.display(),
            socket_dir = %this.socket_dir.display(),
            ephemeral = this.ephemeral,
            initdb = !initialized,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "embedded PostgreSQL started"
        );
        Ok(this)
    }

    /// URL for `tokio-postgres` / diesel-async `AsyncPgConnection::establish` (and libpq), connecting
    /// over the Unix socket as superuser `authd`, with its password, to database `db`, e.g.
    /// `postgres://authd:<password>@%2Fvar%2Flib%2Fauthd%2Frun/authd` (the socket directory is the
    /// percent-encoded host). It holds the password: do not log it.
    pub fn database_url(&self, db: &str) -> String {
        url_for(&self.socket_dir, self.port, db, &self.password)
    }

    /// The authd data dir holding the cluster (absolute; the temp dir when ephemeral).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Shuts the server down (fast shutdown) and waits for it, at most 15 s. Does nothing when
    /// attached to a server this process did not start. Ephemeral clusters are deleted.
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        let Some(mut watchdog) = self.watchdog.take() else {
            tracing::info!(data_dir = %self.data_dir.display(), "detached from the embedded PostgreSQL server (left running)");
            return Ok(());
        };
        let started = Instant::now();
        drop(watchdog.stdin.take());
        let status = match tokio::time::timeout(STOP_TIMEOUT, watchdog.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(source)) => {
                return Err(EmbeddedError::Io {
                    context: "waiting for the PostgreSQL watchdog".into(),
                    source,
                });
            }
            Err(_) => {
                return Err(EmbeddedError::StopTimeout {
                    secs: STOP_TIMEOUT.as_secs(),
                });
            }
        };
        if self.ephemeral && self.data_dir.exists() {
            // The watchdog normally did this already.
            let _ = fs::remove_dir_all(&self.data_dir);
        }
        if !status.success() {
            return Err(EmbeddedError::Exited {
                status,
                log: watchdog.log.path.clone(),
                tail: watchdog.log.tail(),
            });
        }
        tracing::info!(
            data_dir = %self.data_dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "embedded PostgreSQL stopped"
        );
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    /// Best effort, non-blocking: closing the pipe makes the watchdog shut the server down.
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.as_mut()
            && let Some(stdin) = watchdog.stdin.take()
        {
            drop(stdin);
            tracing::info!(data_dir = %self.data_dir.display(), "embedded PostgreSQL dropped without stop(); shutting it down in the background");
        }
    }
}
