//! Password authentication: the superuser's password in `<data_dir>/pg_password` (generated at
//! the first start), the private files it and `pg_hba.conf` are written to, and moving a cluster
//! made with `trust` by an older authd over to SCRAM passwords.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use diesel_async::AsyncPgConnection;

use crate::conn::SUPERUSER;
use crate::datadir::RunAs;
use crate::error::{EmbeddedError, io_err};

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

/// Creates `path` with mode 0600 and `contents`, never following a symlink and never reusing an
/// existing file (as root, authd writes into directories the server user owns).
pub(crate) fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), EmbeddedError> {
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
pub(crate) fn superuser_password(
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
pub(crate) fn hba_trusts(pgdata: &Path) -> Result<bool, EmbeddedError> {
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
pub(crate) async fn require_passwords(
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
