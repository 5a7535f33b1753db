//! Creating a cluster with `initdb` (into a staging directory renamed when complete, so that an
//! interrupted initdb leaves nothing half-made) and the settings the server is started with.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use crate::auth::write_private_file;
use crate::binaries::Binaries;
use crate::conn::{PORT, SUPERUSER};
use crate::datadir::RunAs;
use crate::error::{EmbeddedError, io_err};

/// initdb writes into `<data_dir>/pgdata.init-<pid>`, renamed to `pgdata` when complete.
const STAGING_PREFIX: &str = "pgdata.init-";

/// Runs initdb into `pgdata.init` and renames it to `pgdata`, so that a killed initdb never leaves
/// a half-initialized cluster behind.
pub(crate) async fn init_cluster(
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

pub(crate) fn server_settings(
    socket_dir: &Path,
    max_connections: u32,
    ephemeral: bool,
) -> Vec<String> {
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
