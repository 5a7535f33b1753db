//! Shared by the test binaries (included with `#[path]`): one private PostgreSQL cluster per test
//! process (the same `embedded_pg` module the server uses), a template database with the migrations
//! applied once, and a fresh copy of it for each test.

#![allow(dead_code)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use authd::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

pub const TEMPLATE_DB: &str = "authd_template";
const DB_PLACEHOLDER: &str = "__authd_db__";

struct Cluster {
    url_template: String,
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
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
                authd::db::run_migrations(&template.replace(DB_PLACEHOLDER, TEMPLATE_DB))
                    .await
                    .expect("migrate template database");
                tx.send(template).expect("hand over cluster url");
                // Keep `pg` alive for the life of the process.
                std::future::pending::<()>().await;
                drop(pg);
            });
        });
        Cluster {
            url_template: rx.recv().expect("test cluster failed to start"),
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
    let url = db_url(&name);
    (name, url)
}
