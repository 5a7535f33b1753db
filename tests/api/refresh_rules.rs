use authd_testkit::*;

// Issue F, items 4, 5 and 6b, end to end:
// - grace replays of a just-spent refresh token are honoured only from the client (IPv4 address, or
//   IPv6 /64) that spent it, and audited as REFRESH_REPLAYED; from anywhere else they are reuse;
// - successors are random; what a replay needs is kept sealed, for the grace window only;
// - a revoked access token never validates again before its own `exp`, whatever the replicas'
//   token lifetimes;
// - Logout by refresh token shares the per-IP rate limit.
//
// Client addresses are simulated by trusting 127.0.0.1 (the test client) as a proxy and sending
// `x-forwarded-for`. Time is the servers' ManualClock.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use authd::clock::Clock;
use authd::proto;
use chrono::Duration as ChronoDuration;
use diesel::sql_types::{BigInt, Bytea, Integer, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tonic::{Code, Status};

pub(crate) async fn refresh_from(
    srv: &TestServer,
    refresh_token: &str,
    ip: &str,
) -> Result<proto::LoginResponse, Status> {
    srv.auth()
        .await
        .refresh(from_ip(
            proto::RefreshRequest {
                refresh_token: refresh_token.into(),
            },
            ip,
        ))
        .await
        .map(|r| r.into_inner().into())
}

pub(crate) async fn logout_from(
    srv: &TestServer,
    refresh_token: &str,
    ip: &str,
) -> Result<(), Status> {
    srv.auth()
        .await
        .logout(from_ip(
            proto::LogoutRequest {
                refresh_token: refresh_token.into(),
            },
            ip,
        ))
        .await
        .map(|_| ())
}

/// `n` Refresh calls with `refresh_token` from `ip`, released together, one connection each.
pub(crate) async fn race_refresh(
    srv: &TestServer,
    refresh_token: &str,
    ip: &str,
    n: usize,
) -> Vec<Result<proto::LoginResponse, Status>> {
    let mut set = JoinSet::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    for _ in 0..n {
        let mut client = srv.auth().await;
        let (barrier, token, ip) = (barrier.clone(), refresh_token.to_owned(), ip.to_owned());
        set.spawn(async move {
            barrier.wait().await;
            client
                .refresh(from_ip(
                    proto::RefreshRequest {
                        refresh_token: token,
                    },
                    &ip,
                ))
                .await
                .map(|r| proto::LoginResponse::from(r.into_inner()))
        });
    }
    set.join_all().await
}

/// Logout calls with these refresh tokens from `ip`, released together, one connection each.
async fn race_logout(srv: &TestServer, tokens: Vec<String>, ip: &str) -> Vec<Result<(), Status>> {
    let mut set = JoinSet::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(tokens.len()));
    for token in tokens {
        let mut client = srv.auth().await;
        let (barrier, ip) = (barrier.clone(), ip.to_owned());
        set.spawn(async move {
            barrier.wait().await;
            client
                .logout(from_ip(
                    proto::LogoutRequest {
                        refresh_token: token,
                    },
                    &ip,
                ))
                .await
                .map(|_| ())
        });
    }
    set.join_all().await
}

/// Logs a fresh user in from `ip`.
pub(crate) async fn session_from(srv: &TestServer, ip: &str) -> proto::LoginResponse {
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    srv.auth()
        .await
        .login(from_ip(login_email(&email, PASSWORD), ip))
        .await
        .expect("login")
        .into_inner()
}

#[derive(diesel::QueryableByName, Debug)]
pub(crate) struct AuditRow {
    #[diesel(sql_type = Text)]
    pub(crate) ip_address: String,
    #[diesel(sql_type = Text)]
    pub(crate) detail: String,
}

/// The audit events of `kind`, oldest first.
pub(crate) async fn events(url: &str, kind: &str) -> Vec<AuditRow> {
    diesel::sql_query(
        "SELECT ip_address, detail FROM audit_events WHERE kind = $1 ORDER BY create_time, id",
    )
    .bind::<Text, _>(kind)
    .load(&mut connect_db(url).await)
    .await
    .expect("audit events")
}

#[derive(diesel::QueryableByName, Debug)]
pub(crate) struct SessionRow {
    #[diesel(sql_type = Integer)]
    pub(crate) generation: i32,
    #[diesel(sql_type = Nullable<Bytea>)]
    pub(crate) replay_box: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub(crate) replay_until: Option<chrono::DateTime<chrono::Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) rotate_ip: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub(crate) revoke_time: Option<chrono::DateTime<chrono::Utc>>,
    #[diesel(sql_type = BigInt)]
    pub(crate) tokens: i64,
    #[diesel(sql_type = Nullable<Bytea>)]
    pub(crate) refresh_hash: Option<Vec<u8>>,
}

pub(crate) async fn session_row(url: &str, session_id: &str) -> SessionRow {
    diesel::sql_query(
        "SELECT s.generation, s.replay_box, s.replay_until, s.rotate_ip, s.revoke_time, s.refresh_hash, \
           (SELECT count(*) FROM refresh_tokens t WHERE t.session_id = s.id) AS tokens \
         FROM sessions s WHERE s.id = $1::uuid",
    )
    .bind::<Text, _>(session_id)
    .get_result(&mut connect_db(url).await)
    .await
    .expect("session row")
}

async fn is_valid(srv: &TestServer, access_token: &str) -> bool {
    srv.validate(access_token).await.valid
}

// ----- 4a: grace replays are bound to the spending client -----------------------------------------

#[tokio::test]
async fn a_grace_replay_from_the_spending_client_gets_the_successor_and_is_audited() {
    let srv = TestServer::start_with(behind_proxy).await;
    let (a, a2) = ("198.51.100.7", "2001:db8:1:2::1");
    let p0 = session_from(&srv, a).await;
    let p1 = refresh_from(&srv, &p0.refresh_token, a)
        .await
        .expect("rotate");
    assert_ne!(p1.refresh_token, p0.refresh_token);

    let again = refresh_from(&srv, &p0.refresh_token, a)
        .await
        .expect("a replay from the same address inside the grace window");
    assert_eq!(again.refresh_token, p1.refresh_token, "the same successor");
    assert!(is_valid(&srv, &again.access_token).await);
    let replayed = events(&srv.url, "REFRESH_REPLAYED").await;
    assert_eq!(replayed.len(), 1, "{replayed:?}");
    assert_eq!(replayed[0].ip_address, a);
    assert!(
        replayed[0].detail.contains(&format!("replayed from {a}"))
            && replayed[0].detail.contains(&format!("spent by {a}")),
        "both addresses: {:?}",
        replayed[0].detail
    );
    assert!(events(&srv.url, "REFRESH_REUSE_DETECTED").await.is_empty());

    // An IPv6 client is the /64: another address of the same /64 is the same client.
    let q0 = session_from(&srv, a2).await;
    let q1 = refresh_from(&srv, &q0.refresh_token, a2)
        .await
        .expect("rotate");
    let again = refresh_from(&srv, &q0.refresh_token, "2001:db8:1:2:ffff::9")
        .await
        .expect("a replay from the same /64");
    assert_eq!(again.refresh_token, q1.refresh_token);
    let replayed = events(&srv.url, "REFRESH_REPLAYED").await;
    assert_eq!(replayed.len(), 2);
    assert!(
        replayed[1]
            .detail
            .contains("replayed from 2001:db8:1:2:ffff::9")
            && replayed[1].detail.contains("spent by 2001:db8:1:2::1"),
        "{:?}",
        replayed[1].detail
    );

    // The session lives on: the successor rotates normally.
    let p2 = refresh_from(&srv, &p1.refresh_token, a)
        .await
        .expect("rotate");
    assert!(is_valid(&srv, &p2.access_token).await);
}

#[tokio::test]
async fn a_grace_replay_from_another_client_is_reuse_and_revokes_the_session() {
    let srv = TestServer::start_with(behind_proxy).await;
    let (a, b) = ("198.51.100.7", "203.0.113.50");
    let p0 = session_from(&srv, a).await;
    let p1 = refresh_from(&srv, &p0.refresh_token, a)
        .await
        .expect("rotate");
    assert!(is_valid(&srv, &p1.access_token).await);

    // Inside the grace window, from another address: no successor, and the session is revoked.
    let err = expect_code(
        refresh_from(&srv, &p0.refresh_token, b).await,
        Code::Unauthenticated,
    );
    assert!(!err.message().contains("rt_"), "{err:?}");
    assert!(
        !is_valid(&srv, &p1.access_token).await,
        "the session's access token stops validating"
    );
    assert!(!is_valid(&srv, &p0.access_token).await);
    expect_code(
        refresh_from(&srv, &p1.refresh_token, a).await,
        Code::Unauthenticated,
    );
    // Now even the spending client's replay is refused: the session is gone.
    expect_code(
        refresh_from(&srv, &p0.refresh_token, a).await,
        Code::Unauthenticated,
    );
    let row = session_row(&srv.url, &p0.session_id).await;
    assert!(row.revoke_time.is_some());
    assert!(
        row.replay_box.is_none(),
        "a revoked session keeps no sealed successor"
    );

    let reuse = events(&srv.url, "REFRESH_REUSE_DETECTED").await;
    assert_eq!(reuse.len(), 1, "{reuse:?}");
    assert_eq!(reuse[0].ip_address, b);
    assert!(
        reuse[0].detail.contains(b) && reuse[0].detail.contains(a),
        "both addresses: {:?}",
        reuse[0].detail
    );
    assert!(events(&srv.url, "REFRESH_REPLAYED").await.is_empty());

    // Another /64 is another client.
    let q0 = session_from(&srv, "2001:db8:1:2::1").await;
    let q1 = refresh_from(&srv, &q0.refresh_token, "2001:db8:1:2::1")
        .await
        .expect("rotate");
    expect_code(
        refresh_from(&srv, &q0.refresh_token, "2001:db8:1:3::1").await,
        Code::Unauthenticated,
    );
    assert!(!is_valid(&srv, &q1.access_token).await);
}

#[tokio::test]
async fn without_the_client_binding_another_client_gets_the_successor_audited() {
    let srv = TestServer::start_with(|c| {
        behind_proxy(c);
        c.refresh_replay_same_client = false;
    })
    .await;
    let (a, b) = ("198.51.100.7", "203.0.113.50");
    let p0 = session_from(&srv, a).await;
    let p1 = refresh_from(&srv, &p0.refresh_token, a)
        .await
        .expect("rotate");
    let again = refresh_from(&srv, &p0.refresh_token, b)
        .await
        .expect("AUTHD_REFRESH_REPLAY_SAME_CLIENT=false: a replay from anywhere");
    assert_eq!(again.refresh_token, p1.refresh_token);
    assert!(is_valid(&srv, &p1.access_token).await);
    let replayed = events(&srv.url, "REFRESH_REPLAYED").await;
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].ip_address, b);
    assert!(
        replayed[0].detail.contains(&format!("replayed from {b}"))
            && replayed[0].detail.contains(&format!("spent by {a}")),
        "{:?}",
        replayed[0].detail
    );
    assert!(events(&srv.url, "REFRESH_REUSE_DETECTED").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_refreshes_from_one_client_rotate_once_and_share_the_successor() {
    let srv = TestServer::start_with(|c| {
        behind_proxy(c);
        c.db_pool_size = 24;
    })
    .await;
    let a = "198.51.100.7";
    let p0 = session_from(&srv, a).await;
    let pairs: Vec<proto::LoginResponse> = race_refresh(&srv, &p0.refresh_token, a, 20)
        .await
        .into_iter()
        .map(|r| r.expect("every concurrent refresh from the spending client succeeds"))
        .collect();
    let successor = &pairs[0].refresh_token;
    assert_ne!(successor, &p0.refresh_token);
    assert!(
        pairs.iter().all(|p| &p.refresh_token == successor),
        "one successor"
    );
    let row = session_row(&srv.url, &p0.session_id).await;
    assert_eq!(row.generation, 1, "exactly one rotation");
    assert_eq!(
        row.tokens, 0,
        "current-format tokens have no rows of their own"
    );
    assert_eq!(
        row.refresh_hash.as_deref(),
        Some(&Sha256::digest(successor.as_bytes())[..]),
        "the session row holds the one successor's hash"
    );
    assert_eq!(events(&srv.url, "REFRESH_REPLAYED").await.len(), 19);
    assert!(events(&srv.url, "REFRESH_REUSE_DETECTED").await.is_empty());
    refresh_from(&srv, successor, a)
        .await
        .expect("the successor rotates");
}

// ----- 4b: random successors, sealed for the grace window only -------------------------------------

#[tokio::test]
async fn successors_are_random_and_nothing_readable_stays_after_the_window() {
    let srv = TestServer::start_with(behind_proxy).await;
    let a = "198.51.100.7";
    let p0 = session_from(&srv, a).await;
    let p1 = refresh_from(&srv, &p0.refresh_token, a)
        .await
        .expect("rotate");

    // No server secret derives successors any more.
    let secrets: i64 = diesel::sql_query(
        "SELECT count(*) AS n FROM server_secrets WHERE name = 'refresh_token_hmac'",
    )
    .get_result::<Count>(&mut connect_db(&srv.url).await)
    .await
    .expect("count")
    .n;
    assert_eq!(secrets, 0);

    // Inside the window the row holds the successor sealed, never in the clear.
    let row = session_row(&srv.url, &p0.session_id).await;
    let sealed = row
        .replay_box
        .expect("a sealed successor inside the window");
    let plain = p1.refresh_token.as_bytes();
    assert!(
        !sealed
            .windows(12)
            .any(|w| plain.windows(12).any(|p| p == w)),
        "the successor is readable in the database"
    );
    assert_eq!(row.rotate_ip.as_deref(), Some(a));
    assert!(row.replay_until.is_some());

    // After the window (5 s): the replay is reuse, and the sweep clears the sealed successor and
    // the spending address.
    srv.clock.advance(ChronoDuration::seconds(6));
    wait_until(
        "the sealed successor is cleared after the window",
        StdDuration::from_secs(10),
        || async {
            let r = session_row(&srv.url, &p0.session_id).await;
            r.replay_box.is_none() && r.replay_until.is_none() && r.rotate_ip.is_none()
        },
    )
    .await;
    let p2 = refresh_from(&srv, &p1.refresh_token, a)
        .await
        .expect("rotate");
    assert!(
        session_row(&srv.url, &p0.session_id)
            .await
            .replay_box
            .is_some()
    );
    // The next rotation replaces the box: it opens only for p1, no longer for p0.
    expect_code(
        refresh_from(&srv, &p0.refresh_token, a).await,
        Code::Unauthenticated,
    );
    assert!(
        !is_valid(&srv, &p2.access_token).await,
        "two generations back is reuse"
    );
}

#[tokio::test]
async fn a_replay_after_the_window_is_reuse_even_from_the_spending_client() {
    let srv = TestServer::start_with(behind_proxy).await;
    let a = "198.51.100.7";
    let p0 = session_from(&srv, a).await;
    let p1 = refresh_from(&srv, &p0.refresh_token, a)
        .await
        .expect("rotate");
    // Just past the window, before any sweep could run: the row's window end decides.
    srv.clock.advance(ChronoDuration::milliseconds(5_001));
    expect_code(
        refresh_from(&srv, &p0.refresh_token, a).await,
        Code::Unauthenticated,
    );
    assert!(!is_valid(&srv, &p1.access_token).await);
    assert_eq!(events(&srv.url, "REFRESH_REUSE_DETECTED").await.len(), 1);
}

// ----- 5: revocation never expires early ------------------------------------------------------------

/// Replica A issues 15-minute tokens, replica D 1-second ones, on one database. A token of A's,
/// validated (and so cached) on D, then revoked on A, stays invalid on D until its own `exp`, long
/// after D's own token lifetime (and D's old tombstone retention of TTL + 302 s).
#[tokio::test]
async fn a_revoked_token_stays_invalid_on_a_short_ttl_replica_until_its_exp() {
    let a = TestServer::start_with(|c| c.access_token_ttl = StdDuration::from_secs(900)).await;
    let mut short = a.config.clone();
    short.access_token_ttl = StdDuration::from_secs(1);
    // One clock for both replicas; it moves only when told to.
    let d_started = std::time::Instant::now();
    let d = TestServer::start_on(short, a.clock.clone()).await;
    let issued = a.clock.now();
    let (_, pair) = a.user_session().await;
    assert_eq!(pair.expires_in, 900);
    assert!(
        is_valid(&d, &pair.access_token).await,
        "valid on D, and now in D's cache"
    );
    // A second session, revoked the same way, whose token D never saw.
    let (_, unseen) = a.user_session().await;

    a.auth()
        .await
        .logout(proto::LogoutRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .expect("logout on A");
    a.auth()
        .await
        .logout(proto::LogoutRequest {
            refresh_token: unseen.refresh_token.clone(),
        })
        .await
        .expect("logout on A");
    wait_until(
        "D sees the revocation",
        StdDuration::from_secs(5),
        || async { !is_valid(&d, &pair.access_token).await },
    )
    .await;

    // Past D's own TTL and its former retention, before the token's exp (900 s): still invalid,
    // however often D polls and trims.
    for step in [60, 330] {
        still_revoked_at(&a, &d, &[&pair, &unseen], issued, step).await;
    }
    // Before issue F, D trimmed its view by the wall clock, every 30 s of its life, and forgot
    // tombstones by its own TTL; so that this test catches such a view too, it lets one such
    // interval pass with the clock at +330 s. (D now trims on the injected clock.)
    tokio::time::sleep(StdDuration::from_secs(31).saturating_sub(d_started.elapsed())).await;
    for step in [330, 600, 880] {
        still_revoked_at(&a, &d, &[&pair, &unseen], issued, step).await;
    }
    // A replica started now (empty cache and view) agrees.
    let fresh = TestServer::start_on(d.config.clone(), d.clock.clone()).await;
    assert!(!is_valid(&fresh, &pair.access_token).await);
    // And past exp the token is simply expired.
    a.clock.advance(ChronoDuration::seconds(60));
    assert!(!is_valid(&d, &pair.access_token).await);
}

/// Moves the shared clock to `issued + step` seconds, has D poll (and so trim) with it, and checks
/// that the revoked tokens read invalid on both replicas.
async fn still_revoked_at(
    a: &TestServer,
    d: &TestServer,
    pairs: &[&proto::LoginResponse],
    issued: chrono::DateTime<chrono::Utc>,
    step: i64,
) {
    a.clock
        .advance(issued + ChronoDuration::seconds(step) - a.clock.now());
    d.svc.sync_views().await.expect("poll");
    for (i, p) in pairs.iter().enumerate() {
        assert!(
            !is_valid(d, &p.access_token).await,
            "revoked token {i} valid again on D at +{step} s"
        );
        assert!(
            !is_valid(a, &p.access_token).await,
            "revoked token {i} valid again on A at +{step} s"
        );
    }
}

// ----- 6b: Logout by refresh token joins the per-IP rate limit ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_by_refresh_token_is_rate_limited_per_ip() {
    let srv = TestServer::start_with(|c| {
        behind_proxy(c);
        c.rate_limit_per_ip = 5;
    })
    .await;
    // Sessions made from elsewhere, so that only the logouts count against the flooding address.
    let mut pairs = Vec::new();
    for i in 0..3 {
        pairs.push(session_from(&srv, &format!("192.0.2.{}", 10 + i)).await);
    }
    let flooder = "198.51.100.66";
    // 20 logouts at once (of unknown and real tokens alike): the bucket holds 5.
    let tokens = (0..20)
        .map(|i| match pairs.get(i) {
            Some(p) => p.refresh_token.clone(),
            None => format!("rt_unknown_{i}"),
        })
        .collect();
    let results = race_logout(&srv, tokens, flooder).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<&Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        refused.iter().all(|s| s.code() == Code::ResourceExhausted),
        "{refused:?}"
    );
    // One token per 12 s refills the bucket; a slow machine may see one more.
    assert!((5..=6).contains(&ok), "{ok} logouts passed a bucket of 5");
    let again = logout_from(&srv, "rt_more", flooder).await;
    let s = expect_code(again, Code::ResourceExhausted);
    assert!(s.metadata().get("retry-after").is_some(), "{s:?}");
    // Other addresses are unaffected.
    logout_from(&srv, "rt_other", "192.0.2.99")
        .await
        .expect("another address");
}
