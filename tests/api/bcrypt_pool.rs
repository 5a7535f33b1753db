//! The bcrypt pool: fair per-client queues served round-robin, admission by deadline, a per-client
//! memory cap, and the padding of failed checks against cheaper hashes. Refused password calls fail
//! fast with RESOURCE_EXHAUSTED, and the calls that need no bcrypt are served as usual.
//!
//! The pool is occupied deterministically with `Authd::hold_bcrypt` / `hold_bcrypt_for` (jobs that
//! block until released, counted by admission as jobs of a given run time), never with timing.
//! Client addresses come from `x-forwarded-for`, with the test client (127.0.0.1) a trusted proxy.

use std::sync::Arc;
use std::time::Duration;

use authd::api::ClientKey;
use authd::api::password::Hold;
use authd::clock::ManualClock;
use authd::proto;
use chrono::Utc;
use tokio::task::JoinSet;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use authd_testkit::*;

/// Asserts the pool-full refusal: RESOURCE_EXHAUSTED, its message, and a `retry-after`.
#[track_caller]
fn expect_pool_full<T: std::fmt::Debug>(result: Result<T, Status>) {
    let s = expect_code(result, Code::ResourceExhausted);
    assert_eq!(
        s.message(),
        "too many password checks in progress; retry shortly"
    );
    let after: u64 = s
        .metadata()
        .get("retry-after")
        .unwrap_or_else(|| panic!("no retry-after on {s:?}"))
        .to_str()
        .expect("ASCII retry-after")
        .parse()
        .expect("retry-after in whole seconds");
    assert!(after >= 1, "{s:?}");
}

/// Occupies every thread of the pool with a hold (waiting until each runs) that admission counts as
/// a job of a minute, so that no password check with the default 10 s deadline can fit.
async fn saturate(srv: &TestServer, threads: usize) -> Vec<Hold> {
    let mut holds = Vec::new();
    for _ in 0..threads {
        let mut h = srv
            .svc
            .hold_bcrypt_for(None, Duration::from_secs(60))
            .expect("a free bcrypt thread");
        h.started().await.expect("hold started");
        holds.push(h);
    }
    holds
}

fn key(ip: &str) -> Option<ClientKey> {
    Some(ClientKey::of(ip.parse().expect("ip")))
}

/// Waits until `n` password checks wait for a bcrypt thread (no timing: it polls the pool).
async fn until_waiting(srv: &TestServer, n: usize) {
    while srv.svc.bcrypt_waiting() != n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn release(holds: Vec<Hold>) {
    for h in holds {
        h.release().await.expect("release");
    }
}

#[tokio::test]
async fn checks_that_cannot_finish_by_their_deadline_are_refused_and_cheap_calls_served() {
    let srv = TestServer::start_with(|c| {
        c.bcrypt_concurrency = 2;
    })
    .await;
    let email = unique_email();
    let user = srv.register(&email, PASSWORD).await;
    let pair = srv.login(&email, PASSWORD).await;
    let key = srv.service_key().await;
    let mut auth = srv.auth().await;
    let mut users = srv.users().await;
    let mut health = srv.health().await;

    let holds = saturate(&srv, 2).await;

    // Every call that needs bcrypt would wait about 30 s (two threads, a minute of work each), past
    // its 10 s deadline: it is refused at once, whatever the account.
    expect_pool_full(auth.login(login_email(&email, PASSWORD)).await);
    expect_pool_full(auth.login(login_email(&email, OTHER_PASSWORD)).await);
    expect_pool_full(auth.login(login_email(&unique_email(), PASSWORD)).await);
    expect_pool_full(
        auth.register(proto::RegisterRequest {
            email: unique_email(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await,
    );

    // Health, ValidateToken and GetMe do not wait for bcrypt.
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let v = auth
        .validate_token(with_key(
            proto::ValidateTokenRequest {
                access_token: pair.access_token.clone(),
            },
            &key,
        ))
        .await
        .expect("ValidateToken")
        .into_inner();
    assert!(v.valid);
    assert_eq!(v.user_id, user.id);
    let me = users
        .get_me(with_bearer(proto::GetMeRequest {}, &pair.access_token))
        .await
        .expect("GetMe")
        .into_inner();
    assert_eq!(me.id, user.id);
    // Nor does Refresh.
    auth.refresh(proto::RefreshRequest {
        refresh_token: pair.refresh_token.clone(),
    })
    .await
    .expect("Refresh");

    // Once the pool has room, the same login succeeds.
    release(holds).await;
    srv.login(&email, PASSWORD).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_refused_login_is_not_a_failed_attempt() {
    // One failure would make this client wait; refusals checked no password, so they must not count.
    let srv = TestServer::start_with(|c| {
        c.bcrypt_concurrency = 1;
        c.bcrypt_queue = Some(0);
        c.login_max_failures = 1;
    })
    .await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let mut auth = srv.auth().await;

    let holds = saturate(&srv, 1).await;
    for _ in 0..3 {
        expect_pool_full(auth.login(login_email(&email, OTHER_PASSWORD)).await);
    }
    release(holds).await;

    srv.login(&email, PASSWORD).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_burst_of_right_password_logins_from_one_address_is_served_in_full() {
    // Two threads, the default per-client cap (64): the old rule (8 waiting per thread) refused 8
    // of these 24. They all fit the 10 s deadline, so all are served.
    let srv = TestServer::start_with(|c| {
        c.bcrypt_concurrency = 2;
        c.bcrypt_queue = None;
        c.bcrypt_cost = 5;
    })
    .await;
    let mut emails = Vec::new();
    for _ in 0..24 {
        let email = unique_email();
        srv.register(&email, PASSWORD).await;
        emails.push(email);
    }
    let auth = srv.auth().await;
    // The threads are busy, so the whole burst waits in the pool at once.
    let mut gates = Vec::new();
    for _ in 0..2 {
        let mut g = srv.svc.hold_bcrypt().expect("gate");
        g.started().await.expect("gate started");
        gates.push(g);
    }
    let mut logins = JoinSet::new();
    for email in emails {
        let mut auth = auth.clone();
        logins.spawn(async move { auth.login(login_email(&email, PASSWORD)).await });
    }
    until_waiting(&srv, 24).await;
    release(gates).await;
    let mut ok = 0;
    for r in logins.join_all().await {
        r.expect("every login of the burst succeeds");
        ok += 1;
    }
    assert_eq!(ok, 24);
    srv.stop().await;
}

#[tokio::test]
async fn a_flood_from_four_addresses_fills_only_their_own_queues() {
    // One thread, at most 4 waiting checks per client. 40 unknown-account logins from A..D: each
    // address gets 4 places and the rest are refused, while the right-password logins of E, F
    // (IPv6) and of a client with many addresses in one /64 join their own queues and succeed.
    let srv = TestServer::start_with(|c| {
        c.bcrypt_concurrency = 1;
        c.bcrypt_queue = Some(4);
        behind_proxy(c);
    })
    .await;
    let legit: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let email = unique_email();
            srv.register(&email, PASSWORD).await;
            v.push(email);
        }
        v
    };
    let auth = srv.auth().await;
    let mut gate = srv.svc.hold_bcrypt().expect("gate");
    gate.started().await.expect("gate started");

    let flooders = [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
    ];
    let mut flood = JoinSet::new();
    for ip in flooders {
        for _ in 0..10 {
            let mut auth = auth.clone();
            flood.spawn(async move {
                auth.login(from_ip(login_email(&unique_email(), PASSWORD), ip))
                    .await
                    .map(|_| ())
            });
        }
    }
    // The refusals come back at once; the admitted ones wait.
    until_waiting(&srv, 16).await;

    let mut good = JoinSet::new();
    for (email, ip) in legit
        .iter()
        .zip(["203.0.113.5", "2001:db8:5::1", "2001:db8:6::1"])
    {
        let mut auth = auth.clone();
        let email = email.clone();
        good.spawn(async move {
            auth.login(from_ip(login_email(&email, PASSWORD), ip))
                .await
                .map(|_| ())
        });
    }
    // Another address of the same /64 as the second legitimate client: one client, one more place.
    for _ in 0..3 {
        let mut auth = auth.clone();
        let email = legit[1].clone();
        good.spawn(async move {
            auth.login(from_ip(login_email(&email, PASSWORD), "2001:db8:5::ffff"))
                .await
                .map(|_| ())
        });
    }
    until_waiting(&srv, 22).await;
    release(vec![gate]).await;

    for r in good.join_all().await {
        r.expect("a right-password login from another address succeeds during the flood");
    }
    let (mut refused, mut denied) = (0, 0);
    for r in flood.join_all().await {
        match r.map_err(|s| s.code()) {
            Err(Code::ResourceExhausted) => refused += 1,
            Err(Code::Unauthenticated) => denied += 1,
            other => panic!("unexpected flood outcome {other:?}"),
        }
    }
    // Every flooding address had exactly its 4 places checked (the dummy check of an unknown account).
    assert_eq!((denied, refused), (16, 24));
    srv.stop().await;
}

#[tokio::test]
async fn a_call_whose_deadline_cannot_fit_the_expected_wait_is_refused() {
    let srv = TestServer::start_with(|c| {
        c.bcrypt_concurrency = 1;
    })
    .await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let mut auth = srv.auth().await;
    // The only thread is busy with a job expected to take 5 s.
    let mut gate = srv
        .svc
        .hold_bcrypt_for(None, Duration::from_secs(5))
        .expect("gate");
    gate.started().await.expect("gate started");

    // grpc-timeout 2 s: refused at once, retry after about the expected wait.
    let mut short = Request::new(login_email(&email, PASSWORD));
    short.set_timeout(Duration::from_secs(2));
    let s = expect_code(auth.login(short).await, Code::ResourceExhausted);
    let after: u64 = s
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no retry-after on {s:?}"));
    assert!((1..=5).contains(&after), "{s:?}");

    // The same login with 9 s to spare (and one with no grpc-timeout: AUTHD_REQUEST_TIMEOUT, 10 s)
    // is admitted and waits for the thread.
    let mut long = Request::new(login_email(&email, PASSWORD));
    long.set_timeout(Duration::from_secs(9));
    let mut waiting = JoinSet::new();
    for req in [long, Request::new(login_email(&email, PASSWORD))] {
        let mut auth = auth.clone();
        waiting.spawn(async move { auth.login(req).await.map(|_| ()) });
    }
    until_waiting(&srv, 2).await;
    release(vec![gate]).await;
    for r in waiting.join_all().await {
        r.expect("a login whose deadline fits is served");
    }
    srv.stop().await;
}

#[tokio::test]
async fn the_per_client_cap_refuses_only_that_client() {
    let srv = TestServer::start_with(|c| {
        c.bcrypt_concurrency = 1;
        c.bcrypt_queue = Some(2);
        behind_proxy(c);
    })
    .await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let mut auth = srv.auth().await;
    let mut gate = srv.svc.hold_bcrypt().expect("gate");
    gate.started().await.expect("gate started");
    // Client X has its 2 places taken.
    let holds = vec![
        srv.svc
            .hold_bcrypt_for(key("192.0.2.10"), Duration::from_millis(1))
            .expect("first place"),
        srv.svc
            .hold_bcrypt_for(key("192.0.2.10"), Duration::from_millis(1))
            .expect("second place"),
    ];
    expect_pool_full(
        auth.login(from_ip(login_email(&email, PASSWORD), "192.0.2.10"))
            .await,
    );
    // Client Y is admitted.
    let mut y = auth.clone();
    let email_y = email.clone();
    let admitted = tokio::spawn(async move {
        y.login(from_ip(login_email(&email_y, PASSWORD), "192.0.2.11"))
            .await
            .map(|_| ())
    });
    until_waiting(&srv, 3).await;
    release(vec![gate]).await;
    release(holds).await;
    admitted
        .await
        .expect("join")
        .expect("the other client's login");
    srv.stop().await;
}

#[tokio::test]
async fn failed_checks_against_cheaper_hashes_cost_the_configured_cost() {
    // Accounts made at cost 4, then the cost is raised to 5: a wrong password against the old hash
    // is padded with a check of the dummy hash (cost 5), like an unknown account's.
    let url = fresh_database().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let mut config = test_config(&url);
    let old = TestServer::start_on(config.clone(), clock.clone()).await;
    let email = unique_email();
    let other = unique_email();
    old.register(&email, PASSWORD).await;
    old.register(&other, PASSWORD).await;
    old.stop().await;

    config.bcrypt_cost = 5;
    let srv = TestServer::start_on(config, clock).await;
    let auth = srv.auth().await;
    assert_eq!(srv.svc.bcrypt_padded_checks(), 0);
    let mut wrong = JoinSet::new();
    for _ in 0..20 {
        let mut auth = auth.clone();
        let email = email.clone();
        wrong.spawn(async move { auth.login(login_email(&email, OTHER_PASSWORD)).await });
    }
    for r in wrong.join_all().await {
        expect_code(r, Code::Unauthenticated);
    }
    assert_eq!(srv.svc.bcrypt_padded_checks(), 20);

    // Unknown accounts are checked against the dummy hash (cost 5) alone: not padded.
    let mut auth1 = auth.clone();
    expect_code(
        auth1
            .login(login_email(&unique_email(), OTHER_PASSWORD))
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(srv.svc.bcrypt_padded_checks(), 20);
    // A right password upgrades the hash; its failures are then at the configured cost already.
    srv.login(&other, PASSWORD).await;
    expect_code(
        auth1.login(login_email(&other, OTHER_PASSWORD)).await,
        Code::Unauthenticated,
    );
    assert_eq!(srv.svc.bcrypt_padded_checks(), 20);
    srv.stop().await;
}
