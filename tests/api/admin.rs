use crate::common::*;

// Administration, end to end against the real server and PostgreSQL: every cell of the permission
// matrix, the order of checks, UUID handling, ListUsers (paging, ordering, filters, tokens, paging
// under concurrent inserts), GetUser, CreateUser, UpdateUser (every field, revocation, no-ops,
// deactivation), DeleteUser, the last-active-admin invariant (including a concurrent race),
// RevokeUserSessions, ListAuditEvents and audit retention.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration as StdDuration;

use authd::clock::Clock;
use authd::domain::service::{Account, NewAccount};
use authd::domain::{ClientInfo, Role as DomainRole};
use authd::proto;
use authd::proto::Role;
use authd::proto::user_service_client::UserServiceClient;
use chrono::Duration;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use uuid::Uuid;

/// Pass as the token to send no `authorization` metadata at all.
const NO_BEARER: &str = "";
/// Every request of these tests carries this user agent (tonic appends its own).
const TEST_UA: &str = "authd-admin-tests/1.0";

// ----- helpers ------------------------------------------------------------------------------------

/// A request with `authorization: Bearer <token>` (none when `token` is empty) and our user agent.
fn req<T>(msg: T, token: &str) -> Request<T> {
    let mut r = if token.is_empty() {
        Request::new(msg)
    } else {
        with_bearer(msg, token)
    };
    r.metadata_mut()
        .insert("user-agent", TEST_UA.parse().expect("metadata"));
    r
}

async fn list_users(
    srv: &TestServer,
    token: &str,
    msg: proto::ListUsersRequest,
) -> Result<proto::ListUsersResponse, Status> {
    srv.users()
        .await
        .list_users(req(msg, token))
        .await
        .map(|r| r.into_inner())
}

async fn get_user(srv: &TestServer, token: &str, id: &str) -> Result<proto::User, Status> {
    srv.users()
        .await
        .get_user(req(proto::GetUserRequest { user_id: id.into() }, token))
        .await
        .map(|r| r.into_inner())
}

async fn revoke_sessions(srv: &TestServer, token: &str, id: &str) -> Result<i64, Status> {
    srv.users()
        .await
        .revoke_user_sessions(req(
            proto::RevokeUserSessionsRequest { user_id: id.into() },
            token,
        ))
        .await
        .map(|r| r.into_inner().revoked_sessions)
}

async fn create_user(
    srv: &TestServer,
    token: &str,
    msg: proto::CreateUserRequest,
) -> Result<proto::User, Status> {
    srv.users()
        .await
        .create_user(req(msg, token))
        .await
        .map(|r| r.into_inner())
}

async fn update_user(
    srv: &TestServer,
    token: &str,
    msg: proto::UpdateUserRequest,
) -> Result<proto::User, Status> {
    srv.users()
        .await
        .update_user(req(msg, token))
        .await
        .map(|r| r.into_inner())
}

async fn delete_user(srv: &TestServer, token: &str, id: &str) -> Result<(), Status> {
    srv.users()
        .await
        .delete_user(req(proto::DeleteUserRequest { user_id: id.into() }, token))
        .await
        .map(|_| ())
}

async fn list_audit(
    srv: &TestServer,
    token: &str,
    msg: proto::ListAuditEventsRequest,
) -> Result<proto::ListAuditEventsResponse, Status> {
    srv.users()
        .await
        .list_audit_events(req(msg, token))
        .await
        .map(|r| r.into_inner())
}

async fn get_me(srv: &TestServer, token: &str) -> Result<proto::User, Status> {
    srv.users()
        .await
        .get_me(req(proto::GetMeRequest {}, token))
        .await
        .map(|r| r.into_inner())
}

async fn try_login(
    srv: &TestServer,
    email: &str,
    password: &str,
) -> Result<proto::LoginResponse, Status> {
    srv.auth()
        .await
        .login(req(login_email(email, password), NO_BEARER))
        .await
        .map(|r| r.into_inner())
}

async fn try_refresh(
    srv: &TestServer,
    refresh_token: &str,
) -> Result<proto::LoginResponse, Status> {
    srv.auth()
        .await
        .refresh(req(
            proto::RefreshRequest {
                refresh_token: refresh_token.into(),
            },
            NO_BEARER,
        ))
        .await
        .map(|r| r.into_inner().into())
}

fn new_user(role: Role) -> proto::CreateUserRequest {
    proto::CreateUserRequest {
        email: unique_email(),
        password: PASSWORD.into(),
        role: role as i32,
        ..Default::default()
    }
}

fn upd(id: &str) -> proto::UpdateUserRequest {
    proto::UpdateUserRequest {
        user_id: id.into(),
        ..Default::default()
    }
}

fn by_query(q: &str) -> proto::ListUsersRequest {
    proto::ListUsersRequest {
        query: q.into(),
        page_size: 1000,
        ..Default::default()
    }
}

fn by_role(role: Role, active: Option<bool>) -> proto::ListUsersRequest {
    proto::ListUsersRequest {
        role: role as i32,
        active,
        page_size: 1000,
        ..Default::default()
    }
}

fn audit_page(user_id: &str, page_size: i32, page_token: &str) -> proto::ListAuditEventsRequest {
    proto::ListAuditEventsRequest {
        user_id: user_id.into(),
        page_size,
        page_token: page_token.into(),
    }
}

/// An account created directly through the domain (fast; no RPC), at the clock's current time.
async fn direct_account(srv: &TestServer, role: DomainRole) -> Account {
    direct_account_with(srv, role, &unique_email(), "").await
}

async fn direct_account_with(
    srv: &TestServer,
    role: DomainRole,
    email: &str,
    username: &str,
) -> Account {
    srv.svc
        .create_account(
            NewAccount {
                email: email.into(),
                password: PASSWORD.into(),
                username: username.into(),
                ..Default::default()
            },
            role,
            None,
            &ClientInfo::default(),
            "test fixture",
        )
        .await
        .expect("create account")
}

/// Someone with an account and a live session.
#[derive(Debug, Clone)]
struct Person {
    id: String,
    email: String,
    pair: proto::LoginResponse,
}

impl Person {
    fn token(&self) -> &str {
        &self.pair.access_token
    }
}

async fn person(srv: &TestServer, role: DomainRole) -> Person {
    let a = direct_account(srv, role).await;
    let pair = srv.login(&a.email, PASSWORD).await;
    Person {
        id: a.id.to_string(),
        email: a.email,
        pair,
    }
}

/// An admin (as the bootstrap creates one), a MODERATOR created by that admin through CreateUser,
/// and a registered USER, each logged in.
struct Cast {
    admin: Person,
    moderator: Person,
    user: Person,
}

async fn cast(srv: &TestServer) -> Cast {
    let pair = srv.admin_session().await;
    let me = get_me(srv, &pair.access_token).await.expect("GetMe");
    let admin = Person {
        id: me.id,
        email: me.email,
        pair,
    };
    let m = create_user(srv, admin.token(), new_user(Role::Moderator))
        .await
        .expect("CreateUser moderator");
    assert_eq!(m.role, Role::Moderator as i32);
    let moderator = Person {
        pair: srv.login(&m.email, PASSWORD).await,
        id: m.id,
        email: m.email,
    };
    let (u, pair) = srv.user_session().await;
    let user = Person {
        id: u.id,
        email: u.email,
        pair,
    };
    Cast {
        admin,
        moderator,
        user,
    }
}

/// The token's session is live.
async fn assert_live(srv: &TestServer, token: &str, what: &str) {
    let v = srv.validate(token).await;
    assert!(v.valid, "{what}: the token should still be valid: {v:?}");
}

/// The token's session is revoked: ValidateToken says invalid with every field empty.
async fn assert_dead(srv: &TestServer, token: &str, what: &str) {
    assert_eq!(
        srv.validate(token).await,
        proto::ValidateTokenResponse::default(),
        "{what}: the token should read as invalid"
    );
}

/// The whole session is dead: access token invalid, GetMe refused, refresh refused.
async fn assert_session_dead(srv: &TestServer, pair: &proto::LoginResponse, what: &str) {
    assert_dead(srv, &pair.access_token, what).await;
    let s = expect_code(get_me(srv, &pair.access_token).await, Code::Unauthenticated);
    assert_eq!(
        reason(&s).as_deref(),
        Some("TOKEN_INVALID"),
        "{what}: {s:?}"
    );
    expect_code(
        try_refresh(srv, &pair.refresh_token).await,
        Code::Unauthenticated,
    );
}

/// A timestamp in microseconds (PostgreSQL's precision).
fn micros(ts: &Option<prost_types::Timestamp>) -> i64 {
    let t = ts.as_ref().expect("timestamp is set");
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000
}

fn now_micros(srv: &TestServer) -> i64 {
    srv.clock.now().timestamp_micros()
}

/// The listing order of users: (create_time, id).
fn user_key(u: &proto::User) -> (i64, Uuid) {
    (
        micros(&u.create_time),
        Uuid::parse_str(&u.id).expect("user id is a UUID"),
    )
}

/// The listing order of audit events, reversed: (create_time, id).
fn event_key(e: &proto::AuditEvent) -> (i64, Uuid) {
    (
        micros(&e.create_time),
        Uuid::parse_str(&e.id).expect("event id is a UUID"),
    )
}

fn ids(users: &[proto::User]) -> Vec<String> {
    users.iter().map(|u| u.id.clone()).collect()
}

/// Pages through ListUsers. Returns the users and the `total_size` of every page.
async fn walk_users(
    srv: &TestServer,
    token: &str,
    mut msg: proto::ListUsersRequest,
) -> (Vec<proto::User>, Vec<i64>) {
    let mut users = Vec::new();
    let mut totals = Vec::new();
    for _ in 0..10_000 {
        let r = list_users(srv, token, msg.clone())
            .await
            .expect("ListUsers");
        totals.push(r.total_size);
        if !r.next_page_token.is_empty() {
            assert!(
                !r.users.is_empty(),
                "a page with a next_page_token is not empty"
            );
        }
        users.extend(r.users);
        if r.next_page_token.is_empty() {
            return (users, totals);
        }
        msg.page_token = r.next_page_token;
    }
    panic!("ListUsers never ran out of pages");
}

/// Pages through ListAuditEvents.
async fn walk_audit(
    srv: &TestServer,
    token: &str,
    user_id: &str,
    page_size: i32,
) -> Vec<proto::AuditEvent> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    for _ in 0..10_000 {
        let r = list_audit(srv, token, audit_page(user_id, page_size, &page_token))
            .await
            .expect("ListAuditEvents");
        if page_size > 0 {
            assert!(r.events.len() <= page_size as usize);
        }
        events.extend(r.events);
        if r.next_page_token.is_empty() {
            return events;
        }
        page_token = r.next_page_token;
    }
    panic!("ListAuditEvents never ran out of pages");
}

/// Every audit event (up to 1000), newest first.
async fn all_events(srv: &TestServer, token: &str, user_id: &str) -> Vec<proto::AuditEvent> {
    let r = list_audit(srv, token, audit_page(user_id, 1000, ""))
        .await
        .expect("ListAuditEvents");
    assert!(r.next_page_token.is_empty(), "fewer than 1000 events here");
    r.events
}

fn assert_no_duplicates<'a>(ids: impl IntoIterator<Item = &'a String>, what: &str) {
    let mut seen = HashSet::new();
    for id in ids {
        assert!(seen.insert(id.clone()), "{what}: {id} appears twice");
    }
}

async fn db(srv: &TestServer) -> AsyncPgConnection {
    AsyncPgConnection::establish(&srv.url)
        .await
        .expect("connect to the test database")
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName)]
struct EmailRow {
    #[diesel(sql_type = Text)]
    email: String,
}

async fn sql_count(srv: &TestServer, sql: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(sql)
        .get_result::<Count>(&mut db(srv).await)
        .await
        .expect("count query")
        .n
}

async fn active_admin_emails(srv: &TestServer) -> Vec<String> {
    use diesel_async::RunQueryDsl;
    diesel::sql_query("SELECT email FROM users WHERE role = 'admin' AND active ORDER BY email")
        .load::<EmailRow>(&mut db(srv).await)
        .await
        .expect("active admins")
        .into_iter()
        .map(|r| r.email)
        .collect()
}

// ----- the permission matrix ----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    ListUsers,
    GetUser,
    RevokeUserSessions,
    CreateUser,
    UpdateUser,
    DeleteUser,
    ListAuditEvents,
}

/// The issue's table, cell by cell, for a ROLE_USER target.
const MATRIX: [(Op, [bool; 3]); 7] = [
    //                       ADMIN  MODERATOR USER
    (Op::ListUsers, [true, true, false]),
    (Op::GetUser, [true, true, false]),
    (Op::RevokeUserSessions, [true, true, false]),
    (Op::CreateUser, [true, false, false]),
    (Op::UpdateUser, [true, true, false]),
    (Op::DeleteUser, [true, false, false]),
    (Op::ListAuditEvents, [true, false, false]),
];

/// Calls `op` on `target` (a ROLE_USER with one live session) and checks the reply when it is OK.
async fn perform(
    srv: &TestServer,
    token: &str,
    op: Op,
    target: &Person,
    new_email: &str,
) -> Result<(), Status> {
    match op {
        Op::ListUsers => {
            let r = list_users(srv, token, by_query(&target.email)).await?;
            assert_eq!(ids(&r.users), vec![target.id.clone()]);
            assert_eq!(r.total_size, 1);
        }
        Op::GetUser => {
            let u = get_user(srv, token, &target.id).await?;
            assert_eq!((u.id, u.email), (target.id.clone(), target.email.clone()));
        }
        Op::RevokeUserSessions => {
            assert_eq!(revoke_sessions(srv, token, &target.id).await?, 1);
        }
        Op::CreateUser => {
            let msg = proto::CreateUserRequest {
                email: new_email.into(),
                ..new_user(Role::User)
            };
            let u = create_user(srv, token, msg).await?;
            assert_eq!(u.email, new_email);
        }
        Op::UpdateUser => {
            let msg = proto::UpdateUserRequest {
                active: Some(false),
                ..upd(&target.id)
            };
            let u = update_user(srv, token, msg).await?;
            assert!(!u.active);
        }
        Op::DeleteUser => delete_user(srv, token, &target.id).await?,
        Op::ListAuditEvents => {
            let r = list_audit(srv, token, audit_page("", 0, "")).await?;
            assert!(!r.events.is_empty());
        }
    }
    Ok(())
}

#[tokio::test]
async fn permission_matrix_every_cell() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let admin = c.admin.token().to_owned();
    for (op, cells) in MATRIX {
        for ((name, caller), allowed) in [
            ("ADMIN", &c.admin),
            ("MODERATOR", &c.moderator),
            ("USER", &c.user),
        ]
        .into_iter()
        .zip(cells)
        {
            let what = format!("{op:?} by {name}");
            let target = person(&srv, DomainRole::User).await;
            let new_email = unique_email();
            let result = perform(&srv, caller.token(), op, &target, &new_email).await;
            if allowed {
                result.unwrap_or_else(|s| panic!("{what}: expected OK, got {s:?}"));
            } else {
                match result {
                    Err(s) => assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}"),
                    Ok(()) => panic!("{what}: expected PERMISSION_DENIED, got OK"),
                }
            }

            // The call did exactly what it should, and nothing when denied.
            match op {
                Op::RevokeUserSessions => {
                    let v = srv.validate(target.token()).await;
                    assert_eq!(v.valid, !allowed, "{what}: target session revoked?");
                }
                Op::UpdateUser => {
                    let u = get_user(&srv, &admin, &target.id).await.expect("GetUser");
                    assert_eq!(u.active, !allowed, "{what}: target deactivated?");
                    let v = srv.validate(target.token()).await;
                    assert_eq!(v.valid, !allowed, "{what}: target session revoked?");
                }
                Op::DeleteUser => {
                    let r = get_user(&srv, &admin, &target.id).await;
                    if allowed {
                        expect_code(r, Code::NotFound);
                    } else {
                        r.expect("a denied DeleteUser leaves the account");
                    }
                }
                Op::CreateUser => {
                    let r = list_users(&srv, &admin, by_query(&new_email))
                        .await
                        .expect("ListUsers");
                    assert_eq!(r.total_size, i64::from(allowed), "{what}: created?");
                }
                Op::ListUsers | Op::GetUser | Op::ListAuditEvents => {
                    assert_live(&srv, target.token(), &what).await;
                }
            }
            // Nobody's own session suffers from a denied (or any) call.
            assert_live(&srv, caller.token(), &what).await;
        }
    }
}

#[tokio::test]
async fn moderator_revokes_sessions_only_of_role_user_targets() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let other_mod = person(&srv, DomainRole::Moderator).await;
    let other_admin = person(&srv, DomainRole::Admin).await;

    for (name, target) in [
        ("a MODERATOR", &other_mod),
        ("an ADMIN", &other_admin),
        ("themselves", &c.moderator),
    ] {
        let s = expect_code(
            revoke_sessions(&srv, c.moderator.token(), &target.id).await,
            Code::PermissionDenied,
        );
        assert!(!s.message().is_empty());
        assert_live(&srv, target.token(), &format!("moderator revoking {name}")).await;
    }

    // A second session for the user: both go.
    let second = srv.login(&c.user.email, PASSWORD).await;
    assert_eq!(
        revoke_sessions(&srv, c.moderator.token(), &c.user.id)
            .await
            .expect("moderator revokes a ROLE_USER's sessions"),
        2
    );
    assert_session_dead(&srv, &c.user.pair, "user's first session").await;
    assert_session_dead(&srv, &second, "user's second session").await;
}

#[tokio::test]
async fn moderator_updates_only_active_on_role_user_targets() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let target = c.user.clone();
    let before = get_user(&srv, c.admin.token(), &target.id)
        .await
        .expect("GetUser");

    let denied: Vec<(&str, proto::UpdateUserRequest)> = vec![
        (
            "email",
            proto::UpdateUserRequest {
                email: Some(unique_email()),
                ..upd(&target.id)
            },
        ),
        (
            "username",
            proto::UpdateUserRequest {
                username: Some(unique_username()),
                ..upd(&target.id)
            },
        ),
        (
            "first_name",
            proto::UpdateUserRequest {
                first_name: Some("Mallory".into()),
                ..upd(&target.id)
            },
        ),
        (
            "empty last_name",
            proto::UpdateUserRequest {
                last_name: Some(String::new()),
                ..upd(&target.id)
            },
        ),
        (
            "role to MODERATOR",
            proto::UpdateUserRequest {
                role: Some(Role::Moderator as i32),
                ..upd(&target.id)
            },
        ),
        (
            "role to ROLE_USER (a no-op, still not theirs to set)",
            proto::UpdateUserRequest {
                role: Some(Role::User as i32),
                ..upd(&target.id)
            },
        ),
        (
            "password",
            proto::UpdateUserRequest {
                password: Some(OTHER_PASSWORD.into()),
                ..upd(&target.id)
            },
        ),
        (
            "active together with first_name",
            proto::UpdateUserRequest {
                active: Some(false),
                first_name: Some("Mallory".into()),
                ..upd(&target.id)
            },
        ),
    ];
    for (what, msg) in denied {
        let s = expect_code(
            update_user(&srv, c.moderator.token(), msg).await,
            Code::PermissionDenied,
        );
        assert!(!s.message().is_empty(), "{what}");
        let now = get_user(&srv, c.admin.token(), &target.id)
            .await
            .expect("GetUser");
        assert_eq!(now, before, "{what}: a denied update changes nothing");
        assert_live(&srv, target.token(), what).await;
    }

    // `active` on ADMIN and MODERATOR targets (including themselves) is denied.
    let other_mod = person(&srv, DomainRole::Moderator).await;
    for (what, t) in [
        ("an ADMIN", &c.admin),
        ("a MODERATOR", &other_mod),
        ("themselves", &c.moderator),
    ] {
        expect_code(
            update_user(
                &srv,
                c.moderator.token(),
                proto::UpdateUserRequest {
                    active: Some(false),
                    ..upd(&t.id)
                },
            )
            .await,
            Code::PermissionDenied,
        );
        let u = get_user(&srv, c.admin.token(), &t.id)
            .await
            .expect("GetUser");
        assert!(u.active, "{what} stays active");
        assert_live(&srv, t.token(), what).await;
    }

    // `active` alone on a ROLE_USER target works, both ways.
    let off = update_user(
        &srv,
        c.moderator.token(),
        proto::UpdateUserRequest {
            active: Some(false),
            ..upd(&target.id)
        },
    )
    .await
    .expect("moderator deactivates a ROLE_USER");
    assert!(!off.active);
    assert_eq!(off.role, Role::User as i32);
    assert_eq!(
        (&off.email, &off.username, &off.first_name, &off.last_name),
        (
            &before.email,
            &before.username,
            &before.first_name,
            &before.last_name
        )
    );
    assert_session_dead(&srv, &target.pair, "deactivated by a moderator").await;
    let s = expect_code(
        try_login(&srv, &target.email, PASSWORD).await,
        Code::PermissionDenied,
    );
    assert_eq!(s.message(), "account disabled");

    let on = update_user(
        &srv,
        c.moderator.token(),
        proto::UpdateUserRequest {
            active: Some(true),
            ..upd(&target.id)
        },
    )
    .await
    .expect("moderator reactivates a ROLE_USER");
    assert!(on.active);
    try_login(&srv, &target.email, PASSWORD)
        .await
        .expect("login after reactivation");
}

#[tokio::test]
async fn moderator_on_unknown_ids_gets_not_found_and_on_malformed_ids_invalid_argument() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let m = c.moderator.token();
    let unknown = Uuid::new_v4().to_string();

    expect_code(get_user(&srv, m, &unknown).await, Code::NotFound);
    expect_code(revoke_sessions(&srv, m, &unknown).await, Code::NotFound);
    expect_code(
        update_user(
            &srv,
            m,
            proto::UpdateUserRequest {
                active: Some(false),
                ..upd(&unknown)
            },
        )
        .await,
        Code::NotFound,
    );

    // The RPCs a moderator may call validate the id after authorization.
    expect_code(get_user(&srv, m, "nope").await, Code::InvalidArgument);
    expect_code(
        revoke_sessions(&srv, m, "nope").await,
        Code::InvalidArgument,
    );
    expect_code(
        update_user(
            &srv,
            m,
            proto::UpdateUserRequest {
                active: Some(false),
                ..upd("nope")
            },
        )
        .await,
        Code::InvalidArgument,
    );
    // The RPCs a moderator may not call deny first, whatever the input.
    expect_code(delete_user(&srv, m, "nope").await, Code::PermissionDenied);
    expect_code(delete_user(&srv, m, &unknown).await, Code::PermissionDenied);
    expect_code(
        list_audit(&srv, m, audit_page("nope", -1, "garbage")).await,
        Code::PermissionDenied,
    );
    expect_code(
        create_user(
            &srv,
            m,
            proto::CreateUserRequest {
                email: "not-an-email".into(),
                password: "short".into(),
                role: 42,
                ..Default::default()
            },
        )
        .await,
        Code::PermissionDenied,
    );
    // A field other than `active` is refused before the id is even looked at.
    expect_code(
        update_user(
            &srv,
            m,
            proto::UpdateUserRequest {
                first_name: Some("X".into()),
                ..upd("nope")
            },
        )
        .await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn a_user_is_denied_before_any_input_is_validated() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let u = c.user.token();
    let unknown = Uuid::new_v4().to_string();

    for id in ["not-a-uuid", "", &unknown, &c.admin.id] {
        let what = format!("id {id:?}");
        for (rpc, r) in [
            ("GetUser", get_user(&srv, u, id).await.map(|_| ())),
            (
                "RevokeUserSessions",
                revoke_sessions(&srv, u, id).await.map(|_| ()),
            ),
            (
                "UpdateUser",
                update_user(
                    &srv,
                    u,
                    proto::UpdateUserRequest {
                        active: Some(false),
                        role: Some(42),
                        ..upd(id)
                    },
                )
                .await
                .map(|_| ()),
            ),
            ("DeleteUser", delete_user(&srv, u, id).await),
            (
                "ListAuditEvents",
                list_audit(&srv, u, audit_page(id, 5000, "garbage"))
                    .await
                    .map(|_| ()),
            ),
        ] {
            match r {
                Err(s) => assert_eq!(s.code(), Code::PermissionDenied, "{rpc} {what}: {s:?}"),
                Ok(()) => panic!("{rpc} {what}: expected PERMISSION_DENIED, got OK"),
            }
        }
    }
    expect_code(
        list_users(
            &srv,
            u,
            proto::ListUsersRequest {
                page_size: -1,
                page_token: "garbage".into(),
                role: 42,
                ..Default::default()
            },
        )
        .await,
        Code::PermissionDenied,
    );
    expect_code(
        create_user(
            &srv,
            u,
            proto::CreateUserRequest {
                email: "not-an-email".into(),
                password: "short".into(),
                role: 42,
                ..Default::default()
            },
        )
        .await,
        Code::PermissionDenied,
    );
    // Nothing happened to the admin.
    assert_live(&srv, c.admin.token(), "admin").await;
}

#[tokio::test]
async fn every_admin_rpc_needs_a_valid_bearer() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let logged_out = srv.admin_session().await;
    srv.auth()
        .await
        .logout(with_bearer(
            proto::LogoutRequest::default(),
            &logged_out.access_token,
        ))
        .await
        .expect("logout");

    for (token, expected_reason) in [
        (NO_BEARER, "TOKEN_MISSING"),
        ("garbage", "TOKEN_INVALID"),
        (logged_out.access_token.as_str(), "TOKEN_INVALID"),
    ] {
        // Malformed input everywhere: authentication comes first.
        let id = "not-a-uuid";
        let results: Vec<(&str, Result<(), Status>)> = vec![
            (
                "ListUsers",
                list_users(
                    &srv,
                    token,
                    proto::ListUsersRequest {
                        page_size: -1,
                        ..Default::default()
                    },
                )
                .await
                .map(|_| ()),
            ),
            ("GetUser", get_user(&srv, token, id).await.map(|_| ())),
            (
                "RevokeUserSessions",
                revoke_sessions(&srv, token, id).await.map(|_| ()),
            ),
            (
                "CreateUser",
                create_user(&srv, token, proto::CreateUserRequest::default())
                    .await
                    .map(|_| ()),
            ),
            (
                "UpdateUser",
                update_user(
                    &srv,
                    token,
                    proto::UpdateUserRequest {
                        active: Some(false),
                        ..upd(&c.user.id)
                    },
                )
                .await
                .map(|_| ()),
            ),
            ("DeleteUser", delete_user(&srv, token, &c.user.id).await),
            (
                "ListAuditEvents",
                list_audit(&srv, token, audit_page(id, -1, ""))
                    .await
                    .map(|_| ()),
            ),
        ];
        for (rpc, r) in results {
            match r {
                Err(s) => {
                    assert_eq!(s.code(), Code::Unauthenticated, "{rpc}: {s:?}");
                    assert_eq!(reason(&s).as_deref(), Some(expected_reason), "{rpc}: {s:?}");
                }
                Ok(()) => panic!("{rpc} with bearer {token:?}: expected UNAUTHENTICATED"),
            }
        }
    }
    // The user was neither deactivated nor deleted.
    let u = get_user(&srv, c.admin.token(), &c.user.id)
        .await
        .expect("GetUser");
    assert!(u.active);
}

// ----- UUIDs --------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_ids_are_invalid_argument_and_unknown_ids_not_found() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let a = c.admin.token();
    let long = "a".repeat(100);
    let malformed = [
        "",
        "not-a-uuid",
        "1234",
        "0000000-0000-0000-0000-000000000000",
        "00000000-0000-0000-0000-00000000000g",
        "00000000-0000-0000-0000-0000000000000",
        " 00000000-0000-0000-0000-000000000000 x",
        long.as_str(),
        "'; DROP TABLE users; --",
    ];
    for id in malformed {
        let what = format!("id {id:?}");
        expect_code(get_user(&srv, a, id).await, Code::InvalidArgument);
        expect_code(revoke_sessions(&srv, a, id).await, Code::InvalidArgument);
        expect_code(
            update_user(
                &srv,
                a,
                proto::UpdateUserRequest {
                    first_name: Some("X".into()),
                    ..upd(id)
                },
            )
            .await,
            Code::InvalidArgument,
        );
        expect_code(delete_user(&srv, a, id).await, Code::InvalidArgument);
        if !id.is_empty() {
            // An empty user_id means "no filter" for ListAuditEvents.
            let s = expect_code(
                list_audit(&srv, a, audit_page(id, 0, "")).await,
                Code::InvalidArgument,
            );
            assert!(!s.message().is_empty(), "{what}");
        }
    }

    for _ in 0..3 {
        let unknown = Uuid::new_v4().to_string();
        expect_code(get_user(&srv, a, &unknown).await, Code::NotFound);
        expect_code(revoke_sessions(&srv, a, &unknown).await, Code::NotFound);
        expect_code(
            update_user(
                &srv,
                a,
                proto::UpdateUserRequest {
                    first_name: Some("X".into()),
                    ..upd(&unknown)
                },
            )
            .await,
            Code::NotFound,
        );
        expect_code(delete_user(&srv, a, &unknown).await, Code::NotFound);
        // Input is validated before the lookup.
        expect_code(
            update_user(
                &srv,
                a,
                proto::UpdateUserRequest {
                    email: Some("not-an-email".into()),
                    ..upd(&unknown)
                },
            )
            .await,
            Code::InvalidArgument,
        );
        expect_code(
            update_user(
                &srv,
                a,
                proto::UpdateUserRequest {
                    role: Some(42),
                    ..upd(&unknown)
                },
            )
            .await,
            Code::InvalidArgument,
        );
        // A well-formed filter that matches nothing is just an empty listing.
        let r = list_audit(&srv, a, audit_page(&unknown, 0, ""))
            .await
            .expect("ListAuditEvents with an unknown user_id");
        assert!(r.events.is_empty());
        assert!(r.next_page_token.is_empty());
    }
    // The nil UUID and upper case are well-formed.
    expect_code(
        get_user(&srv, a, "00000000-0000-0000-0000-000000000000").await,
        Code::NotFound,
    );
    let upper = get_user(&srv, a, &c.user.id.to_uppercase())
        .await
        .expect("GetUser with an upper-case UUID");
    assert_eq!(upper.id, c.user.id);
}

// ----- ListUsers ----------------------------------------------------------------------------------

#[tokio::test]
async fn list_users_page_size_default_and_limits() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await.access_token;
    let mut set = JoinSet::new();
    for _ in 0..60 {
        let svc = srv.svc.clone();
        set.spawn(async move {
            svc.create_account(
                NewAccount {
                    email: unique_email(),
                    password: PASSWORD.into(),
                    ..Default::default()
                },
                DomainRole::User,
                None,
                &ClientInfo::default(),
                "test fixture",
            )
            .await
            .expect("create account")
        });
    }
    assert_eq!(set.join_all().await.len(), 60);
    let total = 61; // and the admin

    // 0 and an absent page_size both mean 50.
    for msg in [
        proto::ListUsersRequest::default(),
        proto::ListUsersRequest {
            page_size: 0,
            ..Default::default()
        },
    ] {
        let first = list_users(&srv, &admin, msg.clone()).await.expect("page 1");
        assert_eq!(first.users.len(), 50);
        assert_eq!(first.total_size, total);
        assert!(!first.next_page_token.is_empty());
        let second = list_users(
            &srv,
            &admin,
            proto::ListUsersRequest {
                page_token: first.next_page_token,
                ..msg
            },
        )
        .await
        .expect("page 2");
        assert_eq!(second.users.len(), 11);
        assert_eq!(second.total_size, total);
        assert!(second.next_page_token.is_empty(), "exhausted listing");
        let all: Vec<String> = first
            .users
            .iter()
            .chain(&second.users)
            .map(|u| u.id.clone())
            .collect();
        assert_no_duplicates(&all, "default paging");
        assert_eq!(all.len(), 61);
    }

    for (size, len, more) in [
        (1, 1, true),
        (60, 60, true),
        (61, 61, false),
        (62, 61, false),
        (1000, 61, false),
    ] {
        let r = list_users(
            &srv,
            &admin,
            proto::ListUsersRequest {
                page_size: size,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|s| panic!("page_size {size}: {s:?}"));
        assert_eq!(r.users.len(), len, "page_size {size}");
        assert_eq!(r.total_size, total, "page_size {size}");
        assert_eq!(!r.next_page_token.is_empty(), more, "page_size {size}");
    }
    let (all, totals) = walk_users(
        &srv,
        &admin,
        proto::ListUsersRequest {
            page_size: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(all.len(), 61);
    assert!(totals.iter().all(|t| *t == total));

    for size in [1001, -1, i32::MAX, i32::MIN] {
        let s = expect_code(
            list_users(
                &srv,
                &admin,
                proto::ListUsersRequest {
                    page_size: size,
                    ..Default::default()
                },
            )
            .await,
            Code::InvalidArgument,
        );
        assert!(!s.message().is_empty(), "page_size {size}");
    }
}

#[tokio::test]
async fn list_users_orders_by_create_time_then_id() {
    let srv = TestServer::start().await;
    let admin_pair = srv.admin_session().await;
    let admin = admin_pair.access_token.clone();
    let me = get_me(&srv, &admin).await.expect("GetMe");
    let mut expected: Vec<(i64, Uuid)> = vec![user_key(&me)];

    // Four users tie with the admin's create_time; then later, earlier and later again.
    let mut add = Vec::new();
    for _ in 0..4 {
        add.push(direct_account(&srv, DomainRole::User).await);
    }
    srv.clock.advance(Duration::seconds(1));
    for _ in 0..3 {
        add.push(direct_account(&srv, DomainRole::Moderator).await);
    }
    // Created later but dated earlier: the listing follows create_time, not insertion order.
    srv.clock.advance(Duration::minutes(-10));
    for _ in 0..3 {
        add.push(direct_account(&srv, DomainRole::User).await);
    }
    srv.clock.advance(Duration::minutes(20));
    for _ in 0..5 {
        add.push(direct_account(&srv, DomainRole::User).await);
    }
    srv.clock.advance(Duration::minutes(-10));
    expected.extend(add.iter().map(|a| (a.create_time.timestamp_micros(), a.id)));
    expected.sort();

    for size in [1, 2, 3, 7, 1000] {
        let (users, _) = walk_users(
            &srv,
            &admin,
            proto::ListUsersRequest {
                page_size: size,
                ..Default::default()
            },
        )
        .await;
        let got: Vec<(i64, Uuid)> = users.iter().map(user_key).collect();
        assert_eq!(got, expected, "page_size {size}");
    }
    // Ties really are ties (same create_time), so the id decides among them.
    let tied = expected.iter().filter(|(t, _)| *t == expected[0].0).count();
    assert!(tied >= 3, "the fixture has ties");
}

#[tokio::test]
async fn list_users_query_matches_email_or_username_case_insensitively() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await.access_token;
    let a = direct_account_with(&srv, DomainRole::User, "Alice.Smith@Example.COM", "").await;
    srv.clock.advance(Duration::seconds(1));
    let b = direct_account_with(&srv, DomainRole::User, "bob@example.org", "BobTheBuilder").await;
    srv.clock.advance(Duration::seconds(1));
    let c = direct_account_with(
        &srv,
        DomainRole::Moderator,
        "carol@builders.example.net",
        "carol",
    )
    .await;
    let (a, b, c) = (a.id.to_string(), b.id.to_string(), c.id.to_string());

    for (q, want) in [
        ("alice", vec![&a]),
        ("ALICE", vec![&a]),
        ("smith@EXAMPLE.com", vec![&a]),
        ("builder", vec![&b, &c]),
        ("BUILDER", vec![&b, &c]),
        ("theBUILD", vec![&b]),
        ("CaRoL", vec![&c]),
        ("example.org", vec![&b]),
        ("nobody-matches-this", vec![]),
    ] {
        let r = list_users(&srv, &admin, by_query(q))
            .await
            .unwrap_or_else(|s| panic!("query {q:?}: {s:?}"));
        let want: Vec<String> = want.into_iter().cloned().collect();
        assert_eq!(ids(&r.users), want, "query {q:?}");
        assert_eq!(r.total_size, want.len() as i64, "query {q:?}");
        assert!(r.next_page_token.is_empty());
    }
    // Everyone here has "example" in the e-mail, the admin included.
    let r = list_users(&srv, &admin, by_query("EXAMPLE"))
        .await
        .expect("ListUsers");
    assert_eq!(r.total_size, 4);

    let too_long = "a".repeat(10_000);
    expect_code(
        list_users(&srv, &admin, by_query(&too_long)).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn list_users_query_wildcards_are_literal() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await.access_token;
    let pct = direct_account_with(&srv, DomainRole::User, "100%real@example.com", "").await;
    srv.clock.advance(Duration::seconds(1));
    let under = direct_account_with(&srv, DomainRole::User, "under_score@example.com", "").await;
    srv.clock.advance(Duration::seconds(1));
    let snake = direct_account_with(&srv, DomainRole::User, &unique_email(), "snake_case").await;
    srv.clock.advance(Duration::seconds(1));
    let _plain =
        direct_account_with(&srv, DomainRole::User, "plain@example.com", "plainuser").await;
    let (pct, under, snake) = (
        pct.id.to_string(),
        under.id.to_string(),
        snake.id.to_string(),
    );

    for (q, want) in [
        ("%", vec![&pct]),
        ("0%r", vec![&pct]),
        ("%%", vec![]),
        ("_", vec![&under, &snake]),
        ("r_s", vec![&under]),
        ("E_C", vec![&snake]),
        ("plain_", vec![]),
        ("p%n", vec![]),
        ("\\", vec![]),
        ("\\%", vec![]),
    ] {
        let r = list_users(&srv, &admin, by_query(q))
            .await
            .unwrap_or_else(|s| panic!("query {q:?}: {s:?}"));
        let want: Vec<String> = want.into_iter().cloned().collect();
        assert_eq!(ids(&r.users), want, "query {q:?}");
        assert_eq!(r.total_size, want.len() as i64, "query {q:?}");
    }
}

#[tokio::test]
async fn list_users_role_and_active_filters_and_total_size() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await; // admin, moderator, user
    let a = c.admin.token();
    let m2 = direct_account(&srv, DomainRole::Moderator)
        .await
        .id
        .to_string();
    let m3 = direct_account(&srv, DomainRole::Moderator)
        .await
        .id
        .to_string();
    let u2 = direct_account(&srv, DomainRole::User).await.id.to_string();
    let u3 = direct_account(&srv, DomainRole::User).await.id.to_string();
    let u4 = direct_account(&srv, DomainRole::User).await.id.to_string();
    let a2 = direct_account(&srv, DomainRole::Admin).await.id.to_string();
    for id in [&u4, &m3, &a2] {
        update_user(
            &srv,
            a,
            proto::UpdateUserRequest {
                active: Some(false),
                ..upd(id)
            },
        )
        .await
        .expect("deactivate");
    }

    let set = |v: Vec<&String>| v.into_iter().cloned().collect::<HashSet<String>>();
    let cases = [
        (Role::Unspecified, None, 9, None),
        (Role::Admin, None, 2, Some(set(vec![&c.admin.id, &a2]))),
        (Role::Admin, Some(true), 1, Some(set(vec![&c.admin.id]))),
        (Role::Admin, Some(false), 1, Some(set(vec![&a2]))),
        (
            Role::Moderator,
            None,
            3,
            Some(set(vec![&c.moderator.id, &m2, &m3])),
        ),
        (Role::Moderator, Some(false), 1, Some(set(vec![&m3]))),
        (
            Role::User,
            None,
            4,
            Some(set(vec![&c.user.id, &u2, &u3, &u4])),
        ),
        (
            Role::User,
            Some(true),
            3,
            Some(set(vec![&c.user.id, &u2, &u3])),
        ),
        (
            Role::Unspecified,
            Some(false),
            3,
            Some(set(vec![&u4, &m3, &a2])),
        ),
        (Role::Unspecified, Some(true), 6, None),
    ];
    for (role, active, n, want) in cases {
        let what = format!("role {role:?}, active {active:?}");
        for caller in [a, c.moderator.token()] {
            // Page by 1 so that total_size must count beyond the page.
            let (users, totals) = walk_users(
                &srv,
                caller,
                proto::ListUsersRequest {
                    page_size: 1,
                    ..by_role(role, active)
                },
            )
            .await;
            assert_eq!(users.len(), n, "{what}");
            assert!(totals.iter().all(|t| *t == n as i64), "{what}: {totals:?}");
            for u in &users {
                if role != Role::Unspecified {
                    assert_eq!(u.role, role as i32, "{what}");
                }
                if let Some(act) = active {
                    assert_eq!(u.active, act, "{what}");
                }
            }
            if let Some(want) = &want {
                let got: HashSet<String> = users.iter().map(|u| u.id.clone()).collect();
                assert_eq!(&got, want, "{what}");
            }
        }
    }
    // Filters combine with the query.
    let r = list_users(
        &srv,
        a,
        proto::ListUsersRequest {
            query: c.user.email.to_uppercase(),
            ..by_role(Role::User, Some(true))
        },
    )
    .await
    .expect("ListUsers");
    assert_eq!(ids(&r.users), vec![c.user.id.clone()]);
    let r = list_users(
        &srv,
        a,
        proto::ListUsersRequest {
            query: c.user.email.clone(),
            ..by_role(Role::Admin, None)
        },
    )
    .await
    .expect("ListUsers");
    assert!(r.users.is_empty());
    assert_eq!(r.total_size, 0);
    assert!(r.next_page_token.is_empty());

    for role in [42, -1] {
        expect_code(
            list_users(
                &srv,
                a,
                proto::ListUsersRequest {
                    role,
                    ..Default::default()
                },
            )
            .await,
            Code::InvalidArgument,
        );
    }
}

#[tokio::test]
async fn list_users_rejects_bad_page_tokens() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let a = c.admin.token();
    for _ in 0..4 {
        direct_account(&srv, DomainRole::User).await;
    }
    let base = proto::ListUsersRequest {
        page_size: 2,
        ..Default::default()
    };
    let first = list_users(&srv, a, base.clone()).await.expect("page 1");
    let token = first.next_page_token.clone();
    assert!(!token.is_empty());

    // The token works with the same filters.
    let second = list_users(
        &srv,
        a,
        proto::ListUsersRequest {
            page_token: token.clone(),
            ..base.clone()
        },
    )
    .await
    .expect("page 2");
    assert_eq!(second.users.len(), 2);
    assert!(
        second
            .users
            .iter()
            .all(|u| !ids(&first.users).contains(&u.id)),
        "page 2 repeats nothing of page 1"
    );

    let audit_token = list_audit(&srv, a, audit_page("", 1, ""))
        .await
        .expect("ListAuditEvents")
        .next_page_token;
    assert!(!audit_token.is_empty());

    let garbage = [
        "garbage".to_owned(),
        "!!!!".to_owned(),
        "A".repeat(43),
        "A".repeat(5000),
        token[..token.len() - 2].to_owned(),
        format!("{token}AA"),
        audit_token,
    ];
    for t in garbage {
        let s = expect_code(
            list_users(
                &srv,
                a,
                proto::ListUsersRequest {
                    page_token: t.clone(),
                    ..base.clone()
                },
            )
            .await,
            Code::InvalidArgument,
        );
        assert!(!s.message().is_empty(), "token {t:?}");
    }

    // A token reused with different filters.
    for (what, msg) in [
        (
            "query",
            proto::ListUsersRequest {
                query: "example".into(),
                ..base.clone()
            },
        ),
        (
            "role",
            proto::ListUsersRequest {
                role: Role::User as i32,
                ..base.clone()
            },
        ),
        (
            "active=true",
            proto::ListUsersRequest {
                active: Some(true),
                ..base.clone()
            },
        ),
        (
            "active=false",
            proto::ListUsersRequest {
                active: Some(false),
                ..base.clone()
            },
        ),
    ] {
        let s = expect_code(
            list_users(
                &srv,
                a,
                proto::ListUsersRequest {
                    page_token: token.clone(),
                    ..msg
                },
            )
            .await,
            Code::InvalidArgument,
        );
        assert!(!s.message().is_empty(), "{what}");
    }
    // And the other way round: a filtered listing's token without the filter.
    let filtered = list_users(
        &srv,
        a,
        proto::ListUsersRequest {
            page_size: 1,
            ..by_role(Role::User, None)
        },
    )
    .await
    .expect("filtered");
    expect_code(
        list_users(
            &srv,
            a,
            proto::ListUsersRequest {
                page_token: filtered.next_page_token,
                ..base
            },
        )
        .await,
        Code::InvalidArgument,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_users_paging_while_users_are_being_inserted() {
    let srv = TestServer::start_with(|c| {
        c.access_token_ttl = StdDuration::from_secs(86_400);
        c.db_pool_size = 8;
    })
    .await;
    let admin = srv.admin_session().await.access_token;
    let me = get_me(&srv, &admin).await.expect("GetMe");

    // 42 users that exist before paging starts, in 7 groups of 6 sharing a create_time.
    srv.clock.advance(Duration::hours(1));
    let mut existing = vec![me.id.clone()];
    let mut group_times = Vec::new();
    for _ in 0..7 {
        group_times.push(srv.clock.now());
        for _ in 0..6 {
            existing.push(direct_account(&srv, DomainRole::User).await.id.to_string());
        }
        srv.clock.advance(Duration::seconds(1));
    }
    // New users tie with group 3: with random ids, some sort before the cursor, some after; once
    // the cursor is past group 3, every new user sorts before it.
    srv.clock.advance(Duration::seconds(-4));
    assert_eq!(srv.clock.now(), group_times[3]);

    let stop = Arc::new(AtomicBool::new(false));
    let inserted = Arc::new(AtomicUsize::new(0));
    let mut auth_client = srv.auth().await;
    let inserter = tokio::spawn({
        let stop = stop.clone();
        let inserted = inserted.clone();
        async move {
            let mut ids = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let u = auth_client
                    .register(proto::RegisterRequest {
                        email: unique_email(),
                        password: PASSWORD.into(),
                        ..Default::default()
                    })
                    .await
                    .expect("register")
                    .into_inner()
                    .user
                    .expect("user");
                ids.push(u.id);
                inserted.fetch_add(1, Ordering::SeqCst);
            }
            ids
        }
    });

    let mut seen: Vec<proto::User> = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let r = list_users(
            &srv,
            &admin,
            proto::ListUsersRequest {
                page_size: 7,
                page_token: page_token.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("ListUsers");
        pages += 1;
        assert!(r.users.len() <= 7);
        seen.extend(r.users);
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
        assert!(pages < 1000, "paging does not end");
        // At least one more user is committed between this page and the next.
        let after_page = inserted.load(Ordering::SeqCst);
        while inserted.load(Ordering::SeqCst) <= after_page {
            assert!(!inserter.is_finished(), "the inserter stopped early");
            tokio::time::sleep(StdDuration::from_millis(1)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let new_ids = inserter.await.expect("inserter");

    assert!(pages >= 7, "42+ users at 7 per page");
    assert!(
        new_ids.len() >= pages - 1,
        "users were registered between the pages"
    );
    let seen_ids = ids(&seen);
    assert_no_duplicates(&seen_ids, "paging during inserts");
    let seen_set: HashSet<&String> = seen_ids.iter().collect();
    for id in &existing {
        assert!(
            seen_set.contains(id),
            "pre-existing user {id} missing (a gap)"
        );
    }
    let known: HashSet<&String> = existing.iter().chain(&new_ids).collect();
    assert!(seen_ids.iter().all(|id| known.contains(id)));
    // The scenario really happened: some new users landed behind the cursor (an OFFSET-based
    // listing would then have repeated rows).
    assert!(
        new_ids.iter().any(|id| !seen_set.contains(id)),
        "some users were inserted before the cursor"
    );
    let keys: Vec<(i64, Uuid)> = seen.iter().map(user_key).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "pages continue strictly in (create_time, id) order"
    );

    // Afterwards, a full listing has everyone exactly once.
    let (all, totals) = walk_users(
        &srv,
        &admin,
        proto::ListUsersRequest {
            page_size: 7,
            ..Default::default()
        },
    )
    .await;
    let all_ids = ids(&all);
    assert_no_duplicates(&all_ids, "final listing");
    assert_eq!(all_ids.len(), existing.len() + new_ids.len());
    assert!(
        totals
            .iter()
            .all(|t| *t == (existing.len() + new_ids.len()) as i64)
    );
}

// ----- GetUser, CreateUser ------------------------------------------------------------------------

#[tokio::test]
async fn get_user_returns_the_full_account() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let username = unique_username();
    let created = create_user(
        &srv,
        c.admin.token(),
        proto::CreateUserRequest {
            username: username.clone(),
            first_name: "Grace".into(),
            last_name: "Hopper".into(),
            ..new_user(Role::User)
        },
    )
    .await
    .expect("CreateUser");
    srv.clock.advance(Duration::seconds(5));
    let pair = srv.login(&created.email, PASSWORD).await;
    let own = get_me(&srv, &pair.access_token).await.expect("GetMe");

    for caller in [c.admin.token(), c.moderator.token()] {
        let u = get_user(&srv, caller, &created.id).await.expect("GetUser");
        assert_eq!(u, own, "GetUser shows what GetMe shows");
        assert_eq!(u.username, username);
        assert_eq!(
            (u.first_name.as_str(), u.last_name.as_str()),
            ("Grace", "Hopper")
        );
        assert_eq!(u.role, Role::User as i32);
        assert!(u.active);
        assert_eq!(micros(&u.last_login_time), now_micros(&srv));
    }
    // Other roles' accounts too.
    for (p, role) in [
        (&c.admin, Role::Admin),
        (&c.moderator, Role::Moderator),
        (&c.user, Role::User),
    ] {
        let u = get_user(&srv, c.moderator.token(), &p.id)
            .await
            .expect("GetUser");
        assert_eq!((u.email.as_str(), u.role), (p.email.as_str(), role as i32));
    }
}

#[tokio::test]
async fn create_user_with_each_role_and_the_user_can_log_in() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    srv.clock.advance(Duration::seconds(3));
    for (asked, got) in [
        (Role::Unspecified, Role::User),
        (Role::User, Role::User),
        (Role::Moderator, Role::Moderator),
        (Role::Admin, Role::Admin),
    ] {
        let what = format!("CreateUser with {asked:?}");
        let local = Uuid::new_v4().simple().to_string();
        let username = unique_username();
        let u = create_user(
            &srv,
            c.admin.token(),
            proto::CreateUserRequest {
                email: format!("  New.{local}@Example.COM "),
                password: PASSWORD.into(),
                username: username.clone(),
                first_name: "Ada".into(),
                last_name: "Lovelace".into(),
                role: asked as i32,
            },
        )
        .await
        .unwrap_or_else(|s| panic!("{what}: {s:?}"));
        let email = format!("new.{local}@example.com");
        assert_eq!(u.email, email, "{what}");
        assert_eq!(u.username, username, "{what}");
        assert_eq!(
            (u.first_name.as_str(), u.last_name.as_str()),
            ("Ada", "Lovelace")
        );
        assert_eq!(u.role, got as i32, "{what}");
        assert!(u.active, "{what}");
        assert!(Uuid::parse_str(&u.id).is_ok());
        assert_eq!(micros(&u.create_time), now_micros(&srv), "{what}");
        assert_eq!(micros(&u.update_time), now_micros(&srv), "{what}");
        assert_eq!(u.last_login_time, None, "{what}");

        // The new account logs in, by e-mail and by username, with the role it was given.
        let pair = srv.login(&email, PASSWORD).await;
        let v = srv.validate(&pair.access_token).await;
        assert!(v.valid);
        assert_eq!((v.user_id.as_str(), v.role), (u.id.as_str(), got as i32));
        srv.auth()
            .await
            .login(login_username(&username.to_uppercase(), PASSWORD))
            .await
            .unwrap_or_else(|s| panic!("{what}: login by username: {s:?}"));
        assert_eq!(
            get_me(&srv, &pair.access_token).await.expect("GetMe").id,
            u.id
        );
        // And can do what the role allows.
        let audit = list_audit(&srv, &pair.access_token, audit_page("", 1, "")).await;
        let list = list_users(&srv, &pair.access_token, by_query("")).await;
        match got {
            Role::Admin => {
                audit.expect("a created admin reads the audit log");
                list.expect("a created admin lists users");
            }
            Role::Moderator => {
                expect_code(audit, Code::PermissionDenied);
                list.expect("a created moderator lists users");
            }
            _ => {
                expect_code(audit, Code::PermissionDenied);
                expect_code(list, Code::PermissionDenied);
            }
        }
    }
}

#[tokio::test]
async fn create_user_validates_like_register() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let a = c.admin.token();
    let username = unique_username();
    let existing = create_user(
        &srv,
        a,
        proto::CreateUserRequest {
            username: username.clone(),
            ..new_user(Role::User)
        },
    )
    .await
    .expect("CreateUser");
    let count = || async {
        list_users(&srv, a, by_query(""))
            .await
            .expect("ListUsers")
            .total_size
    };
    let before = count().await;

    let invalid: Vec<(&str, proto::CreateUserRequest)> = vec![
        (
            "weak (short) password",
            proto::CreateUserRequest {
                password: "short1!".into(),
                ..new_user(Role::User)
            },
        ),
        (
            "empty password",
            proto::CreateUserRequest {
                password: String::new(),
                ..new_user(Role::Admin)
            },
        ),
        (
            "password over 72 bytes",
            proto::CreateUserRequest {
                password: "Ab1-".repeat(19),
                ..new_user(Role::User)
            },
        ),
        (
            "bad email",
            proto::CreateUserRequest {
                email: "not-an-email".into(),
                ..new_user(Role::User)
            },
        ),
        (
            "empty email",
            proto::CreateUserRequest {
                email: String::new(),
                ..new_user(Role::User)
            },
        ),
        (
            "non-ASCII email",
            proto::CreateUserRequest {
                email: "jöhn@example.com".into(),
                ..new_user(Role::User)
            },
        ),
        (
            "short username",
            proto::CreateUserRequest {
                username: "ab".into(),
                ..new_user(Role::User)
            },
        ),
        (
            "username with a space",
            proto::CreateUserRequest {
                username: "a b c".into(),
                ..new_user(Role::User)
            },
        ),
        (
            "long first_name",
            proto::CreateUserRequest {
                first_name: "x".repeat(101),
                ..new_user(Role::User)
            },
        ),
        (
            "control character in last_name",
            proto::CreateUserRequest {
                last_name: "a\u{7}b".into(),
                ..new_user(Role::User)
            },
        ),
        (
            "unknown role",
            proto::CreateUserRequest {
                role: 42,
                ..new_user(Role::User)
            },
        ),
        (
            "negative role",
            proto::CreateUserRequest {
                role: -3,
                ..new_user(Role::User)
            },
        ),
    ];
    for (what, msg) in invalid {
        let s = expect_code(create_user(&srv, a, msg).await, Code::InvalidArgument);
        assert!(!s.message().is_empty(), "{what}");
    }

    for (what, msg) in [
        (
            "duplicate email in another case",
            proto::CreateUserRequest {
                email: format!("  {}", existing.email.to_uppercase()),
                ..new_user(Role::Moderator)
            },
        ),
        (
            "duplicate username in another case",
            proto::CreateUserRequest {
                username: username.to_uppercase(),
                ..new_user(Role::User)
            },
        ),
        (
            "an email Register already took",
            proto::CreateUserRequest {
                email: c.user.email.clone(),
                ..new_user(Role::User)
            },
        ),
    ] {
        let s = expect_code(create_user(&srv, a, msg).await, Code::AlreadyExists);
        assert!(!s.message().is_empty(), "{what}");
    }
    assert_eq!(count().await, before, "nothing was created");
    // The original account is untouched.
    let u = get_user(&srv, a, &existing.id).await.expect("GetUser");
    assert_eq!(u.role, Role::User as i32);
}

#[tokio::test]
async fn create_user_works_when_registration_is_closed() {
    let srv = TestServer::start_with(|c| c.allow_registration = false).await;
    let admin = srv.admin_session().await.access_token;
    let s = expect_code(
        srv.auth()
            .await
            .register(proto::RegisterRequest {
                email: unique_email(),
                password: PASSWORD.into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(s.message(), "registration is closed");
    let u = create_user(&srv, &admin, new_user(Role::User))
        .await
        .expect("admins still create users");
    let pair = srv.login(&u.email, PASSWORD).await;
    assert_live(
        &srv,
        &pair.access_token,
        "created while registration is closed",
    )
    .await;
}

// ----- DeleteUser ---------------------------------------------------------------------------------

#[tokio::test]
async fn delete_user_removes_the_account_and_its_sessions_but_keeps_the_audit() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let a = c.admin.token();
    let target = c.user.clone();
    let second = srv.login(&target.email, PASSWORD).await;
    let total_before = list_users(&srv, a, by_query(""))
        .await
        .expect("ListUsers")
        .total_size;

    delete_user(&srv, a, &target.id).await.expect("DeleteUser");

    expect_code(get_user(&srv, a, &target.id).await, Code::NotFound);
    expect_code(delete_user(&srv, a, &target.id).await, Code::NotFound);
    expect_code(
        update_user(
            &srv,
            a,
            proto::UpdateUserRequest {
                active: Some(true),
                ..upd(&target.id)
            },
        )
        .await,
        Code::NotFound,
    );
    expect_code(revoke_sessions(&srv, a, &target.id).await, Code::NotFound);
    assert_session_dead(&srv, &target.pair, "deleted user's first session").await;
    assert_session_dead(&srv, &second, "deleted user's second session").await;
    let s = expect_code(
        try_login(&srv, &target.email, PASSWORD).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s).as_deref(), Some("INVALID_CREDENTIALS"));
    let r = list_users(&srv, a, by_query("")).await.expect("ListUsers");
    assert_eq!(r.total_size, total_before - 1);
    assert!(!ids(&r.users).contains(&target.id));

    // The audit trail about the account stays, ending with its deletion by the admin.
    let events = all_events(&srv, a, &target.id).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "USER_DELETED",
            "LOGIN_SUCCEEDED",
            "LOGIN_SUCCEEDED",
            "USER_CREATED"
        ]
    );
    assert!(events.iter().all(|e| e.user_id == target.id));
    assert_eq!(events[0].actor_id, c.admin.id);
    assert!(events[0].detail.contains(&target.email), "{:?}", events[0]);
}

#[tokio::test]
async fn deleting_an_admin_keeps_the_service_keys_they_created() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let other = person(&srv, DomainRole::Admin).await;
    let created = srv
        .auth()
        .await
        .create_service_key(with_bearer(
            proto::CreateServiceKeyRequest {
                name: "billing".into(),
                ..Default::default()
            },
            other.token(),
        ))
        .await
        .expect("CreateServiceKey")
        .into_inner();

    delete_user(&srv, c.admin.token(), &other.id)
        .await
        .expect("an admin deletes another admin");
    assert_session_dead(&srv, &other.pair, "deleted admin").await;
    expect_code(
        list_users(&srv, other.token(), by_query("")).await,
        Code::Unauthenticated,
    );

    // The key belongs to the deployment: it still authenticates ValidateToken.
    let v = srv
        .auth()
        .await
        .validate_token(with_key(
            proto::ValidateTokenRequest {
                access_token: c.user.pair.access_token.clone(),
            },
            &created.key,
        ))
        .await
        .expect("ValidateToken with the deleted admin's key")
        .into_inner();
    assert!(v.valid);
    let keys = srv
        .auth()
        .await
        .list_service_keys(with_bearer(
            proto::ListServiceKeysRequest {},
            c.admin.token(),
        ))
        .await
        .expect("ListServiceKeys")
        .into_inner()
        .keys;
    assert!(keys.iter().any(|k| k.id == created.id));
}

// ----- UpdateUser ---------------------------------------------------------------------------------

#[tokio::test]
async fn update_user_changes_each_field_and_only_the_fields_present() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let a = c.admin.token();
    let target = c.user.clone();
    let mut expected = get_user(&srv, a, &target.id).await.expect("GetUser");
    let new_username = format!("Renamed_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let local = Uuid::new_v4().simple().to_string();
    let new_email = format!("renamed.{local}@example.com");

    let steps: Vec<(&str, proto::UpdateUserRequest)> = vec![
        (
            "first_name",
            proto::UpdateUserRequest {
                first_name: Some("  Katherine ".into()),
                ..upd(&target.id)
            },
        ),
        (
            "last_name",
            proto::UpdateUserRequest {
                last_name: Some("Johnson".into()),
                ..upd(&target.id)
            },
        ),
        (
            "username",
            proto::UpdateUserRequest {
                username: Some(new_username.clone()),
                ..upd(&target.id)
            },
        ),
        (
            "email",
            proto::UpdateUserRequest {
                email: Some(format!(" Renamed.{local}@EXAMPLE.com ")),
                ..upd(&target.id)
            },
        ),
        ("nothing", upd(&target.id)),
    ];
    for (what, msg) in steps {
        srv.clock.advance(Duration::seconds(1));
        let u = update_user(&srv, a, msg)
            .await
            .unwrap_or_else(|s| panic!("{what}: {s:?}"));
        match what {
            "first_name" => expected.first_name = "Katherine".into(),
            "last_name" => expected.last_name = "Johnson".into(),
            "username" => expected.username = new_username.clone(),
            "email" => expected.email = new_email.clone(),
            _ => {}
        }
        expected.update_time = u.update_time;
        assert_eq!(u, expected, "{what}: only that field changed");
        assert_eq!(micros(&u.update_time), now_micros(&srv), "{what}");
        assert_eq!(
            get_user(&srv, a, &target.id).await.expect("GetUser"),
            expected,
            "{what}: stored"
        );
        // Profile changes do not end sessions.
        assert_live(&srv, target.token(), what).await;
    }

    // The new e-mail and username log in; the old e-mail no longer does.
    srv.login(&new_email, PASSWORD).await;
    srv.auth()
        .await
        .login(login_username(&new_username.to_lowercase(), PASSWORD))
        .await
        .expect("login by the new username");
    expect_code(
        try_login(&srv, &target.email, PASSWORD).await,
        Code::Unauthenticated,
    );

    // Every change was audited as USER_UPDATED by the admin.
    let updates: Vec<proto::AuditEvent> = all_events(&srv, a, &target.id)
        .await
        .into_iter()
        .filter(|e| e.kind == "USER_UPDATED")
        .collect();
    assert_eq!(updates.len(), 5);
    assert!(updates.iter().all(|e| e.actor_id == c.admin.id));
}

#[tokio::test]
async fn update_user_validates_input_and_uniqueness() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let a = c.admin.token();
    let taken_username = unique_username();
    let other = create_user(
        &srv,
        a,
        proto::CreateUserRequest {
            username: taken_username.clone(),
            ..new_user(Role::User)
        },
    )
    .await
    .expect("CreateUser");
    let target = c.user.clone();
    let before = get_user(&srv, a, &target.id).await.expect("GetUser");

    let invalid: Vec<(&str, proto::UpdateUserRequest)> = vec![
        (
            "empty email",
            proto::UpdateUserRequest {
                email: Some(String::new()),
                ..upd(&target.id)
            },
        ),
        (
            "bad email",
            proto::UpdateUserRequest {
                email: Some("nope@".into()),
                ..upd(&target.id)
            },
        ),
        (
            "bad username",
            proto::UpdateUserRequest {
                username: Some("x!".into()),
                ..upd(&target.id)
            },
        ),
        (
            "weak password",
            proto::UpdateUserRequest {
                password: Some("short".into()),
                ..upd(&target.id)
            },
        ),
        (
            "password over 72 bytes",
            proto::UpdateUserRequest {
                password: Some("Ab1-".repeat(19)),
                ..upd(&target.id)
            },
        ),
        (
            "long last_name",
            proto::UpdateUserRequest {
                last_name: Some("y".repeat(101)),
                ..upd(&target.id)
            },
        ),
        (
            "valid name with a bad email",
            proto::UpdateUserRequest {
                first_name: Some("Valid".into()),
                email: Some("bad".into()),
                ..upd(&target.id)
            },
        ),
    ];
    for (what, msg) in invalid {
        let s = expect_code(update_user(&srv, a, msg).await, Code::InvalidArgument);
        assert!(!s.message().is_empty(), "{what}");
    }
    for (what, msg) in [
        (
            "email of another account",
            proto::UpdateUserRequest {
                email: Some(other.email.to_uppercase()),
                ..upd(&target.id)
            },
        ),
        (
            "username of another account",
            proto::UpdateUserRequest {
                username: Some(taken_username.to_uppercase()),
                ..upd(&target.id)
            },
        ),
    ] {
        let s = expect_code(update_user(&srv, a, msg).await, Code::AlreadyExists);
        assert!(!s.message().is_empty(), "{what}");
    }
    assert_eq!(
        get_user(&srv, a, &target.id).await.expect("GetUser"),
        before,
        "failed updates change nothing"
    );
    assert_live(&srv, target.token(), "after failed updates").await;
}

#[tokio::test]
async fn update_user_rejects_unspecified_and_unknown_roles() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let before = get_user(&srv, c.admin.token(), &c.user.id)
        .await
        .expect("GetUser");
    for role in [Role::Unspecified as i32, 42, -1, 4] {
        let s = expect_code(
            update_user(
                &srv,
                c.admin.token(),
                proto::UpdateUserRequest {
                    role: Some(role),
                    ..upd(&c.user.id)
                },
            )
            .await,
            Code::InvalidArgument,
        );
        assert!(!s.message().is_empty(), "role {role}");
    }
    assert_eq!(
        get_user(&srv, c.admin.token(), &c.user.id)
            .await
            .expect("GetUser"),
        before
    );
    assert_live(&srv, c.user.token(), "after rejected role changes").await;
}

#[tokio::test]
async fn a_role_change_revokes_every_session_of_the_target() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let a = c.admin.token();
    let target = c.user.clone();
    let second = srv.login(&target.email, PASSWORD).await;

    let u = update_user(
        &srv,
        a,
        proto::UpdateUserRequest {
            role: Some(Role::Moderator as i32),
            ..upd(&target.id)
        },
    )
    .await
    .expect("promote to moderator");
    assert_eq!(u.role, Role::Moderator as i32);
    assert_session_dead(&srv, &target.pair, "promoted user's first session").await;
    assert_session_dead(&srv, &second, "promoted user's second session").await;
    // A new login carries the new role.
    let pair = srv.login(&target.email, PASSWORD).await;
    assert_eq!(
        srv.validate(&pair.access_token).await.role,
        Role::Moderator as i32
    );
    list_users(&srv, &pair.access_token, by_query(""))
        .await
        .expect("the new moderator lists users");

    // Promotion to ADMIN revokes too.
    update_user(
        &srv,
        a,
        proto::UpdateUserRequest {
            role: Some(Role::Admin as i32),
            ..upd(&target.id)
        },
    )
    .await
    .expect("promote to admin");
    assert_session_dead(&srv, &pair, "promoted moderator").await;

    let detail = all_events(&srv, a, &target.id)
        .await
        .into_iter()
        .find(|e| e.kind == "USER_UPDATED")
        .expect("USER_UPDATED")
        .detail;
    assert!(
        detail.contains("role") && detail.contains("moderator") && detail.contains("admin"),
        "the newest USER_UPDATED names the role change: {detail:?}"
    );
}

#[tokio::test]
async fn a_demoted_admins_old_token_cannot_make_admin_calls() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let other = person(&srv, DomainRole::Admin).await;
    list_audit(&srv, other.token(), audit_page("", 1, ""))
        .await
        .expect("an admin reads the audit log");

    update_user(
        &srv,
        c.admin.token(),
        proto::UpdateUserRequest {
            role: Some(Role::User as i32),
            ..upd(&other.id)
        },
    )
    .await
    .expect("demote the other admin");

    assert_dead(&srv, other.token(), "demoted admin").await;
    let old = other.token();
    for (rpc, r) in [
        (
            "ListAuditEvents",
            list_audit(&srv, old, audit_page("", 1, ""))
                .await
                .map(|_| ()),
        ),
        (
            "ListUsers",
            list_users(&srv, old, by_query("")).await.map(|_| ()),
        ),
        (
            "CreateUser",
            create_user(&srv, old, new_user(Role::Admin))
                .await
                .map(|_| ()),
        ),
        (
            "UpdateUser",
            update_user(
                &srv,
                old,
                proto::UpdateUserRequest {
                    role: Some(Role::Admin as i32),
                    ..upd(&other.id)
                },
            )
            .await
            .map(|_| ()),
        ),
        ("DeleteUser", delete_user(&srv, old, &c.admin.id).await),
    ] {
        match r {
            Err(s) => {
                assert_eq!(s.code(), Code::Unauthenticated, "{rpc}: {s:?}");
                assert_eq!(reason(&s).as_deref(), Some("TOKEN_INVALID"), "{rpc}");
            }
            Ok(()) => panic!("{rpc} with a demoted admin's old token succeeded"),
        }
    }
    // The same goes for deactivation: a deactivated admin's token is dead at once.
    let third = person(&srv, DomainRole::Admin).await;
    update_user(
        &srv,
        c.admin.token(),
        proto::UpdateUserRequest {
            active: Some(false),
            ..upd(&third.id)
        },
    )
    .await
    .expect("deactivate an admin");
    expect_code(
        list_audit(&srv, third.token(), audit_page("", 1, "")).await,
        Code::Unauthenticated,
    );

    // Logging in again gives a USER token.
    let pair = srv.login(&other.email, PASSWORD).await;
    expect_code(
        list_audit(&srv, &pair.access_token, audit_page("", 1, "")).await,
        Code::PermissionDenied,
    );
    let me = get_user(&srv, c.admin.token(), &other.id)
        .await
        .expect("GetUser");
    assert_eq!(me.role, Role::User as i32);
}

#[tokio::test]
async fn an_admin_password_set_revokes_every_session() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let target = c.user.clone();
    let second = srv.login(&target.email, PASSWORD).await;
    let before = get_user(&srv, c.admin.token(), &target.id)
        .await
        .expect("GetUser");

    let u = update_user(
        &srv,
        c.admin.token(),
        proto::UpdateUserRequest {
            password: Some(OTHER_PASSWORD.into()),
            ..upd(&target.id)
        },
    )
    .await
    .expect("set a password");
    assert_eq!(
        (u.email, u.role, u.active),
        (before.email, before.role, true)
    );
    assert_session_dead(&srv, &target.pair, "first session").await;
    assert_session_dead(&srv, &second, "second session").await;
    let s = expect_code(
        try_login(&srv, &target.email, PASSWORD).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s).as_deref(), Some("INVALID_CREDENTIALS"));
    let pair = srv.login(&target.email, OTHER_PASSWORD).await;
    assert_live(&srv, &pair.access_token, "new password").await;

    // The audit says a password was set, and never what it is.
    let events = all_events(&srv, c.admin.token(), &target.id).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == "USER_UPDATED" && e.actor_id == c.admin.id)
    );
    for e in &events {
        assert!(!e.detail.contains(OTHER_PASSWORD) && !e.detail.contains(PASSWORD));
    }
}

#[tokio::test]
async fn a_no_op_change_does_not_revoke() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let target = c.user.clone();
    let other_admin = person(&srv, DomainRole::Admin).await;
    let mod_target = person(&srv, DomainRole::Moderator).await;

    let no_ops: Vec<(&str, &str, proto::UpdateUserRequest, &Person)> = vec![
        (
            "same role",
            c.admin.token(),
            proto::UpdateUserRequest {
                role: Some(Role::User as i32),
                ..upd(&target.id)
            },
            &target,
        ),
        (
            "same active",
            c.admin.token(),
            proto::UpdateUserRequest {
                active: Some(true),
                ..upd(&target.id)
            },
            &target,
        ),
        (
            "same role and active with a name change",
            c.admin.token(),
            proto::UpdateUserRequest {
                role: Some(Role::User as i32),
                active: Some(true),
                first_name: Some("Same".into()),
                ..upd(&target.id)
            },
            &target,
        ),
        (
            "same role on a moderator",
            c.admin.token(),
            proto::UpdateUserRequest {
                role: Some(Role::Moderator as i32),
                ..upd(&mod_target.id)
            },
            &mod_target,
        ),
        (
            "same role on another admin",
            c.admin.token(),
            proto::UpdateUserRequest {
                role: Some(Role::Admin as i32),
                active: Some(true),
                ..upd(&other_admin.id)
            },
            &other_admin,
        ),
        (
            "a moderator's same active",
            c.moderator.token(),
            proto::UpdateUserRequest {
                active: Some(true),
                ..upd(&target.id)
            },
            &target,
        ),
    ];
    for (what, caller, msg, t) in no_ops {
        update_user(&srv, caller, msg)
            .await
            .unwrap_or_else(|s| panic!("{what}: {s:?}"));
        assert_live(&srv, t.token(), what).await;
        get_me(&srv, t.token())
            .await
            .unwrap_or_else(|s| panic!("{what}: GetMe: {s:?}"));
    }
    let u = get_user(&srv, c.admin.token(), &target.id)
        .await
        .expect("GetUser");
    assert_eq!((u.role, u.active), (Role::User as i32, true));
}

#[tokio::test]
async fn deactivation_and_reactivation() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let username = unique_username();
    let created = create_user(
        &srv,
        c.admin.token(),
        proto::CreateUserRequest {
            username: username.clone(),
            ..new_user(Role::User)
        },
    )
    .await
    .expect("CreateUser");
    let pair = srv.login(&created.email, PASSWORD).await;
    assert_live(&srv, &pair.access_token, "before deactivation").await;

    let u = update_user(
        &srv,
        c.admin.token(),
        proto::UpdateUserRequest {
            active: Some(false),
            ..upd(&created.id)
        },
    )
    .await
    .expect("deactivate");
    assert!(!u.active);
    // Seen by ValidateToken right away, well within 1 s.
    assert_session_dead(&srv, &pair, "deactivated user").await;

    let s = expect_code(
        try_login(&srv, &created.email, PASSWORD).await,
        Code::PermissionDenied,
    );
    assert_eq!(s.message(), "account disabled");
    let s = expect_code(
        srv.auth()
            .await
            .login(login_username(&username, PASSWORD))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(s.message(), "account disabled");
    let s = expect_code(
        try_login(&srv, &created.email, OTHER_PASSWORD).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s).as_deref(), Some("INVALID_CREDENTIALS"));
    // Still listed, as inactive.
    let r = list_users(&srv, c.admin.token(), by_role(Role::User, Some(false)))
        .await
        .expect("ListUsers");
    assert_eq!(ids(&r.users), vec![created.id.clone()]);

    let u = update_user(
        &srv,
        c.admin.token(),
        proto::UpdateUserRequest {
            active: Some(true),
            ..upd(&created.id)
        },
    )
    .await
    .expect("reactivate");
    assert!(u.active);
    let again = srv.login(&created.email, PASSWORD).await;
    assert_live(&srv, &again.access_token, "after reactivation").await;
    // Sessions revoked by the deactivation stay revoked.
    assert_dead(&srv, &pair.access_token, "pre-deactivation session").await;

    let events = all_events(&srv, c.admin.token(), &created.id).await;
    let updates: Vec<&proto::AuditEvent> =
        events.iter().filter(|e| e.kind == "USER_UPDATED").collect();
    assert_eq!(updates.len(), 2);
    assert!(
        updates[0].detail.contains("active") && updates[0].detail.contains("true"),
        "{:?}",
        updates[0]
    );
    assert!(
        updates[1].detail.contains("active") && updates[1].detail.contains("false"),
        "{:?}",
        updates[1]
    );
}

// ----- the last active admin ----------------------------------------------------------------------

#[tokio::test]
async fn the_last_active_admin_cannot_remove_themselves() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await; // one admin, one moderator, one user
    let a = c.admin.token();
    let me = &c.admin.id;

    for (what, msg) in [
        (
            "demote to USER",
            proto::UpdateUserRequest {
                role: Some(Role::User as i32),
                ..upd(me)
            },
        ),
        (
            "demote to MODERATOR",
            proto::UpdateUserRequest {
                role: Some(Role::Moderator as i32),
                ..upd(me)
            },
        ),
        (
            "deactivate",
            proto::UpdateUserRequest {
                active: Some(false),
                ..upd(me)
            },
        ),
        (
            "demote and rename",
            proto::UpdateUserRequest {
                role: Some(Role::User as i32),
                first_name: Some("Gone".into()),
                ..upd(me)
            },
        ),
    ] {
        let s = expect_code(update_user(&srv, a, msg).await, Code::FailedPrecondition);
        assert!(!s.message().is_empty(), "{what}");
    }
    expect_code(delete_user(&srv, a, me).await, Code::FailedPrecondition);
    expect_code(
        srv.users()
            .await
            .delete_me(with_bearer(
                proto::DeleteMeRequest {
                    password: PASSWORD.into(),
                },
                a,
            ))
            .await,
        Code::FailedPrecondition,
    );

    // Nothing changed, and the admin's session survived.
    let u = get_user(&srv, a, me).await.expect("GetUser");
    assert_eq!((u.role, u.active), (Role::Admin as i32, true));
    assert_eq!(u.first_name, "");
    assert_eq!(active_admin_emails(&srv).await, vec![c.admin.email.clone()]);
    list_audit(&srv, a, audit_page("", 1, ""))
        .await
        .expect("still an admin");

    // Changes that keep them an active admin are fine.
    let u = update_user(
        &srv,
        a,
        proto::UpdateUserRequest {
            first_name: Some("Root".into()),
            role: Some(Role::Admin as i32),
            active: Some(true),
            ..upd(me)
        },
    )
    .await
    .expect("a harmless self-update");
    assert_eq!(u.first_name, "Root");
    assert_live(&srv, a, "after a harmless self-update").await;
}

#[tokio::test]
async fn with_two_admins_one_can_demote_the_other_and_then_not_themselves() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let b = person(&srv, DomainRole::Admin).await;

    update_user(
        &srv,
        c.admin.token(),
        proto::UpdateUserRequest {
            role: Some(Role::Moderator as i32),
            ..upd(&b.id)
        },
    )
    .await
    .expect("demote the other admin");
    expect_code(
        update_user(
            &srv,
            c.admin.token(),
            proto::UpdateUserRequest {
                role: Some(Role::User as i32),
                ..upd(&c.admin.id)
            },
        )
        .await,
        Code::FailedPrecondition,
    );

    // Promote B again; now B may demote themselves, leaving A.
    update_user(
        &srv,
        c.admin.token(),
        proto::UpdateUserRequest {
            role: Some(Role::Admin as i32),
            ..upd(&b.id)
        },
    )
    .await
    .expect("promote back");
    let b_pair = srv.login(&b.email, PASSWORD).await;
    let u = update_user(
        &srv,
        &b_pair.access_token,
        proto::UpdateUserRequest {
            role: Some(Role::User as i32),
            ..upd(&b.id)
        },
    )
    .await
    .expect("an admin who is not the last one demotes themselves");
    assert_eq!(u.role, Role::User as i32);
    assert_dead(&srv, &b_pair.access_token, "self-demoted admin").await;
    assert_eq!(active_admin_emails(&srv).await, vec![c.admin.email.clone()]);

    // And with a second admin again, one may delete or deactivate themselves.
    let d = person(&srv, DomainRole::Admin).await;
    delete_user(&srv, d.token(), &d.id)
        .await
        .expect("a non-last admin deletes themselves");
    let e = person(&srv, DomainRole::Admin).await;
    update_user(
        &srv,
        e.token(),
        proto::UpdateUserRequest {
            active: Some(false),
            ..upd(&e.id)
        },
    )
    .await
    .expect("a non-last admin deactivates themselves");
    assert_eq!(active_admin_emails(&srv).await, vec![c.admin.email.clone()]);
}

#[tokio::test]
async fn a_deactivated_admin_does_not_count_as_active() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let a = c.admin.token();
    let dormant = person(&srv, DomainRole::Admin).await;
    update_user(
        &srv,
        a,
        proto::UpdateUserRequest {
            active: Some(false),
            ..upd(&dormant.id)
        },
    )
    .await
    .expect("deactivate the other admin");

    expect_code(
        update_user(
            &srv,
            a,
            proto::UpdateUserRequest {
                role: Some(Role::User as i32),
                ..upd(&c.admin.id)
            },
        )
        .await,
        Code::FailedPrecondition,
    );
    expect_code(
        update_user(
            &srv,
            a,
            proto::UpdateUserRequest {
                active: Some(false),
                ..upd(&c.admin.id)
            },
        )
        .await,
        Code::FailedPrecondition,
    );
    expect_code(
        delete_user(&srv, a, &c.admin.id).await,
        Code::FailedPrecondition,
    );
    // The inactive admin can be demoted or deleted freely.
    update_user(
        &srv,
        a,
        proto::UpdateUserRequest {
            role: Some(Role::Moderator as i32),
            ..upd(&dormant.id)
        },
    )
    .await
    .expect("demote an inactive admin");

    // Reactivated, a second admin counts again.
    let other = person(&srv, DomainRole::Admin).await;
    update_user(
        &srv,
        a,
        proto::UpdateUserRequest {
            active: Some(false),
            ..upd(&other.id)
        },
    )
    .await
    .expect("deactivate");
    update_user(
        &srv,
        a,
        proto::UpdateUserRequest {
            active: Some(true),
            ..upd(&other.id)
        },
    )
    .await
    .expect("reactivate");
    update_user(
        &srv,
        a,
        proto::UpdateUserRequest {
            role: Some(Role::User as i32),
            ..upd(&c.admin.id)
        },
    )
    .await
    .expect("now there is another active admin");
    assert_eq!(active_admin_emails(&srv).await, vec![other.email.clone()]);
}

#[derive(Debug, Clone, Copy)]
enum RaceOp {
    Demote,
    Deactivate,
    Delete,
}

async fn race_call(
    mut client: UserServiceClient<Channel>,
    token: String,
    target: String,
    op: RaceOp,
) -> Result<(), Status> {
    match op {
        RaceOp::Demote | RaceOp::Deactivate => {
            let msg = match op {
                RaceOp::Demote => proto::UpdateUserRequest {
                    role: Some(Role::Moderator as i32),
                    ..upd(&target)
                },
                _ => proto::UpdateUserRequest {
                    active: Some(false),
                    ..upd(&target)
                },
            };
            client.update_user(req(msg, &token)).await.map(|_| ())
        }
        RaceOp::Delete => client
            .delete_user(req(proto::DeleteUserRequest { user_id: target }, &token))
            .await
            .map(|_| ()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_removals_always_leave_exactly_one_active_admin() {
    let srv = TestServer::start_with(|c| c.db_pool_size = 16).await;
    let client = srv.users().await;
    let mut survivor = direct_account(&srv, DomainRole::Admin).await.email;

    for round in 0..10 {
        let newcomer = direct_account(&srv, DomainRole::Admin).await.email;
        let a_pair = srv.login(&survivor, PASSWORD).await;
        let b_pair = srv.login(&newcomer, PASSWORD).await;
        let a_id = srv.validate(&a_pair.access_token).await.user_id;
        let b_id = srv.validate(&b_pair.access_token).await.user_id;
        assert_eq!(active_admin_emails(&srv).await.len(), 2, "round {round}");
        let (a, b) = (a_pair.access_token.clone(), b_pair.access_token.clone());

        use RaceOp::*;
        let plan: Vec<(&String, &String, RaceOp)> = match round % 5 {
            // Each demotes themselves.
            0 => vec![(&a, &a_id, Demote), (&b, &b_id, Demote)],
            // Each deactivates themselves.
            1 => vec![(&a, &a_id, Deactivate), (&b, &b_id, Deactivate)],
            // Each demotes the other.
            2 => vec![(&a, &b_id, Demote), (&b, &a_id, Demote)],
            // Everything at once.
            3 => vec![
                (&a, &b_id, Deactivate),
                (&b, &a_id, Deactivate),
                (&a, &a_id, Demote),
                (&b, &b_id, Demote),
            ],
            // Each deletes themselves, while also deactivating the other.
            _ => vec![
                (&a, &a_id, Delete),
                (&b, &b_id, Delete),
                (&a, &b_id, Deactivate),
                (&b, &a_id, Deactivate),
            ],
        };
        // Every request three times, all released together.
        let copies = 3;
        let barrier = Arc::new(Barrier::new(plan.len() * copies));
        let mut set = JoinSet::new();
        for _ in 0..copies {
            for (token, target, op) in &plan {
                let (client, token, target, op) =
                    (client.clone(), (*token).clone(), (*target).clone(), *op);
                let barrier = barrier.clone();
                set.spawn(async move {
                    barrier.wait().await;
                    race_call(client, token, target, op).await
                });
            }
        }
        let results = set.join_all().await;
        let mut ok = 0;
        for r in &results {
            match r {
                Ok(()) => ok += 1,
                // Refused by the invariant; or the caller's own session was revoked (or its
                // account deleted) by a request that won; or the target was deleted.
                Err(s) => assert!(
                    matches!(
                        s.code(),
                        Code::FailedPrecondition | Code::Unauthenticated | Code::NotFound
                    ),
                    "round {round}: unexpected {s:?}"
                ),
            }
        }
        assert!(ok >= 1, "round {round}: the first removal succeeds");
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(s) if s.code() == Code::FailedPrecondition))
                || round % 5 == 2,
            "round {round}: the survivor's own removal was refused"
        );

        // Exactly one active admin remains, never zero.
        let admins = active_admin_emails(&srv).await;
        assert_eq!(admins.len(), 1, "round {round}: {admins:?}");
        assert!(
            admins[0] == survivor || admins[0] == newcomer,
            "round {round}"
        );
        survivor = admins[0].clone();
        let n = sql_count(
            &srv,
            "SELECT count(*) AS n FROM users WHERE role = 'admin' AND active",
        )
        .await;
        assert_eq!(n, 1, "round {round}");
        let fresh = srv.login(&survivor, PASSWORD).await;
        let r = list_users(&srv, &fresh.access_token, by_role(Role::Admin, Some(true)))
            .await
            .expect("the survivor lists users");
        assert_eq!(r.total_size, 1, "round {round}");
        assert_eq!(r.users[0].email, survivor);
    }
}

// ----- RevokeUserSessions -------------------------------------------------------------------------

#[tokio::test]
async fn revoke_user_sessions_counts_live_sessions_and_is_audited() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let target = c.user.clone();
    let second = srv.login(&target.email, PASSWORD).await;
    let third = srv.login(&target.email, PASSWORD).await;
    // One session already ended: it does not count.
    srv.auth()
        .await
        .logout(proto::LogoutRequest {
            refresh_token: third.refresh_token.clone(),
        })
        .await
        .expect("logout");

    srv.clock.advance(Duration::seconds(1));
    let n = revoke_sessions(&srv, c.admin.token(), &target.id)
        .await
        .expect("RevokeUserSessions");
    assert_eq!(n, 2);
    assert_session_dead(&srv, &target.pair, "first session").await;
    assert_session_dead(&srv, &second, "second session").await;
    assert_eq!(
        revoke_sessions(&srv, c.admin.token(), &target.id)
            .await
            .expect("again"),
        0
    );
    // The account itself is fine.
    let pair = srv.login(&target.email, PASSWORD).await;

    srv.clock.advance(Duration::seconds(1));
    assert_eq!(
        revoke_sessions(&srv, c.moderator.token(), &target.id)
            .await
            .expect("moderator"),
        1
    );
    assert_session_dead(&srv, &pair, "session revoked by the moderator").await;

    let revocations: Vec<proto::AuditEvent> = all_events(&srv, c.admin.token(), &target.id)
        .await
        .into_iter()
        .filter(|e| e.kind == "SESSIONS_REVOKED")
        .collect();
    assert_eq!(revocations.len(), 3, "{revocations:?}");
    // Newest first: the moderator's, then the admin's second (0) and first (2).
    assert_eq!(revocations[0].actor_id, c.moderator.id);
    assert_eq!(revocations[1].actor_id, c.admin.id);
    assert_eq!(revocations[2].actor_id, c.admin.id);
    assert!(revocations[0].detail.contains('1'), "{:?}", revocations[0]);
    assert!(revocations[1].detail.contains('0'), "{:?}", revocations[1]);
    assert!(revocations[2].detail.contains('2'), "{:?}", revocations[2]);
    for e in &revocations {
        assert_eq!(e.user_id, target.id);
        assert_eq!(e.ip_address, "127.0.0.1");
    }

    // An admin may revoke anyone's sessions, a moderator's and another admin's included.
    let other_admin = person(&srv, DomainRole::Admin).await;
    assert_eq!(
        revoke_sessions(&srv, c.admin.token(), &c.moderator.id)
            .await
            .expect("admin revokes a moderator"),
        1
    );
    assert_dead(&srv, c.moderator.token(), "moderator").await;
    assert_eq!(
        revoke_sessions(&srv, c.admin.token(), &other_admin.id)
            .await
            .expect("admin revokes an admin"),
        1
    );
    assert_dead(&srv, other_admin.token(), "other admin").await;
}

#[tokio::test]
async fn revoke_user_sessions_does_not_count_expired_sessions() {
    let srv = TestServer::start().await;
    let target = person(&srv, DomainRole::User).await;
    // Past the idle lifetime (7 days by default) the first session has expired.
    srv.clock.advance(Duration::days(8));
    let live = srv.login(&target.email, PASSWORD).await;
    let admin = srv.admin_session().await.access_token;
    assert_eq!(
        revoke_sessions(&srv, &admin, &target.id)
            .await
            .expect("RevokeUserSessions"),
        1
    );
    assert_dead(&srv, &live.access_token, "live session").await;
}

// ----- ListAuditEvents ----------------------------------------------------------------------------

fn is_upper_snake(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        && !s.starts_with('_')
        && !s.ends_with('_')
}

#[tokio::test]
async fn list_audit_events_newest_first_with_every_field() {
    let srv = TestServer::start().await;
    let admin_pair = srv.admin_session().await;
    let a = admin_pair.access_token.clone();
    let admin_id = get_me(&srv, &a).await.expect("GetMe").id;

    let mut times = Vec::new();
    srv.clock.advance(Duration::seconds(1));
    times.push(now_micros(&srv));
    let u = create_user(&srv, &a, new_user(Role::User))
        .await
        .expect("CreateUser");
    srv.clock.advance(Duration::seconds(1));
    times.push(now_micros(&srv));
    let pair = srv
        .auth()
        .await
        .login(req(login_email(&u.email, PASSWORD), NO_BEARER))
        .await
        .expect("login")
        .into_inner();
    srv.clock.advance(Duration::seconds(1));
    times.push(now_micros(&srv));
    update_user(
        &srv,
        &a,
        proto::UpdateUserRequest {
            first_name: Some("Eve".into()),
            ..upd(&u.id)
        },
    )
    .await
    .expect("UpdateUser");
    srv.clock.advance(Duration::seconds(1));
    times.push(now_micros(&srv));
    revoke_sessions(&srv, &a, &u.id)
        .await
        .expect("RevokeUserSessions");

    let events = all_events(&srv, &a, "").await;
    let newest: Vec<(&str, &str, &str)> = events[..4]
        .iter()
        .map(|e| (e.kind.as_str(), e.user_id.as_str(), e.actor_id.as_str()))
        .collect();
    assert_eq!(
        newest,
        vec![
            ("SESSIONS_REVOKED", u.id.as_str(), admin_id.as_str()),
            ("USER_UPDATED", u.id.as_str(), admin_id.as_str()),
            ("LOGIN_SUCCEEDED", u.id.as_str(), u.id.as_str()),
            ("USER_CREATED", u.id.as_str(), admin_id.as_str()),
        ]
    );
    times.reverse();
    for (e, t) in events[..4].iter().zip(&times) {
        assert_eq!(micros(&e.create_time), *t, "{e:?}");
        assert_eq!(e.ip_address, "127.0.0.1", "{e:?}");
        assert!(e.user_agent.starts_with(TEST_UA), "{e:?}");
        assert!(!e.detail.is_empty(), "{e:?}");
    }
    assert!(
        events[0].detail.contains('1'),
        "one session: {:?}",
        events[0]
    );
    assert!(events[1].detail.contains("first_name"), "{:?}", events[1]);
    assert!(events[3].detail.contains("user"), "{:?}", events[3]);

    // Older: the admin's own login and creation (by the bootstrap: no actor, no client).
    let older: Vec<(&str, &str, &str)> = events[4..]
        .iter()
        .map(|e| (e.kind.as_str(), e.user_id.as_str(), e.actor_id.as_str()))
        .collect();
    assert_eq!(
        older,
        vec![
            ("LOGIN_SUCCEEDED", admin_id.as_str(), admin_id.as_str()),
            ("USER_CREATED", admin_id.as_str(), ""),
        ]
    );

    // Newest first throughout, with well-formed fields.
    let keys: Vec<(i64, Uuid)> = events.iter().map(event_key).collect();
    assert!(keys.windows(2).all(|w| w[0] > w[1]), "newest first");
    assert_no_duplicates(events.iter().map(|e| &e.id), "events");
    for e in &events {
        assert!(is_upper_snake(&e.kind), "{e:?}");
        assert!(Uuid::parse_str(&e.id).is_ok(), "{e:?}");
        assert!(Uuid::parse_str(&e.user_id).is_ok(), "{e:?}");
        assert!(e.actor_id.is_empty() || Uuid::parse_str(&e.actor_id).is_ok());
        for secret in [
            PASSWORD,
            &pair.access_token,
            &pair.refresh_token,
            &admin_pair.access_token,
            &admin_pair.refresh_token,
        ] {
            assert!(
                !e.detail.contains(secret) && !e.user_agent.contains(secret),
                "{e:?}"
            );
        }
    }
}

#[tokio::test]
async fn list_audit_events_filters_by_user() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let a = c.admin.token();
    // A failed login of the user, and one of an unknown account (no user id).
    expect_code(
        try_login(&srv, &c.user.email, OTHER_PASSWORD).await,
        Code::Unauthenticated,
    );
    expect_code(
        try_login(&srv, "nobody@example.com", PASSWORD).await,
        Code::Unauthenticated,
    );

    let all = all_events(&srv, a, "").await;
    for p in [&c.admin, &c.moderator, &c.user] {
        let mine = all_events(&srv, a, &p.id).await;
        assert!(!mine.is_empty());
        assert!(mine.iter().all(|e| e.user_id == p.id));
        let expected: Vec<&proto::AuditEvent> = all.iter().filter(|e| e.user_id == p.id).collect();
        assert_eq!(mine.iter().collect::<Vec<_>>(), expected);
        // Upper case works as well.
        assert_eq!(all_events(&srv, a, &p.id.to_uppercase()).await, mine);
    }
    let user_kinds: Vec<String> = all_events(&srv, a, &c.user.id)
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        user_kinds,
        vec!["LOGIN_FAILED", "LOGIN_SUCCEEDED", "USER_CREATED"]
    );
    let anonymous: Vec<&proto::AuditEvent> = all.iter().filter(|e| e.user_id.is_empty()).collect();
    assert_eq!(anonymous.len(), 1);
    assert_eq!(anonymous[0].kind, "LOGIN_FAILED");
    // An unknown identifier is kept only as a keyed hash.
    assert!(!anonymous[0].detail.contains("nobody@example.com"));
    let digest = srv
        .svc
        .audit_identifier_digest(&authd::domain::service::LoginIdentifier::Email(
            "nobody@example.com".into(),
        ));
    assert!(anonymous[0].detail.contains(&digest), "{:?}", anonymous[0]);
    assert!(!anonymous[0].detail.contains(PASSWORD));
}

#[tokio::test]
async fn list_audit_events_page_size_and_paging() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await.access_token;
    let admin_id = get_me(&srv, &admin).await.expect("GetMe").id;
    // 60 USER_CREATED events, some sharing a create_time.
    for i in 0..60 {
        if i % 4 == 0 {
            srv.clock.advance(Duration::milliseconds(1));
        }
        direct_account(&srv, DomainRole::User).await;
    }
    let total = 62; // and the admin's creation and login
    let all = all_events(&srv, &admin, "").await;
    assert_eq!(all.len(), total);

    for msg in [
        audit_page("", 0, ""),
        proto::ListAuditEventsRequest::default(),
    ] {
        let first = list_audit(&srv, &admin, msg.clone()).await.expect("page 1");
        assert_eq!(first.events.len(), 50);
        assert!(!first.next_page_token.is_empty());
        let second = list_audit(
            &srv,
            &admin,
            proto::ListAuditEventsRequest {
                page_token: first.next_page_token,
                ..msg
            },
        )
        .await
        .expect("page 2");
        assert_eq!(second.events.len(), 12);
        assert!(second.next_page_token.is_empty());
        let joined: Vec<proto::AuditEvent> =
            first.events.into_iter().chain(second.events).collect();
        assert_eq!(joined, all);
    }
    for (size, len, more) in [
        (1, 1, true),
        (61, 61, true),
        (62, 62, false),
        (1000, 62, false),
    ] {
        let r = list_audit(&srv, &admin, audit_page("", size, ""))
            .await
            .unwrap_or_else(|s| panic!("page_size {size}: {s:?}"));
        assert_eq!(r.events.len(), len, "page_size {size}");
        assert_eq!(!r.next_page_token.is_empty(), more, "page_size {size}");
    }
    for size in [1001, -1, i32::MAX, i32::MIN] {
        expect_code(
            list_audit(&srv, &admin, audit_page("", size, "")).await,
            Code::InvalidArgument,
        );
    }

    // Paging by 7 gives exactly the full listing, without duplicates or gaps.
    for size in [1, 7, 50] {
        let paged = walk_audit(&srv, &admin, "", size).await;
        assert_no_duplicates(paged.iter().map(|e| &e.id), "audit paging");
        assert_eq!(paged, all, "page_size {size}");
    }
    // New events during paging land before the cursor: no duplicates.
    let first = list_audit(&srv, &admin, audit_page("", 7, ""))
        .await
        .expect("page 1");
    for _ in 0..5 {
        direct_account(&srv, DomainRole::User).await;
    }
    let mut got = first.events;
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let r = list_audit(&srv, &admin, audit_page("", 7, &token))
            .await
            .expect("page");
        got.extend(r.events);
        token = r.next_page_token;
    }
    assert_eq!(
        got, all,
        "events added after paging started are not repeated"
    );

    // Filtered paging.
    let mine = walk_audit(&srv, &admin, &admin_id, 1).await;
    assert_eq!(
        mine.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        vec!["LOGIN_SUCCEEDED", "USER_CREATED"]
    );
}

#[tokio::test]
async fn list_audit_events_rejects_bad_page_tokens() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let a = c.admin.token();
    let unfiltered = list_audit(&srv, a, audit_page("", 1, ""))
        .await
        .expect("page 1")
        .next_page_token;
    let filtered = list_audit(&srv, a, audit_page(&c.admin.id, 1, ""))
        .await
        .expect("page 1")
        .next_page_token;
    let users_token = list_users(
        &srv,
        a,
        proto::ListUsersRequest {
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .expect("ListUsers")
    .next_page_token;
    assert!(!unfiltered.is_empty() && !filtered.is_empty() && !users_token.is_empty());

    for (what, user_id, token) in [
        ("garbage", "", "garbage".to_owned()),
        ("very long", "", "A".repeat(5000)),
        ("ListUsers token", "", users_token),
        (
            "unfiltered token with a filter",
            &c.user.id,
            unfiltered.clone(),
        ),
        ("filtered token without it", "", filtered.clone()),
        (
            "token of another user's filter",
            &c.user.id,
            filtered.clone(),
        ),
    ] {
        let s = expect_code(
            list_audit(&srv, a, audit_page(user_id, 1, &token)).await,
            Code::InvalidArgument,
        );
        assert!(!s.message().is_empty(), "{what}");
    }
    // The right token works.
    list_audit(&srv, a, audit_page("", 1, &unfiltered))
        .await
        .expect("page 2");
    list_audit(&srv, a, audit_page(&c.admin.id, 1, &filtered))
        .await
        .expect("filtered page 2");
}

#[tokio::test]
async fn admin_actions_are_audited_with_the_actor() {
    let srv = TestServer::start().await;
    let c = cast(&srv).await;
    let a = c.admin.token();
    let admin = &c.admin.id;

    // USER_CREATED, as a moderator.
    let u = create_user(&srv, a, new_user(Role::Moderator))
        .await
        .expect("CreateUser");
    // USER_UPDATED with the role change, then with the active change.
    update_user(
        &srv,
        a,
        proto::UpdateUserRequest {
            role: Some(Role::User as i32),
            ..upd(&u.id)
        },
    )
    .await
    .expect("demote");
    update_user(
        &srv,
        a,
        proto::UpdateUserRequest {
            active: Some(false),
            ..upd(&u.id)
        },
    )
    .await
    .expect("deactivate");
    // The moderator reactivates: the actor is the moderator.
    update_user(
        &srv,
        c.moderator.token(),
        proto::UpdateUserRequest {
            active: Some(true),
            ..upd(&u.id)
        },
    )
    .await
    .expect("moderator reactivates");
    // SESSIONS_REVOKED.
    revoke_sessions(&srv, a, &u.id)
        .await
        .expect("RevokeUserSessions");
    // SERVICE_KEY_CREATED and SERVICE_KEY_REVOKED.
    let key = srv
        .auth()
        .await
        .create_service_key(req(
            proto::CreateServiceKeyRequest {
                name: "audited".into(),
                ..Default::default()
            },
            a,
        ))
        .await
        .expect("CreateServiceKey")
        .into_inner();
    srv.auth()
        .await
        .revoke_service_key(req(
            proto::RevokeServiceKeyRequest { id: key.id.clone() },
            a,
        ))
        .await
        .expect("RevokeServiceKey");
    // USER_DELETED.
    delete_user(&srv, a, &u.id).await.expect("DeleteUser");

    let about_u: Vec<proto::AuditEvent> = all_events(&srv, a, &u.id).await;
    let summary: Vec<(&str, &str)> = about_u
        .iter()
        .map(|e| (e.kind.as_str(), e.actor_id.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("USER_DELETED", admin.as_str()),
            ("SESSIONS_REVOKED", admin.as_str()),
            ("USER_UPDATED", c.moderator.id.as_str()),
            ("USER_UPDATED", admin.as_str()),
            ("USER_UPDATED", admin.as_str()),
            ("USER_CREATED", admin.as_str()),
        ]
    );
    let detail = |i: usize| about_u[i].detail.as_str();
    assert!(
        detail(5).contains("moderator"),
        "created as: {:?}",
        detail(5)
    );
    assert!(
        detail(4).contains("role") && detail(4).contains("moderator") && detail(4).contains("user"),
        "{:?}",
        detail(4)
    );
    assert!(
        detail(3).contains("active") && detail(3).contains("false"),
        "{:?}",
        detail(3)
    );
    assert!(
        detail(2).contains("active") && detail(2).contains("true"),
        "{:?}",
        detail(2)
    );
    for e in &about_u {
        assert_eq!(e.user_id, u.id);
        assert_eq!(e.ip_address, "127.0.0.1");
        assert!(e.user_agent.starts_with(TEST_UA), "{e:?}");
    }

    // Service-key events are about the deployment, by the admin; the key itself is never stored.
    let all = all_events(&srv, a, "").await;
    let created = all
        .iter()
        .find(|e| e.kind == "SERVICE_KEY_CREATED" && e.actor_id == *admin)
        .expect("SERVICE_KEY_CREATED by the admin");
    let revoked = all
        .iter()
        .find(|e| e.kind == "SERVICE_KEY_REVOKED")
        .expect("SERVICE_KEY_REVOKED");
    assert_eq!(revoked.actor_id, *admin);
    assert!(created.detail.contains(&key.id), "{created:?}");
    assert!(revoked.detail.contains(&key.id), "{revoked:?}");
    assert!(
        all.iter()
            .all(|e| !e.detail.contains(&key.key) && !e.user_agent.contains(&key.key))
    );
    let pos = |e: &proto::AuditEvent| all.iter().position(|x| x.id == e.id);
    assert!(pos(revoked) < pos(created), "newest first");
    assert!(all.iter().all(|e| is_upper_snake(&e.kind)));
}

#[tokio::test]
async fn audit_user_agent_is_truncated_and_sanitized() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await.access_token;
    let mut r = with_bearer(new_user(Role::User), &admin);
    let long_ua = format!("evil\tagent {}", "x".repeat(2000));
    r.metadata_mut()
        .insert("user-agent", long_ua.parse().expect("metadata"));
    let u = srv
        .users()
        .await
        .create_user(r)
        .await
        .expect("CreateUser")
        .into_inner();
    let e = all_events(&srv, &admin, &u.id)
        .await
        .into_iter()
        .find(|e| e.kind == "USER_CREATED")
        .expect("USER_CREATED");
    assert!(e.user_agent.starts_with("evilagent xxx"), "{e:?}");
    assert!(!e.user_agent.chars().any(char::is_control), "{e:?}");
    assert!(
        e.user_agent.chars().count() < 1000,
        "truncated: {} chars",
        e.user_agent.chars().count()
    );
}

#[tokio::test]
async fn audit_retention_prunes_old_events() {
    let srv = TestServer::start_with(|c| c.audit_retention = StdDuration::from_secs(86_400)).await;
    let t0 = srv.clock.now();
    let old_admin = srv.admin_session().await; // USER_CREATED + LOGIN_SUCCEEDED at t0
    let admin_email = get_me(&srv, &old_admin.access_token)
        .await
        .expect("GetMe")
        .email;
    let old_user = direct_account(&srv, DomainRole::User).await;
    srv.clock.advance(Duration::hours(26));
    let mid_user = direct_account(&srv, DomainRole::User).await; // 22 h old at pruning
    srv.clock.advance(Duration::hours(22));
    let new_user = direct_account(&srv, DomainRole::User).await;

    let cutoff = (t0 + Duration::hours(1)).timestamp();
    let old = sql_count(
        &srv,
        &format!(
            "SELECT count(*) AS n FROM audit_events WHERE create_time < to_timestamp({cutoff})"
        ),
    )
    .await;
    assert_eq!(old, 3, "the fixture's old events");
    let total = sql_count(&srv, "SELECT count(*) AS n FROM audit_events").await;

    let (pruned, _) = srv.svc.prune().await.expect("prune");
    assert_eq!(pruned as i64, old);
    assert_eq!(
        sql_count(&srv, "SELECT count(*) AS n FROM audit_events").await,
        total - old
    );
    // Pruning again finds nothing.
    assert_eq!(srv.svc.prune().await.expect("prune").0, 0);

    // Through the API: the old events are gone, the newer ones remain. (The old admin token has
    // expired by now; log in again.)
    assert_dead(&srv, &old_admin.access_token, "expired").await;
    let a = srv.login(&admin_email, PASSWORD).await.access_token;
    let events = all_events(&srv, &a, "").await;
    let retention_start = (srv.clock.now() - Duration::days(1)).timestamp_micros();
    assert!(
        events
            .iter()
            .all(|e| micros(&e.create_time) >= retention_start),
        "{events:?}"
    );
    assert!(
        all_events(&srv, &a, &old_user.id.to_string())
            .await
            .is_empty()
    );
    let kinds = |v: Vec<proto::AuditEvent>| v.into_iter().map(|e| e.kind).collect::<Vec<_>>();
    assert_eq!(
        kinds(all_events(&srv, &a, &mid_user.id.to_string()).await),
        vec!["USER_CREATED"]
    );
    assert_eq!(
        kinds(all_events(&srv, &a, &new_user.id.to_string()).await),
        vec!["USER_CREATED"]
    );
    // The accounts themselves are untouched by pruning.
    get_user(&srv, &a, &old_user.id.to_string())
        .await
        .expect("the old account is still there");
}

#[tokio::test]
async fn default_retention_keeps_recent_events() {
    let srv = TestServer::start().await;
    srv.admin_session().await;
    direct_account(&srv, DomainRole::User).await;
    let total = sql_count(&srv, "SELECT count(*) AS n FROM audit_events").await;
    srv.clock.advance(Duration::days(2));
    assert_eq!(srv.svc.prune().await.expect("prune").0, 0);
    assert_eq!(
        sql_count(&srv, "SELECT count(*) AS n FROM audit_events").await,
        total
    );
    // But 90 days is the limit.
    srv.clock.advance(Duration::days(89));
    assert_eq!(srv.svc.prune().await.expect("prune").0 as i64, total);
}
