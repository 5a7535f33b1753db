//! Password reset (issue I): RequestPasswordReset → the background job → a mail delivered to a real
//! SMTP server on loopback (`authd_testkit::smtp`) → ResetPassword with the token taken out of the
//! delivered message. Covers no enumeration (an unknown address is OK with a request row and no
//! mail), one answer for bad, used and expired tokens, the policy keeping the token alive, session
//! revocation, the cap of live links under concurrency, one success for concurrent resets with one
//! token, the rate limits, e-mail verification and the audit event.

use std::time::Duration;

use authd::config::{Config, Secret};
use authd::proto;
use authd_testkit::client::{change_password, try_login, try_refresh};
use authd_testkit::requests::{OTHER_PASSWORD, PASSWORD, login_email, unique_email};
use authd_testkit::smtp::{ReceivedMail, SmtpServer};
use authd_testkit::{TestServer, wait_until};
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use tonic::{Code, Status};

const BASE: &str = "https://app.example.test/auth";

type Auth = proto::auth_service_client::AuthServiceClient<tonic::transport::Channel>;

/// Runs `n` calls at once, each on its own task, and returns their results in order.
async fn concurrently<T, Fut>(
    client: Auth,
    n: usize,
    f: impl Fn(Auth, usize) -> Fut,
) -> Vec<Result<T, Status>>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = Result<T, Status>> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(f(client.clone(), i))).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

async fn request_on(mut client: Auth, email: String) -> Result<(), Status> {
    client
        .request_password_reset(proto::RequestPasswordResetRequest { email })
        .await
        .map(|_| ())
}

async fn reset_on(mut client: Auth, token: String, new_password: String) -> Result<(), Status> {
    client
        .reset_password(proto::ResetPasswordRequest {
            token,
            new_password,
        })
        .await
        .map(|_| ())
}

fn reset_config(c: &mut Config, smtp_url: String) {
    c.smtp_url = Some(Secret::new(smtp_url));
    c.mail_from = "authd <noreply@example.test>".into();
    c.mail_poll_interval = Duration::from_millis(50);
    c.link_base_url = BASE.into();
}

async fn start() -> (TestServer, SmtpServer) {
    start_with(|_| {}).await
}

async fn start_with(f: impl FnOnce(&mut Config)) -> (TestServer, SmtpServer) {
    let smtp = SmtpServer::start().await;
    let url = smtp.url();
    let server = TestServer::start_with(|c| {
        reset_config(c, url);
        f(c);
    })
    .await;
    (server, smtp)
}

async fn request(server: &TestServer, email: &str) -> Result<(), Status> {
    server
        .auth()
        .await
        .request_password_reset(proto::RequestPasswordResetRequest {
            email: email.into(),
        })
        .await
        .map(|_| ())
}

async fn reset(server: &TestServer, token: &str, new_password: &str) -> Result<(), Status> {
    server
        .auth()
        .await
        .reset_password(proto::ResetPasswordRequest {
            token: token.into(),
            new_password: new_password.into(),
        })
        .await
        .map(|_| ())
}

/// The message body with quoted-printable soft line breaks and `=3D` undone.
fn decoded(m: &ReceivedMail) -> String {
    m.data
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

/// The token of the first reset link in `m`.
fn token_in(m: &ReceivedMail) -> String {
    let body = decoded(m);
    let prefix = format!("{BASE}/reset-password?token=");
    let at = body.find(&prefix).expect("a reset link in the mail") + prefix.len();
    body[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect()
}

fn mails_to(smtp: &SmtpServer, to: &str, subject: &str) -> Vec<ReceivedMail> {
    smtp.received()
        .into_iter()
        .filter(|m| m.rcpt_to == [to] && m.header("Subject").as_deref() == Some(subject))
        .collect()
}

/// Waits for the `n`-th reset mail to `to` and returns its token.
async fn nth_link(smtp: &SmtpServer, to: &str, n: usize) -> String {
    wait_until(
        "the reset mail arrives",
        Duration::from_secs(20),
        || async { mails_to(smtp, to, "Reset your password").len() >= n },
    )
    .await;
    token_in(&mails_to(smtp, to, "Reset your password")[n - 1])
}

/// Requests a link for `email` and returns the token of the mail it produced.
async fn link_for(server: &TestServer, smtp: &SmtpServer, email: &str) -> String {
    let before = mails_to(smtp, email, "Reset your password").len();
    request(server, email).await.expect("RequestPasswordReset");
    nth_link(smtp, email, before + 1).await
}

async fn processed(server: &TestServer) {
    wait_until(
        "the requests are processed",
        Duration::from_secs(20),
        || async { server.svc.pending_password_resets().await.unwrap() == 0 },
    )
    .await;
}

#[derive(diesel::QueryableByName, Debug)]
struct RequestRow {
    #[diesel(sql_type = Text)]
    email: String,
    #[diesel(sql_type = Text)]
    client_address: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    processed_time: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(diesel::QueryableByName, Debug)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(server: &TestServer, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(&mut server.db().await)
        .await
        .unwrap()
        .n
}

async fn live_reset_tokens(server: &TestServer) -> i64 {
    count(
        server,
        "SELECT count(*) AS n FROM account_tokens WHERE purpose = 'reset_password' \
         AND use_time IS NULL AND void_time IS NULL AND expire_time > now()",
    )
    .await
}

fn assert_bad_token(s: &Status) {
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert_eq!(s.message(), "invalid, expired or already used reset token");
    let info = tonic_types::StatusExt::get_error_details(s)
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.reason, "RESET_TOKEN_INVALID");
}

#[tokio::test]
async fn an_unknown_address_gets_ok_a_request_row_and_no_mail() {
    let (server, smtp) = start().await;
    let known = unique_email();
    server.register(&known, PASSWORD).await;

    let unknown = unique_email();
    request(&server, &format!("  {}  ", unknown.to_uppercase()))
        .await
        .expect("OK for an unknown address");
    processed(&server).await;
    let rows: Vec<RequestRow> = diesel::sql_query(
        "SELECT email, client_address, processed_time FROM password_reset_requests",
    )
    .load(&mut server.db().await)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].email, unknown, "normalised like Login");
    assert_eq!(rows[0].client_address, "127.0.0.1");
    assert!(rows[0].processed_time.is_some());
    assert_eq!(live_reset_tokens(&server).await, 0);

    // A later request for a known address is mailed; the unknown one (processed first) never was.
    // (Register also mailed the known address its verification link.)
    link_for(&server, &smtp, &known).await;
    let resets: Vec<_> = smtp
        .received()
        .into_iter()
        .filter(|m| m.data.contains("Subject: Reset your password"))
        .collect();
    assert_eq!(resets.len(), 1, "one reset mail only: {resets:?}");
    assert_eq!(resets[0].rcpt_to, std::slice::from_ref(&known));
    assert!(
        smtp.received().iter().all(|m| m.rcpt_to == [known.clone()]),
        "nothing went to the unknown address"
    );

    // Malformed input is INVALID_ARGUMENT for everybody.
    for bad in ["", "not-an-address", &format!("{}@x.test", "a".repeat(300))] {
        let s = request(&server, bad).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}: {s:?}");
    }
    server.stop().await;
}

#[derive(diesel::QueryableByName, Debug)]
struct Verified {
    #[diesel(sql_type = Bool)]
    email_verified: bool,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    email_verify_time: Option<chrono::DateTime<chrono::Utc>>,
}

#[tokio::test]
async fn a_reset_link_sets_the_password_revokes_every_session_and_verifies_the_address() {
    let (server, smtp) = start().await;
    let email = unique_email();
    let user = server.register(&email, PASSWORD).await;
    let s1 = server.login(&email, PASSWORD).await;
    let s2 = server.login(&email, PASSWORD).await;
    assert!(server.validate(&s1.access_token).await.valid);

    let token = link_for(&server, &smtp, &email).await;
    assert!(token.starts_with("pr_") && token.len() == 46, "{token}");
    let mail = &mails_to(&smtp, &email, "Reset your password")[0];
    assert!(decoded(mail).contains("30 minutes"));
    // The same token as a code on a line of its own (what the README's walkthrough greps).
    assert!(mail.data.contains(&format!("\r\n{token}\r\n")));
    // The token is stored hashed only.
    assert_eq!(
        count(
            &server,
            &format!("SELECT count(*) AS n FROM account_tokens WHERE token_hash = convert_to('{token}', 'UTF8')"),
        )
        .await,
        0
    );

    reset(&server, &token, OTHER_PASSWORD).await.expect("reset");

    // The new password works, the old one does not.
    try_login(&server, login_email(&email, OTHER_PASSWORD))
        .await
        .expect("login with the new password");
    let s = try_login(&server, login_email(&email, PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    // Every old session is gone: refresh tokens refused, access tokens invalid.
    for old in [&s1, &s2] {
        let s = try_refresh(&server, &old.refresh_token).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(!server.validate(&old.access_token).await.valid);
    }
    // The address counts as verified.
    let v: Verified = diesel::sql_query(format!(
        "SELECT email_verified, email_verify_time FROM users WHERE id = '{}'",
        user.id
    ))
    .get_result(&mut server.db().await)
    .await
    .unwrap();
    assert!(v.email_verified && v.email_verify_time.is_some());
    // Audited, and the owner gets a notice.
    assert_eq!(
        count(
            &server,
            &format!(
                "SELECT count(*) AS n FROM audit_events WHERE kind = 'PASSWORD_RESET' AND user_id = '{}' \
                 AND detail LIKE '%2 session(s) revoked%'",
                user.id
            ),
        )
        .await,
        1
    );
    wait_until("the notice arrives", Duration::from_secs(20), || async {
        mails_to(&smtp, &email, "Your password was changed").len() == 1
    })
    .await;
    let notice = decoded(&mails_to(&smtp, &email, "Your password was changed")[0]);
    assert!(notice.contains("was reset at"), "{notice}");
    server.stop().await;
}

#[tokio::test]
async fn bad_used_and_expired_tokens_get_one_answer() {
    let (server, smtp) = start().await;
    let email = unique_email();
    server.register(&email, PASSWORD).await;

    // Garbage and empty.
    assert_bad_token(&reset(&server, "garbage", OTHER_PASSWORD).await.unwrap_err());
    assert_bad_token(&reset(&server, "", OTHER_PASSWORD).await.unwrap_err());
    assert_bad_token(
        &reset(
            &server,
            "pr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            OTHER_PASSWORD,
        )
        .await
        .unwrap_err(),
    );
    // Used.
    let token = link_for(&server, &smtp, &email).await;
    reset(&server, &token, OTHER_PASSWORD).await.unwrap();
    assert_bad_token(&reset(&server, &token, PASSWORD).await.unwrap_err());
    // Expired: AUTHD_PASSWORD_RESET_TTL is 30 minutes.
    let token = link_for(&server, &smtp, &email).await;
    server.clock.advance(chrono::Duration::minutes(30));
    assert_bad_token(&reset(&server, &token, PASSWORD).await.unwrap_err());
    // Oversized input is a malformed request.
    let s = reset(&server, &"x".repeat(513), PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn a_weak_password_is_refused_and_the_link_still_works() {
    let (server, smtp) = start().await;
    let email = unique_email();
    server.register(&email, PASSWORD).await;
    let token = link_for(&server, &smtp, &email).await;

    for weak in ["password", "12345678", email.as_str()] {
        let s = reset(&server, &token, weak).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{weak}: {s:?}");
    }
    let s = reset(&server, &token, "").await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    reset(&server, &token, OTHER_PASSWORD)
        .await
        .expect("the link survived the weak attempts");
    server.stop().await;
}

#[tokio::test]
async fn a_password_change_voids_the_reset_links() {
    let (server, smtp) = start().await;
    let email = unique_email();
    server.register(&email, PASSWORD).await;
    let session = server.login(&email, PASSWORD).await;
    let first = link_for(&server, &smtp, &email).await;
    let second = link_for(&server, &smtp, &email).await;
    assert_eq!(live_reset_tokens(&server).await, 2);

    change_password(&server, &session.access_token, PASSWORD, OTHER_PASSWORD)
        .await
        .expect("change password");
    assert_eq!(live_reset_tokens(&server).await, 0);
    for t in [first, second] {
        assert_bad_token(&reset(&server, &t, PASSWORD).await.unwrap_err());
    }
    // ChangePassword also mails the notice.
    wait_until("the notice arrives", Duration::from_secs(20), || async {
        mails_to(&smtp, &email, "Your password was changed").len() == 1
    })
    .await;

    // A reset voids the account's other links too.
    let a = link_for(&server, &smtp, &email).await;
    let b = link_for(&server, &smtp, &email).await;
    reset(&server, &a, PASSWORD).await.unwrap();
    assert_bad_token(&reset(&server, &b, OTHER_PASSWORD).await.unwrap_err());
    server.stop().await;
}

#[tokio::test]
async fn an_admin_setting_the_password_voids_the_links_and_inactive_accounts_get_none() {
    let (server, smtp) = start().await;
    let admin = server.admin_session().await;
    let email = unique_email();
    let user = server.register(&email, PASSWORD).await;
    let token = link_for(&server, &smtp, &email).await;
    let update = |req: proto::UpdateUserRequest| {
        let server = &server;
        let admin = &admin;
        async move {
            server
                .users()
                .await
                .update_user(authd_testkit::requests::with_bearer(
                    req,
                    &admin.access_token,
                ))
                .await
                .expect("UpdateUser")
        }
    };
    update(proto::UpdateUserRequest {
        user_id: user.id.clone(),
        password: Some(OTHER_PASSWORD.into()),
        ..Default::default()
    })
    .await;
    assert_bad_token(&reset(&server, &token, PASSWORD).await.unwrap_err());

    // A link mailed before a deactivation stops working; a deactivated account gets no new mail.
    let token = link_for(&server, &smtp, &email).await;
    update(proto::UpdateUserRequest {
        user_id: user.id.clone(),
        active: Some(false),
        ..Default::default()
    })
    .await;
    assert_bad_token(&reset(&server, &token, PASSWORD).await.unwrap_err());
    request(&server, &email).await.expect("OK all the same");
    processed(&server).await;
    // Give a (wrong) mail time to be delivered before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mails_to(&smtp, &email, "Reset your password").len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_requests_leave_at_most_three_live_links() {
    let (server, smtp) = start().await;
    let email = unique_email();
    server.register(&email, PASSWORD).await;
    let results = concurrently(server.auth().await, 20, |c, _| request_on(c, email.clone())).await;
    for r in results {
        r.expect("OK");
    }
    processed(&server).await;
    assert_eq!(
        count(&server, "SELECT count(*) AS n FROM password_reset_requests").await,
        20
    );
    assert_eq!(live_reset_tokens(&server).await, 3);
    wait_until("three mails arrive", Duration::from_secs(20), || async {
        mails_to(&smtp, &email, "Reset your password").len() == 3
    })
    .await;
    // Every one of the three links works until one is used (a new link never voids the others).
    let tokens: Vec<String> = mails_to(&smtp, &email, "Reset your password")
        .iter()
        .map(token_in)
        .collect();
    assert_eq!(
        tokens
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );
    reset(&server, &tokens[2], OTHER_PASSWORD).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_resets_with_one_token_give_one_success() {
    let (server, smtp) = start().await;
    let email = unique_email();
    server.register(&email, PASSWORD).await;
    let token = link_for(&server, &smtp, &email).await;
    let results = concurrently(server.auth().await, 20, |c, i| {
        reset_on(c, token.clone(), format!("{OTHER_PASSWORD}-{i}"))
    })
    .await;
    let ok: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    for r in &results {
        if let Err(s) = r {
            assert_bad_token(s);
        }
    }
    // The password is the winner's.
    try_login(
        &server,
        login_email(&email, &format!("{OTHER_PASSWORD}-{}", ok[0])),
    )
    .await
    .expect("the winner's password");
    assert_eq!(
        count(
            &server,
            "SELECT count(*) AS n FROM audit_events WHERE kind = 'PASSWORD_RESET'"
        )
        .await,
        1
    );
    server.stop().await;
}

fn assert_limited(s: &Status) {
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    let after: u64 = s
        .metadata()
        .get("retry-after")
        .expect("retry-after")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&after), "{after}");
}

#[tokio::test]
async fn requests_are_limited_per_address_alike_for_known_and_unknown() {
    let (server, _smtp) = start_with(|c| c.password_reset_per_address = 3).await;
    let known = unique_email();
    server.register(&known, PASSWORD).await;
    let unknown = unique_email();
    for email in [&known, &unknown] {
        for _ in 0..3 {
            request(&server, email).await.expect("under the limit");
        }
        assert_limited(&request(&server, email).await.unwrap_err());
        // However it is written.
        assert_limited(&request(&server, &email.to_uppercase()).await.unwrap_err());
    }
    // A refused request records nothing.
    assert_eq!(
        count(&server, "SELECT count(*) AS n FROM password_reset_requests").await,
        6
    );
    // The window is an hour.
    server.clock.advance(chrono::Duration::minutes(61));
    request(&server, &known).await.expect("a new hour");
    request(&server, &unknown).await.expect("a new hour");
    server.stop().await;
}

#[tokio::test]
async fn requests_are_limited_per_client_address() {
    let (server, _smtp) = start_with(|c| c.password_reset_per_ip = 5).await;
    let results = concurrently(server.auth().await, 12, |c, _| {
        request_on(c, unique_email())
    })
    .await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        5,
        "{results:?}"
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_limited(r);
    }
    server.clock.advance(chrono::Duration::minutes(61));
    request(&server, &unique_email()).await.expect("a new hour");
    server.stop().await;
}

#[tokio::test]
async fn token_guesses_take_the_per_client_bucket() {
    let (server, _smtp) = start_with(|c| c.rate_limit_per_ip = 5).await;
    let results = concurrently(server.auth().await, 12, |c, i| {
        reset_on(c, format!("pr_guess{i}"), OTHER_PASSWORD.to_owned())
    })
    .await;
    let limited = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    assert_eq!(limited, 7, "{results:?}");
    for r in &results {
        match r {
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.metadata().get("retry-after").is_some(), "{s:?}")
            }
            Err(s) => assert_bad_token(s),
            Ok(()) => panic!("a guessed token was accepted"),
        }
    }
    // RequestPasswordReset draws on the same bucket.
    assert_eq!(
        request(&server, &unique_email()).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    server.stop().await;
}

/// A measurement, not a check (run with `--ignored --nocapture`): the reply time of
/// RequestPasswordReset for a known and an unknown address, interleaved, 300 of each. Numbers go
/// to BENCHMARKS.md.
#[tokio::test]
#[ignore]
async fn measure_request_time_known_vs_unknown() {
    let (server, _smtp) = start().await;
    let known = unique_email();
    server.register(&known, PASSWORD).await;
    let mut client = server.auth().await;
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for i in 0..600 {
        let email = if i % 2 == 0 {
            known.clone()
        } else {
            unique_email()
        };
        let t = std::time::Instant::now();
        client
            .request_password_reset(proto::RequestPasswordResetRequest { email })
            .await
            .unwrap();
        times[i % 2].push(t.elapsed());
    }
    for (name, t) in ["known", "unknown"].iter().zip(times.iter_mut()) {
        t.sort();
        let p = |q: f64| t[((t.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
        println!(
            "{name}: n={} p50={:.3}ms p90={:.3}ms p99={:.3}ms max={:.3}ms",
            t.len(),
            p(0.5),
            p(0.9),
            p(0.99),
            p(1.0)
        );
    }
    server.stop().await;
}
