//! The data directory and the user the server runs as: the default data dir, refusing a symlinked
//! data dir or another user's non-empty one, checking that the server user can reach it, and
//! handing private directories to the `postgres` system user when authd runs as root.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::conn::socket_path_fits;
use crate::error::{EmbeddedError, io_err};

const SYSTEM_USER: &str = "postgres";
/// The only environment variables passed on to `initdb` and the server (authd's environment may
/// hold secrets, and the server may run as another user).
const PASSED_ENV: &[&str] = &["PATH", "TZ", "TZDIR"];

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

/// Who runs `initdb` and `postgres`: the `postgres` system user when we are root, else ourselves.
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) name: String,
    /// We are root and must switch to `uid`/`gid` for the server.
    pub(crate) switch: bool,
}

impl RunAs {
    pub(crate) fn detect() -> Result<Self, EmbeddedError> {
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
    pub(crate) fn apply(&self, cmd: &mut Command) {
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
    pub(crate) fn own_private_dir(&self, dir: &Path) -> Result<(), EmbeddedError> {
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
    pub(crate) fn check_traversable(
        &self,
        dir: &Path,
        data_dir: &Path,
    ) -> Result<(), EmbeddedError> {
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
pub(crate) fn prepare_data_dir(data_dir: &Path, run_as: &RunAs) -> Result<PathBuf, EmbeddedError> {
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

pub(crate) fn make_private_dir(dir: &Path) -> Result<(), EmbeddedError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io_err(format!("creating {}", dir.display()))(e)),
    }
}

/// `$TMPDIR` (usually `/tmp`) if the server user can reach it and the socket path stays short
/// enough, else `/tmp`.
pub(crate) fn ephemeral_parent(run_as: &RunAs) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_permission() {
        // /root: 0700 root:root is closed to postgres (101:104).
        assert!(!can_search(0o40700, 0, 0, 101, 104));
        assert!(can_search(0o40755, 0, 0, 101, 104));
        assert!(can_search(0o40710, 0, 104, 101, 104));
        assert!(can_search(0o40700, 101, 0, 101, 104));
        assert!(!can_search(0o40607, 101, 0, 101, 104));
    }
}
