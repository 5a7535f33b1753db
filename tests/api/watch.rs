//! AuthService.WatchRevocations (issue H, section 1): the caller, the snapshot, live revocations
//! on one replica and across two, heartbeats, resume tokens, key changes, the drain, and many
//! streams at once. Waits use generous deadlines; latencies are measured by authd-bench.

use std::collections::HashSet;
use std::time::Duration;

use authd::proto;
use authd::proto::auth_service_client::AuthServiceClient;
use authd_testkit::*;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

/// How long a test waits for something that should take about a second.
const PATIENCE: Duration = Duration::from_secs(10);

type Stream = Streaming<proto::WatchRevocationsResponse>;

async fn try_watch(
    client: &mut AuthServiceClient<Channel>,
    req: Request<proto::WatchRevocationsRequest>,
) -> Result<Stream, Status> {
    client.watch_revocations(req).await.map(|r| r.into_inner())
}

fn watch_req(key: &str, resume_token: &str) -> Request<proto::WatchRevocationsRequest> {
    with_key(
        proto::WatchRevocationsRequest {
            resume_token: resume_token.into(),
        },
        key,
    )
}

/// Opens a stream with a fresh service key.
async fn watch(srv: &TestServer, resume_token: &str) -> Stream {
    let key = srv.service_key().await;
    try_watch(&mut srv.auth().await, watch_req(&key, resume_token))
        .await
        .expect("WatchRevocations")
}

/// The next message; panics if none comes within [`PATIENCE`] or the stream ends.
async fn next(stream: &mut Stream) -> proto::WatchRevocationsResponse {
    match tokio::time::timeout(PATIENCE, stream.message()).await {
        Ok(Ok(Some(m))) => m,
        Ok(other) => panic!("the stream ended: {other:?}"),
        Err(_) => panic!("no message within {PATIENCE:?}"),
    }
}

/// What a stream has delivered so far.
#[derive(Default)]
struct Seen {
    revoked: HashSet<String>,
    messages: Vec<proto::WatchRevocationsResponse>,
}

impl Seen {
    fn token(&self) -> String {
        self.messages
            .last()
            .map(|m| m.resume_token.clone())
            .unwrap_or_default()
    }
    fn snapshots(&self) -> usize {
        self.messages.iter().filter(|m| m.snapshot_complete).count()
    }
}

/// Reads messages until `done` holds, for at most `limit`.
async fn read_until(
    stream: &mut Stream,
    seen: &mut Seen,
    limit: Duration,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done(seen) {
        let m = match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(other) => panic!("the stream ended: {other:?}"),
            Err(_) => panic!(
                "timed out after {limit:?}; {} messages, {} sessions so far",
                seen.messages.len(),
                seen.revoked.len()
            ),
        };
        assert!(
            !m.resume_token.is_empty(),
            "every message has a resume token"
        );
        seen.revoked
            .extend(m.revoked_sessions.iter().map(|s| s.session_id.clone()));
        seen.messages.push(m);
    }
}

/// Reads through the end of the snapshot.
async fn snapshot(stream: &mut Stream) -> Seen {
    let mut seen = Seen::default();
    read_until(stream, &mut seen, PATIENCE, |s| s.snapshots() == 1).await;
    seen
}

async fn logout(srv: &TestServer, access_token: &str) {
    srv.auth()
        .await
        .logout(with_bearer(proto::LogoutRequest::default(), access_token))
        .await
        .expect("Logout");
}

async fn revoke_user_sessions(srv: &TestServer, admin_token: &str, user_id: &str) -> i64 {
    srv.users()
        .await
        .revoke_user_sessions(with_bearer(
            proto::RevokeUserSessionsRequest {
                user_id: user_id.into(),
            },
            admin_token,
        ))
        .await
        .expect("RevokeUserSessions")
        .into_inner()
        .revoked_sessions
}

// ----- the caller ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_caller_without_a_valid_service_key_is_unauthenticated() {
    let srv = TestServer::start().await;
    let mut client = srv.auth().await;
    let none = try_watch(
        &mut client,
        Request::new(proto::WatchRevocationsRequest::default()),
    )
    .await;
    let s = expect_code(none, Code::Unauthenticated);
    assert_eq!(reason(&s).as_deref(), Some("SERVICE_KEY_MISSING"));
    let bad = try_watch(&mut client, watch_req("sk_not-a-key", "")).await;
    let s = expect_code(bad, Code::Unauthenticated);
    assert_eq!(reason(&s).as_deref(), Some("SERVICE_KEY_INVALID"));
    // An access token is not a service key.
    let (_, pair) = srv.user_session().await;
    let bearer = try_watch(
        &mut client,
        with_bearer(
            proto::WatchRevocationsRequest::default(),
            &pair.access_token,
        ),
    )
    .await;
    expect_code(bearer, Code::Unauthenticated);
}

#[tokio::test]
async fn without_the_key_requirement_anyone_may_watch() {
    let srv = TestServer::start_with(|c| c.validate_require_key = false).await;
    let mut stream = try_watch(
        &mut srv.auth().await,
        Request::new(proto::WatchRevocationsRequest::default()),
    )
    .await
    .expect("open without a key");
    snapshot(&mut stream).await;
}

#[tokio::test]
async fn beyond_the_stream_limit_resource_exhausted() {
    let srv = TestServer::start_with(|c| c.watch_max_streams = 2).await;
    let mut a = watch(&srv, "").await;
    let _b = watch(&srv, "").await;
    let key = srv.service_key().await;
    let third = try_watch(&mut srv.auth().await, watch_req(&key, "")).await;
    expect_code(third, Code::ResourceExhausted);
    // A stream that ends gives its place back.
    snapshot(&mut a).await;
    drop(a);
    wait_until("a place frees up", PATIENCE, || async {
        srv.svc.watch_streams() < 2
    })
    .await;
    let mut c = try_watch(&mut srv.auth().await, watch_req(&key, ""))
        .await
        .expect("a place again");
    snapshot(&mut c).await;
}

// ----- snapshot and live revocations --------------------------------------------------------------

#[tokio::test]
async fn the_snapshot_has_ended_sessions_and_the_keys() {
    let srv = TestServer::start().await;
    let (_, revoked) = srv.user_session().await;
    let (_, live) = srv.user_session().await;
    logout(&srv, &revoked.access_token).await;

    let mut stream = watch(&srv, "").await;
    let seen = snapshot(&mut stream).await;
    assert!(
        seen.revoked.contains(&revoked.session_id),
        "revoked session in the snapshot"
    );
    assert!(
        !seen.revoked.contains(&live.session_id),
        "a live session is not"
    );
    let first = &seen.messages[0];
    let keys: Vec<String> = first
        .jwks
        .as_ref()
        .expect("the snapshot carries the keys")
        .keys
        .iter()
        .map(|k| k.kid.clone())
        .collect();
    let published: Vec<String> = jwks(&srv).await.into_iter().map(|k| k.kid).collect();
    assert_eq!(keys, published, "the keys as GetJwks returns them");
    assert_eq!(first.jwks.as_ref().unwrap().keys, jwks(&srv).await);
    let entry = seen
        .messages
        .iter()
        .flat_map(|m| &m.revoked_sessions)
        .find(|s| s.session_id == revoked.session_id)
        .unwrap();
    assert!(
        entry.expire_time.is_some(),
        "with the expiry of its last token"
    );
    assert!(seen.messages.last().unwrap().snapshot_complete);
}

#[tokio::test]
async fn a_revocation_after_the_snapshot_arrives() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let (_, one) = srv.user_session().await;
    let email = unique_email();
    let user = srv.register(&email, PASSWORD).await;
    let mut many = Vec::new();
    for _ in 0..3 {
        many.push(srv.login(&email, PASSWORD).await.session_id);
    }
    let mut stream = watch(&srv, "").await;
    let mut seen = snapshot(&mut stream).await;

    logout(&srv, &one.access_token).await;
    read_until(&mut stream, &mut seen, PATIENCE, |s| {
        s.revoked.contains(&one.session_id)
    })
    .await;
    assert_eq!(
        revoke_user_sessions(&srv, &admin.access_token, &user.id).await,
        3
    );
    read_until(&mut stream, &mut seen, PATIENCE, |s| {
        many.iter().all(|id| s.revoked.contains(id))
    })
    .await;
    assert_eq!(seen.snapshots(), 1, "no second snapshot");
    assert!(
        seen.messages[1..].iter().all(|m| m.jwks.is_none()),
        "keys only in the snapshot while they do not change"
    );
}

#[tokio::test]
async fn a_revocation_on_another_replica_arrives() {
    let a = TestServer::start().await;
    let b = TestServer::start_on(a.config.clone(), a.clock.clone()).await;
    let (_, pair) = a.user_session().await;
    let mut stream = watch(&b, "").await;
    let mut seen = snapshot(&mut stream).await;
    logout(&a, &pair.access_token).await;
    read_until(&mut stream, &mut seen, PATIENCE, |s| {
        s.revoked.contains(&pair.session_id)
    })
    .await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn heartbeats_arrive_about_every_second() {
    let srv = TestServer::start().await;
    let mut stream = watch(&srv, "").await;
    let seen = snapshot(&mut stream).await;
    let started = tokio::time::Instant::now();
    let mut tokens = vec![seen.token()];
    for _ in 0..3 {
        let m = next(&mut stream).await;
        assert!(m.revoked_sessions.is_empty() && m.jwks.is_none() && !m.snapshot_complete);
        assert!(!m.resume_token.is_empty());
        tokens.push(m.resume_token);
    }
    // Three heartbeats take about three seconds (generous bounds: no timing assertion).
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "too fast: {took:?}");
    assert!(took < PATIENCE, "too slow: {took:?}");
}

// ----- resume -------------------------------------------------------------------------------------

#[tokio::test]
async fn a_token_from_one_replica_resumes_on_the_other_without_a_snapshot() {
    let a = TestServer::start().await;
    let b = TestServer::start_on(a.config.clone(), a.clock.clone()).await;
    let (_, before) = a.user_session().await;
    let (_, while_away) = a.user_session().await;
    let (_, after) = a.user_session().await;
    logout(&a, &before.access_token).await;

    let mut stream = watch(&a, "").await;
    let seen = snapshot(&mut stream).await;
    assert!(seen.revoked.contains(&before.session_id));
    let token = seen.token();
    drop(stream);

    // Revoked while no stream is open, on A.
    logout(&a, &while_away.access_token).await;

    let mut resumed = watch(&b, &token).await;
    let mut seen = Seen::default();
    read_until(&mut resumed, &mut seen, PATIENCE, |s| {
        s.revoked.contains(&while_away.session_id)
    })
    .await;
    logout(&a, &after.access_token).await;
    read_until(&mut resumed, &mut seen, PATIENCE, |s| {
        s.revoked.contains(&after.session_id)
    })
    .await;
    assert_eq!(seen.snapshots(), 0, "a resumed stream sends no snapshot");
    assert!(
        seen.messages.iter().all(|m| m.jwks.is_none()),
        "the keys did not change"
    );
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn a_token_that_cannot_be_honoured_gets_a_snapshot() {
    let srv = TestServer::start().await;
    let other = TestServer::start().await; // another deployment: its own database and secret
    let (_, pair) = srv.user_session().await;
    logout(&srv, &pair.access_token).await;

    let mut stream = watch(&srv, "").await;
    let good = snapshot(&mut stream).await.token();
    drop(stream);

    let mut tampered = good.clone().into_bytes();
    let at = tampered.len() - 5;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let mut elsewhere = watch(&other, "").await;
    let foreign = snapshot(&mut elsewhere).await.token();
    for bad in [
        "garbage".to_owned(),
        "wr1.AAAA".to_owned(),
        tampered,
        foreign,
        "x".repeat(5000),
    ] {
        let mut s = watch(&srv, &bad).await;
        let seen = snapshot(&mut s).await;
        assert!(
            seen.revoked.contains(&pair.session_id),
            "{bad:.20}: a full snapshot"
        );
        assert!(seen.messages[0].jwks.is_some());
    }
    // Too old: after the resume window (the clock moves), a snapshot again.
    srv.clock.advance(chrono::Duration::minutes(11));
    let mut s = watch(&srv, &good).await;
    let seen = snapshot(&mut s).await;
    assert!(seen.revoked.contains(&pair.session_id));
    other.stop().await;
    srv.stop().await;
}

// ----- keys ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_rotation_on_either_replica_sends_the_new_keys() {
    let a = TestServer::start().await;
    let b = TestServer::start_on(a.config.clone(), a.clock.clone()).await;
    let admin = a.admin_session().await;
    let mut on_a = watch(&a, "").await;
    let mut on_b = watch(&b, "").await;
    let mut seen_a = snapshot(&mut on_a).await;
    let mut seen_b = snapshot(&mut on_b).await;
    let rotated = a
        .auth()
        .await
        .rotate_signing_key(with_bearer(
            proto::RotateSigningKeyRequest {},
            &admin.access_token,
        ))
        .await
        .expect("RotateSigningKey")
        .into_inner();
    let has_new = |s: &Seen| {
        s.messages[1..].iter().any(|m| {
            m.jwks
                .as_ref()
                .is_some_and(|j| j.keys.iter().any(|k| k.kid == rotated.kid))
        })
    };
    read_until(&mut on_a, &mut seen_a, PATIENCE, has_new).await;
    read_until(&mut on_b, &mut seen_b, PATIENCE, has_new).await;
    let set = seen_b
        .messages
        .iter()
        .rev()
        .find_map(|m| m.jwks.clone())
        .unwrap();
    assert_eq!(
        set.keys,
        jwks(&b).await,
        "the whole set, as GetJwks returns it"
    );
    assert_eq!(set.keys.len(), 2);

    // A stream resumed from before the rotation gets the keys; one from after does not.
    let before = seen_a
        .messages
        .iter()
        .find(|m| m.snapshot_complete)
        .unwrap()
        .resume_token
        .clone();
    let mut s = watch(&b, &before).await;
    let m = next(&mut s).await;
    assert!(!m.snapshot_complete, "resumed");
    assert!(m.jwks.is_some_and(|j| j.keys.len() == 2));
    let mut s = watch(&b, &seen_a.token()).await;
    let m = next(&mut s).await;
    assert!(!m.snapshot_complete && m.jwks.is_none());
    b.stop().await;
    a.stop().await;
}

// ----- drain --------------------------------------------------------------------------------------

#[tokio::test]
async fn the_drain_ends_the_stream_cleanly() {
    let srv = TestServer::start().await;
    let mut stream = watch(&srv, "").await;
    snapshot(&mut stream).await;
    let stopping = tokio::spawn(srv.stop());
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends at the drain, before the grace period");
    assert!(matches!(end, Ok(None)), "ended with OK: {end:?}");
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("the server stops without waiting out the grace period")
        .unwrap();
}

// ----- many streams -------------------------------------------------------------------------------

#[tokio::test]
async fn fifty_streams_each_receive_a_whole_burst() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let email = unique_email();
    let user = srv.register(&email, PASSWORD).await;
    let mut sessions = HashSet::new();
    for _ in 0..40 {
        sessions.insert(srv.login(&email, PASSWORD).await.session_id);
    }
    let (_, single) = srv.user_session().await;
    let key = srv.service_key().await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut client = srv.auth().await;
        let mut s = try_watch(&mut client, watch_req(&key, "")).await.unwrap();
        let seen = snapshot(&mut s).await;
        streams.push((s, seen));
    }
    let (revoked, ()) = tokio::join!(
        revoke_user_sessions(&srv, &admin.access_token, &user.id),
        logout(&srv, &single.access_token)
    );
    assert_eq!(revoked, 40);
    sessions.insert(single.session_id.clone());
    let readers = streams.into_iter().map(|(mut s, mut seen)| {
        let want = sessions.clone();
        tokio::spawn(async move {
            read_until(&mut s, &mut seen, PATIENCE * 3, |seen| {
                want.iter().all(|id| seen.revoked.contains(id))
            })
            .await;
        })
    });
    for r in readers.collect::<Vec<_>>() {
        r.await.expect("every stream receives every revocation");
    }
}

// ----- a slow stream ------------------------------------------------------------------------------

/// A client that stops reading while more revocations pass than the feed's ring holds gets a fresh
/// snapshot when it reads again, never a gap: a session revoked while it was behind is in it.
#[tokio::test]
async fn a_stream_that_falls_behind_the_ring_gets_a_fresh_snapshot() {
    use authd::api::revocation_feed::RING_CAPACITY;
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    // Small HTTP/2 windows: the server blocks as soon as this client stops reading.
    let channel = Channel::from_shared(format!("http://{}", srv.addr))
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .unwrap();
    let key = srv.service_key().await;
    let mut stream = try_watch(&mut AuthServiceClient::new(channel), watch_req(&key, ""))
        .await
        .unwrap();
    let mut seen = snapshot(&mut stream).await;

    // Revocations the view never held (straight into the feed), in records of 1,000.
    let feed = srv.svc.views().feed();
    let until = chrono::Utc::now() + chrono::Duration::hours(1);
    let flood = |records: usize| {
        for _ in 0..records {
            feed.publish(
                (0..1000).map(|_| (uuid::Uuid::new_v4(), until)).collect(),
                0,
            );
        }
    };
    flood(20);
    tokio::time::sleep(Duration::from_millis(300)).await; // the server is now blocked on this client
    logout(&srv, &pair.access_token).await;
    flood(RING_CAPACITY / 1000 + 10); // the logout's record leaves the ring

    read_until(&mut stream, &mut seen, PATIENCE * 6, |s| {
        s.snapshots() >= 2 && s.revoked.contains(&pair.session_id)
    })
    .await;
}

/// No heartbeat while the server's own view is stale (here: its database is gone), so the client
/// knows within seconds that it may be missing revocations.
#[tokio::test]
async fn no_heartbeats_while_the_view_is_stale() {
    let srv = TestServer::start().await;
    let mut stream = watch(&srv, "").await;
    snapshot(&mut stream).await;
    next(&mut stream).await; // a heartbeat while fresh
    srv.svc.pool().close();
    // The view goes stale 3 s after its last successful poll; then the heartbeats stop.
    tokio::time::sleep(authd::api::views::MAX_STALENESS + Duration::from_millis(500)).await;
    while let Ok(m) = tokio::time::timeout(Duration::from_millis(100), stream.message()).await {
        assert!(m.is_ok(), "the stream stays open");
    }
    let quiet = tokio::time::timeout(Duration::from_secs(3), stream.message()).await;
    assert!(quiet.is_err(), "a message while stale: {quiet:?}");
}
