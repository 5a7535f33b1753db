//! Integration tests for the embedded PostgreSQL cluster: persistence across restarts, attaching
//! to a running server, clean stop, ephemeral cleanup, no stray server after SIGKILL, password
//! authentication (and moving a `trust` cluster to it), and refused data directories.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use authd::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio::io::{AsyncBufReadExt, BufReader};

const CHILD_ENV: &str = "AUTHD_EMBEDDED_PG_TEST_CHILD";
const CHILD_MARKER: &str = "AUTHD_EMBEDDED_PG_DATA_DIR=";

#[derive(QueryableByName)]
struct Note {
    #[diesel(sql_type = diesel::sql_types::Text)]
    body: String,
}

fn persistent(dir: &Path) -> EmbeddedOptions {
    EmbeddedOptions {
        data_dir: dir.to_path_buf(),
        ephemeral: false,
        max_connections: 20,
    }
}

fn ephemeral() -> EmbeddedOptions {
    EmbeddedOptions {
        data_dir: PathBuf::new(),
        ephemeral: true,
        max_connections: 300,
    }
}

async fn connect(pg: &EmbeddedPostgres) -> AsyncPgConnection {
    AsyncPgConnection::establish(&pg.database_url("authd"))
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", pg.database_url("authd")))
}

async fn notes(conn: &mut AsyncPgConnection) -> Vec<String> {
    diesel::sql_query("SELECT body FROM notes ORDER BY body")
        .load::<Note>(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.body)
        .collect()
}

/// Pids of processes whose command line mentions `needle` (the watchdog and the postmaster carry
/// the data dir in theirs), like `pgrep -f`.
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn persists_across_restarts_and_attaches_to_a_running_server() {
    let tmp = tempfile::Builder::new()
        .prefix("authd-pgtest-")
        .tempdir()
        .unwrap();
    let data_dir = tmp.path().join("data");

    let t = Instant::now();
    let pg = EmbeddedPostgres::start(persistent(&data_dir))
        .await
        .unwrap();
    eprintln!("first start (initdb): {:?}", t.elapsed());
    let data_dir = pg.data_dir().to_path_buf();
    assert!(data_dir.join("pgdata/PG_VERSION").is_file());
    assert!(pg.database_url("authd").starts_with("postgres://authd:"));
    let mut conn = connect(&pg).await;
    diesel::sql_query("CREATE TABLE notes (body text NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    diesel::sql_query("INSERT INTO notes VALUES ('kept')")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    assert!(!processes_mentioning(&data_dir).is_empty());
    pg.stop().await.unwrap();
    assert_eq!(processes_mentioning(&data_dir), Vec::<u32>::new());
    assert!(!data_dir.join("pgdata/postmaster.pid").exists());

    let t = Instant::now();
    let pg = EmbeddedPostgres::start(persistent(&data_dir))
        .await
        .unwrap();
    eprintln!("warm start: {:?}", t.elapsed());
    let mut conn = connect(&pg).await;
    assert_eq!(notes(&mut conn).await, ["kept"]);

    // A second instance on the same data dir attaches instead of starting another server...
    let t = Instant::now();
    let attached = EmbeddedPostgres::start(persistent(&data_dir))
        .await
        .unwrap();
    eprintln!("attach: {:?}", t.elapsed());
    assert_eq!(attached.database_url("authd"), pg.database_url("authd"));
    let mut conn2 = connect(&attached).await;
    assert_eq!(notes(&mut conn2).await, ["kept"]);
    drop(conn2);
    // ...and does not stop it.
    attached.stop().await.unwrap();
    assert_eq!(notes(&mut conn).await, ["kept"]);
    drop(conn);

    pg.stop().await.unwrap();
    assert_eq!(processes_mentioning(&data_dir), Vec::<u32>::new());
    assert!(data_dir.join("pgdata/PG_VERSION").is_file());
}

#[tokio::test]
async fn long_data_dir_uses_a_private_socket_dir_under_tmp() {
    let tmp = tempfile::Builder::new()
        .prefix("authd-pgtest-")
        .tempdir()
        .unwrap();
    let data_dir = tmp.path().join("d".repeat(100));

    let pg = EmbeddedPostgres::start(persistent(&data_dir))
        .await
        .unwrap();
    let url = pg.database_url("authd");
    let (_, after_password) = url.split_once('@').unwrap();
    assert!(after_password.starts_with("%2Ftmp%2Fauthd-pg-"), "{url}");
    let socket_dir = PathBuf::from(
        after_password
            .split('/')
            .next()
            .unwrap()
            .replace("%2F", "/")
            .replace("%2D", "-"),
    );
    assert!(socket_dir.is_dir(), "{}", socket_dir.display());
    connect(&pg).await;

    // Attaching finds the socket dir through postmaster.pid.
    let attached = EmbeddedPostgres::start(persistent(&data_dir))
        .await
        .unwrap();
    assert_eq!(attached.database_url("authd"), url);
    attached.stop().await.unwrap();

    pg.stop().await.unwrap();
    assert!(!socket_dir.exists());
    assert_eq!(
        processes_mentioning(pg_data_dir(&data_dir).as_path()),
        Vec::<u32>::new()
    );
}

fn pg_data_dir(data_dir: &Path) -> PathBuf {
    data_dir.canonicalize().unwrap()
}

#[tokio::test]
async fn ephemeral_cluster_is_deleted_at_stop() {
    let t = Instant::now();
    let pg = EmbeddedPostgres::start(ephemeral()).await.unwrap();
    eprintln!("ephemeral start: {:?}", t.elapsed());
    let data_dir = pg.data_dir().to_path_buf();
    assert!(data_dir.starts_with("/tmp"), "{}", data_dir.display());
    let mut conn = connect(&pg).await;
    diesel::sql_query("CREATE TABLE notes (body text NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    assert!(data_dir.join("pgdata").is_dir());

    pg.stop().await.unwrap();
    assert!(!data_dir.exists(), "{} still exists", data_dir.display());
    assert_eq!(processes_mentioning(&data_dir), Vec::<u32>::new());
}

/// Re-executes this test binary as a child that starts an ephemeral cluster and sleeps;
/// SIGKILLs it and checks that the server and its directory go away on their own.
#[tokio::test]
async fn sigkilled_owner_leaves_no_postgres_behind() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let pg = EmbeddedPostgres::start(ephemeral()).await.unwrap();
        println!("{CHILD_MARKER}{}", pg.data_dir().display());
        tokio::time::sleep(Duration::from_secs(120)).await;
        return;
    }

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkilled_owner_leaves_no_postgres_behind",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let data_dir = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest prints "test <name> ... " without a newline before our output.
            if let Some((_, dir)) = line.split_once(CHILD_MARKER) {
                return PathBuf::from(dir);
            }
        }
        panic!("child exited without starting a cluster");
    })
    .await
    .expect("child did not report its data dir in time");
    assert!(data_dir.join("pgdata").is_dir());
    assert!(!processes_mentioning(&data_dir).is_empty());

    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();

    wait_until(
        "the orphaned server is gone",
        Duration::from_secs(10),
        || processes_mentioning(&data_dir).is_empty() && !data_dir.exists(),
    )
    .await;
}

/// `url` without its password.
fn without_password(url: &str) -> String {
    let (scheme_user, rest) = url.split_once("://").unwrap();
    let (userinfo, host) = rest.split_once('@').unwrap();
    let user = userinfo.split(':').next().unwrap();
    format!("{scheme_user}://{user}@{host}")
}

fn hba_methods(pgdata: &Path) -> Vec<String> {
    std::fs::read_to_string(pgdata.join("pg_hba.conf"))
        .unwrap()
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().last().unwrap().to_owned())
        .collect()
}

async fn assert_password_required(pg: &EmbeddedPostgres) {
    let data_dir = pg.data_dir();
    let methods = hba_methods(&data_dir.join("pgdata"));
    assert!(!methods.is_empty());
    assert!(
        methods.iter().all(|m| m == "scram-sha-256"),
        "pg_hba.conf methods: {methods:?}"
    );
    let file = data_dir.join(authd::embedded_pg::PASSWORD_FILE);
    let meta = std::fs::metadata(&file).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.mode() & 0o777, 0o600, "{}", file.display());
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());

    let url = pg.database_url("authd");
    let refused = AsyncPgConnection::establish(&without_password(&url)).await;
    let Err(e) = refused else {
        panic!("a connection without the password was accepted");
    };
    // tokio-postgres: "invalid configuration" (password missing), as the server asked for one.
    eprintln!("without the password: {e:?}");
    let wrong = url.replacen("authd:", "authd:0000", 1);
    let Err(e) = AsyncPgConnection::establish(&wrong).await else {
        panic!("a connection with a wrong password was accepted");
    };
    assert!(
        e.to_string().contains("password authentication failed"),
        "{e}"
    );
    connect(pg).await;
}

#[tokio::test]
async fn the_cluster_requires_a_password() {
    let tmp = tempfile::Builder::new()
        .prefix("authd-pgtest-")
        .tempdir()
        .unwrap();
    let pg = EmbeddedPostgres::start(persistent(&tmp.path().join("data")))
        .await
        .unwrap();
    assert_password_required(&pg).await;
    pg.stop().await.unwrap();

    // The tests' own (ephemeral) clusters too.
    let pg = EmbeddedPostgres::start(ephemeral()).await.unwrap();
    assert_password_required(&pg).await;
    pg.stop().await.unwrap();
}

#[tokio::test]
async fn a_trust_cluster_of_an_older_authd_is_moved_to_passwords() {
    let tmp = tempfile::Builder::new()
        .prefix("authd-pgtest-")
        .tempdir()
        .unwrap();
    let pg = EmbeddedPostgres::start(persistent(&tmp.path().join("data")))
        .await
        .unwrap();
    let data_dir = pg.data_dir().to_path_buf();
    let mut conn = connect(&pg).await;
    diesel::sql_query("CREATE TABLE notes (body text NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    diesel::sql_query("INSERT INTO notes VALUES ('kept')")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    pg.stop().await.unwrap();

    // What an older authd left: trust everywhere, no password file.
    std::fs::write(
        data_dir.join("pgdata/pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    std::fs::remove_file(data_dir.join(authd::embedded_pg::PASSWORD_FILE)).unwrap();

    let pg = EmbeddedPostgres::start(persistent(&data_dir))
        .await
        .unwrap();
    assert_password_required(&pg).await;
    let mut conn = connect(&pg).await;
    assert_eq!(notes(&mut conn).await, ["kept"]);
    drop(conn);
    pg.stop().await.unwrap();

    // And it stays so across restarts.
    let pg = EmbeddedPostgres::start(persistent(&data_dir))
        .await
        .unwrap();
    assert_password_required(&pg).await;
    pg.stop().await.unwrap();
}

#[tokio::test]
async fn a_symlinked_data_dir_is_refused() {
    let tmp = tempfile::Builder::new()
        .prefix("authd-pgtest-")
        .tempdir()
        .unwrap();
    let target = tmp.path().join("someone-elses");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("precious"), "do not touch").unwrap();
    let link = tmp.path().join("data");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let err = EmbeddedPostgres::start(persistent(&link))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("symbolic link") && message.contains(&link.display().to_string()),
        "{message}"
    );
    // Nothing was created or handed over in the target.
    let entries: Vec<_> = std::fs::read_dir(&target).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&target).unwrap().uid(),
        nix::unistd::geteuid().as_raw()
    );
}

#[tokio::test]
async fn a_data_dir_of_another_user_is_refused_unless_empty() {
    use std::os::unix::fs::{MetadataExt, chown};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to give a directory to another user");
        return;
    }
    let Some(nobody) = nix::unistd::User::from_name("nobody").unwrap() else {
        eprintln!("skipped: no `nobody` user");
        return;
    };
    let tmp = tempfile::Builder::new()
        .prefix("authd-pgtest-")
        .tempdir_in("/tmp")
        .unwrap();
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("file"), "theirs").unwrap();
    chown(
        &theirs,
        Some(nobody.uid.as_raw()),
        Some(nobody.gid.as_raw()),
    )
    .unwrap();

    let err = EmbeddedPostgres::start(persistent(&theirs))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("belongs to another user (nobody)"),
        "{message}"
    );
    assert_eq!(
        std::fs::metadata(&theirs).unwrap().uid(),
        nobody.uid.as_raw()
    );

    // An empty directory someone prepared for authd is fine.
    let empty = tmp.path().join("prepared");
    std::fs::create_dir(&empty).unwrap();
    chown(&empty, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).unwrap();
    let pg = EmbeddedPostgres::start(persistent(&empty)).await.unwrap();
    connect(&pg).await;
    pg.stop().await.unwrap();
}
