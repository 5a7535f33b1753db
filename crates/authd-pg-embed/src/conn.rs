//! Connections to the embedded server: the socket path and the connection URL, connecting with
//! a timeout, asking a server who started it, and making sure the `authd` database exists.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::error::EmbeddedError;

/// Port number of the server. It only names the socket file (`.s.PGSQL.5432`) inside our private
/// socket directory; the server listens on no TCP address.
pub(crate) const PORT: u16 = 5432;
/// `sizeof(sockaddr_un.sun_path) - 1` on Linux.
pub(crate) const MAX_SOCKET_PATH: usize = 107;
pub(crate) const SUPERUSER: &str = "authd";
const DATABASE: &str = "authd";
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// A custom server setting carrying a token unique to the starting process.
pub(crate) const OWNER_SETTING: &str = "authd.owner";

pub(crate) fn socket_path_fits(socket_dir: &Path) -> bool {
    socket_dir.as_os_str().len() + format!("/.s.PGSQL.{PORT}").len() <= MAX_SOCKET_PATH
}

pub(crate) fn url_for(socket_dir: &Path, port: u16, db: &str, password: &str) -> String {
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

pub(crate) async fn try_connect(url: &str) -> Result<AsyncPgConnection, String> {
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
pub(crate) async fn server_owner(conn: &mut AsyncPgConnection) -> Result<String, EmbeddedError> {
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

pub(crate) async fn ensure_database(conn: &mut AsyncPgConnection) -> Result<(), EmbeddedError> {
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
}
