//! RevokeUserSessions: counts live sessions only, and is audited.

use super::*;

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
