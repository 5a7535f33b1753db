use authd_testkit::*;

// Issue F, section 8: the bootstrap admin (AUTHD_BOOTSTRAP_ADMIN_EMAIL/PASSWORD) is created only
// while no active admin exists, so a deleted bootstrap admin does not come back at the next start.

use authd::proto;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tonic::Code;

async fn accounts_with_email(url: &str, email: &str) -> i64 {
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    diesel::sql_query("SELECT count(*) AS n FROM users WHERE email = $1")
        .bind::<Text, _>(email)
        .get_result::<Count>(&mut conn)
        .await
        .expect("count")
        .n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_bootstrap_admin_is_recreated_only_while_no_active_admin_exists() {
    let root = unique_email();
    let r = root.clone();
    let srv = TestServer::start_with(move |c| {
        c.bootstrap_admin_email = Some(r);
        c.bootstrap_admin_password = Some(OTHER_PASSWORD.into());
    })
    .await;
    let (config, clock) = (srv.config.clone(), srv.clock.clone());
    let boot = srv.login(&root, OTHER_PASSWORD).await;
    let boot_id = srv
        .users()
        .await
        .get_me(with_bearer(proto::GetMeRequest {}, &boot.access_token))
        .await
        .expect("GetMe")
        .into_inner()
        .id;

    // Another admin takes over and deletes the bootstrap admin.
    let other = unique_email();
    let other_id = srv.create_admin(&other, PASSWORD).await;
    let pair = srv.login(&other, PASSWORD).await;
    srv.users()
        .await
        .delete_user(with_bearer(
            proto::DeleteUserRequest { user_id: boot_id },
            &pair.access_token,
        ))
        .await
        .expect("DeleteUser");
    srv.stop().await;

    // Restarts with the variables still set: another admin is active, so it stays deleted.
    for _ in 0..2 {
        let srv = TestServer::start_on(config.clone(), clock.clone()).await;
        assert_eq!(accounts_with_email(&srv.url, &root).await, 0);
        expect_code(
            srv.auth()
                .await
                .login(login_email(&root, OTHER_PASSWORD))
                .await,
            Code::Unauthenticated,
        );
        srv.stop().await;
    }

    // With no active admin left (deactivated behind authd's back), the next start creates it
    // again, once, even when two replicas start together.
    let url = config.database_url().expect("url").to_owned();
    AsyncPgConnection::establish(&url)
        .await
        .expect("connect")
        .batch_execute(&format!(
            "UPDATE users SET active = false WHERE id = '{other_id}'"
        ))
        .await
        .expect("deactivate");
    let (a, b) = tokio::join!(
        TestServer::start_on(config.clone(), clock.clone()),
        TestServer::start_on(config.clone(), clock.clone()),
    );
    assert_eq!(accounts_with_email(&url, &root).await, 1);
    a.login(&root, OTHER_PASSWORD).await;
    b.login(&root, OTHER_PASSWORD).await;
}
