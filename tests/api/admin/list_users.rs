//! ListUsers: page sizes, ordering, the query and its literal wildcards, role and active filters,
//! bad page tokens, and paging while users are being inserted. A little over 600 lines: the
//! paging tests need their walks and assertions spelled out, and they belong together.

use super::*;

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

    // Issue J: a prefix of the e-mail, of its domain (with or without the @) or of the username.
    for (q, want) in [
        ("alice", vec![&a]),
        ("ALICE", vec![&a]),
        ("alice.smith@EXAMPLE.com", vec![&a]),
        ("smith", vec![]),
        ("builder", vec![&c]),
        ("BUILDERS.example", vec![&c]),
        ("@builders", vec![&c]),
        ("bobthe", vec![&b]),
        ("BOBTHEBUILDER", vec![&b]),
        ("theBUILD", vec![]),
        ("CaRoL", vec![&c]),
        ("example.org", vec![&b]),
        ("@example.ORG", vec![&b]),
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
    // Alice and Bob (and the fixture's admin) have a domain starting with "example"; Carol not.
    let r = list_users(&srv, &admin, by_query("EXAMPLE."))
        .await
        .expect("ListUsers");
    let got = ids(&r.users);
    assert!(
        got.contains(&a) && got.contains(&b) && !got.contains(&c),
        "{got:?}"
    );

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
        ("100%", vec![&pct]),
        ("100%R", vec![&pct]),
        ("%", vec![]),
        ("%%", vec![]),
        ("_", vec![]),
        ("under_", vec![&under]),
        ("unde_", vec![]),
        ("SNAKE_C", vec![&snake]),
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
