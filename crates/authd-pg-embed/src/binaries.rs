//! Finding the PostgreSQL server binaries (`initdb`, `postgres`): on PATH, via `pg_config
//! --bindir`, or under `/usr/lib/postgresql/*/bin`, and the version matching an existing cluster.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use crate::error::{EmbeddedError, io_err};

/// The two server binaries authd runs, from one installation.
pub(crate) struct Binaries {
    pub(crate) initdb: PathBuf,
    pub(crate) postgres: PathBuf,
}

impl Binaries {
    fn in_dir(dir: &Path) -> Option<Self> {
        let initdb = dir.join("initdb");
        let postgres = dir.join("postgres");
        (is_executable(&initdb) && is_executable(&postgres)).then_some(Self { initdb, postgres })
    }

    pub(crate) fn bindir(&self) -> PathBuf {
        self.postgres
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The cluster's major version must match the server's. On mismatch, use the matching
    /// `/usr/lib/postgresql/<version>/bin` if installed.
    pub(crate) async fn matching_cluster(self, pgdata: &Path) -> Result<Self, EmbeddedError> {
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
pub(crate) async fn find_binaries() -> Result<Binaries, EmbeddedError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
