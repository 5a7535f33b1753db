//! UUID handling: malformed ids are INVALID_ARGUMENT, unknown ids NOT_FOUND, on every admin RPC.

use super::*;

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
