//! Administration, end to end against the real server and PostgreSQL: every cell of the permission
//! matrix, the order of checks, UUID handling, ListUsers (paging, ordering, filters, tokens, paging
//! under concurrent inserts), GetUser, CreateUser, UpdateUser (every field, revocation, no-ops,
//! deactivation), DeleteUser, the last-active-admin invariant (including a concurrent race),
//! RevokeUserSessions, ListAuditEvents and audit retention.
//!
//! This module holds the helpers the admin tests share; the tests are in one file per behaviour.

mod audit;
mod ids;
mod last_admin;
mod list_users;
mod permissions;
mod scale;
mod sessions;
mod update_user;
mod users;

use authd_testkit::*;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration as StdDuration;

use authd::api::{Account, NewAccount};
use authd::api::{ClientInfo, Role as DomainRole};
use authd::clock::Clock;
use authd::proto;
use authd::proto::Role;
use authd::proto::user_service_client::UserServiceClient;
use chrono::Duration;
use diesel::sql_types::Text;
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
        srv.auth()
            .await
            .refresh(req(
                proto::RefreshRequest {
                    refresh_token: pair.refresh_token.clone(),
                },
                NO_BEARER,
            ))
            .await,
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

#[derive(diesel::QueryableByName)]
struct EmailRow {
    #[diesel(sql_type = Text)]
    email: String,
}

async fn sql_count(srv: &TestServer, sql: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(sql)
        .get_result::<Count>(&mut srv.db().await)
        .await
        .expect("count query")
        .n
}

async fn active_admin_emails(srv: &TestServer) -> Vec<String> {
    use diesel_async::RunQueryDsl;
    diesel::sql_query("SELECT email FROM users WHERE role = 'admin' AND active ORDER BY email")
        .load::<EmailRow>(&mut srv.db().await)
        .await
        .expect("active admins")
        .into_iter()
        .map(|r| r.email)
        .collect()
}
