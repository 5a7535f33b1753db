//! The TOTP second factor (issue I): enrolment, login with VerifyMfa, replay and drift, the voided
//! mfa_token, the per-account lock with its mail (through the testkit's real SMTP server), recovery
//! codes, the rules of DisableTotp, RegenerateRecoveryCodes and ResetUserMfa, `amr` in tokens,
//! Refresh and ValidateToken, and the seed sealed at rest. Codes come from the testkit's own RFC 6238
//! (`authd_testkit::totp`), on the server's manual clock.
//!
//! Over 600 lines on purpose: each test walks one rule end to end through the same small helpers
//! (a user with TOTP on, a login's mfa_token, the status assertions), which splitting would copy.

use std::time::Duration as StdDuration;

use authd::clock::Clock;
use authd::proto;
use authd_testkit::smtp::SmtpServer;
use authd_testkit::totp::{base32_decode, code_at, code_now, wrong_code};
use authd_testkit::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Duration;
use diesel::sql_types::{Bool, Bytea, Nullable, Text};
use diesel_async::RunQueryDsl;
use serde_json::Value;
use tonic::Code;

const MASTER_KEY: &str = "0202020202020202020202020202020202020202020202020202020202020202";

fn amr_of(token: &str) -> Vec<String> {
    let payload = token.split('.').nth(1).expect("JWT payload");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).unwrap();
    serde_json::from_value(claims["amr"].clone()).expect("amr claim")
}

fn pwd_otp() -> Vec<String> {
    vec!["pwd".to_owned(), "otp".to_owned()]
}

/// A user with TOTP on: (email, first session, base32 secret, recovery codes). The clock is then
/// moved one step on, so that the confirming code's step is spent and the next code is new.
async fn user_with_totp(srv: &TestServer) -> (String, proto::LoginResponse, String, Vec<String>) {
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let pair = srv.login(&email, PASSWORD).await;
    let e = enroll_totp(srv, &pair.access_token, PASSWORD)
        .await
        .unwrap();
    let c = confirm_totp(
        srv,
        &pair.access_token,
        &code_now(&e.secret, srv.clock.now()),
    )
    .await
    .unwrap();
    srv.clock.advance(Duration::seconds(30));
    (email, pair, e.secret, c.recovery_codes)
}

/// Login with the right password: the mfa_token (the reply carries no tokens).
async fn mfa_token(srv: &TestServer, email: &str) -> String {
    let r = srv.login(email, PASSWORD).await;
    assert!(r.mfa_required, "{r:?}");
    assert!(r.access_token.is_empty() && r.refresh_token.is_empty() && r.session_id.is_empty());
    assert!(r.mfa_token.starts_with("mfa_"), "{}", r.mfa_token);
    r.mfa_token
}

#[track_caller]
fn assert_invalid_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) {
    let s = expect_code(r, Code::Unauthenticated);
    assert_eq!(s.message(), "invalid code");
    assert_eq!(reason(&s).as_deref(), Some("MFA_CODE_INVALID"));
}

#[track_caller]
fn assert_bad_ticket<T: std::fmt::Debug>(r: Result<T, tonic::Status>) {
    let s = expect_code(r, Code::Unauthenticated);
    assert_eq!(reason(&s).as_deref(), Some("MFA_TOKEN_INVALID"), "{s:?}");
}

async fn audit_kinds(srv: &TestServer) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct K {
        #[diesel(sql_type = Text)]
        kind: String,
    }
    let mut db = srv.db().await;
    diesel::sql_query("SELECT kind FROM audit_events ORDER BY create_time, id")
        .load::<K>(&mut db)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.kind)
        .collect()
}

#[tokio::test]
async fn enrol_confirm_login_verify_with_amr_through_refresh_and_validate() {
    let srv = TestServer::start().await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let first = srv.login(&email, PASSWORD).await;
    assert!(!first.mfa_required && first.mfa_token.is_empty());
    assert_eq!(amr_of(&first.access_token), ["pwd"]);
    let other = srv.login(&email, PASSWORD).await;

    let e = enroll_totp(&srv, &first.access_token, PASSWORD)
        .await
        .unwrap();
    assert_eq!(e.secret.len(), 32);
    assert_eq!(base32_decode(&e.secret).len(), 20);
    assert!(
        e.otpauth_uri.starts_with(&format!(
            "otpauth://totp/authd:{}?secret={}",
            email.replace('@', "%40"),
            e.secret
        )),
        "{}",
        e.otpauth_uri
    );
    assert!(
        e.otpauth_uri
            .contains("issuer=authd&algorithm=SHA1&digits=6&period=30")
    );
    assert_eq!(&e.qr_png[..8], b"\x89PNG\r\n\x1a\n");
    // Nothing is on until ConfirmTotp: a login still gets tokens.
    assert!(!srv.login(&email, PASSWORD).await.mfa_required);

    let now = srv.clock.now();
    assert_invalid_code(confirm_totp(&srv, &first.access_token, &wrong_code(&e.secret, now)).await);
    let c = confirm_totp(&srv, &first.access_token, &code_now(&e.secret, now))
        .await
        .unwrap();
    assert_eq!(c.recovery_codes.len(), 10);
    for code in &c.recovery_codes {
        assert_eq!(code.len(), 19, "{code}");
        assert_eq!(code.split('-').count(), 4);
    }
    // Enabling revoked the other sessions (the one from the enrolment-time login and `other`).
    assert_eq!(c.revoked_sessions, 2);
    assert!(!srv.validate(&other.access_token).await.valid);
    let kept = srv.validate(&first.access_token).await;
    assert!(kept.valid);
    assert_eq!(kept.amr, ["pwd"]);

    srv.clock.advance(Duration::seconds(30));
    let ticket = mfa_token(&srv, &email).await;
    let pair = try_verify_mfa(&srv, &ticket, &code_now(&e.secret, srv.clock.now()))
        .await
        .unwrap();
    assert!(!pair.mfa_required && pair.mfa_token.is_empty());
    assert_eq!(pair.token_type, "Bearer");
    assert_eq!(amr_of(&pair.access_token), pwd_otp());
    assert_eq!(srv.validate(&pair.access_token).await.amr, pwd_otp());
    get_me(&srv, &pair.access_token).await.unwrap();
    // ListMySessions shows how each session was authenticated.
    let amrs: Vec<(bool, Vec<String>)> = srv
        .my_sessions(&pair.access_token)
        .await
        .into_iter()
        .map(|s| (s.current, s.amr))
        .collect();
    assert_eq!(
        amrs.len(),
        2,
        "the enrolment session and this one: {amrs:?}"
    );
    assert!(amrs.contains(&(true, pwd_otp())), "{amrs:?}");
    assert!(amrs.contains(&(false, vec!["pwd".to_owned()])), "{amrs:?}");
    // Refresh keeps the session's amr.
    let refreshed = try_refresh(&srv, &pair.refresh_token).await.unwrap();
    assert_eq!(amr_of(&refreshed.access_token), pwd_otp());
    assert_eq!(srv.validate(&refreshed.access_token).await.amr, pwd_otp());
    // The ticket was single use.
    srv.clock.advance(Duration::seconds(30));
    assert_bad_ticket(try_verify_mfa(&srv, &ticket, &code_now(&e.secret, srv.clock.now())).await);

    let kinds = audit_kinds(&srv).await;
    assert!(kinds.contains(&"MFA_ENABLED".to_owned()), "{kinds:?}");
}

#[tokio::test]
async fn a_code_works_once_and_one_step_of_drift_either_way() {
    let srv = TestServer::start().await;
    let (email, _, secret, _) = user_with_totp(&srv).await;
    let now = srv.clock.now();
    let code = code_now(&secret, now);
    try_verify_mfa(&srv, &mfa_token(&srv, &email).await, &code)
        .await
        .unwrap();
    // Replay in the same window: refused, however many logins.
    assert_invalid_code(try_verify_mfa(&srv, &mfa_token(&srv, &email).await, &code).await);
    // The previous step is older than the last accepted one.
    let previous = code_at(&secret, now.timestamp(), -1);
    assert_invalid_code(try_verify_mfa(&srv, &mfa_token(&srv, &email).await, &previous).await);

    // One step ahead (a phone whose clock runs fast) is accepted.
    srv.clock.advance(Duration::seconds(30));
    let t = srv.clock.now().timestamp();
    assert_invalid_code(
        try_verify_mfa(
            &srv,
            &mfa_token(&srv, &email).await,
            &code_at(&secret, t, 2),
        )
        .await,
    );
    try_verify_mfa(
        &srv,
        &mfa_token(&srv, &email).await,
        &code_at(&secret, t, 1),
    )
    .await
    .unwrap();
    // One step behind (a slow phone) too, once that step is later than the last accepted one.
    srv.clock.advance(Duration::seconds(120));
    let t = srv.clock.now().timestamp();
    assert_invalid_code(
        try_verify_mfa(
            &srv,
            &mfa_token(&srv, &email).await,
            &code_at(&secret, t, -2),
        )
        .await,
    );
    try_verify_mfa(
        &srv,
        &mfa_token(&srv, &email).await,
        &code_at(&secret, t, -1),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn five_wrong_codes_void_the_mfa_token_and_it_expires_after_five_minutes() {
    let srv = TestServer::start().await;
    let (email, _, secret, _) = user_with_totp(&srv).await;
    let ticket = mfa_token(&srv, &email).await;
    let wrong = wrong_code(&secret, srv.clock.now());
    for _ in 0..5 {
        assert_invalid_code(try_verify_mfa(&srv, &ticket, &wrong).await);
    }
    let right = code_now(&secret, srv.clock.now());
    assert_bad_ticket(try_verify_mfa(&srv, &ticket, &right).await);
    // Bad input is INVALID_ARGUMENT, an unknown ticket UNAUTHENTICATED.
    expect_code(
        try_verify_mfa(&srv, "", &right).await,
        Code::InvalidArgument,
    );
    expect_code(
        try_verify_mfa(&srv, &ticket, &"1".repeat(65)).await,
        Code::InvalidArgument,
    );
    assert_bad_ticket(try_verify_mfa(&srv, "mfa_unknown", &right).await);

    // Expiry: a ticket older than 5 minutes is void.
    let late = mfa_token(&srv, &email).await;
    srv.clock.advance(Duration::seconds(301));
    assert_bad_ticket(try_verify_mfa(&srv, &late, &code_now(&secret, srv.clock.now())).await);
    // A fresh login still works (5 wrong codes are below the account's limit of 10).
    try_verify_mfa(
        &srv,
        &mfa_token(&srv, &email).await,
        &code_now(&secret, srv.clock.now()),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn wrong_codes_lock_the_account_across_logins_and_mail_the_owner() {
    let smtp = SmtpServer::start().await;
    let url = smtp.url();
    let srv = TestServer::start_with(|c| {
        c.smtp_url = Some(authd::config::Secret::new(url));
        c.mail_from = "authd <noreply@example.test>".into();
        c.mail_poll_interval = StdDuration::from_millis(50);
    })
    .await;
    let (email, _, secret, _) = user_with_totp(&srv).await;
    let wrong = wrong_code(&secret, srv.clock.now());
    // 10 wrong codes over two logins: a right password does not reset the count.
    for _ in 0..2 {
        let ticket = mfa_token(&srv, &email).await;
        for _ in 0..5 {
            assert_invalid_code(try_verify_mfa(&srv, &ticket, &wrong).await);
        }
    }
    let right = code_now(&secret, srv.clock.now());
    let locked = expect_code(
        try_verify_mfa(&srv, &mfa_token(&srv, &email).await, &right).await,
        Code::ResourceExhausted,
    );
    let retry: u64 = locked
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 300);

    wait_until(
        "the lock mail arrives",
        StdDuration::from_secs(20),
        || async {
            smtp.received()
                .iter()
                .any(|m| m.header("Subject").is_some_and(|s| s.contains("locked")))
        },
    )
    .await;
    // Register also mailed a verification link; the lock mail is the other one.
    let received = smtp.received();
    let mail = received
        .iter()
        .find(|m| m.header("Subject").is_some_and(|s| s.contains("locked")))
        .unwrap();
    assert_eq!(mail.rcpt_to, [email.as_str()]);
    assert!(
        mail.header("Subject").unwrap().contains("locked"),
        "{:?}",
        mail.header("Subject")
    );
    assert!(mail.data.contains("5 minutes"), "{}", mail.data);
    assert!(audit_kinds(&srv).await.contains(&"MFA_LOCKED".to_owned()));

    // The second lock in a row lasts twice as long.
    srv.clock.advance(Duration::seconds(301));
    let wrong = wrong_code(&secret, srv.clock.now());
    for _ in 0..2 {
        let ticket = mfa_token(&srv, &email).await;
        for _ in 0..5 {
            assert_invalid_code(try_verify_mfa(&srv, &ticket, &wrong).await);
        }
    }
    let locked = expect_code(
        try_verify_mfa(
            &srv,
            &mfa_token(&srv, &email).await,
            &code_now(&secret, srv.clock.now()),
        )
        .await,
        Code::ResourceExhausted,
    );
    assert_eq!(
        locked
            .metadata()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap(),
        "600"
    );
    wait_until(
        "the second mail arrives",
        StdDuration::from_secs(20),
        || async {
            smtp.received()
                .iter()
                .filter(|m| m.header("Subject").is_some_and(|s| s.contains("locked")))
                .count()
                == 2
        },
    )
    .await;

    // After the lock a right code works (and clears count and level).
    srv.clock.advance(Duration::seconds(601));
    try_verify_mfa(
        &srv,
        &mfa_token(&srv, &email).await,
        &code_now(&secret, srv.clock.now()),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_recovery_code_is_single_use_under_twenty_concurrent_callers() {
    let srv = TestServer::start().await;
    let (email, _, _, codes) = user_with_totp(&srv).await;
    let mut tickets = Vec::new();
    for _ in 0..20 {
        tickets.push(mfa_token(&srv, &email).await);
    }
    let code = codes[0].clone();
    let results =
        authd_testkit::join_all(tickets.iter().map(|t| try_verify_mfa(&srv, t, &code))).await;
    let ok: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        let s = r.as_ref().unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert_eq!(s.message(), "invalid code");
    }
    let pair = ok[0].as_ref().unwrap();
    assert_eq!(amr_of(&pair.access_token), pwd_otp());
    // Another code, upper case and without dashes, works once.
    let other = codes[1].replace('-', "").to_uppercase();
    try_verify_mfa(&srv, &mfa_token(&srv, &email).await, &other)
        .await
        .unwrap();
    assert_invalid_code(try_verify_mfa(&srv, &mfa_token(&srv, &email).await, &codes[1]).await);
    let used = audit_kinds(&srv)
        .await
        .into_iter()
        .filter(|k| k == "RECOVERY_CODE_USED")
        .count();
    assert_eq!(used, 2);
}

async fn otp_sessions(srv: &TestServer) -> i64 {
    let mut db = srv.db().await;
    diesel::sql_query("SELECT count(*) AS n FROM sessions WHERE amr = '{pwd,otp}'")
        .get_result::<Count>(&mut db)
        .await
        .unwrap()
        .n
}

#[tokio::test]
async fn twenty_concurrent_verify_mfa_with_one_right_code_open_one_session() {
    let srv = TestServer::start().await;
    let (email, _, secret, _) = user_with_totp(&srv).await;

    // One ticket, one code, 20 callers.
    let ticket = mfa_token(&srv, &email).await;
    let code = code_now(&secret, srv.clock.now());
    let seen = Codes::of(
        authd_testkit::join_all((0..20).map(|_| try_verify_mfa(&srv, &ticket, &code))).await,
    );
    assert_eq!(seen.count(Code::Ok), 1, "{seen:?}");
    assert_eq!(seen.count(Code::Unauthenticated), 19, "{seen:?}");
    assert_eq!(otp_sessions(&srv).await, 1);

    // Twenty tickets, one fresh code: the step is accepted once.
    srv.clock.advance(Duration::seconds(30));
    let mut tickets = Vec::new();
    for _ in 0..20 {
        tickets.push(mfa_token(&srv, &email).await);
    }
    let code = code_now(&secret, srv.clock.now());
    let seen = Codes::of(
        authd_testkit::join_all(tickets.iter().map(|t| try_verify_mfa(&srv, t, &code))).await,
    );
    assert_eq!(seen.count(Code::Ok), 1, "{seen:?}");
    assert_eq!(seen.count(Code::Unauthenticated), 19, "{seen:?}");
    assert_eq!(otp_sessions(&srv).await, 2);
    // Replays are not wrong codes: 38 of them did not lock the account (the limit is 10).
    srv.clock.advance(Duration::seconds(30));
    try_verify_mfa(
        &srv,
        &mfa_token(&srv, &email).await,
        &code_now(&secret, srv.clock.now()),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn enrol_disable_regenerate_and_reset_rules() {
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    let token = pair.access_token.as_str();
    expect_code(enroll_totp(&srv, token, "").await, Code::InvalidArgument);
    let s = expect_code(
        enroll_totp(&srv, token, OTHER_PASSWORD).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s).as_deref(), Some("INVALID_CREDENTIALS"));
    expect_code(
        confirm_totp(&srv, token, "123456").await,
        Code::FailedPrecondition,
    );
    expect_code(
        regenerate_recovery_codes(&srv, token, "123456").await,
        Code::FailedPrecondition,
    );
    expect_code(
        disable_totp(&srv, token, PASSWORD, "123456").await,
        Code::FailedPrecondition,
    );

    let (email, first, secret, codes) = user_with_totp(&srv).await;
    let me = first.access_token.as_str();
    expect_code(
        enroll_totp(&srv, me, PASSWORD).await,
        Code::FailedPrecondition,
    );
    expect_code(
        confirm_totp(&srv, me, "123456").await,
        Code::FailedPrecondition,
    );

    // RegenerateRecoveryCodes: a right code replaces all; the old codes stop working.
    let now = srv.clock.now();
    assert_invalid_code(regenerate_recovery_codes(&srv, me, &wrong_code(&secret, now)).await);
    expect_code(
        regenerate_recovery_codes(&srv, me, "").await,
        Code::InvalidArgument,
    );
    let fresh = regenerate_recovery_codes(&srv, me, &code_now(&secret, now))
        .await
        .unwrap();
    assert_eq!(fresh.len(), 10);
    assert!(fresh.iter().all(|c| !codes.contains(c)));
    assert_invalid_code(try_verify_mfa(&srv, &mfa_token(&srv, &email).await, &codes[0]).await);
    let second = try_verify_mfa(&srv, &mfa_token(&srv, &email).await, &fresh[0])
        .await
        .unwrap();

    // DisableTotp: password and code; the caller's other sessions end.
    srv.clock.advance(Duration::seconds(30));
    let now = srv.clock.now();
    let s = expect_code(
        disable_totp(&srv, me, OTHER_PASSWORD, &code_now(&secret, now)).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s).as_deref(), Some("INVALID_CREDENTIALS"));
    assert_invalid_code(disable_totp(&srv, me, PASSWORD, &wrong_code(&secret, now)).await);
    let revoked = disable_totp(&srv, me, PASSWORD, &code_now(&secret, now))
        .await
        .unwrap();
    assert_eq!(revoked, 1);
    assert!(!srv.validate(&second.access_token).await.valid);
    assert!(srv.validate(me).await.valid);
    assert!(!srv.login(&email, PASSWORD).await.mfa_required);

    // ResetUserMfa: ADMIN only; all of the target's sessions end.
    let (email, target, secret, _) = user_with_totp(&srv).await;
    let target_id = get_me(&srv, &target.access_token).await.unwrap().id;
    let s = expect_code(
        reset_user_mfa(&srv, token, &target_id).await,
        Code::PermissionDenied,
    );
    assert!(s.message().contains("admin"), "{s:?}");
    let admin = srv.admin_session().await;
    let admin = admin.access_token.as_str();
    expect_code(
        reset_user_mfa(&srv, admin, "nope").await,
        Code::InvalidArgument,
    );
    expect_code(
        reset_user_mfa(&srv, admin, &uuid::Uuid::new_v4().to_string()).await,
        Code::NotFound,
    );
    let with_otp = try_verify_mfa(
        &srv,
        &mfa_token(&srv, &email).await,
        &code_now(&secret, srv.clock.now()),
    )
    .await
    .unwrap();
    assert_eq!(reset_user_mfa(&srv, admin, &target_id).await.unwrap(), 2);
    assert!(!srv.validate(&target.access_token).await.valid);
    assert!(!srv.validate(&with_otp.access_token).await.valid);
    expect_code(
        reset_user_mfa(&srv, admin, &target_id).await,
        Code::FailedPrecondition,
    );
    assert!(!srv.login(&email, PASSWORD).await.mfa_required);

    let kinds = audit_kinds(&srv).await;
    for k in [
        "MFA_ENABLED",
        "MFA_DISABLED",
        "MFA_RESET",
        "RECOVERY_CODE_USED",
    ] {
        assert!(kinds.contains(&k.to_owned()), "{k}: {kinds:?}");
    }
}

#[tokio::test]
async fn a_moderator_cannot_reset_mfa() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let email = unique_email();
    srv.users()
        .await
        .create_user(with_bearer(
            proto::CreateUserRequest {
                email: email.clone(),
                password: PASSWORD.into(),
                role: proto::Role::Moderator as i32,
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .unwrap();
    let moderator = srv.login(&email, PASSWORD).await;
    let (_, target, _, _) = user_with_totp(&srv).await;
    let target_id = get_me(&srv, &target.access_token).await.unwrap().id;
    expect_code(
        reset_user_mfa(&srv, &moderator.access_token, &target_id).await,
        Code::PermissionDenied,
    );
}

#[derive(diesel::QueryableByName)]
struct SeedRow {
    #[diesel(sql_type = Nullable<Bytea>)]
    seed: Option<Vec<u8>>,
    #[diesel(sql_type = Bool)]
    seed_sealed: bool,
    #[diesel(sql_type = Nullable<Bytea>)]
    pending_seed: Option<Vec<u8>>,
    #[diesel(sql_type = Bool)]
    pending_sealed: bool,
}

async fn seed_row(srv: &TestServer) -> SeedRow {
    let mut db = srv.db().await;
    diesel::sql_query("SELECT seed, seed_sealed, pending_seed, pending_sealed FROM user_totp")
        .get_result::<SeedRow>(&mut db)
        .await
        .unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_seed_is_sealed_at_rest_under_the_master_key() {
    let srv = TestServer::start_with(|c| {
        c.master_key = Some(authd::config::Secret::new(MASTER_KEY.to_owned()));
    })
    .await;
    let (_, pair) = srv.user_session().await;
    let e = enroll_totp(&srv, &pair.access_token, PASSWORD)
        .await
        .unwrap();
    let seed = base32_decode(&e.secret);
    let row = seed_row(&srv).await;
    let pending = row.pending_seed.unwrap();
    assert!(row.pending_sealed && row.seed.is_none());
    assert!(!contains(&pending, &seed));
    assert!(!contains(&pending, e.secret.as_bytes()));
    confirm_totp(
        &srv,
        &pair.access_token,
        &code_now(&e.secret, srv.clock.now()),
    )
    .await
    .unwrap();
    let row = seed_row(&srv).await;
    let stored = row.seed.unwrap();
    assert!(row.seed_sealed && row.pending_seed.is_none());
    assert!(!contains(&stored, &seed));
    // Recovery codes are stored as keyed hashes only.
    #[derive(diesel::QueryableByName)]
    struct H {
        #[diesel(sql_type = Bytea)]
        code_hash: Vec<u8>,
    }
    let mut db = srv.db().await;
    let hashes = diesel::sql_query("SELECT code_hash FROM recovery_codes")
        .load::<H>(&mut db)
        .await
        .unwrap();
    assert_eq!(hashes.len(), 10);
    assert!(hashes.iter().all(|h| h.code_hash.len() == 32));
}
