//! The last active admin: cannot remove themselves, two admins, deactivated admins, and a
//! concurrent race that must always leave exactly one active admin.

use super::*;

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
