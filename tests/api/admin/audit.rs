//! ListAuditEvents (order, fields, filters, paging, bad tokens), the actor and user agent of
//! audited admin actions, and audit retention.

use super::*;

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
        try_login(
            &srv,
            req(login_email(&c.user.email, OTHER_PASSWORD), NO_BEARER),
        )
        .await,
        Code::Unauthenticated,
    );
    expect_code(
        try_login(
            &srv,
            req(login_email("nobody@example.com", PASSWORD), NO_BEARER),
        )
        .await,
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
        .audit_identifier_digest(&authd::api::LoginIdentifier::Email(
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
