use authd_testkit::mailbox::wait_eml_tokens;
use authd_testkit::*;

// Self-service (UpdateMe, ChangePassword, DeleteMe, ListMySessions, RevokeMySession), closed
// registration, the `users` / `service-keys` / `migrate` CLI, and the audit events of self-service,
// end to end against the real server and PostgreSQL.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use authd::clock::{Clock, ManualClock};
use authd::proto;
use authd::proto::auth_service_client::AuthServiceClient;
use authd::proto::user_service_client::UserServiceClient;
use chrono::{DateTime, Duration as ChronoDuration, SubsecRound, Utc};
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use tokio::io::AsyncWriteExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// A third strong password, for password changes.
const NEW_PASSWORD: &str = "Velvet-Orbit-Lantern-Nine-77";
/// The host of every test client.
const LOCALHOST: &str = "127.0.0.1";

// ----- helpers ------------------------------------------------------------------------------------

/// A protobuf timestamp of `t` at PostgreSQL's precision (microseconds), as the server stores it.
fn at(t: DateTime<Utc>) -> prost_types::Timestamp {
    let t = t.trunc_subsecs(6);
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).expect("nanos fit"),
    }
}

/// The server's "now", as a protobuf timestamp.
fn now(srv: &TestServer) -> prost_types::Timestamp {
    at(srv.clock.now())
}

/// A channel whose requests carry `user-agent: <ua> tonic/…`.
async fn ua_channel(srv: &TestServer, ua: &str) -> Channel {
    Endpoint::from_shared(format!("http://{}", srv.addr))
        .expect("uri")
        .user_agent(ua.to_owned())
        .expect("user agent")
        .connect()
        .await
        .expect("connect")
}

/// A request with a custom `user-agent` metadata value (tonic appends its own).
fn with_ua<T>(mut r: Request<T>, ua: &str) -> Request<T> {
    r.metadata_mut()
        .insert("user-agent", ua.parse().expect("metadata"));
    r
}

async fn register_full(
    srv: &TestServer,
    email: &str,
    username: &str,
    first_name: &str,
    last_name: &str,
) -> proto::User {
    srv.auth()
        .await
        .register(proto::RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
            username: username.into(),
            first_name: first_name.into(),
            last_name: last_name.into(),
        })
        .await
        .expect("register")
        .into_inner()
        .user
        .expect("user in RegisterResponse")
}

async fn list_sessions(srv: &TestServer, token: &str) -> Result<Vec<proto::Session>, Status> {
    srv.users()
        .await
        .list_my_sessions(with_bearer(proto::ListMySessionsRequest {}, token))
        .await
        .map(|r| r.into_inner().sessions)
}

async fn revoke_session(srv: &TestServer, token: &str, session_id: &str) -> Result<(), Status> {
    srv.users()
        .await
        .revoke_my_session(with_bearer(
            proto::RevokeMySessionRequest {
                session_id: session_id.into(),
            },
            token,
        ))
        .await
        .map(|_| ())
}

/// The session of `pair` is live: ValidateToken says valid (for this user and session) and GetMe works.
async fn assert_live(srv: &TestServer, pair: &proto::LoginResponse, user_id: &str) {
    let v = srv.validate(&pair.access_token).await;
    assert!(v.valid, "access token should be valid: {v:?}");
    assert_eq!(v.user_id, user_id);
    assert_eq!(v.session_id, pair.session_id);
    let me = get_me(srv, &pair.access_token)
        .await
        .expect("GetMe with a live session");
    assert_eq!(me.id, user_id);
}

/// The session of `pair` is gone: ValidateToken says invalid with every field empty, GetMe is
/// UNAUTHENTICATED / TOKEN_INVALID, and its refresh token is refused.
async fn assert_dead(srv: &TestServer, pair: &proto::LoginResponse) {
    let v = srv.validate(&pair.access_token).await;
    assert_eq!(
        v,
        proto::ValidateTokenResponse::default(),
        "a revoked or deleted session's token must read as invalid with every field empty"
    );
    let err = expect_code(get_me(srv, &pair.access_token).await, Code::Unauthenticated);
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"), "{err:?}");
    let err = expect_code(
        try_refresh(srv, &pair.refresh_token).await,
        Code::Unauthenticated,
    );
    assert_eq!(
        reason(&err).as_deref(),
        Some("REFRESH_TOKEN_INVALID"),
        "{err:?}"
    );
}

/// Asserts UNAUTHENTICATED for a wrong or missing password on a bearer RPC: the reason must say
/// "credentials", not "token", so that clients do not throw their session away.
#[track_caller]
fn expect_bad_credentials<T: std::fmt::Debug>(result: Result<T, Status>) {
    let err = expect_code(result, Code::Unauthenticated);
    assert_eq!(
        reason(&err).as_deref(),
        Some("INVALID_CREDENTIALS"),
        "{err:?}"
    );
}

/// Every audit event (optionally about one user), newest first, through ListAuditEvents.
async fn audit_events(
    srv: &TestServer,
    admin_token: &str,
    user_id: &str,
) -> Vec<proto::AuditEvent> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = srv
            .users()
            .await
            .list_audit_events(with_bearer(
                proto::ListAuditEventsRequest {
                    user_id: user_id.into(),
                    page_size: 1000,
                    page_token: page_token.clone(),
                },
                admin_token,
            ))
            .await
            .expect("ListAuditEvents")
            .into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

fn of_kind<'a>(events: &'a [proto::AuditEvent], kind: &str) -> Vec<&'a proto::AuditEvent> {
    events.iter().filter(|e| e.kind == kind).collect()
}

/// The one event of `kind` in `events`.
#[track_caller]
fn one_of_kind<'a>(events: &'a [proto::AuditEvent], kind: &str) -> &'a proto::AuditEvent {
    let found = of_kind(events, kind);
    assert_eq!(found.len(), 1, "expected exactly one {kind}: {events:#?}");
    found[0]
}

async fn count(url: &str, sql: &str, id: &str) -> i64 {
    diesel::sql_query(sql)
        .bind::<Text, _>(id)
        .get_result::<Count>(&mut connect_db(url).await)
        .await
        .expect("count query")
        .n
}

async fn exec(url: &str, sql: &str, id: &str) {
    let n = diesel::sql_query(sql)
        .bind::<Text, _>(id)
        .execute(&mut connect_db(url).await)
        .await
        .expect("update");
    assert_eq!(n, 1, "{sql} should touch exactly one row");
}

#[derive(diesel::QueryableByName)]
struct RowText {
    #[diesel(sql_type = Text)]
    row: String,
}

/// Every audit row, each as the whole record's text (all columns, present and future).
async fn audit_table_text(url: &str) -> Vec<String> {
    diesel::sql_query("SELECT e::text AS row FROM audit_events e ORDER BY create_time, id")
        .load::<RowText>(&mut connect_db(url).await)
        .await
        .expect("read audit_events")
        .into_iter()
        .map(|r| r.row)
        .collect()
}

fn set_username(username: &str) -> proto::UpdateMeRequest {
    proto::UpdateMeRequest {
        username: Some(username.into()),
        ..Default::default()
    }
}

fn set_email(email: &str, current_password: &str) -> proto::UpdateMeRequest {
    proto::UpdateMeRequest {
        email: Some(email.into()),
        current_password: current_password.into(),
        ..Default::default()
    }
}

/// A strong password of exactly `len` ASCII bytes.
fn password_of_len(len: usize) -> String {
    let mut p = String::from("Zq7!");
    while p.len() < len {
        p.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    p.truncate(len);
    p
}

// ----- UpdateMe ------------------------------------------------------------------------------------

#[tokio::test]
async fn update_me_changes_only_the_fields_that_are_present() {
    let srv = TestServer::start().await;
    let email = unique_email();
    let username = format!("Mx_{}", unique_username());
    let user = register_full(&srv, &email, &username, "Ada", "Lovelace").await;
    let pair = srv.login(&email, PASSWORD).await;
    let before = get_me(&srv, &pair.access_token).await.expect("GetMe");

    srv.clock.advance(ChronoDuration::minutes(1));
    let u = update_me(
        &srv,
        &pair.access_token,
        proto::UpdateMeRequest {
            first_name: Some("  Augusta ".into()),
            ..Default::default()
        },
    )
    .await
    .expect("UpdateMe first_name");
    assert_eq!(u.first_name, "Augusta", "names are trimmed");
    assert_eq!(u.last_name, "Lovelace");
    assert_eq!(u.username, username);
    assert_eq!(u.email, email);
    assert_eq!(u.id, user.id);
    assert_eq!(u.role, proto::Role::User as i32);
    assert!(u.active);
    assert_eq!(u.create_time, before.create_time);
    assert_eq!(u.last_login_time, before.last_login_time);
    assert_eq!(u.update_time, Some(now(&srv)));
    // Stored: GetMe shows exactly what UpdateMe returned.
    assert_eq!(get_me(&srv, &pair.access_token).await.expect("GetMe"), u);

    srv.clock.advance(ChronoDuration::minutes(1));
    let new_username = format!("New.{}", unique_username());
    let u2 = update_me(
        &srv,
        &pair.access_token,
        proto::UpdateMeRequest {
            username: Some(new_username.clone()),
            last_name: Some("King".into()),
            ..Default::default()
        },
    )
    .await
    .expect("UpdateMe username and last_name");
    assert_eq!(u2.username, new_username, "username keeps its case");
    assert_eq!(u2.last_name, "King");
    assert_eq!(u2.first_name, "Augusta", "absent first_name is left alone");
    assert_eq!(u2.email, email);
    assert_eq!(u2.update_time, Some(now(&srv)));

    // A request with no field present changes nothing.
    let u3 = update_me(&srv, &pair.access_token, proto::UpdateMeRequest::default())
        .await
        .expect("empty UpdateMe");
    assert_eq!(
        (&u3.email, &u3.username, &u3.first_name, &u3.last_name),
        (&u2.email, &u2.username, &u2.first_name, &u2.last_name)
    );

    // Boundaries that are allowed.
    let max_username = format!("a{}", &unique_username()[..12]).repeat(3)[..32].to_owned();
    let u4 = update_me(
        &srv,
        &pair.access_token,
        proto::UpdateMeRequest {
            username: Some(max_username.clone()),
            first_name: Some("é".repeat(100)),
            last_name: Some("O'Brien-Şahin".into()),
            ..Default::default()
        },
    )
    .await
    .expect("32-character username, 100-character name");
    assert_eq!(u4.username, max_username);
    assert_eq!(u4.first_name, "é".repeat(100));
    assert_eq!(u4.last_name, "O'Brien-Şahin");

    // Login follows the username: the new one works (in any case), the old ones don't.
    try_login(&srv, login_username(&max_username.to_uppercase(), PASSWORD))
        .await
        .expect("login with the new username");
    for old in [&username, &new_username] {
        expect_code(
            try_login(&srv, login_username(old, PASSWORD)).await,
            Code::Unauthenticated,
        );
    }
}

#[tokio::test]
async fn update_me_present_but_empty_clears_username_and_names() {
    let srv = TestServer::start().await;
    let email = unique_email();
    let username = unique_username();
    register_full(&srv, &email, &username, "Grace", "Hopper").await;
    let pair = srv.login(&email, PASSWORD).await;

    let u = update_me(
        &srv,
        &pair.access_token,
        proto::UpdateMeRequest {
            username: Some(String::new()),
            first_name: Some(String::new()),
            last_name: Some(String::new()),
            ..Default::default()
        },
    )
    .await
    .expect("clear username and names");
    assert_eq!(u.username, "");
    assert_eq!(u.first_name, "");
    assert_eq!(u.last_name, "");
    assert_eq!(u.email, email, "the email is untouched");
    assert_eq!(get_me(&srv, &pair.access_token).await.expect("GetMe"), u);
    // Stored as NULL, not as an empty string that would collide with the next cleared username.
    assert_eq!(
        count(
            &srv.url,
            "SELECT count(*) AS n FROM users WHERE id = $1::uuid AND username IS NULL",
            &u.id
        )
        .await,
        1
    );
    let (_, other) = srv.user_session().await;
    update_me(&srv, &other.access_token, set_username(""))
        .await
        .expect("a second account can clear its username too");

    // The old username no longer logs in, and is free for someone else (in any case).
    expect_code(
        try_login(&srv, login_username(&username, PASSWORD)).await,
        Code::Unauthenticated,
    );
    let taker = srv
        .auth()
        .await
        .register(proto::RegisterRequest {
            email: unique_email(),
            password: PASSWORD.into(),
            username: username.to_uppercase(),
            ..Default::default()
        })
        .await
        .expect("the cleared username is free again")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(taker.username, username.to_uppercase());
}

#[tokio::test]
async fn update_me_rejects_invalid_input() {
    let srv = TestServer::start().await;
    let email = unique_email();
    let username = unique_username();
    register_full(&srv, &email, &username, "Alan", "Turing").await;
    let pair = srv.login(&email, PASSWORD).await;
    let before = get_me(&srv, &pair.access_token).await.expect("GetMe");

    let long_email = format!("{}@{}.example.com", "a".repeat(64), "b".repeat(190));
    assert!(long_email.len() > 254);
    let cases: Vec<(&str, proto::UpdateMeRequest)> = vec![
        ("empty email", set_email("", PASSWORD)),
        ("blank email", set_email("   ", PASSWORD)),
        ("empty email, no password", set_email("", "")),
        ("email without @", set_email("not-an-address", PASSWORD)),
        ("email with a space", set_email("a b@example.com", PASSWORD)),
        ("non-ASCII email", set_email("jürgen@example.com", PASSWORD)),
        (
            "email over 254 characters",
            set_email(&long_email, PASSWORD),
        ),
        ("2-character username", set_username("ab")),
        ("33-character username", set_username(&"a".repeat(33))),
        ("username with a space", set_username("has space")),
        ("username with @", set_username("x@y")),
        ("non-ASCII username", set_username("émile")),
        (
            "first_name with a newline",
            proto::UpdateMeRequest {
                first_name: Some("a\nb".into()),
                ..Default::default()
            },
        ),
        (
            "first_name over 100 characters",
            proto::UpdateMeRequest {
                first_name: Some("é".repeat(101)),
                ..Default::default()
            },
        ),
        (
            "last_name with NUL",
            proto::UpdateMeRequest {
                last_name: Some("x\u{0}y".into()),
                ..Default::default()
            },
        ),
        (
            "last_name with an escape sequence",
            proto::UpdateMeRequest {
                last_name: Some("\u{1b}[31mred".into()),
                ..Default::default()
            },
        ),
        (
            "last_name over 100 characters",
            proto::UpdateMeRequest {
                last_name: Some("x".repeat(101)),
                ..Default::default()
            },
        ),
        // One bad field fails the whole request: the valid ones are not applied either.
        (
            "valid names with an invalid username",
            proto::UpdateMeRequest {
                first_name: Some("Changed".into()),
                last_name: Some("Changed".into()),
                username: Some("!!".into()),
                ..Default::default()
            },
        ),
        (
            "valid username with an invalid email",
            proto::UpdateMeRequest {
                username: Some(unique_username()),
                email: Some("nope".into()),
                current_password: PASSWORD.into(),
                ..Default::default()
            },
        ),
    ];
    for (what, req) in cases {
        let err = update_me(&srv, &pair.access_token, req).await;
        match err {
            Ok(u) => panic!("{what}: expected INVALID_ARGUMENT, got OK: {u:?}"),
            Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}"),
        }
    }
    assert_eq!(
        get_me(&srv, &pair.access_token).await.expect("GetMe"),
        before,
        "no rejected request changed anything"
    );
}

#[tokio::test]
async fn update_me_changing_the_email_requires_the_current_password() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let (user, pair) = srv.user_session().await;
    let new_email = unique_email();
    let shouted = format!("  {}\t", new_email.to_uppercase());

    // Missing, wrong, or impossible passwords: UNAUTHENTICATED, nothing changes.
    expect_bad_credentials(update_me(&srv, &pair.access_token, set_email(&shouted, "")).await);
    expect_bad_credentials(
        update_me(
            &srv,
            &pair.access_token,
            set_email(&shouted, OTHER_PASSWORD),
        )
        .await,
    );
    expect_bad_credentials(update_me(&srv, &pair.access_token, set_email(&shouted, "short")).await);
    expect_bad_credentials(
        update_me(
            &srv,
            &pair.access_token,
            set_email(&shouted, &format!("{PASSWORD}{}", "x".repeat(60))),
        )
        .await,
    );
    // Not even the other fields of a refused request are applied.
    expect_bad_credentials(
        update_me(
            &srv,
            &pair.access_token,
            proto::UpdateMeRequest {
                first_name: Some("Sneaky".into()),
                ..set_email(&shouted, OTHER_PASSWORD)
            },
        )
        .await,
    );
    let me = get_me(&srv, &pair.access_token)
        .await
        .expect("the caller's session survives wrong passwords");
    assert_eq!(me.email, user.email);
    assert_eq!(me.first_name, "");

    // The right password: the e-mail is trimmed, lowercased and stored.
    srv.clock.advance(ChronoDuration::minutes(3));
    let changed_at = now(&srv);
    let u = update_me(
        &srv,
        &pair.access_token,
        proto::UpdateMeRequest {
            first_name: Some("Grace".into()),
            ..set_email(&shouted, PASSWORD)
        },
    )
    .await
    .expect("UpdateMe email with the right password");
    // The other fields apply at once; the e-mail waits for the link mailed to the new address.
    assert_eq!(u.email, user.email);
    assert_eq!(u.first_name, "Grace");
    let tokens = wait_eml_tokens(&srv, &new_email, "confirm-email-change", 1).await;
    let confirmed = confirm_email_change(&srv, &tokens[0])
        .await
        .expect("ConfirmEmailChange");
    let u = confirmed.user.expect("user");
    assert_eq!(u.email, new_email);
    assert!(u.email_verified);
    assert_eq!(
        count(
            &srv.url,
            "SELECT count(*) AS n FROM users WHERE id = $1::uuid AND email = lower(email)",
            &u.id
        )
        .await,
        1,
        "stored lowercased"
    );
    // The caller's session stays valid and sees the new address.
    assert_eq!(
        get_me(&srv, &pair.access_token).await.expect("GetMe").email,
        new_email
    );

    // Login follows the e-mail.
    expect_code(
        try_login(&srv, login_email(&user.email, PASSWORD)).await,
        Code::Unauthenticated,
    );
    let fresh = try_login(&srv, login_email(&new_email.to_uppercase(), PASSWORD))
        .await
        .expect("login with the new e-mail");
    let v = srv.validate(&fresh.access_token).await;
    assert!(v.valid);
    assert_eq!(v.email, new_email);
    // And the old address is free for a new account.
    srv.register(&user.email, PASSWORD).await;

    // Exactly one EMAIL_CHANGED, about and by the user, from this client.
    let events = audit_events(&srv, &admin.access_token, &user.id).await;
    let e = one_of_kind(&events, "EMAIL_CHANGED");
    assert_eq!(e.user_id, user.id);
    assert_eq!(e.actor_id, user.id);
    assert_eq!(e.ip_address, LOCALHOST);
    assert!(e.user_agent.contains("tonic/"), "{e:?}");
    assert_eq!(e.create_time, Some(changed_at));
    assert!(e.detail.contains(&new_email), "{e:?}");
    assert!(!e.detail.contains(PASSWORD), "{e:?}");
}

#[tokio::test]
async fn update_me_to_the_current_email_needs_no_password() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let (user, pair) = srv.user_session().await;

    let u = update_me(
        &srv,
        &pair.access_token,
        proto::UpdateMeRequest {
            last_name: Some("Hopper".into()),
            ..set_email(&format!(" {} ", user.email.to_uppercase()), "")
        },
    )
    .await
    .expect("the current e-mail in another case is no change");
    assert_eq!(u.email, user.email);
    assert_eq!(u.last_name, "Hopper");
    // The same with a wrong password: it is not even checked.
    update_me(
        &srv,
        &pair.access_token,
        set_email(&user.email, OTHER_PASSWORD),
    )
    .await
    .expect("no change needs no password");

    let events = audit_events(&srv, &admin.access_token, &user.id).await;
    assert!(
        of_kind(&events, "EMAIL_CHANGED").is_empty(),
        "no e-mail change happened: {events:#?}"
    );
}

#[tokio::test]
async fn update_me_duplicate_email_or_username_is_already_exists() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let a_email = unique_email();
    let a_username = format!("alpha_{}", unique_username());
    let a = register_full(&srv, &a_email, &a_username, "", "").await;
    let a_pair = srv.login(&a_email, PASSWORD).await;
    let b_email = unique_email();
    let b_username = format!("Bravo_{}", unique_username());
    register_full(&srv, &b_email, &b_username, "", "").await;

    for taken in [b_email.clone(), b_email.to_uppercase()] {
        let err = expect_code(
            update_me(&srv, &a_pair.access_token, set_email(&taken, PASSWORD)).await,
            Code::AlreadyExists,
        );
        assert!(!err.message().contains(&b_email), "{err:?}");
    }
    for taken in [
        b_username.clone(),
        b_username.to_lowercase(),
        b_username.to_uppercase(),
    ] {
        expect_code(
            update_me(&srv, &a_pair.access_token, set_username(&taken)).await,
            Code::AlreadyExists,
        );
    }
    let me = get_me(&srv, &a_pair.access_token).await.expect("GetMe");
    assert_eq!(me.email, a_email);
    assert_eq!(me.username, a_username);

    // Re-casing one's own username is not a conflict.
    let u = update_me(
        &srv,
        &a_pair.access_token,
        set_username(&a_username.to_uppercase()),
    )
    .await
    .expect("re-case own username");
    assert_eq!(u.username, a_username.to_uppercase());

    // The refused e-mail change left no EMAIL_CHANGED behind.
    let events = audit_events(&srv, &admin.access_token, &a.id).await;
    assert!(of_kind(&events, "EMAIL_CHANGED").is_empty(), "{events:#?}");
}

#[tokio::test]
async fn update_me_needs_a_valid_bearer() {
    let srv = TestServer::start().await;
    let (user, pair) = srv.user_session().await;
    let req = || proto::UpdateMeRequest {
        first_name: Some("Mallory".into()),
        ..Default::default()
    };

    let err = expect_code(
        srv.users().await.update_me(req()).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_MISSING"));
    let err = expect_code(
        update_me(&srv, "not-a-jwt", req()).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"));

    // A logged-out session's token.
    let gone = srv.login(&user.email, PASSWORD).await;
    srv.auth()
        .await
        .logout(with_bearer(
            proto::LogoutRequest::default(),
            &gone.access_token,
        ))
        .await
        .expect("logout");
    let err = expect_code(
        update_me(&srv, &gone.access_token, req()).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"));

    // An expired token.
    srv.clock.advance(ChronoDuration::minutes(16));
    let err = expect_code(
        update_me(&srv, &pair.access_token, req()).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_EXPIRED"));

    let fresh = srv.login(&user.email, PASSWORD).await;
    assert_eq!(
        get_me(&srv, &fresh.access_token)
            .await
            .expect("GetMe")
            .first_name,
        ""
    );
}

// ----- ChangePassword ------------------------------------------------------------------------------

#[tokio::test]
async fn change_password_revokes_every_other_session() {
    let srv = TestServer::start().await;
    let email = unique_email();
    let user = srv.register(&email, PASSWORD).await;

    // Sessions that are not live do not count: one idle-expired, one logged out.
    let _stale = srv.login(&email, PASSWORD).await;
    srv.clock.advance(ChronoDuration::days(8));
    let logged_out = srv.login(&email, PASSWORD).await;
    srv.auth()
        .await
        .logout(proto::LogoutRequest {
            refresh_token: logged_out.refresh_token.clone(),
        })
        .await
        .expect("logout");

    let current = srv.login(&email, PASSWORD).await;
    let b = srv.login(&email, PASSWORD).await;
    let c = srv.login(&email, PASSWORD).await;
    let (other_user, other) = srv.user_session().await;

    srv.clock.advance(ChronoDuration::minutes(1));
    let changed_at = now(&srv);
    let revoked = change_password(&srv, &current.access_token, PASSWORD, NEW_PASSWORD)
        .await
        .expect("ChangePassword");
    assert_eq!(revoked, 2, "the two other live sessions");

    assert_dead(&srv, &b).await;
    assert_dead(&srv, &c).await;
    // The caller's session stays valid, and so does its refresh token.
    assert_live(&srv, &current, &user.id).await;
    let rotated = try_refresh(&srv, &current.refresh_token)
        .await
        .expect("the caller's refresh token still works");
    assert_eq!(rotated.session_id, current.session_id);
    assert_live(&srv, &rotated, &user.id).await;
    // Someone else's session is untouched.
    assert_live(&srv, &other, &other_user.id).await;

    // The old password is gone, the new one works.
    expect_code(
        try_login(&srv, login_email(&email, PASSWORD)).await,
        Code::Unauthenticated,
    );
    let new_login = srv.login(&email, NEW_PASSWORD).await;
    let live: Vec<String> = list_sessions(&srv, &rotated.access_token)
        .await
        .expect("ListMySessions")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(live, vec![new_login.session_id, current.session_id]);

    // Changing it back revokes the one other session opened since (the new login).
    let again = change_password(&srv, &rotated.access_token, NEW_PASSWORD, PASSWORD)
        .await
        .expect("change back");
    assert_eq!(again, 1);

    let admin = srv.admin_session().await;
    let events = audit_events(&srv, &admin.access_token, &user.id).await;
    let changes = of_kind(&events, "PASSWORD_CHANGED");
    assert_eq!(changes.len(), 2, "{events:#?}");
    let first = changes[1]; // newest first
    assert_eq!(first.user_id, user.id);
    assert_eq!(first.actor_id, user.id);
    assert_eq!(first.ip_address, LOCALHOST);
    assert_eq!(first.create_time, Some(changed_at));
    for e in changes {
        assert!(!e.detail.contains(PASSWORD) && !e.detail.contains(NEW_PASSWORD));
    }
}

#[tokio::test]
async fn change_password_with_a_wrong_current_password() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let (user, pair) = srv.user_session().await;
    let other = srv.login(&user.email, PASSWORD).await;

    expect_bad_credentials(
        change_password(&srv, &pair.access_token, OTHER_PASSWORD, NEW_PASSWORD).await,
    );
    // A current password that cannot match (too short, or over 72 bytes) is just as wrong.
    expect_bad_credentials(change_password(&srv, &pair.access_token, "short", NEW_PASSWORD).await);
    expect_bad_credentials(
        change_password(
            &srv,
            &pair.access_token,
            &format!("{PASSWORD}{}", "y".repeat(60)),
            NEW_PASSWORD,
        )
        .await,
    );
    // A missing current password is a missing required field.
    expect_code(
        change_password(&srv, &pair.access_token, "", NEW_PASSWORD).await,
        Code::InvalidArgument,
    );
    // No bearer at all.
    let err = expect_code(
        srv.users()
            .await
            .change_password(proto::ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: NEW_PASSWORD.into(),
            })
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_MISSING"));

    // Nothing changed: both sessions live, the old password works, the new one doesn't.
    assert_live(&srv, &pair, &user.id).await;
    assert_live(&srv, &other, &user.id).await;
    srv.login(&user.email, PASSWORD).await;
    expect_code(
        try_login(&srv, login_email(&user.email, NEW_PASSWORD)).await,
        Code::Unauthenticated,
    );
    let events = audit_events(&srv, &admin.access_token, &user.id).await;
    assert!(
        of_kind(&events, "PASSWORD_CHANGED").is_empty(),
        "{events:#?}"
    );
}

#[tokio::test]
async fn change_password_applies_the_password_rules_and_never_truncates() {
    let srv = TestServer::start().await;
    let (user, pair) = srv.user_session().await;
    let p72 = password_of_len(72);
    let p73 = format!("{p72}A");

    for (what, bad) in [
        ("empty", String::new()),
        ("5 characters", "Sh0rt".to_owned()),
        ("7 characters", "Sev3n!x".to_owned()),
        // U+FB01 is "fi" under NFKC: 3 ligatures are 6 characters.
        ("6 characters after NFKC", "\u{FB01}".repeat(3)),
        ("73 bytes", p73.clone()),
        ("75 bytes of UTF-8", "€".repeat(25)),
        ("2000 bytes", "k".repeat(2000)),
    ] {
        let err = change_password(&srv, &pair.access_token, PASSWORD, &bad).await;
        match err {
            Ok(n) => panic!("{what}: expected INVALID_ARGUMENT, got OK ({n})"),
            Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}"),
        }
    }
    // The 73-byte password was not stored truncated to 72: the old password still works.
    expect_code(
        try_login(&srv, login_email(&user.email, &p72)).await,
        Code::Unauthenticated,
    );
    srv.login(&user.email, PASSWORD).await;
    assert_live(&srv, &pair, &user.id).await;

    // Exactly 72 bytes is fine, and only that exact password logs in afterwards.
    change_password(&srv, &pair.access_token, PASSWORD, &p72)
        .await
        .expect("72-byte password");
    srv.login(&user.email, &p72).await;
    expect_code(
        try_login(&srv, login_email(&user.email, &p73)).await,
        Code::Unauthenticated,
    );
    expect_code(
        try_login(&srv, login_email(&user.email, &p72[..71])).await,
        Code::Unauthenticated,
    );
    // The rules apply after NFKC, and login matches the normalized form.
    change_password(
        &srv,
        &pair.access_token,
        &p72,
        &format!("\u{FB01}{NEW_PASSWORD}"),
    )
    .await
    .expect("a password with a ligature");
    srv.login(&user.email, &format!("fi{NEW_PASSWORD}")).await;
}

// ----- DeleteMe ------------------------------------------------------------------------------------

#[tokio::test]
async fn delete_me_requires_the_password() {
    let srv = TestServer::start().await;
    let (user, pair) = srv.user_session().await;

    // Missing: a required field (INVALID_ARGUMENT). Wrong or impossible: bad credentials.
    expect_code(
        delete_me(&srv, &pair.access_token, "").await,
        Code::InvalidArgument,
    );
    expect_bad_credentials(delete_me(&srv, &pair.access_token, OTHER_PASSWORD).await);
    expect_bad_credentials(delete_me(&srv, &pair.access_token, "short").await);
    expect_bad_credentials(
        delete_me(
            &srv,
            &pair.access_token,
            &format!("{PASSWORD}{}", "z".repeat(60)),
        )
        .await,
    );
    let err = expect_code(
        srv.users()
            .await
            .delete_me(proto::DeleteMeRequest {
                password: PASSWORD.into(),
            })
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_MISSING"));
    let err = expect_code(
        delete_me(&srv, "garbage", PASSWORD).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"));

    // Still there.
    assert_live(&srv, &pair, &user.id).await;
    srv.login(&user.email, PASSWORD).await;
}

#[tokio::test]
async fn delete_me_deletes_the_account_sessions_and_tokens() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let email = unique_email();
    let username = unique_username();
    let user = register_full(&srv, &email, &username, "Del", "Eted").await;
    let a = srv.login(&email, PASSWORD).await;
    let b = srv.login(&email, PASSWORD).await;
    let (bystander, bystander_pair) = srv.user_session().await;

    srv.clock.advance(ChronoDuration::minutes(1));
    let deleted_at = now(&srv);
    delete_me(&srv, &a.access_token, PASSWORD)
        .await
        .expect("DeleteMe");

    // Immediately: every token of the account is dead, by ValidateToken, bearer RPCs and Refresh.
    assert_dead(&srv, &a).await;
    assert_dead(&srv, &b).await;
    expect_code(
        delete_me(&srv, &b.access_token, PASSWORD).await,
        Code::Unauthenticated,
    );
    // Login fails in every way, exactly like an unknown account.
    for req in [
        login_email(&email, PASSWORD),
        login_username(&username, PASSWORD),
    ] {
        let err = expect_code(try_login(&srv, req).await, Code::Unauthenticated);
        assert_eq!(reason(&err).as_deref(), Some("INVALID_CREDENTIALS"));
    }
    // Gone from the database, with its sessions and refresh tokens.
    assert_eq!(
        count(
            &srv.url,
            "SELECT count(*) AS n FROM users WHERE id = $1::uuid",
            &user.id
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &srv.url,
            "SELECT count(*) AS n FROM sessions WHERE user_id = $1::uuid",
            &user.id
        )
        .await,
        0
    );
    for s in [&a.session_id, &b.session_id] {
        assert_eq!(
            count(
                &srv.url,
                "SELECT count(*) AS n FROM refresh_tokens WHERE session_id = $1::uuid",
                s
            )
            .await,
            0
        );
    }
    // Others are unaffected.
    assert_live(&srv, &bystander_pair, &bystander.id).await;

    // Audit events about the account are kept, with its id, and the deletion is recorded.
    let events = audit_events(&srv, &admin.access_token, &user.id).await;
    let d = one_of_kind(&events, "USER_DELETED");
    assert_eq!(d.user_id, user.id);
    assert_eq!(d.actor_id, user.id);
    assert_eq!(d.ip_address, LOCALHOST);
    assert_eq!(d.create_time, Some(deleted_at));
    assert!(!d.detail.contains(PASSWORD));
    one_of_kind(&events, "USER_CREATED");
    assert_eq!(of_kind(&events, "LOGIN_SUCCEEDED").len(), 2);
    assert!(
        count(
            &srv.url,
            "SELECT count(*) AS n FROM audit_events WHERE user_id = $1::uuid",
            &user.id
        )
        .await
            >= 4
    );

    // The e-mail and username can be registered again, as a new account.
    let again = register_full(
        &srv,
        &email.to_uppercase(),
        &username.to_uppercase(),
        "",
        "",
    )
    .await;
    assert_ne!(again.id, user.id);
    assert_eq!(again.email, email);
    let pair = srv.login(&email, PASSWORD).await;
    assert_live(&srv, &pair, &again.id).await;
    // The old tokens do not come back to life for the new account.
    assert_dead(&srv, &a).await;
}

#[tokio::test]
async fn delete_me_keeps_the_service_keys_the_admin_created() {
    let srv = TestServer::start().await;
    let leaving = srv.admin_session().await;
    let staying = srv.admin_session().await;
    let leaving_id = get_me(&srv, &leaving.access_token).await.expect("GetMe").id;

    let created = try_create_service_key(&srv, &leaving.access_token, "billing")
        .await
        .expect("CreateServiceKey");

    delete_me(&srv, &leaving.access_token, PASSWORD)
        .await
        .expect("an admin who is not the last one may leave");
    assert_dead(&srv, &leaving).await;

    // The key belongs to the deployment: it still authenticates ValidateToken.
    let (user, pair) = srv.user_session().await;
    let v = srv
        .auth()
        .await
        .validate_token(with_key(
            proto::ValidateTokenRequest {
                access_token: pair.access_token.clone(),
            },
            &created.key,
        ))
        .await
        .expect("the key of a deleted admin still works")
        .into_inner();
    assert!(v.valid);
    assert_eq!(v.user_id, user.id);
    let keys = srv
        .auth()
        .await
        .list_service_keys(with_bearer(
            proto::ListServiceKeysRequest {},
            &staying.access_token,
        ))
        .await
        .expect("ListServiceKeys")
        .into_inner()
        .keys;
    let k = keys
        .iter()
        .find(|k| k.id == created.id)
        .expect("the key is still listed");
    assert_eq!(k.name, "billing");
    assert_eq!(k.creator_id, "", "its creator no longer exists");

    // The key's creation is still in the audit log, attributed to the deleted admin.
    let events = audit_events(&srv, &staying.access_token, "").await;
    let made: Vec<_> = of_kind(&events, "SERVICE_KEY_CREATED")
        .into_iter()
        .filter(|e| e.detail.contains(&created.id))
        .collect();
    assert_eq!(made.len(), 1, "{events:#?}");
    assert_eq!(made[0].actor_id, leaving_id);
    assert!(!made[0].detail.contains(&created.key));
    let gone = audit_events(&srv, &staying.access_token, &leaving_id).await;
    one_of_kind(&gone, "USER_DELETED");
}

#[tokio::test]
async fn the_last_active_admin_cannot_delete_themselves() {
    let srv = TestServer::start().await;
    let first = srv.admin_session().await;
    let first_id = get_me(&srv, &first.access_token).await.expect("GetMe").id;

    let err = expect_code(
        delete_me(&srv, &first.access_token, PASSWORD).await,
        Code::FailedPrecondition,
    );
    assert!(err.message().contains("last active admin"), "{err:?}");

    // An inactive admin, a moderator and a user do not count.
    let second = srv.admin_session().await;
    let second_id = get_me(&srv, &second.access_token).await.expect("GetMe").id;
    exec(
        &srv.url,
        "UPDATE users SET active = false WHERE id = $1::uuid",
        &second_id,
    )
    .await;
    let (moderator, _) = srv.user_session().await;
    exec(
        &srv.url,
        "UPDATE users SET role = 'moderator' WHERE id = $1::uuid",
        &moderator.id,
    )
    .await;
    expect_code(
        delete_me(&srv, &first.access_token, PASSWORD).await,
        Code::FailedPrecondition,
    );
    assert_live(&srv, &first, &first_id).await;

    // With a second active admin, the first may go; then the second is the last one.
    exec(
        &srv.url,
        "UPDATE users SET active = true WHERE id = $1::uuid",
        &second_id,
    )
    .await;
    delete_me(&srv, &first.access_token, PASSWORD)
        .await
        .expect("not the last active admin any more");
    expect_code(
        delete_me(&srv, &second.access_token, PASSWORD).await,
        Code::FailedPrecondition,
    );
    assert_live(&srv, &second, &second_id).await;
    let events = audit_events(&srv, &second.access_token, &second_id).await;
    assert!(of_kind(&events, "USER_DELETED").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_admins_deleting_themselves_at_once_leave_one() {
    let srv = Arc::new(TestServer::start().await);
    let mut survivor = srv.admin_session().await;
    for round in 0..3 {
        let newcomer = srv.admin_session().await;
        let (s1, s2) = (srv.clone(), srv.clone());
        let (t1, t2) = (survivor.access_token.clone(), newcomer.access_token.clone());
        let (r1, r2) = tokio::join!(
            tokio::spawn(async move { delete_me(&s1, &t1, PASSWORD).await }),
            tokio::spawn(async move { delete_me(&s2, &t2, PASSWORD).await }),
        );
        let (r1, r2) = (r1.expect("task"), r2.expect("task"));
        match (&r1, &r2) {
            (Ok(()), Err(e)) => {
                assert_eq!(e.code(), Code::FailedPrecondition, "round {round}: {e:?}");
                survivor = newcomer;
            }
            (Err(e), Ok(())) => {
                assert_eq!(e.code(), Code::FailedPrecondition, "round {round}: {e:?}");
            }
            _ => panic!("round {round}: exactly one may succeed: {r1:?} {r2:?}"),
        }
        let admins =
            diesel::sql_query("SELECT count(*) AS n FROM users WHERE role = 'admin' AND active")
                .get_result::<Count>(&mut connect_db(&srv.url).await)
                .await
                .expect("count admins")
                .n;
        assert_eq!(admins, 1, "round {round}");
        get_me(&srv, &survivor.access_token)
            .await
            .expect("the survivor is intact");
    }
}

// ----- ListMySessions ------------------------------------------------------------------------------

#[tokio::test]
async fn list_my_sessions_shows_only_the_callers_live_sessions() {
    let srv = TestServer::start().await;
    let email = unique_email();
    let user = srv.register(&email, PASSWORD).await;

    // Not listed: an idle-expired session, a logged-out one, and another user's.
    let stale = srv.login(&email, PASSWORD).await;
    srv.clock.advance(ChronoDuration::days(8));
    let laptop_auth = AuthServiceClient::new(ua_channel(&srv, "authd-tests-laptop/1.0").await);
    let a_time = srv.clock.now();
    let a = laptop_auth
        .clone()
        .login(login_email(&email, PASSWORD))
        .await
        .expect("login")
        .into_inner();
    srv.clock.advance(ChronoDuration::minutes(1));
    let b_time = srv.clock.now();
    let b = srv
        .auth()
        .await
        .login(with_ua(
            Request::new(login_email(&email, PASSWORD)),
            "authd-tests-phone/2.0",
        ))
        .await
        .expect("login")
        .into_inner();
    let long_ua = "x".repeat(400);
    srv.clock.advance(ChronoDuration::minutes(1));
    let c = srv
        .auth()
        .await
        .login(with_ua(
            Request::new(login_email(&email, PASSWORD)),
            &long_ua,
        ))
        .await
        .expect("login")
        .into_inner();
    let gone = srv.login(&email, PASSWORD).await;
    srv.auth()
        .await
        .logout(with_bearer(
            proto::LogoutRequest::default(),
            &gone.access_token,
        ))
        .await
        .expect("logout");
    let (_, other) = srv.user_session().await;

    let laptop_users = UserServiceClient::new(ua_channel(&srv, "authd-tests-laptop/1.0").await);
    let sessions = laptop_users
        .clone()
        .list_my_sessions(with_bearer(
            proto::ListMySessionsRequest {},
            &a.access_token,
        ))
        .await
        .expect("ListMySessions")
        .into_inner()
        .sessions;
    let ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            c.session_id.as_str(),
            b.session_id.as_str(),
            a.session_id.as_str()
        ],
        "live sessions only, newest first"
    );
    for s in &sessions {
        assert_ne!(s.id, stale.session_id);
        assert_ne!(s.id, gone.session_id);
        assert_ne!(s.id, other.session_id);
        assert_eq!(s.ip_address, LOCALHOST);
        assert_eq!(s.current, s.id == a.session_id, "{s:?}");
        assert_eq!(s.create_time, s.last_use_time, "never refreshed: {s:?}");
    }
    let sa = &sessions[2];
    assert_eq!(sa.create_time, Some(at(a_time)));
    assert_eq!(sa.expire_time, Some(at(a_time + ChronoDuration::days(7))));
    assert!(
        sa.user_agent.starts_with("authd-tests-laptop/1.0"),
        "{sa:?}"
    );
    let sb = &sessions[1];
    assert_eq!(sb.create_time, Some(at(b_time)));
    assert_eq!(sb.expire_time, Some(at(b_time + ChronoDuration::days(7))));
    assert!(sb.user_agent.contains("authd-tests-phone/2.0"), "{sb:?}");
    assert_eq!(
        sessions[0].user_agent,
        "x".repeat(256),
        "user agents are truncated"
    );

    // From another of the caller's sessions, `current` moves with the caller.
    let from_b = list_sessions(&srv, &b.access_token)
        .await
        .expect("ListMySessions");
    let current: Vec<&str> = from_b
        .iter()
        .filter(|s| s.current)
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(current, vec![b.session_id.as_str()]);

    // After a Refresh, the session's last use is the clock time and its idle expiry moves on.
    srv.clock.advance(ChronoDuration::minutes(10));
    let refreshed_at = srv.clock.now();
    let b2 = try_refresh(&srv, &b.refresh_token).await.expect("refresh");
    let after = list_sessions(&srv, &b2.access_token)
        .await
        .expect("ListMySessions");
    let sb = after
        .iter()
        .find(|s| s.id == b.session_id)
        .expect("still listed");
    assert!(sb.current);
    assert_eq!(sb.create_time, Some(at(b_time)));
    assert_eq!(sb.last_use_time, Some(at(refreshed_at)));
    assert_eq!(
        sb.expire_time,
        Some(at(refreshed_at + ChronoDuration::days(7)))
    );
    let sa = after
        .iter()
        .find(|s| s.id == a.session_id)
        .expect("still listed");
    assert_eq!(sa.last_use_time, Some(at(a_time)), "untouched");
    assert!(!sa.current);

    // The other user sees only their own session.
    let theirs = list_sessions(&srv, &other.access_token)
        .await
        .expect("ListMySessions");
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].id, other.session_id);
    assert!(theirs[0].current);
    // And the caller's sessions belong to the caller.
    assert!(after.iter().all(|s| s.id != other.session_id));
    let v = srv.validate(&b2.access_token).await;
    assert_eq!(v.user_id, user.id);
}

#[tokio::test]
async fn list_my_sessions_expire_time_is_the_earlier_limit() {
    let srv = TestServer::start_with(|c| c.session_max_lifetime = Duration::from_secs(3600)).await;
    let (_, pair) = srv.user_session().await;
    let sessions = list_sessions(&srv, &pair.access_token)
        .await
        .expect("ListMySessions");
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    let created = s.create_time.expect("create_time");
    assert_eq!(
        s.expire_time.expect("expire_time").seconds,
        created.seconds + 3600,
        "the absolute lifetime ends before the idle one"
    );
}

#[tokio::test]
async fn list_my_sessions_needs_a_valid_bearer() {
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    let err = expect_code(
        srv.users()
            .await
            .list_my_sessions(proto::ListMySessionsRequest {})
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_MISSING"));
    srv.auth()
        .await
        .logout_all(with_bearer(proto::LogoutAllRequest {}, &pair.access_token))
        .await
        .expect("logout all");
    let err = expect_code(
        list_sessions(&srv, &pair.access_token).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"));
}

// ----- RevokeMySession -----------------------------------------------------------------------------

#[tokio::test]
async fn revoke_my_session_revokes_one_of_the_callers_sessions() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let (user, a) = srv.user_session().await;
    let b = srv.login(&user.email, PASSWORD).await;
    // Listed newest first: give c a later create_time than a.
    srv.clock.advance(ChronoDuration::seconds(1));
    let c = srv.login(&user.email, PASSWORD).await;

    revoke_session(&srv, &a.access_token, &b.session_id)
        .await
        .expect("RevokeMySession");
    assert_dead(&srv, &b).await;
    assert_live(&srv, &a, &user.id).await;
    assert_live(&srv, &c, &user.id).await;
    let ids: Vec<String> = list_sessions(&srv, &a.access_token)
        .await
        .expect("ListMySessions")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec![c.session_id.clone(), a.session_id.clone()]);

    // Already revoked: NOT_FOUND.
    expect_code(
        revoke_session(&srv, &a.access_token, &b.session_id).await,
        Code::NotFound,
    );
    // An upper-case spelling of a live session's id is the same id.
    revoke_session(&srv, &a.access_token, &c.session_id.to_uppercase())
        .await
        .expect("upper-case UUID");
    assert_dead(&srv, &c).await;

    let events = audit_events(&srv, &admin.access_token, &user.id).await;
    let revoked = of_kind(&events, "SESSIONS_REVOKED");
    assert_eq!(revoked.len(), 2, "{events:#?}");
    for e in revoked {
        assert_eq!(e.user_id, user.id);
        assert_eq!(e.actor_id, user.id);
        assert_eq!(e.ip_address, LOCALHOST);
    }
}

#[tokio::test]
async fn revoke_my_session_can_end_the_current_session() {
    let srv = TestServer::start().await;
    let (user, a) = srv.user_session().await;
    let b = srv.login(&user.email, PASSWORD).await;
    revoke_session(&srv, &a.access_token, &a.session_id)
        .await
        .expect("revoke own current session");
    assert_dead(&srv, &a).await;
    assert_live(&srv, &b, &user.id).await;
}

#[tokio::test]
async fn revoke_my_session_never_touches_other_users_sessions() {
    let srv = TestServer::start().await;
    let (_, mine) = srv.user_session().await;
    let (victim, theirs) = srv.user_session().await;

    // Another user's session id looks exactly like an unknown one (no IDOR).
    let foreign = expect_code(
        revoke_session(&srv, &mine.access_token, &theirs.session_id).await,
        Code::NotFound,
    );
    let unknown = expect_code(
        revoke_session(&srv, &mine.access_token, &uuid::Uuid::new_v4().to_string()).await,
        Code::NotFound,
    );
    assert_eq!(foreign.message(), unknown.message());
    // The victim's session is untouched: valid, listed, and its refresh token still rotates.
    assert_live(&srv, &theirs, &victim.id).await;
    let listed = list_sessions(&srv, &theirs.access_token)
        .await
        .expect("ListMySessions");
    assert_eq!(listed.len(), 1);
    try_refresh(&srv, &theirs.refresh_token)
        .await
        .expect("the victim's refresh token still works");

    // Malformed ids are INVALID_ARGUMENT.
    for bad in ["", "not-a-uuid", "1234", &"f".repeat(100)] {
        expect_code(
            revoke_session(&srv, &mine.access_token, bad).await,
            Code::InvalidArgument,
        );
    }
    // Authentication comes first.
    let err = expect_code(
        srv.users()
            .await
            .revoke_my_session(proto::RevokeMySessionRequest {
                session_id: "not-a-uuid".into(),
            })
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_MISSING"));
    // None of that affected the caller either.
    assert_eq!(
        list_sessions(&srv, &mine.access_token)
            .await
            .expect("ListMySessions")
            .len(),
        1
    );
}

// ----- closed registration -------------------------------------------------------------------------

#[tokio::test]
async fn registration_is_open_by_default() {
    assert!(authd::config::Config::defaults().allow_registration);
    let srv = TestServer::start().await;
    srv.register(&unique_email(), PASSWORD).await;
}

#[tokio::test]
async fn closed_registration_refuses_register_but_admins_still_create_users() {
    let srv = TestServer::start_with(|c| c.allow_registration = false).await;
    let email = unique_email();
    for req in [
        proto::RegisterRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            ..Default::default()
        },
        // Closed comes before input validation.
        proto::RegisterRequest {
            email: "not-an-address".into(),
            password: "x".into(),
            ..Default::default()
        },
    ] {
        let err = expect_code(srv.auth().await.register(req).await, Code::PermissionDenied);
        assert_eq!(err.message(), "registration is closed");
    }
    assert_eq!(
        count(
            &srv.url,
            "SELECT count(*) AS n FROM users WHERE email = $1",
            &email
        )
        .await,
        0
    );

    let admin = srv.admin_session().await;
    let admin_id = get_me(&srv, &admin.access_token).await.expect("GetMe").id;
    let created = srv
        .users()
        .await
        .create_user(with_bearer(
            proto::CreateUserRequest {
                email: email.to_uppercase(),
                password: PASSWORD.into(),
                username: unique_username(),
                role: proto::Role::User as i32,
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .expect("an admin can still create users")
        .into_inner();
    assert_eq!(created.email, email);
    assert_eq!(created.role, proto::Role::User as i32);
    assert!(created.active);

    let pair = srv.login(&email, PASSWORD).await;
    assert_live(&srv, &pair, &created.id).await;
    let events = audit_events(&srv, &admin.access_token, &created.id).await;
    let e = one_of_kind(&events, "USER_CREATED");
    assert_eq!(e.actor_id, admin_id);
    assert!(!e.detail.contains(PASSWORD));
}

// ----- CLI -----------------------------------------------------------------------------------------

struct CliRun {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the real `authd` binary against `url`, with `stdin` on its standard input.
async fn authd_cli(url: &str, args: &[&str], stdin: &str) -> CliRun {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_authd"));
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && (k.starts_with("AUTHD_") || k == "DATABASE_URL")
        {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .env("DATABASE_URL", url)
        .env("AUTHD_BCRYPT_COST", "4")
        .env("AUTHD_DB_POOL_SIZE", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn authd");
    let mut input = child.stdin.take().expect("stdin");
    // The process may exit before reading (e.g. a usage error); a broken pipe is fine then.
    let _ = input.write_all(stdin.as_bytes()).await;
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("authd CLI did not finish")
        .expect("wait for authd");
    CliRun {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn start_on(url: &str) -> TestServer {
    TestServer::start_on(test_config(url), Arc::new(ManualClock::new(Utc::now()))).await
}

#[tokio::test]
async fn cli_create_admin_reads_the_password_from_stdin() {
    let url = fresh_database().await;
    let email = unique_email();
    let shouted = format!(" {} ", email.to_uppercase());

    let run = authd_cli(
        &url,
        &[
            "users",
            "create-admin",
            "--email",
            &shouted,
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(run.status.success(), "create-admin failed: {}", run.stderr);
    let id = run.stdout.trim();
    uuid::Uuid::parse_str(id).expect("stdout is the new id");
    assert_eq!(run.stdout, format!("{id}\n"), "only the id on stdout");
    assert!(!run.stdout.contains(PASSWORD) && !run.stderr.contains(PASSWORD));

    // A server on the same database: the admin logs in and has the admin role.
    let srv = start_on(&url).await;
    let pair = srv.login(&email, PASSWORD).await;
    let me = get_me(&srv, &pair.access_token).await.expect("GetMe");
    assert_eq!(me.id, id);
    assert_eq!(me.email, email);
    assert_eq!(me.role, proto::Role::Admin as i32);
    assert!(me.active);
    // CLI-created admins are verified (issue I).
    assert!(me.email_verified && me.email_verify_time.is_some());
    let v = srv.validate(&pair.access_token).await;
    assert_eq!(v.role, proto::Role::Admin as i32);
    // Admin RPCs work, and the creation is audited with no actor (the CLI).
    let events = audit_events(&srv, &pair.access_token, id).await;
    let created = one_of_kind(&events, "USER_CREATED");
    assert_eq!(created.user_id, id);
    assert_eq!(created.actor_id, "");
    assert!(!created.detail.contains(PASSWORD));

    // The same e-mail again (any case): refused, nothing printed on stdout, no second account.
    let again = authd_cli(
        &url,
        &[
            "users",
            "create-admin",
            "--email",
            &email,
            "--password-stdin",
        ],
        &format!("{OTHER_PASSWORD}\n"),
    )
    .await;
    assert!(!again.status.success(), "duplicate admin must fail");
    assert_eq!(again.stdout, "");
    assert!(!again.stderr.contains(OTHER_PASSWORD), "{}", again.stderr);
    assert_eq!(
        count(
            &url,
            "SELECT count(*) AS n FROM users WHERE email = $1",
            &email
        )
        .await,
        1
    );
    // The original password is unchanged.
    srv.login(&email, PASSWORD).await;

    // Bad passwords and addresses are refused.
    for (what, email, input) in [
        ("short password", unique_email(), "Sh0rt!\n".to_owned()),
        ("empty password", unique_email(), "\n".to_owned()),
        ("no input", unique_email(), String::new()),
        (
            "73-byte password",
            unique_email(),
            format!("{}\n", password_of_len(73)),
        ),
        (
            "bad e-mail",
            "not-an-address".to_owned(),
            format!("{PASSWORD}\n"),
        ),
    ] {
        let run = authd_cli(
            &url,
            &[
                "users",
                "create-admin",
                "--email",
                &email,
                "--password-stdin",
            ],
            &input,
        )
        .await;
        assert!(!run.status.success(), "{what}: must fail");
        assert_eq!(run.stdout, "", "{what}");
        assert_eq!(
            count(
                &url,
                "SELECT count(*) AS n FROM users WHERE email = $1",
                &email
            )
            .await,
            0,
            "{what}"
        );
    }
    // A CRLF line ending is not part of the password.
    let crlf = unique_email();
    let run = authd_cli(
        &url,
        &[
            "users",
            "create-admin",
            "--email",
            &crlf,
            "--password-stdin",
        ],
        &format!("{OTHER_PASSWORD}\r\n"),
    )
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    srv.login(&crlf, OTHER_PASSWORD).await;
}

#[tokio::test]
async fn cli_create_admin_requires_password_stdin() {
    let url = fresh_database().await;
    let email = unique_email();
    for args in [
        vec!["users", "create-admin", "--email", email.as_str()],
        vec![
            "users",
            "create-admin",
            "--email",
            email.as_str(),
            "--password",
            PASSWORD,
        ],
    ] {
        let run = authd_cli(&url, &args, &format!("{PASSWORD}\n")).await;
        assert_eq!(
            run.status.code(),
            Some(2),
            "a clap usage error: {}",
            run.stderr
        );
        assert!(run.stderr.contains("--password-stdin"), "{}", run.stderr);
        assert_eq!(run.stdout, "");
    }
    assert_eq!(
        count(
            &url,
            "SELECT count(*) AS n FROM users WHERE email = $1",
            &email
        )
        .await,
        0
    );
}

#[tokio::test]
async fn cli_service_keys_create_prints_a_working_key_once() {
    let url = fresh_database().await;
    let run = authd_cli(&url, &["service-keys", "create", "ci-pipeline"], "").await;
    assert!(
        run.status.success(),
        "service-keys create failed: {}",
        run.stderr
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the key on stdout: {:?}", run.stdout);
    let key = lines[0];
    assert!(key.starts_with("sk_") && key.len() >= 40, "{key}");
    assert!(!run.stderr.contains(key), "the key is printed once");

    let srv = start_on(&url).await;
    let (user, pair) = srv.user_session().await;
    let v = srv
        .auth()
        .await
        .validate_token(with_key(
            proto::ValidateTokenRequest {
                access_token: pair.access_token.clone(),
            },
            key,
        ))
        .await
        .expect("the CLI key authenticates ValidateToken")
        .into_inner();
    assert!(v.valid);
    assert_eq!(v.user_id, user.id);

    let admin = srv.admin_session().await;
    let keys = srv
        .auth()
        .await
        .list_service_keys(with_bearer(
            proto::ListServiceKeysRequest {},
            &admin.access_token,
        ))
        .await
        .expect("ListServiceKeys")
        .into_inner()
        .keys;
    let k = keys
        .iter()
        .find(|k| k.name == "ci-pipeline")
        .expect("listed");
    assert_eq!(k.creator_id, "", "created with the CLI");
    for row in audit_table_text(&url).await {
        assert!(
            !row.contains(key),
            "a service key leaked into the audit log: {row}"
        );
    }

    // A second key is different; a missing or blank name is refused.
    let second = authd_cli(&url, &["service-keys", "create", "other"], "").await;
    assert!(second.status.success());
    assert_ne!(second.stdout.trim(), key);
    let blank = authd_cli(&url, &["service-keys", "create", "  "], "").await;
    assert!(!blank.status.success());
    assert_eq!(blank.stdout, "");
    let missing = authd_cli(&url, &["service-keys", "create"], "").await;
    assert_eq!(missing.status.code(), Some(2));
}

#[tokio::test]
async fn cli_migrate_applies_once_and_is_idempotent() {
    // An empty database, not a copy of the migrated template.
    let name = format!("cli_migrate_{}", uuid::Uuid::new_v4().simple());
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut connect_db(&db_url("postgres")).await)
        .await
        .expect("create an empty database");
    let url = db_url(&name);

    let applied = |run: &CliRun| -> usize {
        assert!(run.status.success(), "migrate failed: {}", run.stderr);
        run.stdout
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected output {:?}", run.stdout))
    };
    let first = authd_cli(&url, &["migrate"], "").await;
    assert!(applied(&first) >= 2, "{}", first.stdout);
    for _ in 0..2 {
        let again = authd_cli(&url, &["migrate"], "").await;
        assert_eq!(applied(&again), 0, "idempotent: {}", again.stdout);
    }
    // The migrated database serves.
    let srv = start_on(&url).await;
    let (user, pair) = srv.user_session().await;
    assert_live(&srv, &pair, &user.id).await;
    srv.stop().await;
    // A copy of the template is already up to date.
    let fresh = fresh_database().await;
    assert_eq!(applied(&authd_cli(&fresh, &["migrate"], "").await), 0);
}

// ----- audit of self-service -----------------------------------------------------------------------

#[tokio::test]
async fn audit_records_logins_and_logouts_with_client_details() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let ua = "authd-audit-probe/3.1";
    let auth = AuthServiceClient::new(ua_channel(&srv, ua).await);
    let email = unique_email();
    let username = unique_username();
    let user = register_full(&srv, &email, &username, "", "").await;

    // LOGIN_SUCCEEDED
    srv.clock.advance(ChronoDuration::seconds(10));
    let t_login = now(&srv);
    let pair = auth
        .clone()
        .login(login_email(&email, PASSWORD))
        .await
        .expect("login")
        .into_inner();
    // LOGIN_FAILED: wrong password, by e-mail and by username.
    srv.clock.advance(ChronoDuration::seconds(10));
    let t_wrong = now(&srv);
    let wrong = "Wrong-Guess-Zebra-Quartz-19";
    expect_code(
        auth.clone().login(login_email(&email, wrong)).await,
        Code::Unauthenticated,
    );
    srv.clock.advance(ChronoDuration::seconds(10));
    expect_code(
        auth.clone()
            .login(login_username(&username.to_uppercase(), wrong))
            .await,
        Code::Unauthenticated,
    );
    // LOGIN_FAILED: unknown account.
    srv.clock.advance(ChronoDuration::seconds(10));
    let t_unknown = now(&srv);
    let ghost = unique_email();
    expect_code(
        auth.clone().login(login_email(&ghost, PASSWORD)).await,
        Code::Unauthenticated,
    );
    // LOGOUT (bearer), then LOGOUT_ALL.
    srv.clock.advance(ChronoDuration::seconds(10));
    let t_logout = now(&srv);
    auth.clone()
        .logout(with_bearer(
            proto::LogoutRequest::default(),
            &pair.access_token,
        ))
        .await
        .expect("logout");
    let p2 = srv.login(&email, PASSWORD).await;
    // A user agent over the limit is stored truncated.
    let long_ua = format!("{}-tail", "u".repeat(300));
    srv.auth()
        .await
        .login(with_ua(
            Request::new(login_email(&email, PASSWORD)),
            &long_ua,
        ))
        .await
        .expect("login");
    srv.clock.advance(ChronoDuration::seconds(10));
    let t_logout_all = now(&srv);
    let n = auth
        .clone()
        .logout_all(with_bearer(proto::LogoutAllRequest {}, &p2.access_token))
        .await
        .expect("logout all")
        .into_inner()
        .revoked_sessions;
    assert_eq!(n, 2);

    let mine = audit_events(&srv, &admin.access_token, &user.id).await;
    // Newest first.
    let times: Vec<_> = mine
        .iter()
        .map(|e| {
            let t = e.create_time.expect("create_time");
            (t.seconds, t.nanos)
        })
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "ListAuditEvents is newest first");
    for e in &mine {
        assert_eq!(e.user_id, user.id, "filtered by user: {e:?}");
        assert_eq!(e.ip_address, LOCALHOST, "{e:?}");
        uuid::Uuid::parse_str(&e.id).expect("event id is a UUID");
    }

    let ok = of_kind(&mine, "LOGIN_SUCCEEDED");
    let first_ok = ok
        .iter()
        .find(|e| e.create_time == Some(t_login))
        .expect("LOGIN_SUCCEEDED of the first login");
    assert_eq!(first_ok.actor_id, user.id);
    assert!(first_ok.user_agent.starts_with(ua), "{first_ok:?}");
    assert_eq!(ok.len(), 3);
    assert_eq!(
        ok.iter()
            .filter(|e| e.user_agent == "u".repeat(256))
            .count(),
        1,
        "the long user agent is truncated to 256 characters: {ok:#?}"
    );

    let failed = of_kind(&mine, "LOGIN_FAILED");
    assert_eq!(failed.len(), 2, "two wrong passwords for this account");
    let by_email = failed
        .iter()
        .find(|e| e.create_time == Some(t_wrong))
        .expect("LOGIN_FAILED by e-mail");
    assert_eq!(by_email.actor_id, "", "nobody was authenticated");
    assert!(by_email.user_agent.starts_with(ua));
    assert!(by_email.detail.contains(&email), "{by_email:?}");
    let by_username = failed
        .iter()
        .find(|e| e.create_time != Some(t_wrong))
        .expect("LOGIN_FAILED by username");
    assert!(
        by_username.detail.contains(&username.to_uppercase()),
        "{by_username:?}"
    );
    for e in &failed {
        assert!(!e.detail.contains(wrong), "{e:?}");
    }

    let logout = one_of_kind(&mine, "LOGOUT");
    assert_eq!(logout.actor_id, user.id);
    assert_eq!(logout.create_time, Some(t_logout));
    assert!(logout.user_agent.starts_with(ua));
    let all = one_of_kind(&mine, "LOGOUT_ALL");
    assert_eq!(all.actor_id, user.id);
    assert_eq!(all.create_time, Some(t_logout_all));
    assert!(all.user_agent.starts_with(ua));

    // The unknown account's failure has no user, and keeps the identifier only as a keyed hash.
    let everything = audit_events(&srv, &admin.access_token, "").await;
    let digest = srv
        .svc
        .audit_identifier_digest(&authd::api::LoginIdentifier::Email(ghost.clone()));
    assert!(everything.iter().all(|e| !e.detail.contains(&ghost)));
    let unknown: Vec<_> = everything
        .iter()
        .filter(|e| e.kind == "LOGIN_FAILED" && e.detail.contains(&digest))
        .collect();
    assert_eq!(unknown.len(), 1, "{everything:#?}");
    let u = unknown[0];
    assert_eq!(u.user_id, "");
    assert_eq!(u.actor_id, "");
    assert_eq!(u.ip_address, LOCALHOST);
    assert!(u.user_agent.starts_with(ua));
    assert_eq!(u.create_time, Some(t_unknown));
    assert!(!u.detail.contains(PASSWORD));
}

#[tokio::test]
async fn audit_stores_unknown_login_identifiers_only_as_a_keyed_hash() {
    use authd::api::LoginIdentifier;
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let marker = uuid::Uuid::new_v4().simple().to_string();
    // A password typed into the identifier field, and an identifier with control characters
    // (newline, NUL, ESC, DEL, C1) far longer than anything stored.
    let typed_password = format!("Hunter2-{marker}-Secret!");
    let raw = format!(
        "evil{marker}\n\u{0}\u{1b}[31m\u{7f}\u{85}injected{}",
        "x".repeat(250)
    );
    assert!(raw.chars().count() > 250 && raw.len() <= 320);
    for req in [
        login_email(&typed_password, PASSWORD),
        login_username(&typed_password, PASSWORD),
        login_username(&raw, PASSWORD),
        login_email(&raw, PASSWORD),
        // The same identifier again, differently cased and padded: the same digest.
        login_email(&format!("  {}  ", typed_password.to_uppercase()), PASSWORD),
    ] {
        expect_code(try_login(&srv, req).await, Code::Unauthenticated);
    }
    let events: Vec<_> = audit_events(&srv, &admin.access_token, "")
        .await
        .into_iter()
        .filter(|e| e.kind == "LOGIN_FAILED")
        .collect();
    assert_eq!(events.len(), 5, "{events:#?}");
    for e in &events {
        assert!(
            !e.detail.contains(&marker),
            "identifier stored: {:?}",
            e.detail
        );
        assert!(
            !e.detail.to_lowercase().contains("hunter2"),
            "identifier stored: {:?}",
            e.detail
        );
        assert!(!e.detail.chars().any(char::is_control), "{:?}", e.detail);
        assert!(!e.detail.contains(PASSWORD));
        assert_eq!(e.user_id, "");
    }
    // An admin can correlate attempts and check a candidate: the digest of the identifier (its
    // kind and normalized form) under the server's secret.
    let digest = |id: LoginIdentifier| srv.svc.audit_identifier_digest(&id);
    let as_email = digest(LoginIdentifier::Email(typed_password.clone()));
    let as_username = digest(LoginIdentifier::Username(typed_password.clone()));
    assert!(
        as_email.starts_with("hmac:") && as_email.len() == 21,
        "{as_email}"
    );
    assert_ne!(as_email, as_username);
    let with = |d: &str| events.iter().filter(|e| e.detail.contains(d)).count();
    assert_eq!(with(&as_email), 2, "{events:#?}");
    assert_eq!(with(&as_username), 1, "{events:#?}");
    assert_eq!(with(&digest(LoginIdentifier::Username(raw.clone()))), 1);
    assert_eq!(with(&digest(LoginIdentifier::Email(raw.clone()))), 1);
    // The CLI prints the same digests for a candidate read from stdin.
    for (args, expected) in [
        (&["audit", "identifier-digest"][..], &as_email),
        (
            &["audit", "identifier-digest", "--username"][..],
            &as_username,
        ),
    ] {
        let run = authd_cli(&srv.url, args, &format!("{typed_password}\n")).await;
        assert!(run.status.success(), "{args:?}: {}", run.stderr);
        assert_eq!(run.stdout.trim(), expected.as_str(), "{args:?}");
    }
    // A known account's failure keeps its user id (and the identifier it was named by).
    let email = unique_email();
    let user = srv.register(&email, PASSWORD).await;
    expect_code(
        try_login(&srv, login_email(&email, OTHER_PASSWORD)).await,
        Code::Unauthenticated,
    );
    let mine = audit_events(&srv, &admin.access_token, &user.id).await;
    let failed: Vec<_> = mine.iter().filter(|e| e.kind == "LOGIN_FAILED").collect();
    assert_eq!(failed.len(), 1, "{mine:#?}");
    assert!(failed[0].detail.contains(&email), "{:?}", failed[0]);
    // An identifier over the 320-byte limit of the field is refused as malformed input.
    expect_code(
        try_login(&srv, login_username(&"y".repeat(500), PASSWORD)).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn audit_records_refresh_reuse_in_strict_mode() {
    let srv = TestServer::start_with(|c| c.refresh_reuse_grace = Duration::ZERO).await;
    let admin = srv.admin_session().await;
    let (user, pair) = srv.user_session().await;
    let next = try_refresh(&srv, &pair.refresh_token)
        .await
        .expect("refresh");

    srv.clock.advance(ChronoDuration::seconds(30));
    let t_reuse = now(&srv);
    let ua = "authd-replayer/0.1";
    expect_code(
        srv.auth()
            .await
            .refresh(with_ua(
                Request::new(proto::RefreshRequest {
                    refresh_token: pair.refresh_token.clone(),
                }),
                ua,
            ))
            .await,
        Code::Unauthenticated,
    );
    // The whole session is revoked.
    assert_dead(&srv, &next).await;

    let events = audit_events(&srv, &admin.access_token, &user.id).await;
    let e = one_of_kind(&events, "REFRESH_REUSE_DETECTED");
    assert_eq!(e.user_id, user.id);
    assert_eq!(
        e.actor_id, "",
        "whoever replayed the token is not authenticated"
    );
    assert_eq!(e.ip_address, LOCALHOST);
    assert!(e.user_agent.starts_with(ua), "{e:?}");
    assert_eq!(e.create_time, Some(t_reuse));
    assert!(e.detail.contains(&pair.session_id), "{e:?}");
    assert!(!e.detail.contains(&pair.refresh_token) && !e.detail.contains(&next.refresh_token));
}

#[tokio::test]
async fn audit_log_never_contains_passwords_tokens_or_keys() {
    let srv = TestServer::start_with(|c| c.refresh_reuse_grace = Duration::ZERO).await;
    let mut secrets: Vec<String> =
        vec![PASSWORD.into(), OTHER_PASSWORD.into(), NEW_PASSWORD.into()];
    fn remember(secrets: &mut Vec<String>, pair: &proto::LoginResponse) {
        secrets.push(pair.access_token.clone());
        secrets.push(pair.refresh_token.clone());
    }

    let admin = srv.admin_session().await;
    remember(&mut secrets, &admin);
    let email = unique_email();
    let username = unique_username();
    let user = register_full(&srv, &email, &username, "Audit", "Me").await;

    // Failed logins with guessed passwords, known and unknown accounts.
    let guesses = [
        "Guess-Number-One-Alpha-11",
        "Guess-Number-Two-Bravo-22",
        "Guess-Number-Three-Charlie-33",
    ];
    for req in [
        login_email(&email, guesses[0]),
        login_username(&username, guesses[1]),
        login_email(&unique_email(), guesses[2]),
    ] {
        expect_code(try_login(&srv, req).await, Code::Unauthenticated);
    }

    // Sessions, rotation, reuse.
    let p1 = srv.login(&email, PASSWORD).await;
    remember(&mut secrets, &p1);
    let p1b = try_refresh(&srv, &p1.refresh_token).await.expect("refresh");
    remember(&mut secrets, &p1b);
    expect_code(
        try_refresh(&srv, &p1.refresh_token).await,
        Code::Unauthenticated,
    );
    let p2 = srv.login(&email, PASSWORD).await;
    remember(&mut secrets, &p2);
    let p3 = srv.login(&email, PASSWORD).await;
    remember(&mut secrets, &p3);

    // Self-service changes.
    change_password(&srv, &p2.access_token, PASSWORD, NEW_PASSWORD)
        .await
        .expect("change password");
    let new_email = unique_email();
    change_email(&srv, &p2.access_token, &new_email, NEW_PASSWORD)
        .await
        .expect("change e-mail");
    revoke_session(&srv, &p2.access_token, &p3.session_id)
        .await
        .expect_err("p3 was revoked by the password change");
    let p4 = srv.login(&new_email, NEW_PASSWORD).await;
    remember(&mut secrets, &p4);
    revoke_session(&srv, &p2.access_token, &p4.session_id)
        .await
        .expect("revoke p4");

    // Service keys: through the API (created and revoked) and through the domain (as the CLI).
    let created = try_create_service_key(&srv, &admin.access_token, "audited")
        .await
        .expect("create service key");
    secrets.push(created.key.clone());
    srv.auth()
        .await
        .revoke_service_key(with_bearer(
            proto::RevokeServiceKeyRequest { id: created.id },
            &admin.access_token,
        ))
        .await
        .expect("revoke service key");
    let cli_key = srv.service_key().await;
    secrets.push(cli_key.clone());

    // Admin-set passwords.
    let admin_set = "Admin-Chosen-Secret-Pw-8842";
    secrets.push(admin_set.into());
    let made = srv
        .users()
        .await
        .create_user(with_bearer(
            proto::CreateUserRequest {
                email: unique_email(),
                password: admin_set.into(),
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .expect("create user")
        .into_inner();
    let reset = "Admin-Reset-Secret-Pw-5531";
    secrets.push(reset.into());
    srv.users()
        .await
        .update_user(with_bearer(
            proto::UpdateUserRequest {
                user_id: made.id,
                password: Some(reset.into()),
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .expect("reset password");

    // Logouts of every kind, then the account goes.
    let p5 = srv.login(&new_email, NEW_PASSWORD).await;
    remember(&mut secrets, &p5);
    srv.auth()
        .await
        .logout(proto::LogoutRequest {
            refresh_token: p5.refresh_token.clone(),
        })
        .await
        .expect("logout by refresh token");
    let p6 = srv.login(&new_email, NEW_PASSWORD).await;
    remember(&mut secrets, &p6);
    srv.auth()
        .await
        .logout(with_bearer(
            proto::LogoutRequest::default(),
            &p6.access_token,
        ))
        .await
        .expect("logout by bearer");
    srv.auth()
        .await
        .logout_all(with_bearer(proto::LogoutAllRequest {}, &p2.access_token))
        .await
        .expect("logout all");
    let p7 = srv.login(&new_email, NEW_PASSWORD).await;
    remember(&mut secrets, &p7);
    delete_me(&srv, &p7.access_token, NEW_PASSWORD)
        .await
        .expect("delete me");
    secrets.extend(guesses.iter().map(|g| (*g).to_owned()));

    // Every kind of self-service event is there...
    let rows = audit_table_text(&srv.url).await;
    let admin_view = audit_events(&srv, &admin.access_token, "").await;
    for kind in [
        "LOGIN_SUCCEEDED",
        "LOGIN_FAILED",
        "LOGOUT",
        "LOGOUT_ALL",
        "REFRESH_REUSE_DETECTED",
        "PASSWORD_CHANGED",
        "EMAIL_CHANGED",
        "USER_CREATED",
        "USER_UPDATED",
        "USER_DELETED",
        "SESSIONS_REVOKED",
        "SERVICE_KEY_CREATED",
        "SERVICE_KEY_REVOKED",
    ] {
        assert!(
            !of_kind(&admin_view, kind).is_empty(),
            "no {kind} event recorded"
        );
    }
    assert_eq!(rows.len(), admin_view.len());
    let events_of_user = audit_events(&srv, &admin.access_token, &user.id).await;
    assert!(events_of_user.len() >= 10, "{events_of_user:#?}");

    // ...and no secret, nor its random part, nor a bcrypt hash, appears anywhere in the table.
    let mut needles = Vec::new();
    for s in &secrets {
        needles.push(s.clone());
        if let Some(random) = s.strip_prefix("rt_").or_else(|| s.strip_prefix("sk_")) {
            needles.push(random[..20].to_owned());
        }
        if s.matches('.').count() == 2 {
            // A JWT: its payload and signature.
            let parts: Vec<&str> = s.split('.').collect();
            needles.push(parts[1].to_owned());
            needles.push(parts[2].to_owned());
        }
    }
    for row in &rows {
        for n in &needles {
            assert!(
                !row.contains(n.as_str()),
                "secret {n:?} leaked into audit row {row}"
            );
        }
        assert!(!row.contains("$2b$") && !row.contains("$2a$") && !row.contains("$2y$"));
    }
}
