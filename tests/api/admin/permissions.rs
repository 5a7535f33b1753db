//! The permission matrix: every cell, moderators' limits, the order of checks (a user is denied
//! before any input is validated), and the bearer every admin RPC needs.

use super::*;

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

/// The table, cell by cell, for a ROLE_USER target.
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
        try_login(&srv, req(login_email(&target.email, PASSWORD), NO_BEARER)).await,
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
    try_login(&srv, req(login_email(&target.email, PASSWORD), NO_BEARER))
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
