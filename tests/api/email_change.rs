//! E-mail change (issue I): UpdateMe only asks (a link to the new address, a notice to the old
//! one, over a real SMTP server on loopback), ConfirmEmailChange applies it (verified, audited,
//! the other sessions revoked, single use, ALREADY_EXISTS for an address taken meanwhile), a new
//! change voids the earlier link, and an admin's change applies at once, unverified.

use std::time::Duration;

use authd::config::{Config, Secret};
use authd::proto;
use authd_testkit::mailbox::{received_for, smtp_tokens, unfold_qp, wait_smtp_tokens};
use authd_testkit::smtp::SmtpServer;
use authd_testkit::*;
use chrono::Duration as ChronoDuration;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use tonic::Code;

const BASE: &str = "https://app.example.test/auth";
const PAGE: &str = "confirm-email-change";

async fn smtp_server() -> (SmtpServer, TestServer) {
    let smtp = SmtpServer::start().await;
    let url = smtp.url();
    let srv = TestServer::start_with(|c: &mut Config| {
        c.smtp_url = Some(Secret::new(url));
        c.mail_from = "authd <noreply@example.test>".into();
        c.mail_poll_interval = Duration::from_millis(50);
        c.link_base_url = BASE.into();
    })
    .await;
    (smtp, srv)
}

fn ask(email: &str) -> proto::UpdateMeRequest {
    proto::UpdateMeRequest {
        email: Some(email.into()),
        current_password: PASSWORD.into(),
        ..Default::default()
    }
}

async fn audit_details(srv: &TestServer, user_id: &str, kind: &str) -> Vec<String> {
    diesel::sql_query(
        "SELECT detail AS t FROM audit_events WHERE user_id = $1::uuid AND kind = $2 \
         ORDER BY create_time",
    )
    .bind::<Text, _>(user_id)
    .bind::<Text, _>(kind)
    .load::<TextRow>(&mut srv.db().await)
    .await
    .expect("audit")
    .into_iter()
    .map(|r| r.t)
    .collect()
}

#[track_caller]
fn expect_bad_token<T: std::fmt::Debug>(r: Result<T, tonic::Status>) {
    let s = expect_code(r, Code::Unauthenticated);
    assert_eq!(s.message(), "invalid, used or expired token");
    assert_eq!(reason(&s).as_deref(), Some("ACCOUNT_TOKEN_INVALID"));
}

#[tokio::test]
async fn a_change_waits_for_the_link_then_applies_verified_and_revokes_other_sessions() {
    let (smtp, srv) = smtp_server().await;
    let old = unique_email();
    let user = srv.register(&old, PASSWORD).await;
    let asking = srv.login(&old, PASSWORD).await;
    let other = srv.login(&old, PASSWORD).await;
    let new = unique_email();

    let reply = update_me(&srv, &asking.access_token, ask(&new.to_uppercase()))
        .await
        .expect("UpdateMe");
    assert_eq!(reply.email, old, "the reply shows the unchanged address");
    assert_eq!(get_me(&srv, &asking.access_token).await.unwrap().email, old);
    // A link to the new address, a notice (without a link) to the old one.
    let tokens = wait_smtp_tokens(&smtp, &new, PAGE, 1).await;
    let confirm = &received_for(&smtp, &new)[0];
    assert!(unfold_qp(&confirm.data).contains(&format!("{BASE}/{PAGE}?token={}", tokens[0])));
    wait_until("the notice", Duration::from_secs(20), || async {
        received_for(&smtp, &old)
            .iter()
            .any(|m| unfold_qp(&m.data).contains(&new))
    })
    .await;
    let notice = received_for(&smtp, &old)
        .into_iter()
        .find(|m| unfold_qp(&m.data).contains(&new))
        .unwrap();
    assert!(!notice.data.contains("token="), "{}", notice.data);
    assert_eq!(
        audit_details(&srv, &user.id, "EMAIL_CHANGE_REQUESTED")
            .await
            .len(),
        1
    );
    assert!(
        audit_details(&srv, &user.id, "EMAIL_CHANGED")
            .await
            .is_empty()
    );
    // Nothing changed yet: the new address does not log in.
    expect_code(
        try_login(&srv, login_email(&new, PASSWORD)).await,
        Code::Unauthenticated,
    );

    // The click applies it, verified; the other session ends, the asking one stays.
    let done = confirm_email_change(&srv, &tokens[0])
        .await
        .expect("ConfirmEmailChange");
    let u = done.user.unwrap();
    assert_eq!(u.email, new);
    assert!(u.email_verified && u.email_verify_time.is_some());
    assert_eq!(done.revoked_sessions, 1);
    assert_eq!(get_me(&srv, &asking.access_token).await.unwrap().email, new);
    let s = expect_code(
        get_me(&srv, &other.access_token).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s).as_deref(), Some("TOKEN_INVALID"));
    srv.login(&new, PASSWORD).await;
    expect_code(
        try_login(&srv, login_email(&old, PASSWORD)).await,
        Code::Unauthenticated,
    );
    let changed = audit_details(&srv, &user.id, "EMAIL_CHANGED").await;
    assert_eq!(changed.len(), 1);
    assert!(
        changed[0].contains(&old) && changed[0].contains(&new),
        "{changed:?}"
    );
    assert!(!changed[0].contains(&tokens[0]));

    // Single use.
    expect_bad_token(confirm_email_change(&srv, &tokens[0]).await);
    expect_bad_token(confirm_email_change(&srv, "ec_unknown").await);
    expect_code(confirm_email_change(&srv, "").await, Code::InvalidArgument);
    srv.stop().await;
}

#[tokio::test]
async fn an_address_taken_meanwhile_is_already_exists_and_the_link_stays_unused() {
    let (smtp, srv) = smtp_server().await;
    let (user, pair) = srv.user_session().await;
    let new = unique_email();
    update_me(&srv, &pair.access_token, ask(&new))
        .await
        .expect("UpdateMe");
    let token = wait_smtp_tokens(&smtp, &new, PAGE, 1).await[0].clone();
    // Taken at request time: ALREADY_EXISTS at once.
    let taken = unique_email();
    srv.register(&taken, PASSWORD).await;
    expect_code(
        update_me(&srv, &pair.access_token, ask(&taken)).await,
        Code::AlreadyExists,
    );
    // Taken after the request: ALREADY_EXISTS at confirmation, nothing changes.
    let squatter = srv.register(&new, PASSWORD).await;
    expect_code(
        confirm_email_change(&srv, &token).await,
        Code::AlreadyExists,
    );
    assert_eq!(
        get_me(&srv, &pair.access_token).await.unwrap().email,
        user.email
    );
    // The link was not spent: once the address is free again it works.
    let admin = srv.admin_session().await;
    srv.users()
        .await
        .delete_user(with_bearer(
            proto::DeleteUserRequest {
                user_id: squatter.id,
            },
            &admin.access_token,
        ))
        .await
        .expect("delete the squatter");
    let done = confirm_email_change(&srv, &token)
        .await
        .expect("the unused link");
    assert_eq!(done.user.unwrap().email, new);
    srv.stop().await;
}

#[tokio::test]
async fn a_new_change_voids_the_earlier_link_and_links_expire() {
    let (smtp, srv) = smtp_server().await;
    let (_, pair) = srv.user_session().await;
    let first = unique_email();
    update_me(&srv, &pair.access_token, ask(&first))
        .await
        .unwrap();
    let first_token = wait_smtp_tokens(&smtp, &first, PAGE, 1).await[0].clone();
    let second = unique_email();
    update_me(&srv, &pair.access_token, ask(&second))
        .await
        .unwrap();
    let second_token = wait_smtp_tokens(&smtp, &second, PAGE, 1).await[0].clone();
    expect_bad_token(confirm_email_change(&srv, &first_token).await);

    srv.clock
        .advance(ChronoDuration::hours(24) + ChronoDuration::seconds(1));
    expect_bad_token(confirm_email_change(&srv, &second_token).await);
    srv.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_confirmations_with_one_link_succeed_once() {
    let (smtp, srv) = smtp_server().await;
    let (_, pair) = srv.user_session().await;
    let new = unique_email();
    update_me(&srv, &pair.access_token, ask(&new))
        .await
        .unwrap();
    let token = wait_smtp_tokens(&smtp, &new, PAGE, 1).await[0].clone();
    let calls = (0..20).map(|_| {
        let srv = &srv;
        let token = token.clone();
        async move { confirm_email_change(srv, &token).await }
    });
    let codes = Codes::of(authd_testkit::join_all(calls).await);
    assert_eq!(codes.count(Code::Ok), 1, "{codes:?}");
    assert_eq!(codes.count(Code::Unauthenticated), 19, "{codes:?}");
    srv.stop().await;
}

#[tokio::test]
async fn an_admin_change_applies_at_once_unverified_with_a_new_verification_link() {
    let (smtp, srv) = smtp_server().await;
    let admin = srv.admin_session().await;
    let (user, pair) = srv.user_session().await;
    let t = wait_smtp_tokens(&smtp, &user.email, "verify-email", 1).await;
    verify_email(&srv, &t[0]).await.expect("verified first");
    // A pending self-service change, which the admin's change supersedes.
    let pending = unique_email();
    update_me(&srv, &pair.access_token, ask(&pending))
        .await
        .unwrap();
    let pending_token = wait_smtp_tokens(&smtp, &pending, PAGE, 1).await[0].clone();

    let new = unique_email();
    let u = srv
        .users()
        .await
        .update_user(with_bearer(
            proto::UpdateUserRequest {
                user_id: user.id.clone(),
                email: Some(new.clone()),
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .expect("UpdateUser")
        .into_inner();
    assert_eq!(u.email, new);
    assert!(!u.email_verified && u.email_verify_time.is_none());
    expect_bad_token(confirm_email_change(&srv, &pending_token).await);
    let link = wait_smtp_tokens(&smtp, &new, "verify-email", 1).await;
    assert!(verify_email(&srv, &link[0]).await.unwrap().email_verified);
    assert!(smtp_tokens(&smtp, &new, PAGE).is_empty());
    srv.stop().await;
}
