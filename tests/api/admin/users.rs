//! GetUser, CreateUser (each role, validation, closed registration) and DeleteUser (sessions go,
//! the audit and the service keys an admin created stay).

use super::*;

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
                email_verified: false,
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
        try_login(&srv, req(login_email(&target.email, PASSWORD), NO_BEARER)).await,
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
    let created = try_create_service_key(&srv, other.token(), "billing")
        .await
        .expect("CreateServiceKey");

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
