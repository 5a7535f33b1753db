use authd_testkit::*;

// Issue C, end to end: brute-force throttling of Login and of the `current_password` checks, the
// per-IP token bucket, trusted proxies, password strength, bcrypt cost upgrades, input limits,
// request timeouts (with no transaction left open) and unknown fields.
//
// Time is the server's ManualClock (`srv.clock`); nothing here asserts on latency. Many client IPs
// are simulated by trusting 127.0.0.1 as a proxy and sending `x-forwarded-for`.

use std::time::Duration;

use authd::config::Config;
use authd::proto;
use authd::proto::auth_service_client::AuthServiceClient;
use authd::proto::login_request::Identifier;
use authd::proto::user_service_client::UserServiceClient;
use chrono::Duration as ChronoDuration;
use diesel::sql_types::{Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

/// A password that is never right.
const WRONG: &str = "Wrong-Horse-Battery-Staple-99";

// ----- helpers ------------------------------------------------------------------------------------

/// The login throttle as shipped: 5 consecutive failures per identifier and IP, 100 per hour.
fn throttle_on(c: &mut Config) {
    c.login_max_failures = 5;
    c.login_max_failures_per_hour = 100;
}

/// A bearer request from client `ip`.
fn bearer_from<T>(msg: T, token: &str, ip: &str) -> Request<T> {
    let mut r = with_bearer(msg, token);
    r.metadata_mut()
        .insert("x-forwarded-for", ip.parse().unwrap());
    r
}

/// The `retry-after` metadata of a status, which must be whole seconds.
fn retry_after(s: &Status) -> Option<u64> {
    s.metadata().get("retry-after").map(|v| {
        let v = v.to_str().expect("ASCII retry-after");
        v.parse::<u64>()
            .unwrap_or_else(|_| panic!("retry-after must be whole seconds, got {v:?}"))
    })
}

/// Asserts RESOURCE_EXHAUSTED with a `retry-after` and returns it.
#[track_caller]
fn expect_throttled<T: std::fmt::Debug>(result: Result<T, Status>) -> u64 {
    let s = expect_code(result, Code::ResourceExhausted);
    let after = retry_after(&s).unwrap_or_else(|| panic!("no retry-after on {s:?}"));
    assert!(after >= 1, "retry-after must be at least 1 s: {s:?}");
    after
}

/// What a client can observe of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    code: Code,
    retry_after: Option<u64>,
    message: String,
    reason: Option<String>,
}

fn seen<T>(result: Result<T, Status>) -> Seen {
    match result {
        Ok(_) => Seen {
            code: Code::Ok,
            retry_after: None,
            message: String::new(),
            reason: None,
        },
        Err(s) => Seen {
            code: s.code(),
            retry_after: retry_after(&s),
            message: s.message().to_owned(),
            reason: reason(&s),
        },
    }
}

fn by_email(e: &str) -> Identifier {
    Identifier::Email(e.into())
}

fn by_username(u: &str) -> Identifier {
    Identifier::Username(u.into())
}

fn login_req(id: &Identifier, password: &str) -> proto::LoginRequest {
    proto::LoginRequest {
        identifier: Some(id.clone()),
        password: password.into(),
    }
}

async fn login(
    auth: &mut AuthServiceClient<Channel>,
    id: &Identifier,
    password: &str,
) -> Result<proto::LoginResponse, Status> {
    auth.login(login_req(id, password))
        .await
        .map(|r| r.into_inner())
}

async fn login_from(
    auth: &mut AuthServiceClient<Channel>,
    ip: &str,
    id: &Identifier,
    password: &str,
) -> Result<proto::LoginResponse, Status> {
    auth.login(from_ip(login_req(id, password), ip))
        .await
        .map(|r| r.into_inner())
}

async fn register(
    auth: &mut AuthServiceClient<Channel>,
    req: proto::RegisterRequest,
) -> Result<proto::User, Status> {
    auth.register(req)
        .await
        .map(|r| r.into_inner().user.expect("user in RegisterResponse"))
}

fn advance(srv: &TestServer, secs: u64) {
    srv.clock.advance(ChronoDuration::seconds(secs as i64));
}

async fn health_is_serving(srv: &TestServer, channel: Channel) {
    let resp = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(resp.status, ServingStatus::Serving as i32, "{:?}", srv.addr);
}

#[derive(diesel::QueryableByName)]
struct TextRow {
    #[diesel(sql_type = Text)]
    v: String,
}

#[derive(diesel::QueryableByName)]
struct IntRow {
    #[diesel(sql_type = Integer)]
    n: i32,
}

/// `users.password_hash` of an account, read straight from the database at `url`.
async fn stored_hash(url: &str, email: &str) -> String {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .expect("connect to the test database");
    diesel::sql_query("SELECT password_hash AS v FROM users WHERE email = $1")
        .bind::<Text, _>(email)
        .get_result::<TextRow>(&mut conn)
        .await
        .expect("read password hash")
        .v
}

/// The audit events of one user (admin RPC), oldest first.
async fn audit_of(srv: &TestServer, admin_token: &str, user_id: &str) -> Vec<proto::AuditEvent> {
    let mut events = srv
        .users()
        .await
        .list_audit_events(with_bearer(
            proto::ListAuditEventsRequest {
                user_id: user_id.into(),
                page_size: 1000,
                page_token: String::new(),
            },
            admin_token,
        ))
        .await
        .expect("list audit events")
        .into_inner()
        .events;
    events.reverse();
    events
}

// ----- one client -----------------------------------------------------------------------------------

/// Drives one identifier through the escalation and returns everything the client saw:
/// `login_max_failures` wrong passwords, then twelve rounds of "refused while waiting (even the
/// right password), wait as told, fail again". Each wait is checked half a second in, so a
/// client that obeys `retry-after` (rounded up) is never refused for coming back too early.
async fn escalate(
    srv: &TestServer,
    id: &Identifier,
    right_password: &str,
) -> (Vec<Seen>, Vec<u64>) {
    let mut auth = srv.auth().await;
    let mut log = Vec::new();
    for i in 0..5 {
        let s = seen(login(&mut auth, id, WRONG).await);
        assert_eq!(s.code, Code::Unauthenticated, "failure {i}: {s:?}");
        log.push(s);
    }
    let mut waits = Vec::new();
    for round in 0..12 {
        // During the wait even the right password is refused, and refused attempts don't count.
        let first = seen(login(&mut auth, id, right_password).await);
        assert_eq!(
            first.code,
            Code::ResourceExhausted,
            "round {round}: {first:?}"
        );
        let wait = first.retry_after.expect("retry-after");
        log.push(first);
        for _ in 0..3 {
            let s = seen(login(&mut auth, id, WRONG).await);
            assert_eq!(s.code, Code::ResourceExhausted, "round {round}: {s:?}");
            assert_eq!(s.retry_after, Some(wait), "round {round}");
            log.push(s);
        }
        // Half a second in, the rest of the wait is rounded up, never down.
        srv.clock.advance(ChronoDuration::milliseconds(500));
        let s = seen(login(&mut auth, id, right_password).await);
        assert_eq!(s.code, Code::ResourceExhausted, "round {round}: {s:?}");
        assert_eq!(
            s.retry_after,
            Some(wait),
            "round {round}: {}.5 s left must read as {wait} s",
            wait - 1
        );
        log.push(s);
        waits.push(wait);
        // Obeying retry-after is enough: the next (wrong) password is checked again.
        advance(srv, wait);
        let s = seen(login(&mut auth, id, WRONG).await);
        assert_eq!(
            s.code,
            Code::Unauthenticated,
            "round {round} after the wait: {s:?}"
        );
        log.push(s);
    }
    (log, waits)
}

#[tokio::test]
async fn login_throttle_escalates_and_treats_unknown_accounts_identically() {
    let srv = TestServer::start_with(throttle_on).await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;

    let (known, waits) = escalate(&srv, &by_email(&email), PASSWORD).await;
    assert_eq!(
        waits,
        [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900],
        "1 s after the limit, doubling, capped at 15 min"
    );

    // The last failure was the 17th: 900 s to wait. Afterwards the right password works and
    // resets the count, so the next failures start again from the bottom.
    let mut auth = srv.auth().await;
    assert_eq!(
        expect_throttled(login(&mut auth, &by_email(&email), PASSWORD).await),
        900
    );
    advance(&srv, 900);
    login(&mut auth, &by_email(&email), PASSWORD)
        .await
        .expect("the right password after the wait");
    for i in 0..5 {
        let r = login(&mut auth, &by_email(&email), WRONG).await;
        assert_eq!(
            seen(r).code,
            Code::Unauthenticated,
            "failure {i} after a reset"
        );
    }
    assert_eq!(
        expect_throttled(login(&mut auth, &by_email(&email), PASSWORD).await),
        1,
        "a success resets the escalation"
    );

    // An identifier nobody has: the very same codes, messages and retry-after sequence.
    let (unknown, unknown_waits) = escalate(&srv, &by_email(&unique_email()), PASSWORD).await;
    assert_eq!(unknown_waits, waits);
    assert_eq!(
        unknown, known,
        "throttling must not reveal whether an account exists"
    );
    // The same for a username that does not exist.
    let (unknown_user, _) = escalate(&srv, &by_username(&unique_username()), PASSWORD).await;
    assert_eq!(unknown_user, known);
}

#[tokio::test]
async fn login_throttle_is_keyed_by_the_normalized_identifier() {
    let srv = TestServer::start_with(throttle_on).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let email = format!("foo-{id}@x.com");
    let username = format!("Kit_{}", &id[..10]);
    let mut auth = srv.auth().await;
    register(
        &mut auth,
        proto::RegisterRequest {
            username: username.clone(),
            ..reg(&email, PASSWORD)
        },
    )
    .await
    .unwrap();

    // `Foo-…@X.com` and ` foo-…@x.com ` are one identifier.
    let mixed = by_email(&format!("Foo-{id}@X.com"));
    let spaced = by_email(&format!(" foo-{id}@x.com "));
    for _ in 0..3 {
        expect_code(login(&mut auth, &mixed, WRONG).await, Code::Unauthenticated);
    }
    for _ in 0..2 {
        expect_code(
            login(&mut auth, &spaced, WRONG).await,
            Code::Unauthenticated,
        );
    }
    let upper = by_email(&format!("FOO-{}@X.COM", id.to_uppercase()));
    assert_eq!(
        expect_throttled(login(&mut auth, &upper, PASSWORD).await),
        1
    );
    expect_throttled(login(&mut auth, &by_email(&email), PASSWORD).await);

    // The username is a separate identifier: not throttled by the e-mail's failures...
    login(&mut auth, &by_username(&username), PASSWORD)
        .await
        .expect("username login is throttled separately");
    // ...and normalized too (trimmed, any case).
    let lower = by_username(&format!(" {} ", username.to_lowercase()));
    let upper = by_username(&username.to_uppercase());
    for _ in 0..3 {
        expect_code(login(&mut auth, &lower, WRONG).await, Code::Unauthenticated);
    }
    for _ in 0..2 {
        expect_code(login(&mut auth, &upper, WRONG).await, Code::Unauthenticated);
    }
    assert_eq!(
        expect_throttled(login(&mut auth, &by_username(&username), PASSWORD).await),
        1
    );

    // After the wait both work again.
    advance(&srv, 1);
    login(&mut auth, &by_email(&email), PASSWORD).await.unwrap();
    login(&mut auth, &by_username(&username), PASSWORD)
        .await
        .unwrap();
}

// ----- many clients ---------------------------------------------------------------------------------

#[tokio::test]
async fn many_clients_cannot_lock_out_the_owner_for_long() {
    let srv = TestServer::start_with(|c| {
        behind_proxy(c);
        c.login_max_failures = 1_000;
        c.login_max_failures_per_hour = 10;
    })
    .await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let id = by_email(&email);
    let mut auth = srv.auth().await;
    // The owner has logged in from home before.
    login_from(&mut auth, "203.0.113.7", &id, PASSWORD)
        .await
        .expect("owner at home");

    // A distributed guesser: one failure from each of ten addresses reaches the hourly cap.
    for n in 1..=10 {
        let ip = format!("198.51.100.{n}");
        expect_code(
            login_from(&mut auth, &ip, &id, WRONG).await,
            Code::Unauthenticated,
        );
    }
    // Past it, the identifier gets one check per slot, whichever address asks: this one takes the
    // first slot (1 s), and every address, failed or fresh, waits for the next.
    expect_code(
        login_from(&mut auth, "198.51.100.11", &id, WRONG).await,
        Code::Unauthenticated,
    );
    for ip in ["198.51.100.1", "198.51.100.12", "203.0.113.8"] {
        assert_eq!(
            expect_throttled(login_from(&mut auth, ip, &id, PASSWORD).await),
            1,
            "{ip}"
        );
    }
    // The owner, from the address they logged in from before, is exempt.
    let pair = login_from(&mut auth, "203.0.113.7", &id, PASSWORD)
        .await
        .expect("a known address is not locked out");
    assert!(!pair.access_token.is_empty());
    // From a new address the owner gets the next slot once it is free...
    advance(&srv, 1);
    login_from(&mut auth, "203.0.113.8", &id, PASSWORD)
        .await
        .expect("the next slot");
    // ...and that address is known from now on.
    login_from(&mut auth, "203.0.113.8", &id, PASSWORD)
        .await
        .expect("a known address is exempt");

    // The same for an unknown identifier, reply for reply (but nobody is exempt).
    let ghost = by_email(&unique_email());
    for n in 1..=10 {
        let ip = format!("198.51.100.{n}");
        expect_code(
            login_from(&mut auth, &ip, &ghost, WRONG).await,
            Code::Unauthenticated,
        );
    }
    expect_code(
        login_from(&mut auth, "198.51.100.11", &ghost, WRONG).await,
        Code::Unauthenticated,
    );
    assert_eq!(
        expect_throttled(login_from(&mut auth, "203.0.113.7", &ghost, PASSWORD).await),
        1
    );
    advance(&srv, 1);
    expect_code(
        login_from(&mut auth, "203.0.113.7", &ghost, PASSWORD).await,
        Code::Unauthenticated,
    );
}

// ----- shared state ---------------------------------------------------------------------------------

#[tokio::test]
async fn replicas_share_the_throttle_state() {
    let one = TestServer::start_with(throttle_on).await;
    let two = TestServer::start_on(one.config.clone(), one.clock.clone()).await;
    let email = unique_email();
    one.register(&email, PASSWORD).await;
    let id = by_email(&email);
    let (mut a1, mut a2) = (one.auth().await, two.auth().await);

    for _ in 0..5 {
        expect_code(login(&mut a1, &id, WRONG).await, Code::Unauthenticated);
    }
    assert_eq!(expect_throttled(login(&mut a2, &id, PASSWORD).await), 1);
    advance(&one, 1);
    // A success on replica 2 resets the count replica 1 sees.
    login(&mut a2, &id, PASSWORD).await.unwrap();
    for _ in 0..5 {
        expect_code(login(&mut a1, &id, WRONG).await, Code::Unauthenticated);
    }
    assert_eq!(expect_throttled(login(&mut a2, &id, PASSWORD).await), 1);
    two.stop().await;
}

// ----- re-authentication ----------------------------------------------------------------------------

async fn change_password_on(
    users: &mut UserServiceClient<Channel>,
    token: &str,
    current: &str,
    new: &str,
) -> Result<i64, Status> {
    users
        .change_password(with_bearer(
            proto::ChangePasswordRequest {
                current_password: current.into(),
                new_password: new.into(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().revoked_sessions)
}

async fn delete_me_on(
    users: &mut UserServiceClient<Channel>,
    token: &str,
    password: &str,
) -> Result<(), Status> {
    users
        .delete_me(with_bearer(
            proto::DeleteMeRequest {
                password: password.into(),
            },
            token,
        ))
        .await
        .map(|_| ())
}

fn email_change(email: &str, current_password: &str) -> proto::UpdateMeRequest {
    proto::UpdateMeRequest {
        email: Some(email.into()),
        current_password: current_password.into(),
        ..Default::default()
    }
}

async fn update_me_on(
    users: &mut UserServiceClient<Channel>,
    token: &str,
    req: proto::UpdateMeRequest,
) -> Result<proto::User, Status> {
    users
        .update_me(with_bearer(req, token))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn current_password_checks_are_throttled_per_user() {
    let srv = TestServer::start_with(throttle_on).await;
    let mut users = srv.users().await;

    // ChangePassword: five wrong guesses, then even the right password waits.
    let (_, pair) = srv.user_session().await;
    let t = &pair.access_token;
    for _ in 0..5 {
        let e = expect_code(
            change_password_on(&mut users, t, WRONG, OTHER_PASSWORD).await,
            Code::Unauthenticated,
        );
        assert_eq!(reason(&e).as_deref(), Some("INVALID_CREDENTIALS"));
    }
    assert_eq!(
        expect_throttled(change_password_on(&mut users, t, PASSWORD, OTHER_PASSWORD).await),
        1
    );
    // The three checks share the per-user count.
    expect_throttled(delete_me_on(&mut users, t, PASSWORD).await);
    expect_throttled(update_me_on(&mut users, t, email_change(&unique_email(), PASSWORD)).await);
    advance(&srv, 1);
    // One more failure doubles the wait.
    expect_code(
        change_password_on(&mut users, t, WRONG, OTHER_PASSWORD).await,
        Code::Unauthenticated,
    );
    assert_eq!(
        expect_throttled(change_password_on(&mut users, t, PASSWORD, OTHER_PASSWORD).await),
        2
    );
    advance(&srv, 2);
    change_password_on(&mut users, t, PASSWORD, OTHER_PASSWORD)
        .await
        .expect("the right password after the wait");
    // The success reset the count.
    for _ in 0..4 {
        expect_code(
            update_me_on(&mut users, t, email_change(&unique_email(), WRONG)).await,
            Code::Unauthenticated,
        );
    }
    update_me_on(&mut users, t, email_change(&unique_email(), OTHER_PASSWORD))
        .await
        .expect("four failures after a reset are under the limit");

    // UpdateMe (e-mail change) on its own.
    let (_, pair) = srv.user_session().await;
    let t = &pair.access_token;
    for _ in 0..5 {
        expect_code(
            update_me_on(&mut users, t, email_change(&unique_email(), WRONG)).await,
            Code::Unauthenticated,
        );
    }
    let new_email = unique_email();
    assert_eq!(
        expect_throttled(update_me_on(&mut users, t, email_change(&new_email, PASSWORD)).await),
        1
    );
    advance(&srv, 1);
    let me = update_me_on(&mut users, t, email_change(&new_email, PASSWORD))
        .await
        .expect("e-mail change after the wait");
    // Pending until the link mailed to the new address is opened.
    assert_ne!(me.email, new_email);
    authd_testkit::mailbox::wait_eml_tokens(&srv, &new_email, "confirm-email-change", 1).await;

    // DeleteMe on its own.
    let (_, pair) = srv.user_session().await;
    let t = &pair.access_token;
    for _ in 0..5 {
        expect_code(
            delete_me_on(&mut users, t, WRONG).await,
            Code::Unauthenticated,
        );
    }
    assert_eq!(
        expect_throttled(delete_me_on(&mut users, t, PASSWORD).await),
        1
    );
    advance(&srv, 1);
    delete_me_on(&mut users, t, PASSWORD)
        .await
        .expect("DeleteMe after the wait");
}

#[tokio::test]
async fn current_password_checks_are_throttled_per_client_ip() {
    let srv = TestServer::start_with(|c| {
        throttle_on(c);
        behind_proxy(c);
    })
    .await;
    let mut users = srv.users().await;
    let (_, pair) = srv.user_session().await;
    let t = &pair.access_token;
    let attacker = "198.51.100.66";
    for _ in 0..5 {
        let r = users
            .delete_me(bearer_from(
                proto::DeleteMeRequest {
                    password: WRONG.into(),
                },
                t,
                attacker,
            ))
            .await;
        expect_code(r, Code::Unauthenticated);
    }
    let r = users
        .update_me(bearer_from(
            email_change(&unique_email(), PASSWORD),
            t,
            attacker,
        ))
        .await;
    expect_throttled(r);
    // The owner, elsewhere, is not held up by the guesser.
    let new_email = unique_email();
    let me = users
        .update_me(bearer_from(
            email_change(&new_email, PASSWORD),
            t,
            "203.0.113.20",
        ))
        .await
        .expect("another client IP is not throttled")
        .into_inner();
    assert_ne!(me.email, new_email, "pending until confirmed");
    authd_testkit::mailbox::wait_eml_tokens(&srv, &new_email, "confirm-email-change", 1).await;
}

// ----- per-IP token bucket --------------------------------------------------------------------------

#[tokio::test]
async fn register_login_and_refresh_share_a_per_ip_token_bucket() {
    let srv = TestServer::start_with(|c| {
        behind_proxy(c);
        c.rate_limit_per_ip = 5;
    })
    .await;
    let mut auth = srv.auth().await;
    let a = "198.51.100.1";
    let email = unique_email();

    // Five requests of the three kinds from one address...
    auth.register(from_ip(reg(&email, PASSWORD), a))
        .await
        .expect("1: register");
    let pair = login_from(&mut auth, a, &by_email(&email), PASSWORD)
        .await
        .expect("2: login");
    let pair = auth
        .refresh(from_ip(
            proto::RefreshRequest {
                refresh_token: pair.refresh_token,
            },
            a,
        ))
        .await
        .expect("3: refresh")
        .into_inner();
    expect_code(
        login_from(&mut auth, a, &by_email(&email), WRONG).await,
        Code::Unauthenticated,
    );
    auth.register(from_ip(reg(&unique_email(), PASSWORD), a))
        .await
        .expect("5: register");
    // ...and the sixth of any kind is refused with retry-after (one token per 12 s).
    let r = auth
        .refresh(from_ip(
            proto::RefreshRequest {
                refresh_token: pair.refresh_token.clone(),
            },
            a,
        ))
        .await;
    let after = expect_throttled(r);
    assert!(after <= 12, "retry-after {after}");
    expect_throttled(login_from(&mut auth, a, &by_email(&email), PASSWORD).await);
    expect_throttled(
        auth.register(from_ip(reg(&unique_email(), PASSWORD), a))
            .await,
    );

    // Other RPCs from the same address are not limited.
    let key = srv.service_key().await;
    let mut users = srv.users().await;
    for _ in 0..10 {
        users
            .get_me(bearer_from(proto::GetMeRequest {}, &pair.access_token, a))
            .await
            .expect("GetMe is not rate limited");
        let mut r = from_ip(
            proto::ValidateTokenRequest {
                access_token: pair.access_token.clone(),
            },
            a,
        );
        r.metadata_mut().insert("x-api-key", key.parse().unwrap());
        let v = auth
            .validate_token(r)
            .await
            .expect("ValidateToken is not rate limited")
            .into_inner();
        assert!(v.valid);
        let resp = srv
            .health()
            .await
            .check(from_ip(
                HealthCheckRequest {
                    service: String::new(),
                },
                a,
            ))
            .await
            .expect("health is not rate limited")
            .into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32);
    }

    // Another client address has its own bucket.
    let b = "198.51.100.2";
    let pair = login_from(&mut auth, b, &by_email(&email), PASSWORD)
        .await
        .expect("another IP is unaffected");
    auth.refresh(from_ip(
        proto::RefreshRequest {
            refresh_token: pair.refresh_token,
        },
        b,
    ))
    .await
    .expect("another IP is unaffected");
}

#[tokio::test]
async fn rate_limit_zero_turns_the_bucket_off() {
    let srv = TestServer::start_with(|c| c.rate_limit_per_ip = 0).await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let mut auth = srv.auth().await;
    for _ in 0..40 {
        login(&mut auth, &by_email(&email), PASSWORD)
            .await
            .expect("no rate limit when it is 0");
    }
}

#[test]
fn brute_force_defences_are_on_by_default() {
    let d = Config::defaults();
    assert_eq!(d.login_max_failures, 5);
    assert_eq!(d.login_max_failures_per_hour, 100);
    assert_eq!(d.rate_limit_per_ip, 60);
    assert_eq!(d.min_password_score, 3);
    assert!(d.trusted_proxies.is_empty());
    assert_eq!(d.request_timeout, Duration::from_secs(10));
}

// ----- trusted proxies ------------------------------------------------------------------------------

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let srv = TestServer::start_with(throttle_on).await;
    let admin = srv.admin_session().await;
    let email = unique_email();
    let mut auth = srv.auth().await;
    let user = register(&mut auth, reg(&email, PASSWORD)).await.unwrap();
    let pair = login_from(&mut auth, "198.51.100.9", &by_email(&email), PASSWORD)
        .await
        .unwrap();

    let sessions = srv.my_sessions(&pair.access_token).await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].ip_address, "127.0.0.1");
    let events = audit_of(&srv, &admin.access_token, &user.id).await;
    let login_event = events
        .iter()
        .find(|e| e.kind == "LOGIN_SUCCEEDED")
        .expect("LOGIN_SUCCEEDED event");
    assert_eq!(login_event.ip_address, "127.0.0.1");

    // A forged header buys no fresh throttle state either.
    for n in 1..=5 {
        let ip = format!("198.51.100.{n}");
        expect_code(
            login_from(&mut auth, &ip, &by_email(&email), WRONG).await,
            Code::Unauthenticated,
        );
    }
    expect_throttled(login_from(&mut auth, "198.51.100.6", &by_email(&email), PASSWORD).await);
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_buys_no_fresh_rate_limit_bucket() {
    let srv = TestServer::start_with(|c| c.rate_limit_per_ip = 3).await;
    let mut auth = srv.auth().await;
    for n in 1..=3 {
        let ip = format!("198.51.100.{n}");
        expect_code(
            login_from(&mut auth, &ip, &by_email(&unique_email()), WRONG).await,
            Code::Unauthenticated,
        );
    }
    expect_throttled(
        login_from(&mut auth, "198.51.100.4", &by_email(&unique_email()), WRONG).await,
    );
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_names_the_client_everywhere() {
    let srv = TestServer::start_with(|c| {
        throttle_on(c);
        behind_proxy(c);
    })
    .await;
    let admin = srv.admin_session().await;
    let email = unique_email();
    let mut auth = srv.auth().await;
    // The right-most address that is not a trusted proxy is the client.
    let user = auth
        .register(from_ip(
            reg(&email, PASSWORD),
            "203.0.113.50, 198.51.100.23",
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let pair = auth
        .login(from_ip(
            login_email(&email, PASSWORD),
            "203.0.113.99, 198.51.100.23, 127.0.0.1",
        ))
        .await
        .unwrap()
        .into_inner();

    let sessions = srv.my_sessions(&pair.access_token).await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].ip_address, "198.51.100.23");
    let events = audit_of(&srv, &admin.access_token, &user.id).await;
    for kind in ["USER_CREATED", "LOGIN_SUCCEEDED"] {
        let e = events
            .iter()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("{kind} event in {events:?}"));
        assert_eq!(e.ip_address, "198.51.100.23", "{kind}");
    }

    // The throttle counts that client, not the proxy.
    for _ in 0..5 {
        expect_code(
            login_from(&mut auth, "198.51.100.23", &by_email(&email), WRONG).await,
            Code::Unauthenticated,
        );
    }
    expect_throttled(login_from(&mut auth, "198.51.100.23", &by_email(&email), PASSWORD).await);
    login_from(&mut auth, "198.51.100.24", &by_email(&email), PASSWORD)
        .await
        .expect("another client behind the same proxy is not throttled");
    // Failed logins are audited with the client address too.
    let events = audit_of(&srv, &admin.access_token, &user.id).await;
    let failed: Vec<_> = events.iter().filter(|e| e.kind == "LOGIN_FAILED").collect();
    assert!(failed.len() >= 5, "{failed:?}");
    assert!(
        failed.iter().all(|e| e.ip_address == "198.51.100.23"),
        "{failed:?}"
    );
}

// ----- password strength ----------------------------------------------------------------------------

#[track_caller]
fn assert_weak<T: std::fmt::Debug>(result: Result<T, Status>, what: &str) -> Status {
    let s = expect_code(result, Code::InvalidArgument);
    let m = s.message();
    assert!(m.contains("too weak"), "{what}: {m:?}");
    assert!(
        m.contains("Add another word") || m.contains("passphrase"),
        "{what}: the message should say how to do better: {m:?}"
    );
    s
}

#[tokio::test]
async fn weak_passwords_are_refused_with_a_hint_everywhere() {
    let srv = TestServer::start().await;
    let mut auth = srv.auth().await;
    let mut users = srv.users().await;
    let admin = srv.admin_session().await;

    for weak in ["password1", "qwertyuiop", "aaaaaaaa", "12345678"] {
        assert_weak(register(&mut auth, reg(&unique_email(), weak)).await, weak);
    }
    // The account's own e-mail local part and username are known words...
    let email = "zanzibar.quokka.trombone@example.com";
    assert_weak(
        register(&mut auth, reg(email, "zanzibar.quokka.trombone")).await,
        "own e-mail",
    );
    let username = "Kestrel_Marmalade_Quasar";
    assert_weak(
        register(
            &mut auth,
            proto::RegisterRequest {
                username: username.into(),
                ..reg(&unique_email(), "kestrel_marmalade_quasar")
            },
        )
        .await,
        "own username",
    );
    // ...while the very same passwords are fine for someone else.
    register(&mut auth, reg(&unique_email(), "zanzibar.quokka.trombone"))
        .await
        .expect("strong for an unrelated account");
    register(&mut auth, reg(&unique_email(), "kestrel_marmalade_quasar"))
        .await
        .expect("strong for an unrelated account");
    // No composition rules: lowercase words and spaces only.
    register(
        &mut auth,
        reg(&unique_email(), "plinth marzipan obelisk turnip"),
    )
    .await
    .expect("an all-lowercase passphrase is strong");

    // CreateUser (admin).
    let create = |email: String, password: &str, username: &str| proto::CreateUserRequest {
        email,
        password: password.into(),
        username: username.into(),
        role: proto::Role::User as i32,
        ..Default::default()
    };
    let r = users
        .create_user(with_bearer(
            create(unique_email(), "password1", ""),
            &admin.access_token,
        ))
        .await;
    assert_weak(r, "CreateUser");
    let r = users
        .create_user(with_bearer(
            create(
                unique_email(),
                "kestrel.marmalade.quasar",
                "Kestrel.Marmalade.Quasar",
            ),
            &admin.access_token,
        ))
        .await;
    assert_weak(r, "CreateUser with own username");
    let target = users
        .create_user(with_bearer(
            create(
                "harpsichord.lemur.vortex@example.com".into(),
                "plinth marzipan obelisk turnip",
                "Nimbus_Cobalt_Ferret",
            ),
            &admin.access_token,
        ))
        .await
        .expect("CreateUser with a strong password")
        .into_inner();

    // ChangePassword.
    let (_, pair) = srv.user_session().await;
    let t = &pair.access_token;
    let e = assert_weak(
        change_password_on(&mut users, t, PASSWORD, "qwertyuiop").await,
        "ChangePassword",
    );
    assert!(e.message().contains("new_password"), "{e:?}");
    change_password_on(&mut users, t, PASSWORD, "plinth marzipan obelisk turnip")
        .await
        .expect("ChangePassword to a strong passphrase");

    // UpdateUser(password), with the target's own e-mail and username as context.
    let update = |password: &str| proto::UpdateUserRequest {
        user_id: target.id.clone(),
        password: Some(password.into()),
        ..Default::default()
    };
    for weak in [
        "12345678",
        "harpsichord.lemur.vortex",
        "nimbus_cobalt_ferret",
    ] {
        let r = users
            .update_user(with_bearer(update(weak), &admin.access_token))
            .await;
        assert_weak(r, weak);
    }
    users
        .update_user(with_bearer(
            update("gazebo turquoise quarry lantern"),
            &admin.access_token,
        ))
        .await
        .expect("UpdateUser with a strong password");
}

#[tokio::test]
async fn the_minimum_score_is_configurable() {
    // "velvet tractor" scores 3 of 4.
    let default = TestServer::start().await;
    let mut auth = default.auth().await;
    register(&mut auth, reg(&unique_email(), "velvet tractor"))
        .await
        .expect("score 3 passes the default minimum");

    let strict = TestServer::start_with(|c| c.min_password_score = 4).await;
    let mut auth = strict.auth().await;
    assert_weak(
        register(&mut auth, reg(&unique_email(), "velvet tractor")).await,
        "score 3 under minimum 4",
    );
    register(&mut auth, reg(&unique_email(), "velvet tractor mango"))
        .await
        .expect("score 4");

    // 0 turns the estimator off; the length rules still apply.
    let lax = TestServer::start_with(|c| c.min_password_score = 0).await;
    let mut auth = lax.auth().await;
    for weak in ["password1", "aaaaaaaa", "12345678"] {
        register(&mut auth, reg(&unique_email(), weak))
            .await
            .unwrap_or_else(|e| panic!("{weak} under minimum 0: {e:?}"));
    }
    for bad in ["short1", "abc", &"a".repeat(73)] {
        let e = expect_code(
            register(&mut auth, reg(&unique_email(), bad)).await,
            Code::InvalidArgument,
        );
        assert!(!e.message().contains("too weak"), "{e:?}");
    }
}

// ----- bcrypt cost upgrade --------------------------------------------------------------------------

#[tokio::test]
async fn login_upgrades_a_cheaper_hash_and_a_failed_login_does_not() {
    let old = TestServer::start().await;
    let email = unique_email();
    old.register(&email, PASSWORD).await;
    let config = old.config.clone();
    let clock = old.clock.clone();
    let url = old.url.clone();
    old.stop().await;
    let hash4 = stored_hash(&url, &email).await;
    assert!(hash4.starts_with("$2b$04$"), "{hash4}");

    let srv = TestServer::start_on(
        Config {
            bcrypt_cost: 5,
            ..config.clone()
        },
        clock.clone(),
    )
    .await;
    let mut auth = srv.auth().await;
    // A failed login leaves the hash alone.
    expect_code(
        login(&mut auth, &by_email(&email), WRONG).await,
        Code::Unauthenticated,
    );
    assert_eq!(stored_hash(&url, &email).await, hash4);

    login(&mut auth, &by_email(&email), PASSWORD)
        .await
        .expect("login with the cheaper hash");
    let hash5 = stored_hash(&url, &email).await;
    assert!(hash5.starts_with("$2b$05$"), "{hash5}");
    login(&mut auth, &by_email(&email), PASSWORD)
        .await
        .expect("login with the upgraded hash");
    assert_eq!(
        stored_hash(&url, &email).await,
        hash5,
        "an up-to-date hash is not re-hashed"
    );
    srv.stop().await;

    // A server configured cheaper never downgrades.
    let cheap = TestServer::start_on(config, clock).await;
    cheap.login(&email, PASSWORD).await;
    assert_eq!(stored_hash(&url, &email).await, hash5);
}

// ----- input limits ---------------------------------------------------------------------------------

#[tokio::test]
async fn an_oversized_message_gets_a_clean_error_and_the_server_stays_healthy() {
    let srv = TestServer::start().await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let channel = srv.channel().await;
    let mut auth = AuthServiceClient::new(channel.clone());

    let big = proto::RegisterRequest {
        first_name: "x".repeat(100 * 1024),
        ..reg(&unique_email(), PASSWORD)
    };
    // tonic's own answer is OUT_OF_RANGE; the contract's code for "over a limit" is RESOURCE_EXHAUSTED.
    let e = expect_code(register(&mut auth, big).await, Code::ResourceExhausted);
    assert!(e.message().contains("too large"), "{e:?}");
    // Just under the limit decodes, and is refused by validation instead.
    let under = proto::RegisterRequest {
        first_name: "x".repeat(60 * 1024),
        ..reg(&unique_email(), PASSWORD)
    };
    expect_code(register(&mut auth, under).await, Code::InvalidArgument);

    // The same channel and a new one both still work.
    health_is_serving(&srv, channel.clone()).await;
    login(&mut auth, &by_email(&email), PASSWORD)
        .await
        .expect("login on the same channel");
    health_is_serving(&srv, srv.channel().await).await;
    srv.login(&email, PASSWORD).await;
}

#[tokio::test]
async fn oversized_metadata_is_refused_and_the_server_stays_healthy() {
    let srv = TestServer::start().await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let channel = srv.channel().await;
    let mut auth = AuthServiceClient::new(channel.clone());

    let junk = |kib: usize| {
        let mut r = Request::new(login_email(&email, PASSWORD));
        r.metadata_mut()
            .insert("x-junk", "a".repeat(kib * 1024).parse().unwrap());
        r
    };
    // Over the 16 KiB metadata limit, authd answers RESOURCE_EXHAUSTED itself.
    for kib in [17, 20, 48] {
        let e = expect_code(auth.login(junk(kib)).await, Code::ResourceExhausted);
        assert!(
            e.message().contains("metadata too large"),
            "{kib} KiB: {e:?}"
        );
    }
    // Between the HTTP/2 header-list limit (64 KiB) and about three times it, HTTP/2 refuses the
    // stream with HTTP 431 (RFC 9113 section 10.5.1) before any gRPC code runs; tonic clients report
    // the missing grpc-status as UNKNOWN naming the 431. The server stays healthy.
    for kib in [70, 128] {
        let e = expect_code(auth.login(junk(kib)).await, Code::Unknown);
        assert!(e.message().contains("431"), "{kib} KiB: {e:?}");
        health_is_serving(&srv, channel.clone()).await;
    }
    // Far over the HTTP/2 header-list limit (64 KiB), HTTP/2 itself refuses the block (GOAWAY
    // ENHANCE_YOUR_CALM), which gRPC clients see as RESOURCE_EXHAUSTED.
    for kib in [256, 1024] {
        let e = expect_code(auth.login(junk(kib)).await, Code::ResourceExhausted);
        assert!(!e.message().contains("internal"), "{kib} KiB: {e:?}");
        // Each time the channel reconnects and carries on.
        health_is_serving(&srv, channel.clone()).await;
    }
    // Under the limit is fine.
    auth.login(junk(8)).await.expect("8 KiB of metadata");

    health_is_serving(&srv, channel.clone()).await;
    login(&mut auth, &by_email(&email), PASSWORD)
        .await
        .expect("login on the same channel");
    health_is_serving(&srv, srv.channel().await).await;
    srv.login(&email, PASSWORD).await;
}

/// A valid e-mail address of exactly `len` characters (70 or more): a 64-character local part
/// and a domain of labels of at most 63 characters.
fn email_of_len(len: usize) -> String {
    let mut rest = len - 65 - ".com".len();
    let mut domain = String::new();
    while rest > 63 {
        domain.push_str(&"b".repeat(62));
        domain.push('.');
        rest -= 63;
    }
    domain.push_str(&"c".repeat(rest));
    let e = format!("{}@{domain}.com", "a".repeat(64));
    assert_eq!(e.len(), len, "{e}");
    e
}

fn reg_with(f: impl FnOnce(&mut proto::RegisterRequest)) -> proto::RegisterRequest {
    let mut r = reg(&unique_email(), PASSWORD);
    f(&mut r);
    r
}

#[tokio::test]
async fn every_string_field_has_a_maximum_length() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let at = &admin.access_token;
    let mut auth = srv.auth().await;
    let mut users = srv.users().await;
    let invalid = Code::InvalidArgument;

    // Register: email 254, username 32, names 100 characters (not bytes), password input.
    register(&mut auth, reg(&email_of_len(254), PASSWORD))
        .await
        .expect("a 254-character e-mail");
    expect_code(
        register(&mut auth, reg(&email_of_len(255), PASSWORD)).await,
        invalid,
    );
    register(&mut auth, reg_with(|r| r.username = "u".repeat(32)))
        .await
        .expect("a 32-character username");
    expect_code(
        register(&mut auth, reg_with(|r| r.username = "v".repeat(33))).await,
        invalid,
    );
    register(&mut auth, reg_with(|r| r.first_name = "é".repeat(100)))
        .await
        .expect("a 100-character first name");
    register(&mut auth, reg_with(|r| r.last_name = "é".repeat(100)))
        .await
        .expect("a 100-character last name");
    expect_code(
        register(&mut auth, reg_with(|r| r.first_name = "é".repeat(101))).await,
        invalid,
    );
    expect_code(
        register(&mut auth, reg_with(|r| r.last_name = "n".repeat(101))).await,
        invalid,
    );
    expect_code(
        register(&mut auth, reg_with(|r| r.password = "p".repeat(1025))).await,
        invalid,
    );

    // Login: the identifier is capped at 320 bytes, the password input at 1024 bytes. Within the
    // caps, credentials that cannot match are just wrong.
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    expect_code(
        login(&mut auth, &by_email(&email), &"p".repeat(1024)).await,
        Code::Unauthenticated,
    );
    expect_code(
        login(&mut auth, &by_email(&email), &"p".repeat(1025)).await,
        invalid,
    );
    expect_code(
        login(
            &mut auth,
            &by_email(&format!("{}@x.com", "a".repeat(400))),
            PASSWORD,
        )
        .await,
        invalid,
    );
    expect_code(
        login(&mut auth, &by_username(&"u".repeat(321)), PASSWORD).await,
        invalid,
    );

    // Refresh and Logout: refresh_token 512 bytes.
    let refresh = |t: String| proto::RefreshRequest { refresh_token: t };
    expect_code(
        auth.refresh(refresh("r".repeat(512))).await,
        Code::Unauthenticated,
    );
    expect_code(auth.refresh(refresh("r".repeat(513))).await, invalid);
    expect_code(
        auth.logout(proto::LogoutRequest {
            refresh_token: "r".repeat(513),
        })
        .await,
        invalid,
    );

    // ValidateToken: access_token 4096 bytes.
    let key = srv.service_key().await;
    let validate = |t: String| with_key(proto::ValidateTokenRequest { access_token: t }, &key);
    let v = auth
        .validate_token(validate("a".repeat(4096)))
        .await
        .expect("4096 bytes is checked")
        .into_inner();
    assert!(!v.valid);
    expect_code(
        auth.validate_token(validate("a".repeat(4097))).await,
        invalid,
    );

    // CreateServiceKey: name 100 characters.
    let key_named = |n: String| {
        with_bearer(
            proto::CreateServiceKeyRequest {
                name: n,
                ..Default::default()
            },
            at,
        )
    };
    auth.create_service_key(key_named("k".repeat(100)))
        .await
        .expect("a 100-character name");
    expect_code(
        auth.create_service_key(key_named("k".repeat(101))).await,
        invalid,
    );

    // ListUsers: query 254 characters, page_token 256 bytes.
    let list = |query: String, page_token: String| {
        with_bearer(
            proto::ListUsersRequest {
                query,
                page_token,
                ..Default::default()
            },
            at,
        )
    };
    users
        .list_users(list("q".repeat(254), String::new()))
        .await
        .expect("a 254-character query");
    expect_code(
        users.list_users(list("q".repeat(255), String::new())).await,
        invalid,
    );
    expect_code(
        users.list_users(list(String::new(), "t".repeat(257))).await,
        invalid,
    );

    // UpdateMe.
    let (_, pair) = srv.user_session().await;
    let t = &pair.access_token;
    for (what, req) in [
        (
            "username",
            proto::UpdateMeRequest {
                username: Some("u".repeat(33)),
                ..Default::default()
            },
        ),
        (
            "first_name",
            proto::UpdateMeRequest {
                first_name: Some("f".repeat(101)),
                ..Default::default()
            },
        ),
        (
            "last_name",
            proto::UpdateMeRequest {
                last_name: Some("l".repeat(101)),
                ..Default::default()
            },
        ),
        ("email", email_change(&email_of_len(255), PASSWORD)),
        (
            "current_password",
            email_change(&unique_email(), &"p".repeat(1025)),
        ),
    ] {
        let e = expect_code(update_me_on(&mut users, t, req).await, invalid);
        assert!(e.message().contains(what), "{what}: {e:?}");
    }
    expect_code(
        change_password_on(&mut users, t, &"p".repeat(1025), OTHER_PASSWORD).await,
        invalid,
    );
    expect_code(
        delete_me_on(&mut users, t, &"p".repeat(1025)).await,
        invalid,
    );

    // CreateUser and UpdateUser.
    let r = users
        .create_user(with_bearer(
            proto::CreateUserRequest {
                email: email_of_len(255),
                password: PASSWORD.into(),
                ..Default::default()
            },
            at,
        ))
        .await;
    expect_code(r, invalid);
    let me = srv
        .users()
        .await
        .get_me(with_bearer(proto::GetMeRequest {}, t))
        .await;
    let r = users
        .update_user(with_bearer(
            proto::UpdateUserRequest {
                user_id: me.unwrap().into_inner().id,
                first_name: Some("f".repeat(101)),
                ..Default::default()
            },
            at,
        ))
        .await;
    expect_code(r, invalid);
}

#[tokio::test]
async fn oversized_login_input_is_refused_before_the_throttle_counts_it() {
    let srv = TestServer::start_with(throttle_on).await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let mut auth = srv.auth().await;
    for _ in 0..10 {
        expect_code(
            login(&mut auth, &by_email(&email), &"p".repeat(5000)).await,
            Code::InvalidArgument,
        );
    }
    login(&mut auth, &by_email(&email), PASSWORD)
        .await
        .expect("refused input counts as no failure");
}

/// Leaves about `n` idle connections in the server's pool: `n` UpdateMe calls wait together on
/// the user's row, locked by `locker`, then all finish. The pool hands out its oldest idle
/// connection first, so a connection wrongly returned to it mid-transaction would then sit there
/// (open, holding its locks) for a long while instead of being picked up at once by the
/// readiness probe.
async fn fill_the_pool(
    srv: &TestServer,
    locker: &mut AsyncPgConnection,
    user_id: &str,
    token: &str,
    n: i64,
) {
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM users WHERE id = '{user_id}' FOR UPDATE"
        ))
        .await
        .expect("lock the user row");
    let users = srv.users().await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut users = users.clone();
        let token = token.to_owned();
        calls.spawn(async move {
            let req = proto::UpdateMeRequest {
                first_name: Some(format!("Warm {i}")),
                ..Default::default()
            };
            // OK, or DEADLINE_EXCEEDED on a slow machine: this only warms the pool up.
            let _ = users.update_me(with_bearer(req, &token)).await;
        });
    }
    let mut watcher = srv.db().await;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(800) {
        let waiting = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .get_result::<Count>(&mut watcher)
        .await
        .expect("count waiting backends")
        .n;
        if waiting >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    locker.batch_execute("ROLLBACK").await.expect("unlock");
    while calls.join_next().await.is_some() {}
}

/// Runs a `SELECT count(*) AS n` until it answers 0 or `budget` has passed; returns the last count.
async fn poll_until_zero(conn: &mut AsyncPgConnection, sql: &str, budget: Duration) -> i64 {
    let start = std::time::Instant::now();
    loop {
        let n = diesel::sql_query(sql)
            .get_result::<Count>(conn)
            .await
            .expect("count")
            .n;
        if n == 0 || start.elapsed() >= budget {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ----- request timeout ------------------------------------------------------------------------------

#[tokio::test]
async fn a_timed_out_request_gets_deadline_exceeded_and_leaves_no_transaction_open() {
    let srv = TestServer::start_with(|c| {
        c.request_timeout = Duration::from_secs(1);
        // Strict rotation: had the abandoned Refresh committed, presenting its token again would
        // be reuse and fail.
        c.refresh_reuse_grace = Duration::ZERO;
        c.db_pool_size = 12;
    })
    .await;
    let (user, pair) = srv.user_session().await;
    let mut locker = srv.db().await;
    fill_the_pool(&srv, &mut locker, &user.id, &pair.access_token, 10).await;

    // Hold the session row, so Refresh blocks inside its transaction.
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT * FROM sessions WHERE id = '{}' FOR UPDATE",
            pair.session_id
        ))
        .await
        .expect("lock the session row");
    let mut auth = srv.auth().await;
    let r = auth
        .refresh(proto::RefreshRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await;
    let e = expect_code(r, Code::DeadlineExceeded);
    assert!(!e.message().is_empty());

    // While the test still holds the lock, the abandoned request stops waiting for it: its
    // connection was closed, not handed back to the pool mid-transaction.
    let mut conn = srv.db().await;
    let waiting = poll_until_zero(
        &mut conn,
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        waiting, 0,
        "the abandoned request still waits on the row lock"
    );
    locker
        .batch_execute("ROLLBACK")
        .await
        .expect("release the lock");

    // No transaction is left open by the abandoned request.
    let open = poll_until_zero(
        &mut conn,
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(open, 0, "a transaction was left open");
    let generation = diesel::sql_query("SELECT generation AS n FROM sessions WHERE id = $1::uuid")
        .bind::<Text, _>(pair.session_id.as_str())
        .get_result::<IntRow>(&mut conn)
        .await
        .expect("session generation")
        .n;
    assert_eq!(
        generation, 0,
        "the abandoned rotation must not be committed"
    );

    // So the same refresh token still works, once.
    let next = auth
        .refresh(proto::RefreshRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .expect("the abandoned Refresh was rolled back")
        .into_inner();
    assert_ne!(next.refresh_token, pair.refresh_token);
    health_is_serving(&srv, srv.channel().await).await;
}

// ----- unknown fields -------------------------------------------------------------------------------

/// RegisterRequest as a client with a newer (or hostile) schema might send it.
#[derive(Clone, PartialEq, prost::Message)]
struct RegisterWithExtras {
    #[prost(string, tag = "1")]
    email: String,
    #[prost(string, tag = "2")]
    password: String,
    /// Where CreateUserRequest has `role`.
    #[prost(int32, tag = "6")]
    role: i32,
    #[prost(bool, tag = "7")]
    active: bool,
    #[prost(string, tag = "99")]
    extra: String,
}

/// UpdateMeRequest with fields it does not have.
#[derive(Clone, PartialEq, prost::Message)]
struct UpdateMeWithExtras {
    #[prost(string, optional, tag = "2")]
    first_name: Option<String>,
    #[prost(int32, tag = "6")]
    role: i32,
    #[prost(string, tag = "99")]
    extra: String,
}

async fn raw_unary<Req, Resp>(
    srv: &TestServer,
    path: &'static str,
    req: Request<Req>,
) -> Result<Resp, Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(srv.channel().await);
    grpc.ready().await.expect("channel ready");
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(req, http::uri::PathAndQuery::from_static(path), codec)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn unknown_fields_change_nothing() {
    let srv = TestServer::start().await;
    let email = unique_email();
    let resp: proto::RegisterResponse = raw_unary(
        &srv,
        "/authd.v1.AuthService/Register",
        Request::new(RegisterWithExtras {
            email: email.clone(),
            password: PASSWORD.into(),
            role: proto::Role::Admin as i32,
            active: true,
            extra: "please make me an admin".into(),
        }),
    )
    .await
    .expect("unknown fields are ignored");
    let user = resp.user.unwrap();
    assert_eq!(user.role, proto::Role::User as i32);
    assert_eq!(user.email, email);

    let pair = srv.login(&email, PASSWORD).await;
    let me: proto::User = raw_unary(
        &srv,
        "/authd.v1.UserService/UpdateMe",
        with_bearer(
            UpdateMeWithExtras {
                first_name: Some("Ada".into()),
                role: proto::Role::Admin as i32,
                extra: "x".repeat(1000),
            },
            &pair.access_token,
        ),
    )
    .await
    .expect("unknown fields are ignored");
    assert_eq!(me.first_name, "Ada");
    assert_eq!(me.role, proto::Role::User as i32);
    assert!(me.active);

    // Nothing changed behind the scenes either.
    let pair = srv.login(&email, PASSWORD).await;
    let v = srv.validate(&pair.access_token).await;
    assert!(v.valid);
    assert_eq!(v.role, proto::Role::User as i32);
    let me = srv
        .users()
        .await
        .get_me(with_bearer(proto::GetMeRequest {}, &pair.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.role, proto::Role::User as i32);
    assert!(me.active);
}

/// RegisterRequest's field 1 (email, a string) sent as a varint: not decodable as RegisterRequest.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(uint64, tag = "1")]
    email: u64,
}

#[tokio::test]
async fn a_malformed_message_is_invalid_argument_not_internal() {
    let srv = TestServer::start().await;
    let e = expect_code(
        raw_unary::<WrongWireType, proto::RegisterResponse>(
            &srv,
            "/authd.v1.AuthService/Register",
            Request::new(WrongWireType { email: 7 }),
        )
        .await,
        Code::InvalidArgument,
    );
    assert!(e.message().contains("malformed"), "{e:?}");
    // Our own internal errors keep their code; only tonic's decode failure is remapped, and the
    // server carries on.
    srv.register(&unique_email(), PASSWORD).await;
}
