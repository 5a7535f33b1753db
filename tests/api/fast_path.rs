//! The ValidateToken fast path: the in-memory revocation and service-key views, the verified-token
//! cache, and the one-statement refresh. Changes made behind this replica's back (straight in the
//! database, as another replica or an operator would) must still reach it within a second.

use std::time::{Duration, Instant};

use authd::proto;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tonic::Code;

use authd_testkit::*;

async fn validate_with(
    srv: &TestServer,
    key: &str,
    token: &str,
) -> Result<proto::ValidateTokenResponse, tonic::Status> {
    srv.auth()
        .await
        .validate_token(with_key(
            proto::ValidateTokenRequest {
                access_token: token.into(),
            },
            key,
        ))
        .await
        .map(|r| r.into_inner())
}

/// Whether ValidateToken (with `key`) calls `token` valid; any error status fails the test.
async fn is_valid(srv: &TestServer, key: &str, token: &str) -> bool {
    validate_with(srv, key, token).await.unwrap().valid
}

/// Polls `check` until it holds or `limit` passes; returns how long it took.
async fn within<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_session_revoked_in_the_database_is_refused_within_a_second() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let (_, pair) = srv.user_session().await;
    // Cached as valid first, so the cache cannot be what refuses it later.
    assert!(is_valid(&srv, &key, &pair.access_token).await);
    assert!(is_valid(&srv, &key, &pair.access_token).await);

    srv.exec(&format!(
        "UPDATE sessions SET revoke_time = now(), revoke_reason = 'test' WHERE id = '{}'",
        pair.session_id
    ))
    .await;
    let took = within(Duration::from_secs(1), || async {
        !is_valid(&srv, &key, &pair.access_token).await
    })
    .await;
    assert!(took.is_some(), "still valid 1 s after the revocation");
    let e = expect_code(
        srv.users()
            .await
            .get_me(with_bearer(proto::GetMeRequest {}, &pair.access_token))
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&e).as_deref(), Some("TOKEN_INVALID"));
}

#[tokio::test]
async fn sessions_of_an_account_deleted_in_the_database_are_refused_within_a_second() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let (user, pair) = srv.user_session().await;
    assert!(is_valid(&srv, &key, &pair.access_token).await);

    srv.exec(&format!("DELETE FROM users WHERE id = '{}'", user.id))
        .await;
    let took = within(Duration::from_secs(1), || async {
        !is_valid(&srv, &key, &pair.access_token).await
    })
    .await;
    assert!(
        took.is_some(),
        "still valid 1 s after the account was deleted"
    );
}

#[tokio::test]
async fn a_service_key_revoked_in_the_database_is_refused_within_a_second() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let (_, pair) = srv.user_session().await;
    assert!(is_valid(&srv, &key, &pair.access_token).await);

    srv.exec("UPDATE service_keys SET revoke_time = now()")
        .await;
    let took = within(Duration::from_secs(1), || async {
        validate_with(&srv, &key, &pair.access_token)
            .await
            .is_err_and(|e| e.code() == Code::Unauthenticated)
    })
    .await;
    assert!(
        took.is_some(),
        "revoked service key still accepted after 1 s"
    );
    let e = expect_code(
        validate_with(&srv, &key, &pair.access_token).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&e).as_deref(), Some("SERVICE_KEY_INVALID"));
}

#[tokio::test]
async fn a_new_service_key_works_at_once_and_its_use_is_recorded_once_a_minute() {
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    let key = srv.service_key().await;
    for _ in 0..20 {
        assert!(is_valid(&srv, &key, &pair.access_token).await);
    }
    // The first use is recorded (off the request path); later ones within the minute are not.
    #[derive(diesel::QueryableByName)]
    struct Used {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
        last_use_time: Option<chrono::DateTime<chrono::Utc>>,
    }
    let mut conn = srv.db().await;
    let read = async |conn: &mut AsyncPgConnection| {
        let rows: Vec<Used> = diesel::sql_query("SELECT last_use_time FROM service_keys")
            .load(conn)
            .await
            .expect("read service keys");
        rows[0].last_use_time
    };
    let start = Instant::now();
    let first = loop {
        if let Some(t) = read(&mut conn).await {
            break Some(t);
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "last_use_time never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for _ in 0..5 {
        assert!(is_valid(&srv, &key, &pair.access_token).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows: Vec<Used> = diesel::sql_query("SELECT last_use_time FROM service_keys")
        .load(&mut conn)
        .await
        .expect("read service keys");
    assert_eq!(
        rows[0].last_use_time, first,
        "touched again within the minute"
    );
}

#[tokio::test]
async fn the_refresh_fast_path_keeps_the_reuse_rules_and_revokes_at_once() {
    let srv = TestServer::start_with(|c| c.refresh_reuse_grace = Duration::ZERO).await;
    let key = srv.service_key().await;
    let (_, pair) = srv.user_session().await;
    let mut auth = srv.auth().await;
    let refresh = |t: &str| proto::RefreshRequest {
        refresh_token: t.to_owned(),
    };
    let next = auth
        .refresh(refresh(&pair.refresh_token))
        .await
        .expect("refresh")
        .into_inner();
    assert_ne!(next.refresh_token, pair.refresh_token);
    assert_eq!(next.session_id, pair.session_id);
    assert!(is_valid(&srv, &key, &next.access_token).await);
    let third = auth
        .refresh(refresh(&next.refresh_token))
        .await
        .expect("refresh the successor")
        .into_inner();
    // Presenting a spent token is reuse: the session dies, and this replica knows at once.
    expect_code(
        auth.refresh(refresh(&pair.refresh_token)).await,
        Code::Unauthenticated,
    );
    assert!(!is_valid(&srv, &key, &third.access_token).await);
    expect_code(
        auth.refresh(refresh(&third.refresh_token)).await,
        Code::Unauthenticated,
    );
}
