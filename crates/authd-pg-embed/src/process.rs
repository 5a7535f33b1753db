//! The server process: the `sh` watchdog that shuts the server down when authd goes away, waiting
//! until the server we started accepts connections, and the server log (`postgres.log`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diesel_async::AsyncPgConnection;
use tokio::process::{Child, ChildStdin};

use crate::conn::{POLL_INTERVAL, READY_TIMEOUT, server_owner, try_connect};
use crate::datadir::RunAs;
use crate::error::{EmbeddedError, io_err};

pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// `postgres.log` is moved aside to `postgres.log.1` at start once it grows beyond this.
const LOG_ROTATE_BYTES: u64 = 16 << 20;
const LOG_TAIL_BYTES: u64 = 4096;
const LOG_TAIL_LINES: usize = 25;

/// The watchdog, run as `sh -c WATCHDOG_SCRIPT authd-pg-watchdog <postgres> <args>...`.
///
/// Its stdin is a pipe whose only write end is held by authd. The server is started in the
/// background; a reader subshell blocks on the pipe and, at EOF, requests a fast shutdown (SIGINT).
/// The main shell waits for the server (also when it exits on its own), then removes
/// `$AUTHD_PG_REMOVE` (ephemeral clusters) and `$AUTHD_PG_RMDIR` (fallback socket dir) if set.
/// Termination signals sent to the watchdog itself are forwarded as a fast shutdown as well.
pub(crate) const WATCHDOG_SCRIPT: &str = r#"
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

pub(crate) struct Watchdog {
    pub(crate) child: Child,
    /// Closing this pipe tells the watchdog to shut the server down.
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) log: LogReader,
}

/// Polls until the server accepts connections on `url`; fails early if the watchdog exits.
///
/// A server that answers but was not started by us (another process won a race to start the same
/// cluster) does not count: ours then exits shortly, and the caller attaches instead.
pub(crate) async fn wait_ready(
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

/// A read handle on `postgres.log`, kept so the tail stays readable even after the watchdog has
/// deleted an ephemeral cluster.
pub(crate) struct LogReader {
    pub(crate) path: PathBuf,
    file: File,
    /// Where this run's output starts.
    start: u64,
}

impl LogReader {
    pub(crate) fn tail(&mut self) -> String {
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

pub(crate) fn open_log(path: &Path, run_as: &RunAs) -> Result<(File, LogReader), EmbeddedError> {
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
