//! The bcrypt pool: when every bcrypt thread is busy and the queue is full, password calls fail fast
//! with RESOURCE_EXHAUSTED, and the calls that need no bcrypt are served as usual.
//!
//! The pool is occupied deterministically with `Authd::hold_bcrypt` (jobs that block until released),
//! never with timing.

use authd::domain::password::Hold;
use authd::proto;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::*;

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

/// Occupies every thread of the pool (waiting until each runs a hold), then its whole queue.
async fn saturate(srv: &TestServer, threads: usize, queue: usize) -> Vec<Hold> {
    let mut holds = Vec::new();
    for _ in 0..threads {
        let mut h = srv.svc.hold_bcrypt().expect("a free bcrypt thread");
        h.started().await.expect("hold started");
        holds.push(h);
    }
    for _ in 0..queue {
        holds.push(srv.svc.hold_bcrypt().expect("a free place in the queue"));
    }
    // Full: one more is refused.
    assert!(srv.svc.hold_bcrypt().is_err());
    holds
}

async fn release(holds: Vec<Hold>) {
    for h in holds {
        h.release().await.expect("release");
    }
}

#[tokio::test]
async fn a_full_pool_refuses_password_calls_and_serves_cheap_ones() {
    let srv = TestServer::start_with(|c| {
        c.bcrypt_concurrency = 2;
        c.bcrypt_queue = Some(1);
    })
    .await;
    let email = unique_email();
    let user = srv.register(&email, PASSWORD).await;
    let pair = srv.login(&email, PASSWORD).await;
    let key = srv.service_key().await;
    let mut auth = srv.auth().await;
    let mut users = srv.users().await;
    let mut health = srv.health().await;

    let holds = saturate(&srv, 2, 1).await;

    // Every call that needs bcrypt is refused at once, whatever the account.
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

    let holds = saturate(&srv, 1, 0).await;
    for _ in 0..3 {
        expect_pool_full(auth.login(login_email(&email, OTHER_PASSWORD)).await);
    }
    release(holds).await;

    srv.login(&email, PASSWORD).await;
    srv.stop().await;
}
