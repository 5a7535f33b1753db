//! E-mail verification (issue I): the link Register mails (over a real SMTP server on loopback,
//! and as an `.eml` file by default), VerifyEmail's single use under concurrency, ResendVerification
//! (no login, the same answer and work for every address, at most 3 live links, the per-IP and
//! per-address limits), AUTHD_REQUIRE_VERIFIED_EMAIL, and verified admins.

use std::time::Duration;

use authd::clock::Clock;
use authd::config::{Config, Secret};
use authd::proto;
use authd_testkit::mailbox::{eml_tokens, received_for, smtp_tokens, unfold_qp, wait_smtp_tokens};
use authd_testkit::smtp::SmtpServer;
use authd_testkit::*;
use chrono::Duration as ChronoDuration;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use tonic::{Code, Request};

const BASE: &str = "https://app.example.test/auth";
const TOKEN_ERROR: &str = "invalid, used or expired token";

fn with_smtp(c: &mut Config, url: String) {
    c.smtp_url = Some(Secret::new(url));
    c.mail_from = "authd <noreply@example.test>".into();
    c.mail_poll_interval = Duration::from_millis(50);
    c.link_base_url = BASE.into();
}

async fn smtp_server(f: impl FnOnce(&mut Config)) -> (SmtpServer, TestServer) {
    let smtp = SmtpServer::start().await;
    let url = smtp.url();
    let srv = TestServer::start_with(|c| {
        with_smtp(c, url);
        f(c);
    })
    .await;
    (smtp, srv)
}

async fn count_sql(srv: &TestServer, sql: &str, bind: &str) -> i64 {
    diesel::sql_query(sql)
        .bind::<Text, _>(bind)
        .get_result::<Count>(&mut srv.db().await)
        .await
        .expect("count")
        .n
}

async fn live_verify_tokens(srv: &TestServer, user_id: &str) -> i64 {
    count_sql(
        srv,
        "SELECT count(*) AS n FROM account_tokens WHERE user_id = $1::uuid \
         AND purpose = 'verify_email' AND use_time IS NULL AND void_time IS NULL \
         AND expire_time > now() - interval '1 day'",
        user_id,
    )
    .await
}

async fn audit_count(srv: &TestServer, user_id: &str, kind: &str) -> i64 {
    diesel::sql_query(
        "SELECT count(*) AS n FROM audit_events WHERE user_id = $1::uuid AND kind = $2",
    )
    .bind::<Text, _>(user_id)
    .bind::<Text, _>(kind)
    .get_result::<Count>(&mut srv.db().await)
    .await
    .expect("count")
    .n
}

fn resend(email: &str) -> proto::ResendVerificationRequest {
    proto::ResendVerificationRequest {
        email: email.into(),
    }
}

#[track_caller]
fn expect_bad_token<T: std::fmt::Debug>(r: Result<T, tonic::Status>) {
    let s = expect_code(r, Code::Unauthenticated);
    assert_eq!(s.message(), TOKEN_ERROR);
    assert_eq!(reason(&s).as_deref(), Some("ACCOUNT_TOKEN_INVALID"));
}

async fn get_user(srv: &TestServer, admin: &str, id: &str) -> proto::User {
    srv.users()
        .await
        .get_user(with_bearer(
            proto::GetUserRequest { user_id: id.into() },
            admin,
        ))
        .await
        .expect("GetUser")
        .into_inner()
}

#[tokio::test]
async fn register_mails_a_single_use_link_that_verifies_the_address() {
    let (smtp, srv) = smtp_server(|_| {}).await;
    let admin = srv.admin_session().await;
    let email = unique_email();
    let user = srv.register(&email, PASSWORD).await;
    assert!(!user.email_verified);
    assert!(user.email_verify_time.is_none());

    let tokens = wait_smtp_tokens(&smtp, &email, "verify-email", 1).await;
    let mail = &received_for(&smtp, &email)[0];
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("Verify your e-mail address")
    );
    assert!(
        unfold_qp(&mail.data).contains(&format!("{BASE}/verify-email?token={}", tokens[0])),
        "{}",
        mail.data
    );
    // Only the hash is stored.
    assert_eq!(
        count_sql(
            &srv,
            "SELECT count(*) AS n FROM account_tokens WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
            &tokens[0]
        )
        .await,
        1
    );

    srv.clock.advance(ChronoDuration::minutes(5));
    let verified = verify_email(&srv, &tokens[0]).await.expect("VerifyEmail");
    assert_eq!(verified.id, user.id);
    assert!(verified.email_verified);
    let at = verified.email_verify_time.expect("verify time");
    assert_eq!(at.seconds, srv.clock.now().timestamp());

    // GetMe, GetUser and ListUsers show it.
    let pair = srv.login(&email, PASSWORD).await;
    let me = get_me(&srv, &pair.access_token).await.expect("GetMe");
    assert!(me.email_verified && me.email_verify_time == Some(at));
    let u = get_user(&srv, &admin.access_token, &user.id).await;
    assert!(u.email_verified && u.email_verify_time == Some(at));
    let listed = srv
        .users()
        .await
        .list_users(with_bearer(
            proto::ListUsersRequest {
                query: email.clone(),
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .expect("ListUsers")
        .into_inner();
    assert!(listed.users[0].email_verified);
    assert_eq!(audit_count(&srv, &user.id, "EMAIL_VERIFIED").await, 1);

    // Used, unknown, and expired tokens: one answer.
    expect_bad_token(verify_email(&srv, &tokens[0]).await);
    expect_bad_token(verify_email(&srv, "ev_not-a-real-token").await);
    let other = unique_email();
    srv.register(&other, PASSWORD).await;
    let other_token = wait_smtp_tokens(&smtp, &other, "verify-email", 1).await;
    srv.clock
        .advance(ChronoDuration::hours(24) + ChronoDuration::seconds(1));
    expect_bad_token(verify_email(&srv, &other_token[0]).await);
    // Malformed input is INVALID_ARGUMENT.
    expect_code(verify_email(&srv, "").await, Code::InvalidArgument);
    expect_code(
        verify_email(&srv, &"x".repeat(129)).await,
        Code::InvalidArgument,
    );
    srv.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_verifications_with_one_token_succeed_once() {
    let (smtp, srv) = smtp_server(|_| {}).await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let token = wait_smtp_tokens(&smtp, &email, "verify-email", 1).await[0].clone();
    let calls = (0..20).map(|_| {
        let srv = &srv;
        let token = token.clone();
        async move { verify_email(srv, &token).await }
    });
    let results = authd_testkit::join_all(calls).await;
    let codes = Codes::of(results);
    assert_eq!(codes.count(Code::Ok), 1, "{codes:?}");
    assert_eq!(codes.count(Code::Unauthenticated), 19, "{codes:?}");
    srv.stop().await;
}

#[tokio::test]
async fn resend_needs_no_login_and_answers_every_address_alike() {
    let (smtp, srv) = smtp_server(|_| {}).await;
    let unverified = unique_email();
    srv.register(&unverified, PASSWORD).await;
    wait_smtp_tokens(&smtp, &unverified, "verify-email", 1).await;
    let verified = unique_email();
    srv.register(&verified, PASSWORD).await;
    let t = wait_smtp_tokens(&smtp, &verified, "verify-email", 1).await;
    verify_email(&srv, &t[0]).await.expect("verify");
    let unknown = unique_email();

    // No bearer token: every address gets the same empty OK.
    for email in [&unverified, &verified, &unknown] {
        resend_verification(&srv, Request::new(resend(email)))
            .await
            .unwrap_or_else(|s| panic!("{email}: {s:?}"));
    }
    // The same work for each: one request row each, whatever the address.
    assert_eq!(
        count_sql(
            &srv,
            "SELECT count(*) AS n FROM verification_requests WHERE client = $1",
            "127.0.0.1"
        )
        .await,
        3
    );
    // Only the unverified account gets a new link, from the background job.
    wait_smtp_tokens(&smtp, &unverified, "verify-email", 2).await;
    wait_until("the requests are handled", Duration::from_secs(20), || async {
        count_sql(
            &srv,
            "SELECT count(*) AS n FROM verification_requests WHERE process_time IS NULL AND client = $1",
            "127.0.0.1",
        )
        .await
            == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp_tokens(&smtp, &verified, "verify-email").len(), 1);
    assert!(received_for(&smtp, &unknown).is_empty());
    // Malformed addresses are INVALID_ARGUMENT (that reveals nothing about accounts).
    expect_code(
        resend_verification(&srv, resend("not-an-address")).await,
        Code::InvalidArgument,
    );
    expect_code(
        resend_verification(&srv, resend(&format!("{}@example.test", "a".repeat(250)))).await,
        Code::InvalidArgument,
    );
    srv.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_resends_leave_at_most_three_live_links_and_void_none() {
    let (smtp, srv) = smtp_server(|c| {
        c.verify_resend_per_address = 0;
        c.verify_resend_per_ip = 0;
    })
    .await;
    let email = unique_email();
    let user = srv.register(&email, PASSWORD).await;
    let first = wait_smtp_tokens(&smtp, &email, "verify-email", 1).await[0].clone();

    let calls = (0..20).map(|_| {
        let srv = &srv;
        let email = email.clone();
        async move { resend_verification(srv, resend(&email)).await }
    });
    let codes = Codes::of(authd_testkit::join_all(calls).await);
    assert_eq!(codes.count(Code::Ok), 20, "{codes:?}");
    wait_until("the requests are handled", Duration::from_secs(20), || async {
        count_sql(
            &srv,
            "SELECT count(*) AS n FROM verification_requests WHERE process_time IS NULL AND client = $1",
            "127.0.0.1",
        )
        .await
            == 0
    })
    .await;
    assert_eq!(live_verify_tokens(&srv, &user.id).await, 3);
    let tokens = wait_smtp_tokens(&smtp, &email, "verify-email", 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp_tokens(&smtp, &email, "verify-email").len(), 3);
    assert_eq!(tokens[0], first);
    // The owner's first link still works: a new link voids none.
    let v = verify_email(&srv, &first).await.expect("the first link");
    assert!(v.email_verified);
    // Once verified, the other links are spent.
    expect_bad_token(verify_email(&srv, &tokens[1]).await);
    srv.stop().await;
}

#[tokio::test]
async fn resend_is_limited_per_address_and_per_ip() {
    let (_smtp, srv) = smtp_server(|c| {
        behind_proxy(c);
        c.verify_resend_per_address = 2;
        c.verify_resend_per_ip = 3;
    })
    .await;
    let known = unique_email();
    srv.register(&known, PASSWORD).await;
    let unknown = unique_email();

    // Per address, from different clients, known or not: the third within the hour waits.
    for email in [&known, &unknown] {
        for ip in ["198.51.100.1", "198.51.100.2"] {
            resend_verification(&srv, from_ip(resend(email), ip))
                .await
                .expect("within the limit");
        }
        let s = expect_code(
            resend_verification(&srv, from_ip(resend(email), "198.51.100.3")).await,
            Code::ResourceExhausted,
        );
        let after: u64 = s
            .metadata()
            .get("retry-after")
            .expect("retry-after")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((3590..=3600).contains(&after), "{after}");
    }

    // Per client: three requests (for any addresses), then the fourth waits.
    for _ in 0..3 {
        resend_verification(&srv, from_ip(resend(&unique_email()), "203.0.113.9"))
            .await
            .expect("within the per-IP limit");
    }
    let s = expect_code(
        resend_verification(&srv, from_ip(resend(&unique_email()), "203.0.113.9")).await,
        Code::ResourceExhausted,
    );
    assert!(s.metadata().get("retry-after").is_some());
    // Another client is not held up.
    resend_verification(&srv, from_ip(resend(&unique_email()), "203.0.113.10"))
        .await
        .expect("another client");

    // An hour later both limits have room again.
    srv.clock.advance(ChronoDuration::minutes(61));
    resend_verification(&srv, from_ip(resend(&known), "203.0.113.9"))
        .await
        .expect("after the window");
    srv.stop().await;
}

#[tokio::test]
async fn require_verified_email_refuses_only_the_right_password() {
    let (smtp, srv) = smtp_server(|c| c.require_verified_email = true).await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;

    // A wrong password gets exactly today's answer: nothing is revealed before the check.
    let wrong = expect_code(
        try_login(&srv, login_email(&email, "wrong password 123")).await,
        Code::Unauthenticated,
    );
    let unknown = expect_code(
        try_login(&srv, login_email(&unique_email(), "wrong password 123")).await,
        Code::Unauthenticated,
    );
    assert_eq!(wrong.message(), unknown.message());
    assert_eq!(reason(&wrong), reason(&unknown));
    assert_eq!(reason(&wrong).as_deref(), Some("INVALID_CREDENTIALS"));

    // The right password: FAILED_PRECONDITION with its reason.
    let s = expect_code(
        try_login(&srv, login_email(&email, PASSWORD)).await,
        Code::FailedPrecondition,
    );
    assert_eq!(s.message(), "email not verified");
    assert_eq!(reason(&s).as_deref(), Some("EMAIL_NOT_VERIFIED"));

    // Verified: the login works.
    let token = wait_smtp_tokens(&smtp, &email, "verify-email", 1).await;
    verify_email(&srv, &token[0]).await.expect("verify");
    srv.login(&email, PASSWORD).await;
    srv.stop().await;
}

#[tokio::test]
async fn unverified_accounts_log_in_while_the_setting_is_off() {
    let srv = TestServer::start().await;
    let email = unique_email();
    let user = srv.register(&email, PASSWORD).await;
    assert!(!user.email_verified);
    srv.login(&email, PASSWORD).await;
    srv.stop().await;
}

#[tokio::test]
async fn admins_are_verified_and_may_create_verified_users() {
    let admin_email = unique_email();
    let (smtp, srv) = smtp_server(|c| {
        c.bootstrap_admin_email = Some(admin_email.clone());
        c.bootstrap_admin_password = Some(Secret::new(PASSWORD.into()));
    })
    .await;
    // The bootstrap admin, and an admin created as the CLI does.
    let boot = srv.login(&admin_email, PASSWORD).await;
    let me = get_me(&srv, &boot.access_token).await.expect("GetMe");
    assert!(me.email_verified && me.email_verify_time.is_some());
    let cli = srv.admin_session().await;
    let me = get_me(&srv, &cli.access_token).await.expect("GetMe");
    assert!(me.email_verified);

    let create = |email: &str, verified: bool| proto::CreateUserRequest {
        email: email.into(),
        password: PASSWORD.into(),
        email_verified: verified,
        ..Default::default()
    };
    let a = unique_email();
    let u = srv
        .users()
        .await
        .create_user(with_bearer(create(&a, true), &boot.access_token))
        .await
        .expect("CreateUser verified")
        .into_inner();
    assert!(u.email_verified && u.email_verify_time.is_some());
    let b = unique_email();
    let u = srv
        .users()
        .await
        .create_user(with_bearer(create(&b, false), &boot.access_token))
        .await
        .expect("CreateUser unverified")
        .into_inner();
    assert!(!u.email_verified && u.email_verify_time.is_none());
    // The unverified one gets a link, the verified one (and the admins) none.
    wait_smtp_tokens(&smtp, &b, "verify-email", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(received_for(&smtp, &a).is_empty());
    assert!(received_for(&smtp, &admin_email).is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn without_an_smtp_url_the_link_is_in_an_eml_file() {
    let dir = tempfile::tempdir().unwrap();
    let mail_dir = dir.path().join("mail");
    let srv = TestServer::start_with(|c| {
        c.mail_dir = Some(mail_dir.clone());
        c.link_base_url = BASE.into();
        c.mail_poll_interval = Duration::from_millis(50);
    })
    .await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    wait_until("the .eml file", Duration::from_secs(20), || async {
        !eml_tokens(&srv, &email, "verify-email").is_empty()
    })
    .await;
    let files: Vec<_> = std::fs::read_dir(&mail_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let token = eml_tokens(&srv, &email, "verify-email")[0].clone();
    assert!(
        unfold_qp(&text).contains(&format!("{BASE}/verify-email?token={token}")),
        "{text}"
    );
    let v = verify_email(&srv, &token)
        .await
        .expect("verify from the file");
    assert!(v.email_verified);
    srv.stop().await;
}

/// A measurement, not a check (run with `--ignored --nocapture`): ResendVerification's latency for
/// an unverified account, a verified one and an unknown address, interleaved, limits off. The
/// numbers go to BENCHMARKS.md; nothing here asserts a timing.
#[tokio::test]
#[ignore]
async fn measure_resend_latency_per_kind_of_address() {
    let (smtp, srv) = smtp_server(|c| {
        c.verify_resend_per_address = 0;
        c.verify_resend_per_ip = 0;
    })
    .await;
    let unverified = unique_email();
    srv.register(&unverified, PASSWORD).await;
    let verified = unique_email();
    srv.register(&verified, PASSWORD).await;
    let t = wait_smtp_tokens(&smtp, &verified, "verify-email", 1).await;
    verify_email(&srv, &t[0]).await.expect("verify");
    let unknown = unique_email();
    let mut users = srv.users().await;
    let kinds = [
        ("unverified", &unverified),
        ("verified", &verified),
        ("unknown", &unknown),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 0..900 {
        // A fixed shuffle of the three kinds, and a pause so that the background job of one call
        // does not overlap the next.
        let i = [0, 1, 2, 1, 0, 2, 2, 1, 0][round % 9];
        let email = kinds[i].1;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let start = std::time::Instant::now();
        users
            .resend_verification(resend(email))
            .await
            .expect("resend");
        if round >= 90 {
            samples[i].push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    for ((name, _), s) in kinds.iter().zip(samples.iter_mut()) {
        s.sort_by(f64::total_cmp);
        let q = |p: f64| s[((s.len() - 1) as f64 * p) as usize];
        println!(
            "{name:>10}: n={} p50={:.3} ms p90={:.3} ms p99={:.3} ms mean={:.3} ms",
            s.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            s.iter().sum::<f64>() / s.len() as f64
        );
    }
    srv.stop().await;
}
