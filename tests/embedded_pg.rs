//! Integration tests for the embedded PostgreSQL cluster: persistence across restarts, attaching
//! to a running server, clean stop, ephemeral cleanup and no stray server after SIGKILL.

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
    assert!(pg.database_url("authd").starts_with("postgres://authd@%2F"));
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
    assert!(
        url.starts_with("postgres://authd@%2Ftmp%2Fauthd-pg-"),
        "{url}"
    );
    let socket_dir = PathBuf::from(
        url.trim_start_matches("postgres://authd@")
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
