//! Attaching to a server that already runs on the cluster (e.g. `authd migrate` while `authd
//! serve` runs): reading `postmaster.pid`, checking that its pid is a live postmaster for this
//! cluster, and connecting to its socket.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use diesel_async::AsyncPgConnection;

use crate::conn::{POLL_INTERVAL, PORT, READY_TIMEOUT, try_connect, url_for};
use crate::error::{EmbeddedError, io_err};

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
pub(crate) async fn probe_running_server(
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
