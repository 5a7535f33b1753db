// Issue J, P4: refresh tokens that carry their session id, generation and a MAC, rotated by one
// single-row UPDATE of the session.
// - a spent token whose MAC verifies is recognised as reuse and revokes the session;
// - a token naming a real session but with a bad MAC revokes nothing: it is merely invalid;
// - grace replays and concurrent refreshes keep issue F's rules (see also refresh_rules.rs);
// - tokens of the previous format (rows of `refresh_tokens`) keep working until rotated.

use authd::api::opaque::{RefreshClaims, RefreshFormat, mint_refresh_token, refresh_format};
use authd::proto;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel::sql_types::{Bytea, Text};
use diesel_async::RunQueryDsl;
use sha2::{Digest, Sha256};
use tonic::Code;

use super::refresh_rules::{
    events, logout_from, race_refresh, refresh_from, session_from, session_row,
};
use authd_testkit::*;

const A: &str = "198.51.100.7";
const B: &str = "203.0.113.9";

/// A token in the current format for `session_id` at `generation`, with a MAC under `secret`.
fn token_for(secret: &[u8], session_id: &str, generation: i32) -> String {
    let sid = uuid::Uuid::parse_str(session_id).expect("session id");
    mint_refresh_token(secret, sid, generation)
}

/// The session id and generation a token of the current format carries, read without its MAC.
fn unverified(token: &str) -> (uuid::Uuid, i32) {
    let raw = URL_SAFE_NO_PAD
        .decode(token.strip_prefix("rt_").expect("prefix"))
        .expect("base64url");
    assert_eq!(raw.len(), 69, "version, session, generation, random, MAC");
    assert_eq!(raw[0], 2);
    let sid = uuid::Uuid::from_slice(&raw[1..17]).expect("uuid");
    let generation = i32::from_be_bytes(raw[17..21].try_into().expect("4 bytes"));
    (sid, generation)
}

#[tokio::test]
async fn tokens_carry_their_session_and_generation() {
    let srv = TestServer::start_with(behind_proxy).await;
    let p0 = session_from(&srv, A).await;
    let (sid, generation) = unverified(&p0.refresh_token);
    assert_eq!(sid.to_string(), p0.session_id);
    assert_eq!(generation, 0);
    let p1 = refresh_from(&srv, &p0.refresh_token, A)
        .await
        .expect("rotate");
    assert_eq!(unverified(&p1.refresh_token), (sid, 1));
    // The session row holds only the current token's SHA-256; no row per token.
    let row = session_row(&srv.url, &p0.session_id).await;
    assert_eq!(row.generation, 1);
    assert_eq!(row.tokens, 0);
    assert_eq!(
        row.refresh_hash.as_deref(),
        Some(&Sha256::digest(p1.refresh_token.as_bytes())[..])
    );
}

#[tokio::test]
async fn a_spent_token_whose_mac_verifies_is_reuse_and_revokes() {
    let srv = TestServer::start_with(behind_proxy).await;
    let p0 = session_from(&srv, A).await;
    let p1 = refresh_from(&srv, &p0.refresh_token, A)
        .await
        .expect("rotate");
    let p2 = refresh_from(&srv, &p1.refresh_token, A)
        .await
        .expect("rotate again");
    // p0 is two generations back: no grace replay can cover it.
    let err = refresh_from(&srv, &p0.refresh_token, A)
        .await
        .expect_err("reuse");
    assert_eq!(err.code(), Code::Unauthenticated);
    let row = session_row(&srv.url, &p0.session_id).await;
    assert!(row.revoke_time.is_some(), "reuse revokes the session");
    let reuse = events(&srv.url, "REFRESH_REUSE_DETECTED").await;
    assert_eq!(reuse.len(), 1);
    assert!(
        reuse[0]
            .detail
            .contains("generation 0 presented, current 2"),
        "{}",
        reuse[0].detail
    );
    // The current token died with the session.
    let err = refresh_from(&srv, &p2.refresh_token, A)
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_forged_token_naming_a_real_session_revokes_nothing() {
    let srv = TestServer::start_with(behind_proxy).await;
    let p0 = session_from(&srv, A).await;
    let p1 = refresh_from(&srv, &p0.refresh_token, A)
        .await
        .expect("rotate");

    // The right session id and an old generation, but a MAC under another secret, and the
    // genuine spent token with its MAC bytes flipped.
    let other_secret = [7u8; 32];
    let forged = token_for(&other_secret, &p0.session_id, 0);
    assert_eq!(
        refresh_format(&other_secret, &forged),
        RefreshFormat::Current(RefreshClaims {
            session_id: uuid::Uuid::parse_str(&p0.session_id).expect("uuid"),
            generation: 0,
        })
    );
    let mut raw = URL_SAFE_NO_PAD
        .decode(&p0.refresh_token[3..])
        .expect("base64url");
    raw[68] ^= 0x55;
    let flipped = format!("rt_{}", URL_SAFE_NO_PAD.encode(&raw));
    for bad in [forged, flipped] {
        for ip in [A, B] {
            let err = refresh_from(&srv, &bad, ip).await.expect_err("forged");
            assert_eq!(err.code(), Code::Unauthenticated);
        }
        // Logout with it ends nothing either.
        logout_from(&srv, &bad, B)
            .await
            .expect("logout is fine with unknown tokens");
    }
    let row = session_row(&srv.url, &p0.session_id).await;
    assert!(row.revoke_time.is_none(), "a bad MAC revokes nothing");
    assert!(events(&srv.url, "REFRESH_REUSE_DETECTED").await.is_empty());
    assert_eq!(row.generation, 1);
    refresh_from(&srv, &p1.refresh_token, A)
        .await
        .expect("the session lives on");
}

#[tokio::test]
async fn a_grace_replay_gets_the_same_successor_once_rotated_by_the_single_update() {
    let srv = TestServer::start_with(behind_proxy).await;
    let p0 = session_from(&srv, A).await;
    let p1 = refresh_from(&srv, &p0.refresh_token, A)
        .await
        .expect("rotate");
    let again = refresh_from(&srv, &p0.refresh_token, A)
        .await
        .expect("grace replay");
    assert_eq!(again.refresh_token, p1.refresh_token);
    assert_eq!(events(&srv.url, "REFRESH_REPLAYED").await.len(), 1);
    let row = session_row(&srv.url, &p0.session_id).await;
    assert_eq!(row.generation, 1);
    assert!(row.revoke_time.is_none());
}

/// Turns a session's current token into one of the previous format, as the code before issue J
/// stored it: a `refresh_tokens` row at the session's generation, and no `refresh_hash`.
async fn downgrade(url: &str, session_id: &str) -> String {
    let old = authd::api::opaque::new_refresh_token();
    let mut conn = connect_db(url).await;
    diesel::sql_query("UPDATE sessions SET refresh_hash = NULL WHERE id = $1::uuid")
        .bind::<Text, _>(session_id)
        .execute(&mut conn)
        .await
        .expect("clear refresh_hash");
    diesel::sql_query(
        "INSERT INTO refresh_tokens (token_hash, session_id, generation, create_time) \
         SELECT $1, id, generation, now() FROM sessions WHERE id = $2::uuid",
    )
    .bind::<Bytea, _>(Sha256::digest(old.as_bytes()).to_vec())
    .bind::<Text, _>(session_id)
    .execute(&mut conn)
    .await
    .expect("insert an old-format token");
    old
}

#[tokio::test]
async fn an_old_format_token_refreshes_once_into_the_new_format() {
    let srv = TestServer::start_with(behind_proxy).await;
    let p0 = session_from(&srv, A).await;
    let old = downgrade(&srv.url, &p0.session_id).await;
    assert_eq!(old.len(), 3 + 43);
    // The login's own (current-format) token no longer matches the session.
    let err = refresh_from(&srv, &p0.refresh_token, A)
        .await
        .expect_err("not the current token");
    assert_eq!(err.code(), Code::Unauthenticated);

    let p1 = refresh_from(&srv, &old, A).await.expect("old format works");
    assert_eq!(
        unverified(&p1.refresh_token),
        (uuid::Uuid::parse_str(&p0.session_id).expect("uuid"), 1)
    );
    // Its grace replay gets the same successor; the old row is spent, the session holds the new one.
    let again = refresh_from(&srv, &old, A).await.expect("grace replay");
    assert_eq!(again.refresh_token, p1.refresh_token);
    let row = session_row(&srv.url, &p0.session_id).await;
    assert_eq!((row.generation, row.tokens), (1, 1));
    assert_eq!(
        row.refresh_hash.as_deref(),
        Some(&Sha256::digest(p1.refresh_token.as_bytes())[..])
    );
    let p2 = refresh_from(&srv, &p1.refresh_token, A)
        .await
        .expect("the successor rotates");
    // Spent and presented from elsewhere: reuse, as before the upgrade.
    let err = refresh_from(&srv, &old, B).await.expect_err("reuse");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        session_row(&srv.url, &p0.session_id)
            .await
            .revoke_time
            .is_some()
    );
    assert_eq!(events(&srv.url, "REFRESH_REUSE_DETECTED").await.len(), 1);
    assert!(refresh_from(&srv, &p2.refresh_token, A).await.is_err());
}

#[tokio::test]
async fn an_old_format_token_logs_out() {
    let srv = TestServer::start_with(behind_proxy).await;
    let p0 = session_from(&srv, A).await;
    let old = downgrade(&srv.url, &p0.session_id).await;
    logout_from(&srv, &old, A).await.expect("logout");
    assert!(
        session_row(&srv.url, &p0.session_id)
            .await
            .revoke_time
            .is_some()
    );
}

#[tokio::test]
async fn twenty_concurrent_refreshes_of_an_old_format_token_rotate_once() {
    let srv = TestServer::start_with(|c| {
        behind_proxy(c);
        c.db_pool_size = 24;
    })
    .await;
    let p0 = session_from(&srv, A).await;
    let old = downgrade(&srv.url, &p0.session_id).await;
    let pairs: Vec<proto::LoginResponse> = race_refresh(&srv, &old, A, 20)
        .await
        .into_iter()
        .map(|r| r.expect("every concurrent refresh from the spending client succeeds"))
        .collect();
    let successor = &pairs[0].refresh_token;
    assert!(pairs.iter().all(|p| &p.refresh_token == successor));
    let row = session_row(&srv.url, &p0.session_id).await;
    assert_eq!(row.generation, 1, "exactly one rotation");
    assert_eq!(events(&srv.url, "REFRESH_REPLAYED").await.len(), 19);
    assert!(events(&srv.url, "REFRESH_REUSE_DETECTED").await.is_empty());
}

#[tokio::test]
async fn a_token_the_session_never_handed_out_is_invalid_not_reuse() {
    // Only the server can mint a MAC-valid token; one of a future generation was never issued
    // (a losing concurrent rotation's successor is never sent). It is invalid, nothing more.
    // Reading the server's secret from the database stands in for that server-side mint.
    let srv = TestServer::start_with(behind_proxy).await;
    let p0 = session_from(&srv, A).await;
    #[derive(diesel::QueryableByName)]
    struct Secret {
        #[diesel(sql_type = Bytea)]
        value: Vec<u8>,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        encrypted: bool,
    }
    let s: Secret = diesel::sql_query(
        "SELECT value, encrypted FROM server_secrets WHERE name = 'refresh_token_mac'",
    )
    .get_result(&mut connect_db(&srv.url).await)
    .await
    .expect("the refresh secret");
    assert!(!s.encrypted, "the test server runs without a master key");
    for generation in [0, 5] {
        let other = token_for(&s.value, &p0.session_id, generation);
        let err = refresh_from(&srv, &other, B)
            .await
            .expect_err("never issued");
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let row = session_row(&srv.url, &p0.session_id).await;
    assert!(row.revoke_time.is_none());
    refresh_from(&srv, &p0.refresh_token, A)
        .await
        .expect("the real token still rotates");
}
