//! Remote mode: every call asks ValidateToken.

use std::time::Instant;

use authd_client::Role;
use authd_testkit::TestServer;
use http::HeaderValue;
use tonic::Code;

use crate::support::*;

#[tokio::test]
async fn remote_mode_hands_over_the_principal_and_enforces_roles() {
    let srv = TestServer::start().await;
    let layer = builder(&srv)
        .await
        .require_role(ADMIN_PATH, Role::Admin)
        .remote();
    let (user, pair) = srv.user_session().await;

    let p = call(&layer, &pair.access_token).await.unwrap();
    assert_eq!(p.user_id().to_string(), user.id);
    assert_eq!(p.session_id().to_string(), pair.session_id);
    assert_eq!(p.email(), user.email);
    assert_eq!(p.role(), Role::User);
    assert_eq!(p.username(), None);
    let v = srv.validate(&pair.access_token).await;
    assert_eq!(
        p.expire_time().timestamp(),
        v.expire_time.unwrap().seconds,
        "expiry as ValidateToken says"
    );

    let s = call_path(&layer, ADMIN_PATH, &pair.access_token)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    let admin = srv.admin_session().await;
    let a = call_path(&layer, ADMIN_PATH, &admin.access_token)
        .await
        .unwrap();
    assert_eq!(a.role(), Role::Admin);

    let s = call_raw(&layer, PATH, None).await.unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::Unauthenticated, "TOKEN_MISSING")
    );
    let s = call(&layer, "garbage").await.unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::Unauthenticated, "TOKEN_INVALID")
    );
    let s = call_raw(
        &layer,
        PATH,
        Some(HeaderValue::from_static("Basic dXNlcjpwYXNz")),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&s), "TOKEN_INVALID");

    let t0 = Instant::now();
    logout(&srv, &pair.access_token).await;
    let latency = refused_after(&layer, &pair.access_token, t0).await;
    println!("remote mode: logout -> refused in {latency:?} (includes the Logout call)");
    let s = call(&layer, &pair.access_token).await.unwrap_err();
    assert_eq!(reason(&s), "TOKEN_INVALID");
}

#[tokio::test]
async fn remote_mode_says_expired_for_an_expired_token() {
    let srv = TestServer::start().await;
    let layer = builder(&srv).await.remote();
    let (_, pair) = srv.user_session().await;
    assert!(call(&layer, &pair.access_token).await.is_ok());
    srv.clock.advance(chrono::Duration::minutes(16));
    let s = call(&layer, &pair.access_token).await.unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::Unauthenticated, "TOKEN_EXPIRED")
    );
}

#[tokio::test]
async fn remote_mode_answers_unavailable_while_authd_is_down() {
    let srv = TestServer::start().await;
    let layer = builder(&srv).await.remote();
    let (_, pair) = srv.user_session().await;
    assert!(call(&layer, &pair.access_token).await.is_ok());
    srv.stop().await;
    let s = call(&layer, &pair.access_token).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
}

#[tokio::test]
async fn remote_mode_with_a_bad_service_key_is_unavailable_not_the_callers_fault() {
    let srv = TestServer::start().await;
    let layer = authd_client::AuthLayer::builder(
        channel_to(&srv),
        authd_client::ServiceKey::new("sk_not_a_real_key").unwrap(),
    )
    .remote();
    let (_, pair) = srv.user_session().await;
    let s = call(&layer, &pair.access_token).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
}
