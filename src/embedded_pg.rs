//! Embedded PostgreSQL: the private database cluster authd runs when no `DATABASE_URL` is given.
//!
//! This module owns everything about that cluster and nothing else:
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
//! Schema migrations and connection pooling live elsewhere; this module only hands out URLs
//! (see [`EmbeddedPostgres::database_url`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use tokio::process::{Child, ChildStdin, Command};

/// Port number of the server. It only names the socket file (`.s.PGSQL.5432`) inside our private
/// socket directory; the server listens on no TCP address.
const PORT: u16 = 5432;
/// `sizeof(sockaddr_un.sun_path) - 1` on Linux.
const MAX_SOCKET_PATH: usize = 107;
const SUPERUSER: &str = "authd";
const DATABASE: &str = "authd";
const SYSTEM_USER: &str = "postgres";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// `postgres.log` is moved aside to `postgres.log.1` at start once it grows beyond this.
const LOG_ROTATE_BYTES: u64 = 16 << 20;
const LOG_TAIL_BYTES: u64 = 4096;
const LOG_TAIL_LINES: usize = 25;
/// initdb writes into `<data_dir>/pgdata.init-<pid>`, renamed to `pgdata` when complete.
const STAGING_PREFIX: &str = "pgdata.init-";
/// The superuser's password, in the authd data dir.
pub const PASSWORD_FILE: &str = "pg_password";
/// What authd writes to `pg_hba.conf` when it moves a `trust` cluster to passwords (initdb with
/// `--auth=scram-sha-256` writes the equivalent itself).
const PG_HBA: &str = "\
# Written by authd: password (SCRAM) logins only. The server listens on a private Unix socket.
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 scram-sha-256
local   replication  all                 scram-sha-256
host    all          all   127.0.0.1/32  scram-sha-256
host    all          all   ::1/128       scram-sha-256
";
/// The only environment variables passed on to `initdb` and the server (authd's environment may
/// hold secrets, and the server may run as another user).
/// A custom server setting carrying a token unique to the starting process.
const OWNER_SETTING: &str = "authd.owner";
const PASSED_ENV: &[&str] = &["PATH", "TZ", "TZDIR"];

/// The watchdog, run as `sh -c WATCHDOG_SCRIPT authd-pg-watchdog <postgres> <args>...`.
///
/// Its stdin is a pipe whose only write end is held by authd. The server is started in the
/// background; a reader subshell blocks on the pipe and, at EOF, requests a fast shutdown (SIGINT).
/// The main shell waits for the server (also when it exits on its own), then removes
/// `$AUTHD_PG_REMOVE` (ephemeral clusters) and `$AUTHD_PG_RMDIR` (fallback socket dir) if set.
/// Termination signals sent to the watchdog itself are forwarded as a fast shutdown as well.
const WATCHDOG_SCRIPT: &str = r#"
exec 3<&0 </dev/null
"$@" 3<&- &
pg=$!
trap 'kill -INT "$pg" 2>/dev/null' INT TERM HUP
(read -r _ <&3; kill -INT "$pg" 2>/dev/null) &
reader=$!
exec 3<&-
wait "$pg"
status=$?
while kill -0 "$pg" 2>/dev/null; do wait "$pg"; status=$?; done
kill "$reader" 2>/dev/null
wait "$reader" 2>/dev/null
if [ -n "$AUTHD_PG_REMOVE" ]; then rm -rf -- "$AUTHD_PG_REMOVE"; fi
if [ -n "$AUTHD_PG_RMDIR" ]; then rmdir -- "$AUTHD_PG_RMDIR" 2>/dev/null; fi
exit "$status"
"#;

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

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

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

struct Watchdog {
    child: Child,
    /// Closing this pipe tells the watchdog to shut the server down.
    stdin: Option<ChildStdin>,
    log: LogReader,
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

/// Polls until the server accepts connections on `url`; fails early if the watchdog exits.
///
/// A server that answers but was not started by us (another process won a race to start the same
/// cluster) does not count: ours then exits shortly, and the caller attaches instead.
async fn wait_ready(
    watchdog: &mut Watchdog,
    url: &str,
    owner_token: &str,
) -> Result<AsyncPgConnection, EmbeddedError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match watchdog.child.try_wait() {
            Ok(Some(status)) => {
                return Err(EmbeddedError::StartupExited {
                    status,
                    log: watchdog.log.path.clone(),
                    tail: watchdog.log.tail(),
                });
            }
            Ok(None) => {}
            Err(source) => {
                return Err(EmbeddedError::Io {
                    context: "checking on the PostgreSQL watchdog".into(),
                    source,
                });
            }
        }
        let last_error = match try_connect(url).await {
            Ok(mut conn) => match server_owner(&mut conn).await {
                Ok(owner) if owner == owner_token => return Ok(conn),
                Ok(_) => "the server answering is not the one we started".to_string(),
                Err(e) => e.to_string(),
            },
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(EmbeddedError::StartupTimeout {
                secs: READY_TIMEOUT.as_secs(),
                last_error,
                log: watchdog.log.path.clone(),
                tail: watchdog.log.tail(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
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

/// The default authd data dir: `/var/lib/authd` as root, else `$XDG_DATA_HOME/authd`, else
/// `$HOME/.local/share/authd`, else `./.authd`.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/authd");
    }
    let env_dir = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(xdg) = env_dir("XDG_DATA_HOME") {
        return xdg.join("authd");
    }
    if let Some(home) = env_dir("HOME") {
        return home.join(".local/share/authd");
    }
    PathBuf::from("./.authd")
}

// ---------------------------------------------------------------------------------------------
// Users and directories

/// Who runs `initdb` and `postgres`: the `postgres` system user when we are root, else ourselves.
struct RunAs {
    uid: u32,
    gid: u32,
    name: String,
    /// We are root and must switch to `uid`/`gid` for the server.
    switch: bool,
}

impl RunAs {
    fn detect() -> Result<Self, EmbeddedError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Self {
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                name: String::from("(current user)"),
                switch: false,
            });
        }
        let user = nix::unistd::User::from_name(SYSTEM_USER)
            .map_err(EmbeddedError::UserLookup)?
            .ok_or(EmbeddedError::NoPostgresUser)?;
        Ok(Self {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            name: user.name,
            switch: true,
        })
    }

    /// Runs `cmd` as the server user, with a minimal environment.
    fn apply(&self, cmd: &mut Command) {
        cmd.env_clear();
        for name in PASSED_ENV {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        if self.switch {
            cmd.uid(self.uid).gid(self.gid);
        }
    }

    /// chown (when switching users) and chmod 0700 a directory the server must own.
    fn own_private_dir(&self, dir: &Path) -> Result<(), EmbeddedError> {
        // chown and chmod follow symlinks: never hand a link's target to the server user.
        let meta =
            fs::symlink_metadata(dir).map_err(io_err(format!("inspecting {}", dir.display())))?;
        if !meta.is_dir() {
            return Err(EmbeddedError::DataDirRefused {
                data_dir: dir.to_path_buf(),
                reason: "it is a symbolic link or not a directory".into(),
            });
        }
        if self.switch {
            std::os::unix::fs::chown(dir, Some(self.uid), Some(self.gid))
                .map_err(io_err(format!("chown {} to {}", dir.display(), self.name)))?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod 0700 {}", dir.display())))
    }

    /// Fails if the server user cannot traverse an existing ancestor of `dir` (excluding `dir`
    /// itself, which we chown). Only relevant when switching users; supplementary groups are
    /// dropped on the switch, so owner, primary group and other bits decide.
    fn check_traversable(&self, dir: &Path, data_dir: &Path) -> Result<(), EmbeddedError> {
        if !self.switch {
            return Ok(());
        }
        for ancestor in dir.ancestors().skip(1) {
            let meta = match fs::metadata(ancestor) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("inspecting {}", ancestor.display()))(e)),
            };
            if !can_search(meta.mode(), meta.uid(), meta.gid(), self.uid, self.gid) {
                return Err(EmbeddedError::DataDirNotAccessible {
                    user: self.name.clone(),
                    blocked: ancestor.to_path_buf(),
                    mode: meta.mode() & 0o7777,
                    data_dir: data_dir.to_path_buf(),
                });
            }
        }
        Ok(())
    }
}

fn can_search(mode: u32, owner: u32, group: u32, uid: u32, gid: u32) -> bool {
    if uid == 0 {
        true
    } else if owner == uid {
        mode & 0o100 != 0
    } else if group == gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Creates the persistent data dir (0700) and returns its canonical path, checking that the server
/// user can reach it before creating anything.
fn prepare_data_dir(data_dir: &Path, run_as: &RunAs) -> Result<PathBuf, EmbeddedError> {
    let absolute = if data_dir.is_absolute() {
        data_dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(io_err("resolving the current directory"))?
            .join(data_dir)
    };
    run_as.check_traversable(&absolute, &absolute)?;
    check_data_dir_owner(&absolute, run_as)?;
    if let Some(parent) = absolute.parent() {
        fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
    }
    make_private_dir(&absolute)?;
    // Again: the directory may have appeared meanwhile.
    check_data_dir_owner(&absolute, run_as)?;
    let canonical = absolute
        .canonicalize()
        .map_err(io_err(format!("resolving {}", absolute.display())))?;
    // Again, now that every ancestor exists (and symlinks are resolved).
    run_as.check_traversable(&canonical, &canonical)?;
    Ok(canonical)
}

/// Refuses a data directory that is a symlink (as root, authd would take over its target, whoever
/// owns it), or that belongs to a user other than root, authd's own and the server's, and is not
/// empty. A missing one is fine: authd creates it.
fn check_data_dir_owner(dir: &Path, run_as: &RunAs) -> Result<(), EmbeddedError> {
    let refuse = |reason: String| EmbeddedError::DataDirRefused {
        data_dir: dir.to_path_buf(),
        reason,
    };
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("inspecting {}", dir.display()))(e)),
    };
    if meta.file_type().is_symlink() {
        let target = fs::read_link(dir)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(refuse(format!(
            "it is a symbolic link (to {target}); use the real path"
        )));
    }
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    let owner = meta.uid();
    let me = nix::unistd::geteuid().as_raw();
    if owner != 0 && owner != me && owner != run_as.uid {
        let empty = fs::read_dir(dir)
            .map_err(io_err(format!("listing {}", dir.display())))?
            .next()
            .is_none();
        if !empty {
            let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner))
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid {owner}"));
            return Err(refuse(format!(
                "it belongs to another user ({name}) and is not empty"
            )));
        }
    }
    Ok(())
}

fn make_private_dir(dir: &Path) -> Result<(), EmbeddedError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io_err(format!("creating {}", dir.display()))(e)),
    }
}

/// `$TMPDIR` (usually `/tmp`) if the server user can reach it and the socket path stays short
/// enough, else `/tmp`.
fn ephemeral_parent(run_as: &RunAs) -> PathBuf {
    let tmp = std::env::temp_dir();
    let sample = tmp.join("authd-test-XXXXXX");
    if tmp.is_absolute()
        && tmp.is_dir()
        && socket_path_fits(&sample.join("run"))
        && run_as.check_traversable(&sample, &sample).is_ok()
    {
        tmp
    } else {
        PathBuf::from("/tmp")
    }
}

fn socket_path_fits(socket_dir: &Path) -> bool {
    socket_dir.as_os_str().len() + format!("/.s.PGSQL.{PORT}").len() <= MAX_SOCKET_PATH
}

// ---------------------------------------------------------------------------------------------
// Binaries and cluster initialization

struct Binaries {
    initdb: PathBuf,
    postgres: PathBuf,
}

impl Binaries {
    fn in_dir(dir: &Path) -> Option<Self> {
        let initdb = dir.join("initdb");
        let postgres = dir.join("postgres");
        (is_executable(&initdb) && is_executable(&postgres)).then_some(Self { initdb, postgres })
    }

    fn bindir(&self) -> PathBuf {
        self.postgres
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The cluster's major version must match the server's. On mismatch, use the matching
    /// `/usr/lib/postgresql/<version>/bin` if installed.
    async fn matching_cluster(self, pgdata: &Path) -> Result<Self, EmbeddedError> {
        let data_version = fs::read_to_string(pgdata.join("PG_VERSION"))
            .map_err(io_err(format!("reading {}/PG_VERSION", pgdata.display())))?
            .trim()
            .to_string();
        let output = Command::new(&self.postgres)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io_err(format!(
                "running {} --version",
                self.postgres.display()
            )))?;
        let Some(binary_version) = major_version(&String::from_utf8_lossy(&output.stdout)) else {
            // Unknown output format: let the server itself complain if it cannot read the cluster.
            return Ok(self);
        };
        if binary_version == data_version {
            return Ok(self);
        }
        if let Some(bins) = Binaries::in_dir(
            &Path::new("/usr/lib/postgresql")
                .join(&data_version)
                .join("bin"),
        ) {
            tracing::info!(version = %data_version, bindir = %bins.bindir().display(), "using the PostgreSQL binaries matching the existing cluster");
            return Ok(bins);
        }
        Err(EmbeddedError::VersionMismatch {
            pgdata: pgdata.to_path_buf(),
            data_version,
            binary_version,
            bindir: self.bindir(),
        })
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `initdb` and `postgres` on PATH, else in `pg_config --bindir`, else the highest version under
/// `/usr/lib/postgresql/*/bin`.
async fn find_binaries() -> Result<Binaries, EmbeddedError> {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let on_path = |name: &str| {
        path_dirs
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.is_absolute() && is_executable(p))
    };
    if let (Some(initdb), Some(postgres)) = (on_path("initdb"), on_path("postgres")) {
        return Ok(Binaries { initdb, postgres });
    }

    if let Some(pg_config) = on_path("pg_config")
        && let Ok(output) = Command::new(pg_config)
            .arg("--bindir")
            .stdin(Stdio::null())
            .output()
            .await
        && output.status.success()
        && let Some(bins) =
            Binaries::in_dir(Path::new(String::from_utf8_lossy(&output.stdout).trim()))
    {
        return Ok(bins);
    }

    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .iter()
        .rev()
        .find_map(|(_, dir)| Binaries::in_dir(dir))
        .ok_or(EmbeddedError::BinariesNotFound)
}

/// "postgres (PostgreSQL) 15.18 (Debian ...)" -> "15"; "9.6.24" -> "9.6" (the PG_VERSION format).
fn major_version(version_output: &str) -> Option<String> {
    let number = version_output
        .split_whitespace()
        .find(|tok| tok.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = number
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    let major = parts.next()?;
    if major.parse::<u32>().ok()? >= 10 {
        Some(major.to_string())
    } else {
        Some(format!("{major}.{}", parts.next()?))
    }
}

/// Runs initdb into `pgdata.init` and renames it to `pgdata`, so that a killed initdb never leaves
/// a half-initialized cluster behind.
async fn init_cluster(
    bins: &Binaries,
    data_dir: &Path,
    pgdata: &Path,
    run_as: &RunAs,
    ephemeral: bool,
    password: &str,
) -> Result<(), EmbeddedError> {
    remove_stale_staging_dirs(data_dir);
    // PG_VERSION is missing: tolerate an empty directory, refuse to touch anything else.
    if fs::read_dir(pgdata).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(EmbeddedError::Io {
            context: format!("initializing a cluster in {}", pgdata.display()),
            source: io::Error::other(
                "the directory is not empty but holds no PostgreSQL cluster (no PG_VERSION); move it away",
            ),
        });
    }
    // Per process, so that concurrent first starts on one data dir do not trample each other.
    let staging = data_dir.join(format!("{STAGING_PREFIX}{}", std::process::id()));
    tracing::info!(pgdata = %pgdata.display(), bindir = %bins.bindir().display(), "initializing a new PostgreSQL cluster");
    // initdb reads the superuser's password from a file the server user can read; it goes away
    // right after.
    let pwfile = data_dir.join(format!("pwfile.init-{}", std::process::id()));
    let _ = fs::remove_file(&pwfile);
    write_private_file(&pwfile, password.as_bytes())?;
    if run_as.switch {
        std::os::unix::fs::chown(&pwfile, Some(run_as.uid), Some(run_as.gid)).map_err(io_err(
            format!("chown {} to {}", pwfile.display(), run_as.name),
        ))?;
    }
    let mut cmd = Command::new(&bins.initdb);
    cmd.arg("-D")
        .arg(&staging)
        .args([
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .arg(format!("--pwfile={}", pwfile.display()));
    if ephemeral {
        cmd.arg("--no-sync");
    }
    cmd.stdin(Stdio::null()).current_dir(data_dir);
    run_as.apply(&mut cmd);
    let output = cmd.output().await;
    let _ = fs::remove_file(&pwfile);
    let output = output.map_err(io_err(format!("running {}", bins.initdb.display())))?;
    if !output.status.success() {
        let _ = fs::remove_dir_all(&staging);
        return Err(EmbeddedError::Initdb {
            pgdata: pgdata.to_path_buf(),
            status: output.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    // Atomic; also replaces an empty `pgdata`.
    match fs::rename(&staging, pgdata) {
        Ok(()) => Ok(()),
        Err(_) if pgdata.join("PG_VERSION").is_file() => {
            // Another process initialized the cluster first: use theirs.
            let _ = fs::remove_dir_all(&staging);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(io_err(format!(
                "renaming {} to {}",
                staging.display(),
                pgdata.display()
            ))(e))
        }
    }
}

/// Removes `pgdata.init-<pid>` directories left by an initdb whose process is gone.
fn remove_stale_staging_dirs(data_dir: &Path) {
    let Ok(entries) = fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(STAGING_PREFIX))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() as i32
            || !matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Err(nix::errno::Errno::ESRCH)
            );
        if !alive {
            tracing::info!(dir = %entry.path().display(), "removing an incomplete cluster left by an interrupted initdb");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn server_settings(socket_dir: &Path, max_connections: u32, ephemeral: bool) -> Vec<String> {
    // unix_socket_directories is a list: quote the entry, doubling embedded quotes.
    let quoted_dir = format!("\"{}\"", socket_dir.to_string_lossy().replace('"', "\"\""));
    let mut settings = vec![
        "listen_addresses=".to_string(),
        format!("unix_socket_directories={quoted_dir}"),
        "unix_socket_permissions=0700".to_string(),
        format!("port={PORT}"),
        format!("max_connections={max_connections}"),
    ];
    if ephemeral {
        settings.extend(
            [
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
                "shared_buffers=32MB",
                // Little WAL on disk: no replicas or archive to feed, and checkpoints often enough
                // that the hundreds of databases a test run copies from its template do not pile
                // up gigabytes of WAL.
                "wal_level=minimal",
                "max_wal_senders=0",
                "max_wal_size=96MB",
                "min_wal_size=32MB",
            ]
            .map(String::from),
        );
    }
    settings
}

// ---------------------------------------------------------------------------------------------
// Server log

/// A read handle on `postgres.log`, kept so the tail stays readable even after the watchdog has
/// deleted an ephemeral cluster.
struct LogReader {
    path: PathBuf,
    file: File,
    /// Where this run's output starts.
    start: u64,
}

impl LogReader {
    fn tail(&mut self) -> String {
        let mut buf = Vec::new();
        let read = (|| -> io::Result<()> {
            let end = self.file.seek(SeekFrom::End(0))?;
            let from = end.saturating_sub(LOG_TAIL_BYTES).max(self.start.min(end));
            self.file.seek(SeekFrom::Start(from))?;
            self.file.read_to_end(&mut buf)?;
            Ok(())
        })();
        if let Err(e) = read {
            return format!("(could not read the log: {e})");
        }
        let text = String::from_utf8_lossy(&buf);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        if tail.trim().is_empty() {
            "(empty)".to_string()
        } else {
            tail
        }
    }
}

fn open_log(path: &Path, run_as: &RunAs) -> Result<(File, LogReader), EmbeddedError> {
    if fs::metadata(path).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let _ = fs::rename(path, path.with_extension("log.1"));
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    if run_as.switch {
        std::os::unix::fs::chown(path, Some(run_as.uid), Some(run_as.gid)).map_err(io_err(
            format!("chown {} to {}", path.display(), run_as.name),
        ))?;
    }
    let reader = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let start = reader.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((
        file,
        LogReader {
            path: path.to_path_buf(),
            file: reader,
            start,
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// Connections

fn url_for(socket_dir: &Path, port: u16, db: &str, password: &str) -> String {
    let host = percent_encode(socket_dir.as_os_str().as_bytes());
    let db = percent_encode(db.as_bytes());
    let password = percent_encode(password.as_bytes());
    if port == PORT {
        format!("postgres://{SUPERUSER}:{password}@{host}/{db}")
    } else {
        format!("postgres://{SUPERUSER}:{password}@{host}:{port}/{db}")
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn try_connect(url: &str) -> Result<AsyncPgConnection, String> {
    match tokio::time::timeout(CONNECT_ATTEMPT_TIMEOUT, AsyncPgConnection::establish(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connection attempt timed out".to_string()),
    }
}

#[derive(QueryableByName)]
struct Owner {
    #[diesel(sql_type = diesel::sql_types::Text)]
    owner: String,
}

/// The server's `authd.owner` setting (empty if unset).
async fn server_owner(conn: &mut AsyncPgConnection) -> Result<String, EmbeddedError> {
    use diesel_async::RunQueryDsl;
    let rows: Vec<Owner> = diesel::sql_query(format!(
        "SELECT coalesce(current_setting('{OWNER_SETTING}', true), '') AS owner"
    ))
    .load(conn)
    .await
    .map_err(|source| EmbeddedError::Query {
        context: "identifying the server",
        source,
    })?;
    Ok(rows.into_iter().map(|r| r.owner).next().unwrap_or_default())
}

#[derive(QueryableByName)]
struct Present {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    present: bool,
}

async fn database_exists(conn: &mut AsyncPgConnection) -> Result<bool, EmbeddedError> {
    use diesel_async::RunQueryDsl;
    let rows: Vec<Present> = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS present",
    )
    .bind::<diesel::sql_types::Text, _>(DATABASE)
    .load(conn)
    .await
    .map_err(|source| EmbeddedError::Query {
        context: "checking for the authd database",
        source,
    })?;
    Ok(rows.iter().any(|r| r.present))
}

async fn ensure_database(conn: &mut AsyncPgConnection) -> Result<(), EmbeddedError> {
    use diesel_async::RunQueryDsl;
    if database_exists(conn).await? {
        return Ok(());
    }
    match diesel::sql_query(format!("CREATE DATABASE {DATABASE}"))
        .execute(conn)
        .await
    {
        Ok(_) => {
            tracing::info!("created database {DATABASE}");
            Ok(())
        }
        // Someone else created it in the meantime.
        Err(_) if database_exists(conn).await? => Ok(()),
        Err(source) => Err(EmbeddedError::Query {
            context: "creating the authd database",
            source,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Password authentication

/// Creates `path` with mode 0600 and `contents`, never following a symlink and never reusing an
/// existing file (as root, authd writes into directories the server user owns).
fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), EmbeddedError> {
    use std::io::Write;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(format!("creating {}", path.display())))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_err(format!("writing {}", path.display())))
}

/// Replaces `path` by a new file with `contents` (a temporary file renamed over it, so a symlink at
/// `path` is replaced, not followed), mode 0600 and owner `owner` if given.
fn replace_private_file(
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), EmbeddedError> {
    let tmp = path.with_extension(format!("authd-tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    write_private_file(&tmp, contents)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
            .map_err(io_err(format!("chown {}", tmp.display())))?;
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(format!("replacing {}", path.display()))(e)
    })
}

/// The superuser's password from `<data_dir>/pg_password`; generated (256 random bits, hex) when
/// the file is missing and the cluster does not exist yet or still trusts (see [`hba_trusts`]).
/// The file must be a regular file of the user authd runs as; it is kept at mode 0600.
fn superuser_password(
    data_dir: &Path,
    pgdata: &Path,
    initialized: bool,
) -> Result<String, EmbeddedError> {
    superuser_password_inner(data_dir, pgdata, initialized, false)
}

fn superuser_password_inner(
    data_dir: &Path,
    pgdata: &Path,
    initialized: bool,
    retried: bool,
) -> Result<String, EmbeddedError> {
    let path = data_dir.join(PASSWORD_FILE);
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(mut file) => {
            let meta = file
                .metadata()
                .map_err(io_err(format!("inspecting {}", path.display())))?;
            let me = nix::unistd::geteuid().as_raw();
            if !meta.is_file() || meta.uid() != me {
                return Err(EmbeddedError::DataDirRefused {
                    data_dir: data_dir.to_path_buf(),
                    reason: format!(
                        "{} is not a regular file of the user authd runs as",
                        path.display()
                    ),
                });
            }
            if meta.mode() & 0o077 != 0 {
                file.set_permissions(fs::Permissions::from_mode(0o600))
                    .map_err(io_err(format!("chmod 0600 {}", path.display())))?;
            }
            let mut password = String::new();
            file.read_to_string(&mut password)
                .map_err(io_err(format!("reading {}", path.display())))?;
            let password = password.trim().to_owned();
            if !password.is_empty() {
                return Ok(password);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("opening {}", path.display()))(e)),
    }
    if initialized && !hba_trusts(pgdata)? {
        return Err(EmbeddedError::PasswordMissing {
            file: path,
            pgdata: pgdata.to_path_buf(),
        });
    }
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Published with link(2), which never replaces an existing file: of two processes starting
    // on a new data dir at once, both end up with the first one's password.
    let tmp = path.with_extension(format!("authd-tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    write_private_file(&tmp, format!("{password}\n").as_bytes())?;
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(password),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !retried => {
            superuser_password_inner(data_dir, pgdata, initialized, true)
        }
        Err(e) => Err(io_err(format!("creating {}", path.display()))(e)),
    }
}

/// PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802/7677, 4096 iterations, as
/// PostgreSQL computes it): `SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>`. `password` is
/// ASCII, so SASLprep leaves it as it is.
fn scram_verifier(password: &str) -> Result<String, hmac::digest::InvalidLength> {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    const ITERATIONS: u32 = 4096;
    let hmac = |key: &[u8], parts: &[&[u8]]| {
        // HMAC takes keys of any length: this never fails.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)?;
        for part in parts {
            mac.update(part);
        }
        Ok::<[u8; 32], hmac::digest::InvalidLength>(mac.finalize().into_bytes().into())
    };
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    // Hi(): PBKDF2-HMAC-SHA256, one block.
    let mut u = hmac(password.as_bytes(), &[&salt, &1u32.to_be_bytes()])?;
    let mut salted = u;
    for _ in 1..ITERATIONS {
        u = hmac(password.as_bytes(), &[&u])?;
        for (s, b) in salted.iter_mut().zip(u) {
            *s ^= b;
        }
    }
    let client_key = hmac(&salted, &[b"Client Key"])?;
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, &[b"Server Key"])?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    Ok(format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        b64(&salt),
        b64(&stored_key),
        b64(&server_key)
    ))
}

/// Whether the cluster's `pg_hba.conf` has a `trust` line (a cluster made by an older authd).
fn hba_trusts(pgdata: &Path) -> Result<bool, EmbeddedError> {
    let path = pgdata.join("pg_hba.conf");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
    };
    Ok(text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or_default();
        line.split_whitespace()
            .any(|w| w.eq_ignore_ascii_case("trust"))
    }))
}

/// Moves a `trust` cluster to passwords: sets the superuser's password, rewrites `pg_hba.conf` to
/// [`PG_HBA`] and reloads the configuration. `conn` is a superuser connection made while it still
/// trusted; new connections need the password from then on.
async fn require_passwords(
    conn: &mut AsyncPgConnection,
    pgdata: &Path,
    password: &str,
    run_as: &RunAs,
) -> Result<(), EmbeddedError> {
    use diesel_async::SimpleAsyncConnection;
    // The verifier, not the password, goes over the wire (and into any statement log).
    let verifier = scram_verifier(password)
        .map_err(|e| io_err("computing the password verifier")(io::Error::other(e)))?;
    conn.batch_execute(&format!("ALTER ROLE {SUPERUSER} PASSWORD '{verifier}'"))
        .await
        .map_err(|source| EmbeddedError::Query {
            context: "setting the superuser's password",
            source,
        })?;
    let hba = pgdata.join("pg_hba.conf");
    let owner = run_as.switch.then_some((run_as.uid, run_as.gid));
    replace_private_file(&hba, PG_HBA.as_bytes(), owner)?;
    conn.batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(|source| EmbeddedError::Query {
            context: "reloading the server configuration",
            source,
        })?;
    tracing::warn!(
        pgdata = %pgdata.display(),
        "the embedded PostgreSQL cluster used trust authentication; it now requires the superuser's password (kept in {PASSWORD_FILE} in the data directory)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Attaching to a running server

#[derive(Debug, PartialEq)]
struct PidFile {
    pid: i32,
    port: u16,
    socket_dir: Option<PathBuf>,
}

/// `postmaster.pid`: pid, data dir, start time, port, first socket dir, listen address, ...
fn parse_pid_file(contents: &str) -> Option<PidFile> {
    let lines: Vec<&str> = contents.lines().collect();
    let pid = lines.first()?.trim().parse().ok()?;
    let port = lines
        .get(3)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(PORT);
    let socket_dir = lines
        .get(4)
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .map(PathBuf::from);
    Some(PidFile {
        pid,
        port,
        socket_dir,
    })
}

#[derive(Debug, PartialEq)]
enum ProcState {
    Gone,
    Postgres,
    Other,
}

/// Is `pid` (from `pgdata`'s postmaster.pid) a live postmaster serving `pgdata`?
fn process_state(pid: i32, pgdata: &Path) -> ProcState {
    if pid <= 0 || pid == std::process::id() as i32 {
        return ProcState::Other;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return ProcState::Gone,
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if let Ok(stat) = fs::read_to_string(proc_dir.join("stat"))
        && let Some((_, rest)) = stat.rsplit_once(')')
        && rest.trim_start().starts_with('Z')
    {
        return ProcState::Gone;
    }
    // Unreadable procfs entries (no procfs, another user's process): trust the pid file.
    if let Ok(comm) = fs::read_to_string(proc_dir.join("comm"))
        && !matches!(comm.trim(), "postgres" | "postmaster")
    {
        return ProcState::Other;
    }
    // The postmaster runs with the data directory as its working directory.
    if let Ok(cwd) = fs::read_link(proc_dir.join("cwd")) {
        let pgdata = pgdata
            .canonicalize()
            .unwrap_or_else(|_| pgdata.to_path_buf());
        if cwd != pgdata {
            return ProcState::Other;
        }
    }
    ProcState::Postgres
}

/// If a live server owns `pgdata` and accepts connections on its socket, returns its socket dir,
/// port and a connection to it.
async fn probe_running_server(
    pgdata: &Path,
    password: &str,
) -> Result<Option<(PathBuf, u16, AsyncPgConnection)>, EmbeddedError> {
    let pid_path = pgdata.join("postmaster.pid");
    let contents = match fs::read_to_string(&pid_path) {
        Ok(contents) => contents,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("reading {}", pid_path.display()))(e)),
    };
    let Some(PidFile {
        pid,
        port,
        socket_dir: Some(socket_dir),
    }) = parse_pid_file(&contents)
    else {
        // Being written right now, or a server without a Unix socket: let postgres decide.
        return Ok(None);
    };
    match process_state(pid, pgdata) {
        ProcState::Gone => return Ok(None),
        ProcState::Other => {
            tracing::warn!(pid, pid_file = %pid_path.display(), "removing a stale postmaster.pid: its pid is no longer a postmaster for this cluster");
            let _ = fs::remove_file(&pid_path);
            return Ok(None);
        }
        ProcState::Postgres => {}
    }
    let url = url_for(&socket_dir, port, "postgres", password);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last_error = match try_connect(&url).await {
            Ok(conn) => return Ok(Some((socket_dir, port, conn))),
            Err(e) => e,
        };
        if process_state(pid, pgdata) == ProcState::Gone {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            return Err(EmbeddedError::ExistingServerUnreachable {
                pid,
                pgdata: pgdata.to_path_buf(),
                secs: READY_TIMEOUT.as_secs(),
                last_error,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encodes_socket_dir_into_host() {
        assert_eq!(
            url_for(Path::new("/var/lib/authd/run"), PORT, "authd", "0a1b"),
            "postgres://authd:0a1b@%2Fvar%2Flib%2Fauthd%2Frun/authd"
        );
        assert_eq!(
            url_for(Path::new("/a b/c:d,e"), 5433, "my db", "p@ss:/"),
            "postgres://authd:p%40ss%3A%2F@%2Fa%20b%2Fc%3Ad%2Ce:5433/my%20db"
        );
    }

    #[test]
    fn socket_path_limit() {
        let ok = format!(
            "/{}",
            "a".repeat(MAX_SOCKET_PATH - "/.s.PGSQL.5432".len() - 1)
        );
        assert!(socket_path_fits(Path::new(&ok)));
        assert!(!socket_path_fits(Path::new(&format!("{ok}a"))));
    }

    #[test]
    fn parses_versions() {
        assert_eq!(
            major_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n").as_deref(),
            Some("15")
        );
        assert_eq!(
            major_version("postgres (PostgreSQL) 17beta1").as_deref(),
            Some("17")
        );
        assert_eq!(
            major_version("postgres (PostgreSQL) 9.6.24").as_deref(),
            Some("9.6")
        );
        assert_eq!(major_version("garbage"), None);
    }

    #[test]
    fn parses_pid_file() {
        let pf = "4242\n/var/lib/authd/pgdata\n1700000000\n5432\n/var/lib/authd/run\n\n  1234  5678\nready   \n";
        assert_eq!(
            parse_pid_file(pf),
            Some(PidFile {
                pid: 4242,
                port: 5432,
                socket_dir: Some(PathBuf::from("/var/lib/authd/run")),
            })
        );
        assert_eq!(parse_pid_file(""), None);
        assert_eq!(parse_pid_file("12\n/x\n").map(|p| p.socket_dir), Some(None));
    }

    #[test]
    fn search_permission() {
        // /root: 0700 root:root is closed to postgres (101:104).
        assert!(!can_search(0o40700, 0, 0, 101, 104));
        assert!(can_search(0o40755, 0, 0, 101, 104));
        assert!(can_search(0o40710, 0, 104, 101, 104));
        assert!(can_search(0o40700, 101, 0, 101, 104));
        assert!(!can_search(0o40607, 101, 0, 101, 104));
    }

    #[test]
    fn own_pid_is_not_a_running_postmaster() {
        let here = Path::new("/");
        assert_eq!(
            process_state(std::process::id() as i32, here),
            ProcState::Other
        );
        assert_eq!(process_state(0, here), ProcState::Other);
        assert_eq!(process_state(i32::MAX, here), ProcState::Gone);
    }
}
