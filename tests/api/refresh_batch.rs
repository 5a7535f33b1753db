use authd_testkit::*;

// Group commit of refresh rotations (issue J, fifth pass; `domain::sessions::rotations`):
// concurrent refreshes of different sessions share one UPDATE, and every rule of a lone refresh
// holds for each of them: each session rotates once, a reused token revokes its own session only, a
// revoked session stays dead, and a batch that fails is written again one rotation at a time.
//
// A statement-level trigger on `sessions` (with a transition table) records how many rows each
// UPDATE changed, or refuses statements of more than one row.

use std::sync::Arc;

use authd::proto;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use tokio::task::JoinSet;
use tonic::{Code, Status};

use crate::refresh_rules::{events, refresh_from, session_from, session_row};

const IP: &str = "198.51.100.20";
const OTHER_IP: &str = "203.0.113.9";

/// `n` sessions of fresh users, logged in concurrently from [`IP`].
async fn sessions(srv: &Arc<TestServer>, n: usize) -> Vec<proto::LoginResponse> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let srv = srv.clone();
        set.spawn(async move { session_from(&srv, IP).await });
    }
    set.join_all().await
}

/// Refresh calls with these tokens from their addresses, released together, one connection each,
/// answered in the order given.
async fn race(
    srv: &TestServer,
    calls: &[(String, &'static str)],
) -> Vec<Result<proto::LoginResponse, Status>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(calls.len()));
    let mut set = JoinSet::new();
    for (i, (token, ip)) in calls.iter().enumerate() {
        let mut client = srv.auth().await;
        let (barrier, token, ip) = (barrier.clone(), token.clone(), *ip);
        set.spawn(async move {
            barrier.wait().await;
            let r = client
                .refresh(from_ip(
                    proto::RefreshRequest {
                        refresh_token: token,
                    },
                    ip,
                ))
                .await
                .map(|r| proto::LoginResponse::from(r.into_inner()));
            (i, r)
        });
    }
    let mut out: Vec<_> = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Records the rows of every UPDATE of `sessions` from now on in `update_rows`.
async fn count_update_rows(srv: &TestServer) {
    srv.exec("CREATE TABLE update_rows (n bigint NOT NULL)")
        .await;
    srv.exec(
        "CREATE FUNCTION record_update_rows() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO update_rows SELECT count(*) FROM changed; RETURN NULL; END $$",
    )
    .await;
    srv.exec(
        "CREATE TRIGGER record_update_rows AFTER UPDATE ON sessions REFERENCING NEW TABLE AS changed \
         FOR EACH STATEMENT EXECUTE FUNCTION record_update_rows()",
    )
    .await;
}

#[derive(diesel::QueryableByName)]
struct Widest {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refreshes_share_statements_and_each_keeps_its_own_rules() {
    let srv = Arc::new(
        TestServer::start_with(|c| {
            behind_proxy(c);
            c.db_pool_size = 40;
        })
        .await,
    );
    let pairs = sessions(&srv, 30).await;
    // Session 0's token is spent (by a refresh the test makes now): presented again from another
    // client, it is reuse. Session 1 is revoked. The others refresh once each.
    let spent = pairs[0].refresh_token.clone();
    let s0_next = refresh_from(&srv, &spent, IP).await.expect("refresh");
    srv.exec(&format!(
        "UPDATE sessions SET revoke_time = now() WHERE id = '{}'",
        pairs[1].session_id
    ))
    .await;
    count_update_rows(&srv).await;

    let mut calls: Vec<(String, &'static str)> = vec![(spent, OTHER_IP)];
    calls.extend(pairs[1..].iter().map(|p| (p.refresh_token.clone(), IP)));
    let answers = race(&srv, &calls).await;

    assert_eq!(
        answers[0].as_ref().map_err(Status::code).err(),
        Some(Code::Unauthenticated),
        "a spent token from another client is reuse"
    );
    assert_eq!(
        answers[1].as_ref().map_err(Status::code).err(),
        Some(Code::Unauthenticated),
        "a revoked session does not refresh"
    );
    for (pair, answer) in pairs[2..].iter().zip(&answers[2..]) {
        let next = answer.as_ref().expect("a live session refreshes");
        assert_eq!(next.session_id, pair.session_id);
        assert_ne!(next.refresh_token, pair.refresh_token);
        assert!(srv.validate(&next.access_token).await.valid);
        let row = session_row(&srv.url, &pair.session_id).await;
        assert_eq!(row.generation, 1, "exactly one rotation");
        assert!(row.revoke_time.is_none());
    }
    // The reuse revoked session 0 only; its successor is dead with it.
    assert!(
        session_row(&srv.url, &pairs[0].session_id)
            .await
            .revoke_time
            .is_some()
    );
    assert_eq!(events(&srv.url, "REFRESH_REUSE_DETECTED").await.len(), 1);
    assert_eq!(
        refresh_from(&srv, &s0_next.refresh_token, IP)
            .await
            .map_err(|s| s.code())
            .err(),
        Some(Code::Unauthenticated)
    );
    // 28 rotations released together, one batch written at a time: some statements carried more
    // than one.
    let widest: Widest = diesel::sql_query("SELECT coalesce(max(n), 0) AS n FROM update_rows")
        .get_result(&mut srv.db().await)
        .await
        .expect("update_rows");
    assert!(
        widest.n > 1,
        "no UPDATE of sessions rotated more than one session"
    );

    // The successors rotate again, all together.
    let calls: Vec<(String, &'static str)> = answers[2..]
        .iter()
        .map(|a| (a.as_ref().expect("refreshed").refresh_token.clone(), IP))
        .collect();
    for answer in race(&srv, &calls).await {
        answer.expect("a successor refreshes");
    }
    for pair in &pairs[2..] {
        assert_eq!(session_row(&srv.url, &pair.session_id).await.generation, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_batch_is_written_one_rotation_at_a_time() {
    let srv = Arc::new(
        TestServer::start_with(|c| {
            behind_proxy(c);
            c.db_pool_size = 40;
        })
        .await,
    );
    let pairs = sessions(&srv, 24).await;
    // Every UPDATE of more than one session fails, and rolls back.
    srv.exec(
        "CREATE FUNCTION refuse_batches() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF (SELECT count(*) FROM changed) > 1 THEN RAISE EXCEPTION 'one row at a time'; \
         END IF; RETURN NULL; END $$",
    )
    .await;
    srv.exec(
        "CREATE TRIGGER refuse_batches AFTER UPDATE ON sessions REFERENCING NEW TABLE AS changed \
         FOR EACH STATEMENT EXECUTE FUNCTION refuse_batches()",
    )
    .await;
    let calls: Vec<(String, &'static str)> = pairs
        .iter()
        .map(|p| (p.refresh_token.clone(), IP))
        .collect();
    for (pair, answer) in pairs.iter().zip(race(&srv, &calls).await) {
        let next = answer.expect("every refresh succeeds");
        assert_eq!(next.session_id, pair.session_id);
        let row = session_row(&srv.url, &pair.session_id).await;
        assert_eq!(row.generation, 1, "exactly one rotation");
        assert_eq!(
            row.refresh_hash.as_deref(),
            Some(&sha256(next.refresh_token.as_bytes())[..]),
            "the session holds the successor the caller got"
        );
    }
    assert!(events(&srv.url, "REFRESH_REUSE_DETECTED").await.is_empty());
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
