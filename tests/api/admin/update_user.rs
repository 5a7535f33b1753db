//! UpdateUser: every field and only the fields present, validation and uniqueness, roles, the
//! revocations a role or password change causes, no-op changes, deactivation and reactivation.

use super::*;

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
        try_login(&srv, req(login_email(&target.email, PASSWORD), NO_BEARER)).await,
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
        try_login(&srv, req(login_email(&target.email, PASSWORD), NO_BEARER)).await,
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
        try_login(&srv, req(login_email(&created.email, PASSWORD), NO_BEARER)).await,
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
        try_login(
            &srv,
            req(login_email(&created.email, OTHER_PASSWORD), NO_BEARER),
        )
        .await,
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
