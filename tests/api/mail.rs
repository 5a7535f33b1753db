//! The outbox and its delivery (issue I, "Mail that is never lost"), against a real SMTP server on
//! loopback TCP (`authd_testkit::smtp`): delivery over plain SMTP and STARTTLS, an outage with two
//! senders on one database, giving up after the last attempt, the `.eml` default, and the secrets
//! of `AUTHD_SMTP_URL`. The test clock is frozen, so a retry is due only when a test moves it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use authd::api::mail::Mail;
use authd::clock::{Clock, ManualClock};
use authd::config::{Config, Secret};
use authd_testkit::smtp::{SmtpServer, test_certificate};
use authd_testkit::{TestServer, fresh_database, test_config, wait_until};
use chrono::{DateTime, Utc};
use diesel::sql_types::{Bool, Bytea, Int4, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

const MASTER_KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";

#[derive(diesel::QueryableByName, Debug)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    message_id: String,
    #[diesel(sql_type = Int4)]
    attempts: i32,
    #[diesel(sql_type = Bytea)]
    body: Vec<u8>,
    #[diesel(sql_type = Bool)]
    body_sealed: bool,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    sent_time: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    failed_time: Option<DateTime<Utc>>,
}

async fn rows(server: &TestServer) -> Vec<Row> {
    let mut db = server.db().await;
    diesel::sql_query(
        "SELECT id, message_id, attempts, body, body_sealed, last_error, sent_time, failed_time \
         FROM outbox ORDER BY create_time, id",
    )
    .load::<Row>(&mut db)
    .await
    .unwrap()
}

fn mail(to: &str, n: usize) -> Mail {
    Mail {
        to: to.into(),
        kind: "generic".into(),
        context: serde_json::json!({
            "subject": format!("Hello {n}"),
            "text": format!("Message number {n}."),
            "link": format!("https://app.example.test/verify-email?token=secret-{n}"),
        }),
        live_link: true,
    }
}

/// Test settings for a sender that polls often and retries soon (once the clock moves).
fn mail_config(c: &mut Config, smtp_url: Option<String>) {
    c.smtp_url = smtp_url.map(Secret::new);
    c.mail_from = "authd <noreply@example.test>".into();
    c.mail_poll_interval = Duration::from_millis(50);
    c.mail_retry_base = Duration::from_millis(100);
}

#[tokio::test]
async fn a_queued_message_is_delivered_over_smtp() {
    let smtp = SmtpServer::start().await;
    let url = smtp.url();
    let server = TestServer::start_with(|c| mail_config(c, Some(url))).await;
    let id = server
        .svc
        .queue_mail(&mail("alice@example.test", 1))
        .await
        .unwrap();

    wait_until("the message arrives", Duration::from_secs(20), || async {
        smtp.received().len() == 1
    })
    .await;
    let got = &smtp.received()[0];
    assert_eq!(got.mail_from, "noreply@example.test");
    assert_eq!(got.rcpt_to, ["alice@example.test"]);
    assert!(!got.tls);
    assert_eq!(got.header("Subject").as_deref(), Some("Hello 1"));
    assert_eq!(got.header("To").as_deref(), Some("alice@example.test"));
    assert!(got.header("From").unwrap().contains("noreply@example.test"));
    assert_eq!(
        got.header("Message-ID"),
        Some(format!("<{id}@example.test>"))
    );
    assert!(
        got.header("Content-Type")
            .unwrap()
            .contains("multipart/alternative")
    );
    assert!(got.data.contains("text/plain") && got.data.contains("text/html"));
    assert!(got.data.contains("Message number 1."));
    assert!(got.data.contains("secret-1"));

    // Sent: recorded, and the body that held a live link is blanked.
    wait_until(
        "the row is marked sent",
        Duration::from_secs(10),
        || async { rows(&server).await[0].sent_time.is_some() },
    )
    .await;
    let row = &rows(&server).await[0];
    assert_eq!(row.id, id);
    assert_eq!(row.message_id, format!("<{id}@example.test>"));
    assert_eq!(row.attempts, 1);
    assert!(row.body.is_empty());
    assert_eq!(smtp.received().len(), 1, "sent once");
    server.stop().await;
}

#[tokio::test]
async fn starttls_with_a_test_certificate_and_a_sealed_body() {
    let (cert, key) = test_certificate();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let smtp = SmtpServer::start_tls(&cert, &key).await;
    let url = smtp.url();
    assert!(url.contains("tls=required"));
    let server = TestServer::start_with(|c| {
        mail_config(c, Some(url));
        c.smtp_ca = Some(ca);
        c.master_key = Some(MASTER_KEY.into());
        // No delivery before the test has looked at the stored row.
        c.mail_poll_interval = Duration::from_secs(3600);
    })
    .await;
    let mut db = server.db().await;
    let id = server
        .svc
        .mailer()
        .queue(&mut db, &mail("bob@example.test", 2), server.clock.now())
        .await
        .unwrap();
    let stored = &rows(&server).await[0];
    assert_eq!(stored.id, id);
    assert!(stored.body_sealed, "a body with a live link is sealed");
    assert!(!String::from_utf8_lossy(&stored.body).contains("secret-2"));
    server.svc.mailer().wake();

    wait_until(
        "the message arrives over TLS",
        Duration::from_secs(20),
        || async { smtp.received().len() == 1 },
    )
    .await;
    let got = &smtp.received()[0];
    assert!(got.tls, "delivered after STARTTLS");
    assert!(got.data.contains("secret-2"));
    assert_eq!(
        got.header("Message-ID"),
        Some(format!("<{id}@example.test>"))
    );
    wait_until("blanked once sent", Duration::from_secs(10), || async {
        let r = &rows(&server).await[0];
        r.sent_time.is_some() && r.body.is_empty()
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn starttls_refuses_a_server_it_does_not_trust() {
    let (cert, key) = test_certificate();
    let smtp = SmtpServer::start_tls(&cert, &key).await;
    let url = smtp.url();
    let server = TestServer::start_with(|c| mail_config(c, Some(url))).await;
    server
        .svc
        .queue_mail(&mail("eve@example.test", 3))
        .await
        .unwrap();
    wait_until("the attempt fails", Duration::from_secs(20), || async {
        rows(&server).await[0].last_error.is_some()
    })
    .await;
    assert!(smtp.received().is_empty());
    let row = &rows(&server).await[0];
    assert!(row.sent_time.is_none() && row.failed_time.is_none());
    server.stop().await;
}

/// The SMTP server is down (connection refused) while two replicas queue mail on one database;
/// once it is back, every message is delivered exactly once.
#[tokio::test]
async fn an_outage_delays_mail_and_loses_none_with_two_senders() {
    // A free port with nothing listening on it.
    let addr = SmtpServer::start().await.stop_and_addr().await;
    let url = format!("smtp://127.0.0.1:{}", addr.port());
    let db_url = fresh_database().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let config = |url: &str| {
        let mut c = test_config(&db_url);
        mail_config(&mut c, Some(url.to_owned()));
        c
    };
    let a = TestServer::start_on(config(&url), clock.clone()).await;
    let b = TestServer::start_on(config(&url), clock.clone()).await;

    const N: usize = 12;
    for n in 0..N {
        let replica = if n % 2 == 0 { &a } else { &b };
        replica
            .svc
            .queue_mail(&mail(&format!("user{n}@example.test"), n))
            .await
            .unwrap();
    }
    // Every message is tried, refused, and waits.
    wait_until(
        "every message tried once",
        Duration::from_secs(20),
        || async {
            let r = rows(&a).await;
            r.len() == N && r.iter().all(|r| r.attempts == 1 && r.last_error.is_some())
        },
    )
    .await;
    assert!(
        rows(&a)
            .await
            .iter()
            .all(|r| r.sent_time.is_none() && r.failed_time.is_none())
    );

    // The mail server comes back; time moves past the backoff.
    let smtp = SmtpServer::start_on(addr, None).await;
    wait_until(
        "every message delivered",
        Duration::from_secs(30),
        || async {
            clock.advance(chrono::Duration::seconds(1));
            rows(&a).await.iter().all(|r| r.sent_time.is_some())
        },
    )
    .await;
    // More rounds, more time: nothing is sent again.
    for _ in 0..10 {
        clock.advance(chrono::Duration::seconds(10));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let got = smtp.received();
    assert_eq!(got.len(), N, "each message delivered once");
    let ids: HashSet<String> = got.iter().filter_map(|m| m.header("Message-ID")).collect();
    assert_eq!(ids.len(), N);
    let stored: HashSet<String> = rows(&a).await.into_iter().map(|r| r.message_id).collect();
    assert_eq!(ids, stored);
    let rcpts: HashSet<String> = got.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    assert_eq!(rcpts.len(), N);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_last_failed_attempt_marks_the_message_failed() {
    let addr = SmtpServer::start().await.stop_and_addr().await;
    let url = format!("smtp://127.0.0.1:{}", addr.port());
    let server = TestServer::start_with(|c| {
        mail_config(c, Some(url));
        c.mail_max_attempts = 3;
    })
    .await;
    let metrics = authd::metrics::install_recorder();
    server
        .svc
        .queue_mail(&mail("carol@example.test", 4))
        .await
        .unwrap();
    wait_until(
        "the message is given up",
        Duration::from_secs(30),
        || async {
            server.clock.advance(chrono::Duration::seconds(1));
            rows(&server).await[0].failed_time.is_some()
        },
    )
    .await;
    let row = &rows(&server).await[0];
    assert_eq!(row.attempts, 3);
    assert!(row.sent_time.is_none());
    assert!(!row.last_error.as_deref().unwrap_or("").is_empty());
    assert!(
        row.body.is_empty(),
        "a failed message's live link is blanked"
    );
    let text = metrics.render();
    let failed = text
        .lines()
        .find(|l| l.starts_with("authd_mail_failed_total"))
        .expect("the failed counter");
    let value: f64 = failed.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= 1.0, "{failed}");
    server.stop().await;
}

#[tokio::test]
async fn without_an_smtp_url_mail_is_written_as_eml_files() {
    let dir = tempfile::tempdir().unwrap();
    let mail_dir = dir.path().join("mail");
    let server = TestServer::start_with(|c| {
        mail_config(c, None);
        c.mail_dir = Some(mail_dir.clone());
    })
    .await;
    let id = server
        .svc
        .queue_mail(&mail("dave@example.test", 5))
        .await
        .unwrap();
    let path = mail_dir.join(format!("{id}.eml"));
    wait_until(
        "the .eml file is written",
        Duration::from_secs(20),
        || async { path.exists() },
    )
    .await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(&format!("Message-ID: <{id}@example.test>")),
        "{text}"
    );
    assert!(text.contains("Subject: Hello 5"));
    assert!(text.contains("secret-5"));
    wait_until(
        "the row is marked sent",
        Duration::from_secs(10),
        || async { rows(&server).await[0].sent_time.is_some() },
    )
    .await;
    server.stop().await;
}

#[test]
fn the_smtp_url_password_stays_out_of_debug() {
    let mut c = test_config("postgres://localhost/x");
    c.smtp_url = Some(Secret::new(
        "smtp://mailer:hunter2-pass@mail.example.test:587?tls=required".into(),
    ));
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2-pass"), "{shown}");
    assert!(shown.contains("mail.example.test"));
}

#[tokio::test]
async fn sent_messages_are_pruned_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|c| {
        mail_config(c, None);
        c.mail_dir = Some(dir.path().to_path_buf());
        c.mail_retention = Duration::from_secs(3600);
    })
    .await;
    let id = server
        .svc
        .queue_mail(&mail("frank@example.test", 6))
        .await
        .unwrap();
    wait_until("sent", Duration::from_secs(20), || async {
        rows(&server).await[0].sent_time.is_some()
    })
    .await;
    assert_eq!(
        server.svc.mail_housekeeping(true).await.unwrap(),
        0,
        "kept within the retention"
    );
    server.clock.advance(chrono::Duration::hours(2));
    assert_eq!(server.svc.mail_housekeeping(true).await.unwrap(), 1);
    assert!(rows(&server).await.iter().all(|r| r.id != id));
    server.stop().await;
}
