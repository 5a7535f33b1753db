//! Local mode over a real WatchRevocations stream: revocation latency (one replica, and two
//! replicas with the stream on the other one), key rotation, outage and restart, malformed tokens,
//! and the same principal as remote mode.

use std::time::{Duration, Instant};

use authd_client::{AuthLayer, Role, ServiceKey};
use authd_testkit::{TestServer, with_bearer};
use http::HeaderValue;
use tonic::Code;

use crate::support::*;

const ROUNDS: usize = 5;

fn summary(what: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    println!(
        "{what}: logout -> refused in {:?} (min {:?}, max {:?}, {} rounds; includes the Logout call)",
        latencies[latencies.len() / 2],
        latencies[0],
        latencies[latencies.len() - 1],
        latencies.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_refuses_the_token_within_a_second_and_the_principal_is_as_remote() {
    let srv = TestServer::start().await;
    let layer = ready(builder(&srv).await.local()).await;
    let remote = builder(&srv).await.remote();
    let mut latencies = Vec::new();
    for _ in 0..ROUNDS {
        let (_, pair) = srv.user_session().await;
        let (_, other) = srv.user_session().await;
        let p = call(&layer, &pair.access_token).await.unwrap();
        assert_eq!(p, call(&remote, &pair.access_token).await.unwrap());
        assert_eq!(p.session_id().to_string(), pair.session_id);
        let t0 = Instant::now();
        logout(&srv, &pair.access_token).await;
        latencies.push(refused_after(&layer, &pair.access_token, t0).await);
        let s = call(&layer, &pair.access_token).await.unwrap_err();
        assert_eq!(reason(&s), "TOKEN_INVALID");
        assert!(
            call(&layer, &other.access_token).await.is_ok(),
            "other sessions live on"
        );
    }
    summary("local mode, one replica", latencies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_replica_reaches_a_stream_on_the_other() {
    let a = TestServer::start().await;
    let b = TestServer::start_on(a.config.clone(), a.clock.clone()).await;
    let layer = ready(builder(&b).await.local()).await;
    let mut latencies = Vec::new();
    for _ in 0..ROUNDS {
        let (_, pair) = a.user_session().await;
        assert!(call(&layer, &pair.access_token).await.is_ok());
        let t0 = Instant::now();
        logout(&a, &pair.access_token).await;
        latencies.push(refused_after(&layer, &pair.access_token, t0).await);
    }
    summary(
        "local mode, revoked on replica A, stream on replica B",
        latencies,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_a_rotated_key_are_accepted_as_soon_as_it_signs() {
    let delay = Duration::from_secs(2);
    let srv = TestServer::start_with(|c| c.key_publish_delay = delay).await;
    let layer = ready(builder(&srv).await.local()).await;
    let admin = srv.admin_session().await;
    let old_kid = kid_of(&admin.access_token);
    let new_kid = srv
        .auth()
        .await
        .rotate_signing_key(with_bearer(
            authd::proto::RotateSigningKeyRequest {},
            &admin.access_token,
        ))
        .await
        .expect("rotate")
        .into_inner()
        .kid;
    assert_ne!(new_kid, old_kid);
    // The publish delay passes, in real time (for the stream) and on the server's clock.
    tokio::time::sleep(delay).await;
    srv.clock
        .advance(chrono::Duration::from_std(delay).unwrap() + chrono::Duration::seconds(1));
    // The server's key reload loop runs on its own schedule; run it now (as tests/api/keys.rs does).
    srv.svc.reload_keys().await.expect("reload");
    let (_, pair) = srv.user_session().await;
    assert_eq!(kid_of(&pair.access_token), new_kid, "the new key signs");
    // No polling: the key arrived before it signed anything.
    assert!(call(&layer, &pair.access_token).await.is_ok());
    assert!(
        call(&layer, &admin.access_token).await.is_ok(),
        "the old key still verifies"
    );
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_closed_during_an_outage_and_recovers_after_a_restart() {
    let bound = Duration::from_secs(2);
    let srv = TestServer::start().await;
    let layer = ready(builder(&srv).await.stale_after(bound).local()).await;
    let (_, pair) = srv.user_session().await;
    let (_, later) = srv.user_session().await;
    assert!(call(&layer, &pair.access_token).await.is_ok());

    let (addr, config, clock) = (srv.addr, srv.config.clone(), srv.clock.clone());
    srv.stop().await;
    let refused = until_code(
        &layer,
        &pair.access_token,
        Code::Unavailable,
        Duration::from_secs(20),
    )
    .await;
    println!("outage: UNAVAILABLE {refused:?} after authd stopped (bound {bound:?})");
    assert!(!layer.is_ready());

    let srv = TestServer::start_at(config, clock, addr).await;
    let t0 = Instant::now();
    assert!(
        layer.wait_ready(Duration::from_secs(30)).await,
        "the stream came back"
    );
    println!(
        "restart: calls accepted again {:?} after authd restarted",
        t0.elapsed()
    );
    assert!(call(&layer, &pair.access_token).await.is_ok());
    // The resumed stream still delivers revocations.
    let t0 = Instant::now();
    logout(&srv, &later.access_token).await;
    let latency = refused_after(&layer, &later.access_token, t0).await;
    println!("after the restart: logout -> refused in {latency:?}");
}

#[tokio::test]
async fn fails_closed_before_the_first_snapshot() {
    // Nothing listens there: the stream never opens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{port}"))
        .unwrap()
        .connect_lazy();
    let layer = AuthLayer::builder(channel, ServiceKey::new("sk_x").unwrap()).local();
    let s = call(&layer, "a.b.c").await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
    let s = call_raw(&layer, PATH, None).await.unwrap_err();
    assert_eq!(
        reason(&s),
        "TOKEN_MISSING",
        "a missing token is said as such"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tokens_are_unauthenticated_never_a_panic() {
    let srv = TestServer::start().await;
    let layer = ready(
        builder(&srv)
            .await
            .require_role(ADMIN_PATH, Role::Admin)
            .local(),
    )
    .await;
    let (_, pair) = srv.user_session().await;
    let good = pair.access_token.clone();
    let kid = kid_of(&good);
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, sig) = rest.rsplit_once('.').unwrap();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(kid.clone()),
            typ: Some("at+jwt".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &serde_json::json!({"sub": "x", "iss": "authd", "aud": "authd"}),
        &jsonwebtoken::EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let alg_none = format!(
        "{}.{payload}.",
        b64(&format!(r#"{{"alg":"none","typ":"at+jwt","kid":"{kid}"}}"#))
    );
    let cases: Vec<String> = vec![
        "garbage".into(),
        "a.b.c".into(),
        "..".into(),
        format!("{head}.{payload}"),
        format!("{head}.{}.{sig}", b64(r#"{"role":"admin"}"#)),
        format!("{good}A"),
        hs256,
        alg_none,
        "x".repeat(5000),
        format!("{head}.{}.{sig}", "A".repeat(100_000)),
    ];
    for token in &cases {
        let s = call(&layer, token).await.unwrap_err();
        assert_eq!(
            (s.code(), reason(&s).as_str()),
            (Code::Unauthenticated, "TOKEN_INVALID"),
            "{:.60}",
            token
        );
    }
    // Bytes that are not text at all.
    let raw = HeaderValue::from_bytes(b"Bearer \xff\xfe\x80.\xc3\x28.z").unwrap();
    let s = call_raw(&layer, PATH, Some(raw)).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    // Roles: a user is refused the admin method, with the right code.
    let s = call_path(&layer, ADMIN_PATH, &good).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    // And the layer still works.
    assert!(call(&layer, &good).await.is_ok());
}
