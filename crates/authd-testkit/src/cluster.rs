//! The test cluster: one private PostgreSQL cluster per test
//! process (the same `embedded_pg` module the server uses), a template database with the migrations
//! applied once, and a fresh copy of it for each test. A test's databases are dropped when its
//! thread ends (libtest runs each test on a thread of its own), so a run's disk use stays at about
//! one database per test running at once rather than one per test.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use authd::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

pub const TEMPLATE_DB: &str = "authd_template";
const DB_PLACEHOLDER: &str = "__authd_db__";

struct Cluster {
    url_template: String,
    /// Names of databases whose test has ended, for the cluster thread to drop.
    finished: tokio::sync::mpsc::UnboundedSender<String>,
}

/// The databases created on this thread; dropping the list (at thread exit) hands them to the
/// cluster thread to drop.
struct ThreadDatabases(Vec<String>);

impl Drop for ThreadDatabases {
    fn drop(&mut self) {
        if let Some(c) = CLUSTER.get() {
            for name in self.0.drain(..) {
                // The cluster thread is gone only when the process is exiting.
                let _ = c.finished.send(name);
            }
        }
    }
}

thread_local! {
    static THREAD_DATABASES: RefCell<ThreadDatabases> = const { RefCell::new(ThreadDatabases(Vec::new())) };
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// Drops the databases of finished tests, forcing off any connection a test left behind.
async fn drop_finished(
    admin_url: String,
    mut finished: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    while let Some(name) = finished.recv().await {
        if let Ok(mut admin) = AsyncPgConnection::establish(&admin_url).await {
            // Best effort: a database left behind goes with the cluster at process exit.
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await;
        }
    }
}

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let (finished_tx, finished_rx) = tokio::sync::mpsc::unbounded_channel();
        // The cluster lives on a thread of its own, with its own runtime, for the whole process. The
        // embedded module's watchdog stops it when the test process exits.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("cluster runtime");
            rt.block_on(async move {
                let pg = EmbeddedPostgres::start(EmbeddedOptions {
                    data_dir: std::env::temp_dir(),
                    ephemeral: true,
                    max_connections: 400,
                })
                .await
                .expect("start the test PostgreSQL cluster");
                let template = pg.database_url(DB_PLACEHOLDER);
                let mut admin = AsyncPgConnection::establish(&pg.database_url("postgres"))
                    .await
                    .expect("connect to the test cluster");
                diesel::sql_query(format!("CREATE DATABASE {TEMPLATE_DB}"))
                    .execute(&mut admin)
                    .await
                    .expect("create template database");
                authd::server::run_migrations(&template.replace(DB_PLACEHOLDER, TEMPLATE_DB))
                    .await
                    .expect("migrate template database");
                tx.send(template).expect("hand over cluster url");
                // Runs for the life of the process, keeping `pg` alive.
                drop_finished(pg.database_url("postgres"), finished_rx).await;
                std::future::pending::<()>().await;
                drop(pg);
            });
        });
        Cluster {
            url_template: rx.recv().expect("test cluster failed to start"),
            finished: finished_tx,
        }
    })
}

/// The URL of database `name` in the test cluster.
pub fn db_url(name: &str) -> String {
    cluster().url_template.replace(DB_PLACEHOLDER, name)
}

/// A fresh database, copied from the migrated template.
pub async fn fresh_database() -> String {
    fresh_named_database().await.1
}

/// A fresh database, copied from the migrated template: its name and URL.
pub async fn fresh_named_database() -> (String, String) {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = AsyncPgConnection::establish(&db_url("postgres"))
        .await
        .expect("connect to the test cluster");
    let mut attempt = 0;
    loop {
        match diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"))
            .execute(&mut admin)
            .await
        {
            Ok(_) => break,
            // Another CREATE DATABASE may be copying the template at this very moment.
            Err(e) if attempt < 50 && e.to_string().contains("being accessed by other users") => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create test database: {e}"),
        }
    }
    // Dropped when this thread ends. A thread that is already exiting keeps its database.
    let _ = THREAD_DATABASES.try_with(|d| d.borrow_mut().0.push(name.clone()));
    let url = db_url(&name);
    (name, url)
}

/// A connection to the database at `url` (a test's own database, or the cluster's `postgres`).
pub async fn connect_db(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url)
        .await
        .expect("connect to the test database")
}
