//! The main flow end to end.

use authd::proto;
use tonic::Code;

use authd_testkit::*;

#[tokio::test]
async fn register_login_get_me_validate() {
    let srv = TestServer::start().await;
    let email = unique_email();
    let user = srv.register(&email, PASSWORD).await;
    assert_eq!(user.email, email);
    assert_eq!(user.role, proto::Role::User as i32);
    assert!(user.active);

    let pair = srv.login(&email, PASSWORD).await;
    assert_eq!(pair.token_type, "Bearer");
    assert_eq!(pair.expires_in, 900);

    let me = srv
        .users()
        .await
        .get_me(with_bearer(proto::GetMeRequest {}, &pair.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, user.id);
    assert!(me.last_login_time.is_some());

    let v = srv.validate(&pair.access_token).await;
    assert!(v.valid);
    assert_eq!(v.user_id, user.id);
    assert_eq!(v.session_id, pair.session_id);

    let err = expect_code(
        srv.users().await.get_me(proto::GetMeRequest {}).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_MISSING"));
}
