use authd_testkit::*;

// Signing-key rotation, encryption at rest, and the signing-keys CLI.
//
// Rotation: RotateSigningKey is ADMIN-only; a new key is published in JWKS at once, signs only from
// `now + AUTHD_KEY_PUBLISH_DELAY`, old keys keep verifying until their tokens have expired and then
// leave JWKS; replicas follow within seconds through the key reload loop; the CLI does the same.
// Encryption at rest: with `AUTHD_MASTER_KEY` every key row is sealed, a dump cannot mint tokens,
// plaintext rows are sealed in place, and a missing, wrong or malformed master key stops start-up.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use authd::api::NewAccount;
use authd::api::{ClientInfo, Role as DomainRole};
use authd::clock::{Clock, ManualClock};
use authd::proto;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use diesel::sql_types::{Bool, Bytea, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use serde_json::{Value, json};
use tonic::{Code, Request, Status};

// ----- helpers -----------------------------------------------------------------------------------

const PUBLISH_DELAY_SECS: i64 = 900;
const ACCESS_TTL_SECS: i64 = 900;
const RETIRE_MARGIN_SECS: i64 = 60;

/// RotateSigningKey with `authorization: Bearer <token>`, or no credentials when `token` is empty.
async fn rotate(srv: &TestServer, token: &str) -> Result<proto::RotateSigningKeyResponse, Status> {
    let msg = proto::RotateSigningKeyRequest {};
    let req = if token.is_empty() {
        Request::new(msg)
    } else {
        with_bearer(msg, token)
    };
    srv.auth()
        .await
        .rotate_signing_key(req)
        .await
        .map(|r| r.into_inner())
}

async fn rotate_ok(srv: &TestServer, token: &str) -> proto::RotateSigningKeyResponse {
    match rotate(srv, token).await {
        Ok(r) => r,
        Err(s) => panic!("RotateSigningKey failed: {s:?}"),
    }
}

/// The kids GetJwks publishes.
async fn jwks_kids(srv: &TestServer) -> BTreeSet<String> {
    srv.auth()
        .await
        .get_jwks(proto::GetJwksRequest {})
        .await
        .expect("GetJwks")
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect()
}

fn set_of(kids: &[&str]) -> BTreeSet<String> {
    kids.iter().map(|k| (*k).to_owned()).collect()
}

/// The `kid` header of a JWT.
fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("JWT header")
        .kid
        .expect("kid header")
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("json")
}

/// Asserts that `token` is accepted both by ValidateToken and by a bearer-protected RPC.
async fn assert_token_works(srv: &TestServer, token: &str, what: &str) {
    let v = srv.validate(token).await;
    assert!(v.valid, "{what}: ValidateToken said invalid");
    get_me(srv, token)
        .await
        .unwrap_or_else(|s| panic!("{what}: GetMe refused the token: {s:?}"));
}

/// Asserts that `token` is refused by ValidateToken and by a bearer-protected RPC.
async fn assert_token_refused(srv: &TestServer, token: &str, what: &str) {
    let v = srv.validate(token).await;
    assert!(!v.valid, "{what}: ValidateToken accepted it: {v:?}");
    expect_code(get_me(srv, token).await, Code::Unauthenticated);
}

/// A fresh account with `role`, created directly (as an admin or the CLI would), logged in.
async fn session_with_role(srv: &TestServer, role: DomainRole) -> proto::LoginResponse {
    let email = unique_email();
    srv.svc
        .create_account(
            NewAccount {
                email: email.clone(),
                password: PASSWORD.into(),
                ..Default::default()
            },
            role,
            None,
            &ClientInfo::default(),
            "test fixture",
        )
        .await
        .expect("create account");
    srv.login(&email, PASSWORD).await
}

fn to_datetime(ts: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).expect("nanos")).expect("time")
}

/// What the server computes from its clock: "now" at PostgreSQL's microsecond precision.
fn server_now(clock: &ManualClock) -> DateTime<Utc> {
    clock.now().trunc_subsecs(6)
}

/// A random master key, 32 bytes in standard base64.
fn new_master_key() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    (STANDARD.encode(bytes), bytes)
}

#[derive(diesel::QueryableByName, Debug, Clone)]
struct KeyRow {
    #[diesel(sql_type = Text)]
    kid: String,
    #[diesel(sql_type = Bytea)]
    private_key: Vec<u8>,
    #[diesel(sql_type = Bytea)]
    public_key: Vec<u8>,
    #[diesel(sql_type = Bool)]
    encrypted: bool,
    #[diesel(sql_type = Timestamptz)]
    activate_time: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    retire_time: Option<DateTime<Utc>>,
}

#[derive(diesel::QueryableByName, Debug, Clone)]
struct SecretRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Bytea)]
    value: Vec<u8>,
    #[diesel(sql_type = Bool)]
    encrypted: bool,
}

async fn key_rows(url: &str) -> Vec<KeyRow> {
    diesel::sql_query(
        "SELECT kid, private_key, public_key, encrypted, activate_time, retire_time \
         FROM signing_keys ORDER BY activate_time, kid",
    )
    .load(&mut connect_db(url).await)
    .await
    .expect("read signing_keys")
}

async fn secret_rows(url: &str) -> Vec<SecretRow> {
    diesel::sql_query("SELECT name, value, encrypted FROM server_secrets ORDER BY name")
        .load(&mut connect_db(url).await)
        .await
        .expect("read server_secrets")
}

/// Every row of every table, as JSON text (bytea shows as `\x<hex>`).
async fn dump_database(url: &str) -> String {
    let mut conn = connect_db(url).await;
    let tables: Vec<TextRow> = diesel::sql_query(
        "SELECT table_name::text AS t FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .load(&mut conn)
    .await
    .expect("list tables");
    let mut dump = String::new();
    for table in tables {
        let rows: Vec<TextRow> = diesel::sql_query(format!(
            "SELECT row_to_json(x)::text AS t FROM \"{}\" x",
            table.t
        ))
        .load(&mut conn)
        .await
        .expect("dump table");
        for r in rows {
            dump.push_str(&table.t);
            dump.push_str(": ");
            dump.push_str(&r.t);
            dump.push('\n');
        }
    }
    dump
}

/// A token for the same subject and session as `model`, with a fresh jti, signed by `private_der`
/// (what the server stores, or what an attacker read from a dump) under `kid`. `None` when the
/// bytes are not a usable key at all.
fn forge(model: &str, kid: &str, private_der: &[u8]) -> Option<String> {
    let mut claims = claims_of(model);
    claims["jti"] = json!(uuid::Uuid::new_v4().to_string());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid.to_owned());
    let key = jsonwebtoken::EncodingKey::from_ed_der(private_der);
    jsonwebtoken::encode(&header, &claims, &key).ok()
}

/// Asserts that `stored` (a `private_key` column as found in a dump) cannot mint a token the
/// server accepts: it is not an Ed25519 PKCS#8 key, and signing with it fails or is refused.
async fn assert_dump_cannot_mint(srv: &TestServer, row: &KeyRow, model: &str) {
    assert!(
        ed25519_dalek::SigningKey::from_pkcs8_der(&row.private_key).is_err(),
        "stored private_key of {} is a usable PKCS#8 key",
        row.kid
    );
    if let Some(forged) = forge(model, &row.kid, &row.private_key) {
        assert_token_refused(srv, &forged, "token signed with the stored (sealed) bytes").await;
    }
}

// ----- RotateSigningKey: who may call it -----------------------------------------------------------

#[tokio::test]
async fn rotate_signing_key_requires_admin() {
    let srv = TestServer::start().await;
    let before = jwks_kids(&srv).await;
    assert_eq!(before.len(), 1);

    expect_code(rotate(&srv, "").await, Code::Unauthenticated);
    expect_code(rotate(&srv, "not-a-jwt").await, Code::Unauthenticated);
    let (_, user) = srv.user_session().await;
    expect_code(
        rotate(&srv, &user.access_token).await,
        Code::PermissionDenied,
    );
    let moderator = session_with_role(&srv, DomainRole::Moderator).await;
    expect_code(
        rotate(&srv, &moderator.access_token).await,
        Code::PermissionDenied,
    );
    // None of the refused calls added a key.
    srv.svc.reload_keys().await.expect("reload");
    assert_eq!(jwks_kids(&srv).await, before);
    assert_eq!(key_rows(&srv.url).await.len(), 1);

    let admin = srv.admin_session().await;
    let r = rotate_ok(&srv, &admin.access_token).await;
    assert!(!before.contains(&r.kid));
    assert_eq!(key_rows(&srv.url).await.len(), 2);
}

// ----- rotation lifecycle ------------------------------------------------------------------------

#[tokio::test]
async fn rotation_publishes_first_signs_after_the_delay_and_retires_the_old_key() {
    let srv = TestServer::start().await;
    assert_eq!(
        srv.config.key_publish_delay,
        StdDuration::from_secs(PUBLISH_DELAY_SECS as u64),
        "the default publish delay is 15 minutes"
    );
    assert_eq!(
        srv.config.access_token_ttl,
        StdDuration::from_secs(ACCESS_TTL_SECS as u64)
    );
    let old_kid = {
        let kids = jwks_kids(&srv).await;
        assert_eq!(kids.len(), 1);
        kids.into_iter().next().expect("one kid")
    };
    let admin = srv.admin_session().await;
    let (user, before) = srv.user_session().await;
    assert_eq!(kid_of(&before.access_token), old_kid);

    // Rotate: a new kid, activating exactly one publish delay from now.
    let t = server_now(&srv.clock);
    let r = rotate_ok(&srv, &admin.access_token).await;
    let new_kid = r.kid.clone();
    assert!(!new_kid.is_empty());
    assert_ne!(new_kid, old_kid);
    let activate = to_datetime(r.activate_time.as_ref().expect("activate_time"));
    assert_eq!(activate, t + Duration::seconds(PUBLISH_DELAY_SECS));

    // Published at once, on this server, without waiting for a reload...
    assert_eq!(jwks_kids(&srv).await, set_of(&[&old_kid, &new_kid]));
    // ...but tokens are still signed with the old key, by Login and by Refresh.
    let during = srv.login(&user.email, PASSWORD).await;
    assert_eq!(kid_of(&during.access_token), old_kid);
    let refreshed = try_refresh(&srv, &before.refresh_token)
        .await
        .expect("refresh");
    assert_eq!(kid_of(&refreshed.access_token), old_kid);
    assert_token_works(&srv, &during.access_token, "token signed before activation").await;

    // The database agrees: the new key activates later, the old one is scheduled to retire once
    // the last token it can sign has expired.
    let rows = key_rows(&srv.url).await;
    assert_eq!(rows.len(), 2);
    let old_row = rows.iter().find(|k| k.kid == old_kid).expect("old row");
    let new_row = rows.iter().find(|k| k.kid == new_kid).expect("new row");
    let retire = activate + Duration::seconds(ACCESS_TTL_SECS + RETIRE_MARGIN_SECS);
    assert_eq!(new_row.activate_time, activate);
    assert_eq!(new_row.retire_time, None);
    assert_eq!(old_row.retire_time, Some(retire));
    assert_eq!(new_row.public_key.len(), 32);

    // One second before activation, even after a reload, the old key still signs.
    srv.clock.advance(Duration::seconds(PUBLISH_DELAY_SECS - 1));
    srv.svc.reload_keys().await.expect("reload");
    let last_old = srv.login(&user.email, PASSWORD).await;
    assert_eq!(kid_of(&last_old.access_token), old_kid);

    // Past the delay, after a reload, the new key signs.
    srv.clock.advance(Duration::seconds(2));
    srv.svc.reload_keys().await.expect("reload");
    let after = srv.login(&user.email, PASSWORD).await;
    assert_eq!(kid_of(&after.access_token), new_kid);
    let after_refresh = try_refresh(&srv, &during.refresh_token)
        .await
        .expect("refresh");
    assert_eq!(kid_of(&after_refresh.access_token), new_kid);
    assert_eq!(jwks_kids(&srv).await, set_of(&[&old_kid, &new_kid]));
    assert_token_works(&srv, &after.access_token, "token signed by the new key").await;
    // Tokens signed by the old key still verify while they live.
    assert_token_works(&srv, &before.access_token, "pre-rotation token").await;
    assert_token_works(&srv, &last_old.access_token, "last token of the old key").await;

    // Until the last old-key token expires, the old key stays (checked just before it expires).
    let last_old_exp = claims_of(&last_old.access_token)["exp"]
        .as_i64()
        .expect("exp");
    let now_s = srv.clock.now().timestamp();
    srv.clock
        .advance(Duration::seconds(last_old_exp - now_s - 5));
    srv.svc.reload_keys().await.expect("reload");
    assert_eq!(jwks_kids(&srv).await, set_of(&[&old_kid, &new_kid]));
    assert_token_works(
        &srv,
        &last_old.access_token,
        "old-key token near its expiry",
    )
    .await;
    assert!(
        last_old_exp < retire.timestamp(),
        "the old key retires only after its last token has expired"
    );

    // Just before the retire time the old key is still published...
    let to_retire = retire - server_now(&srv.clock);
    srv.clock.advance(to_retire - Duration::seconds(1));
    srv.svc.reload_keys().await.expect("reload");
    assert_eq!(jwks_kids(&srv).await, set_of(&[&old_kid, &new_kid]));
    // ...and after it, it is gone. Its tokens have expired anyway.
    srv.clock.advance(Duration::seconds(2));
    srv.svc.reload_keys().await.expect("reload");
    assert_eq!(jwks_kids(&srv).await, set_of(&[&new_kid]));
    assert_token_refused(
        &srv,
        &last_old.access_token,
        "old-key token after retirement",
    )
    .await;

    // The service keeps working with the new key alone.
    let (_, fresh) = srv.user_session().await;
    assert_eq!(kid_of(&fresh.access_token), new_kid);
    assert_token_works(&srv, &fresh.access_token, "token after retirement").await;
    let next = try_refresh(&srv, &after_refresh.refresh_token)
        .await
        .expect("refresh after retirement");
    assert_eq!(kid_of(&next.access_token), new_kid);
}

#[tokio::test]
async fn repeated_rotations_chain_signers_and_retire_each_key_in_turn() {
    let srv = TestServer::start().await;
    let k0 = jwks_kids(&srv)
        .await
        .into_iter()
        .next()
        .expect("initial kid");
    let admin = srv.admin_session().await;
    let (user, _) = srv.user_session().await;
    let email = user.email.clone();

    // Two rotations 60 s apart, the second before the first key has started signing.
    let t0 = server_now(&srv.clock);
    let k1 = rotate_ok(&srv, &admin.access_token).await.kid;
    srv.clock.advance(Duration::seconds(60));
    let k2 = rotate_ok(&srv, &admin.access_token).await.kid;
    assert_eq!(
        BTreeSet::from([k0.clone(), k1.clone(), k2.clone()]).len(),
        3,
        "every rotation makes a new kid"
    );
    assert_eq!(jwks_kids(&srv).await, set_of(&[&k0, &k1, &k2]));
    let tok0 = srv.login(&email, PASSWORD).await;
    assert_eq!(kid_of(&tok0.access_token), k0);

    // k1 signs from t0 + 900 s, k2 from t0 + 960 s.
    srv.clock
        .advance(Duration::seconds(PUBLISH_DELAY_SECS - 60 + 1));
    srv.svc.reload_keys().await.expect("reload");
    let tok1 = srv.login(&email, PASSWORD).await;
    assert_eq!(kid_of(&tok1.access_token), k1);
    srv.clock.advance(Duration::seconds(60));
    srv.svc.reload_keys().await.expect("reload");
    let tok2 = srv.login(&email, PASSWORD).await;
    assert_eq!(kid_of(&tok2.access_token), k2);
    assert_eq!(jwks_kids(&srv).await, set_of(&[&k0, &k1, &k2]));
    for (t, what) in [
        (&tok0, "k0 token"),
        (&tok1, "k1 token"),
        (&tok2, "k2 token"),
    ] {
        assert_token_works(&srv, &t.access_token, what).await;
    }

    // k0 retires at t0 + 900 + 900 + 60, k1 at t0 + 960 + 900 + 60.
    let k0_retire = t0 + Duration::seconds(PUBLISH_DELAY_SECS + ACCESS_TTL_SECS + 60);
    let k1_retire = k0_retire + Duration::seconds(60);
    let rows = key_rows(&srv.url).await;
    let retire_of = |kid: &str| rows.iter().find(|r| r.kid == kid).expect("row").retire_time;
    assert_eq!(retire_of(&k0), Some(k0_retire));
    assert_eq!(retire_of(&k1), Some(k1_retire));
    assert_eq!(retire_of(&k2), None);

    srv.clock
        .advance(k0_retire - server_now(&srv.clock) + Duration::seconds(1));
    srv.svc.reload_keys().await.expect("reload");
    assert_eq!(jwks_kids(&srv).await, set_of(&[&k1, &k2]));
    srv.clock.advance(Duration::seconds(60));
    srv.svc.reload_keys().await.expect("reload");
    assert_eq!(jwks_kids(&srv).await, set_of(&[&k2]));

    // A third rotation after all that behaves the same way.
    let admin = srv.admin_session().await;
    let k3 = rotate_ok(&srv, &admin.access_token).await.kid;
    assert_eq!(jwks_kids(&srv).await, set_of(&[&k2, &k3]));
    assert_eq!(kid_of(&srv.login(&email, PASSWORD).await.access_token), k2);
    srv.clock.advance(Duration::seconds(PUBLISH_DELAY_SECS + 1));
    srv.svc.reload_keys().await.expect("reload");
    let tok3 = srv.login(&email, PASSWORD).await;
    assert_eq!(kid_of(&tok3.access_token), k3);
    assert_token_works(&srv, &tok3.access_token, "k3 token").await;
}

#[tokio::test]
async fn the_publish_delay_is_configurable() {
    let srv = TestServer::start_with(|c| c.key_publish_delay = StdDuration::from_secs(30)).await;
    let admin = srv.admin_session().await;
    let (user, _) = srv.user_session().await;
    let t = server_now(&srv.clock);
    let r = rotate_ok(&srv, &admin.access_token).await;
    assert_eq!(
        to_datetime(r.activate_time.as_ref().expect("activate_time")),
        t + Duration::seconds(30)
    );
    assert_ne!(
        kid_of(&srv.login(&user.email, PASSWORD).await.access_token),
        r.kid
    );
    srv.clock.advance(Duration::seconds(31));
    srv.svc.reload_keys().await.expect("reload");
    assert_eq!(
        kid_of(&srv.login(&user.email, PASSWORD).await.access_token),
        r.kid
    );
}

// ----- replicas ----------------------------------------------------------------------------------

#[tokio::test]
async fn replicas_pick_up_a_rotation_within_seconds() {
    let srv1 = TestServer::start().await;
    let srv2 = TestServer::start_on(srv1.config.clone(), srv1.clock.clone()).await;
    let old_kid = {
        let kids = jwks_kids(&srv1).await;
        assert_eq!(kids, jwks_kids(&srv2).await, "replicas share the key");
        kids.into_iter().next().expect("kid")
    };
    let admin = srv1.admin_session().await;
    let (user, before) = srv1.user_session().await;

    let r = rotate_ok(&srv1, &admin.access_token).await;
    let new_kid = r.kid;
    assert_eq!(jwks_kids(&srv1).await, set_of(&[&old_kid, &new_kid]));

    // Server 2 publishes the new key within seconds, by itself (its reload loop).
    wait_until(
        "server 2 publishes the new kid",
        StdDuration::from_secs(5),
        || async { jwks_kids(&srv2).await.contains(&new_kid) },
    )
    .await;
    assert_eq!(jwks_kids(&srv2).await, set_of(&[&old_kid, &new_kid]));
    // Before the delay, both still sign with the old key.
    assert_eq!(
        kid_of(&srv2.login(&user.email, PASSWORD).await.access_token),
        old_kid
    );

    // After the delay, both sign with the new key within seconds, without a manual reload.
    srv1.clock
        .advance(Duration::seconds(PUBLISH_DELAY_SECS + 1));
    for (srv, name) in [(&srv1, "server 1"), (&srv2, "server 2")] {
        wait_until(
            &format!("{name} signs with the new key"),
            StdDuration::from_secs(5),
            || async { kid_of(&srv.login(&user.email, PASSWORD).await.access_token) == new_kid },
        )
        .await;
    }

    // Tokens issued by either replica validate on the other, old and new keys alike.
    let from1 = srv1.login(&user.email, PASSWORD).await;
    let from2 = srv2.login(&user.email, PASSWORD).await;
    assert_eq!(kid_of(&from1.access_token), new_kid);
    assert_eq!(kid_of(&from2.access_token), new_kid);
    assert_token_works(&srv2, &from1.access_token, "server 1 token on server 2").await;
    assert_token_works(&srv1, &from2.access_token, "server 2 token on server 1").await;
    assert_token_works(
        &srv2,
        &before.access_token,
        "pre-rotation token on server 2",
    )
    .await;
    assert_token_works(
        &srv1,
        &before.access_token,
        "pre-rotation token on server 1",
    )
    .await;
    // A refresh token from one replica rotates on the other.
    let next = try_refresh(&srv2, &from1.refresh_token)
        .await
        .expect("refresh on the other replica");
    assert_eq!(kid_of(&next.access_token), new_kid);
    assert_token_works(&srv1, &next.access_token, "refreshed on 2, checked on 1").await;

    srv2.stop().await;
    srv1.stop().await;
}

// ----- CLI ---------------------------------------------------------------------------------------

/// `authd signing-keys rotate` against `url`, with a clean environment for authd's variables.
async fn cli_rotate(url: &str, master_key: Option<&str>) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_authd"));
    cmd.args(["signing-keys", "rotate"])
        .env("DATABASE_URL", url)
        .env("AUTHD_BCRYPT_COST", "4")
        .env("AUTHD_LOG", "warn")
        .env_remove("AUTHD_BOOTSTRAP_ADMIN_EMAIL")
        .env_remove("AUTHD_BOOTSTRAP_ADMIN_PASSWORD")
        .env_remove("AUTHD_MASTER_KEY")
        .env_remove("AUTHD_KEY_PUBLISH_DELAY")
        .kill_on_drop(true);
    if let Some(k) = master_key {
        cmd.env("AUTHD_MASTER_KEY", k);
    }
    tokio::time::timeout(StdDuration::from_secs(60), cmd.output())
        .await
        .expect("the CLI finishes within a minute")
        .expect("run authd")
}

fn cli_kid(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "authd signing-keys rotate failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout.clone()).expect("utf-8 stdout");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is exactly the kid: {stdout:?}");
    let kid = lines[0].trim().to_owned();
    assert_eq!(URL_SAFE_NO_PAD.decode(&kid).map(|b| b.len()).ok(), Some(32));
    kid
}

#[tokio::test]
async fn cli_rotate_prints_the_new_kid_and_servers_publish_it() {
    // On a database no server has used yet: the CLI creates the first key, then rotates.
    let url = fresh_database().await;
    let kid = cli_kid(&cli_rotate(&url, None).await);
    let rows = key_rows(&url).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().any(|r| r.kid == kid && r.retire_time.is_none()));

    let clock = Arc::new(ManualClock::new(Utc::now()));
    let srv = TestServer::start_on(test_config(&url), clock.clone()).await;
    let kids = jwks_kids(&srv).await;
    assert!(kids.contains(&kid), "{kids:?}");
    assert_eq!(kids.len(), 2);
    let (user, pair) = srv.user_session().await;
    assert_ne!(
        kid_of(&pair.access_token),
        kid,
        "not signing before the delay"
    );

    // While the server runs: it publishes a CLI rotation within seconds.
    let kid2 = cli_kid(&cli_rotate(&url, None).await);
    assert_ne!(kid2, kid);
    wait_until(
        "the running server publishes the CLI's key",
        StdDuration::from_secs(5),
        || async { jwks_kids(&srv).await.contains(&kid2) },
    )
    .await;
    // After the delay it signs with it (the CLI used the wall clock, so go by the stored time).
    let activate = key_rows(&url)
        .await
        .into_iter()
        .find(|r| r.kid == kid2)
        .expect("row of the CLI's key")
        .activate_time;
    let now = clock.now();
    assert!(activate > now + Duration::seconds(PUBLISH_DELAY_SECS - 60));
    // A token of the old key from just before the switch (the publish delay, 15 min, is as long
    // as a token's life, so `pair` has expired by then).
    clock.advance(activate - now - Duration::seconds(60));
    srv.svc.reload_keys().await.expect("reload");
    let before = srv.login(&user.email, PASSWORD).await;
    assert_ne!(kid_of(&before.access_token), kid2);
    clock.advance(Duration::seconds(61));
    srv.svc.reload_keys().await.expect("reload");
    let after = srv.login(&user.email, PASSWORD).await;
    assert_eq!(kid_of(&after.access_token), kid2);
    assert_token_works(&srv, &after.access_token, "token signed by the CLI's key").await;
    assert_token_works(&srv, &before.access_token, "token from before").await;
    srv.stop().await;
}

#[tokio::test]
async fn cli_rotate_honours_the_master_key() {
    let (master, master_bytes) = new_master_key();
    let srv = TestServer::start_with(|c| c.master_key = Some(master.clone().into())).await;
    let url = srv.url.clone();

    // Without the master key the CLI cannot use an encrypted database, and says why.
    let out = cli_rotate(&url, None).await;
    assert!(
        !out.status.success(),
        "CLI must fail without the master key"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AUTHD_MASTER_KEY"), "{stderr}");
    assert_eq!(key_rows(&url).await.len(), 1, "no key was added");

    // With it, the new key is stored sealed and the server publishes it.
    let kid = cli_kid(&cli_rotate(&url, Some(&master)).await);
    let rows = key_rows(&url).await;
    let row = rows.iter().find(|r| r.kid == kid).expect("new row");
    assert!(row.encrypted);
    let plain = open_sealed(
        &master_bytes,
        &row.private_key,
        &format!("signing_key:{kid}"),
    );
    assert!(ed25519_dalek::SigningKey::from_pkcs8_der(&plain).is_ok());
    wait_until(
        "the server publishes the CLI's key",
        StdDuration::from_secs(5),
        || async { jwks_kids(&srv).await.contains(&kid) },
    )
    .await;
}

// ----- encryption at rest ------------------------------------------------------------------------

#[tokio::test]
async fn with_a_master_key_key_material_is_sealed_and_a_dump_cannot_mint_tokens() {
    let (master, master_bytes) = new_master_key();
    let srv = TestServer::start_with(|c| c.master_key = Some(master.clone().into())).await;

    // The server works normally.
    let (user, pair) = srv.user_session().await;
    assert_token_works(&srv, &pair.access_token, "token under a master key").await;
    let next = try_refresh(&srv, &pair.refresh_token)
        .await
        .expect("refresh");
    assert_token_works(&srv, &next.access_token, "refreshed token").await;
    // A rotated key is sealed too.
    let admin = srv.admin_session().await;
    let rotated = rotate_ok(&srv, &admin.access_token).await.kid;

    let keys = key_rows(&srv.url).await;
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().any(|k| k.kid == rotated));
    // Refresh-token successors need no server secret since issue F (they are random); any secret
    // stored must be sealed all the same.
    let secrets = secret_rows(&srv.url).await;
    for s in &secrets {
        assert!(s.encrypted, "server secret {} is not sealed", s.name);
        let plain = open_sealed(
            &master_bytes,
            &s.value,
            &format!("server_secret:{}", s.name),
        );
        assert_ne!(plain, s.value);
    }

    let dump = dump_database(&srv.url).await;
    let jwks = srv
        .auth()
        .await
        .get_jwks(proto::GetJwksRequest {})
        .await
        .expect("jwks")
        .into_inner()
        .keys;
    for row in &keys {
        assert!(row.encrypted, "signing key {} is not sealed", row.kid);
        // The dump's bytes are useless for signing...
        assert_dump_cannot_mint(&srv, row, &next.access_token).await;
        // ...while the same row, opened with the master key, is the real published key: the
        // forgery procedure is sound and only the encryption stops it.
        let plain = open_sealed(
            &master_bytes,
            &row.private_key,
            &format!("signing_key:{}", row.kid),
        );
        let sk = ed25519_dalek::SigningKey::from_pkcs8_der(&plain).expect("PKCS#8 inside the box");
        let published = jwks.iter().find(|k| k.kid == row.kid).expect("published");
        assert_eq!(
            URL_SAFE_NO_PAD.encode(sk.verifying_key().to_bytes()),
            published.x
        );
        // Neither the seed nor the PKCS#8 encoding appears anywhere in the database.
        assert!(
            !dump.contains(&hex(sk.as_bytes())),
            "seed of {} in the dump",
            row.kid
        );
        assert!(
            !dump.contains(&hex(&plain)),
            "PKCS#8 of {} in the dump",
            row.kid
        );
    }
    // Control: with the opened key a token IS accepted (once that key signs, i.e. the initial one).
    let signer = kid_of(&next.access_token);
    let row = keys.iter().find(|k| k.kid == signer).expect("signing row");
    let plain = open_sealed(
        &master_bytes,
        &row.private_key,
        &format!("signing_key:{signer}"),
    );
    let forged = forge(&next.access_token, &signer, &plain).expect("sign with the opened key");
    assert_token_works(
        &srv,
        &forged,
        "control: token signed with the decrypted key",
    )
    .await;

    // The master key itself is nowhere in the database.
    assert!(!dump.contains(&master));
    assert!(!dump.contains(&hex(&master_bytes)));

    // Restart with the same master key: old tokens, refresh tokens and logins all keep working.
    let config = srv.config.clone();
    let clock = srv.clock.clone();
    srv.stop().await;
    let srv = TestServer::start_on(config, clock).await;
    assert_token_works(&srv, &next.access_token, "token after restart").await;
    let again = try_refresh(&srv, &next.refresh_token)
        .await
        .expect("refresh after restart");
    assert_token_works(&srv, &again.access_token, "refreshed after restart").await;
    srv.login(&user.email, PASSWORD).await;
    assert!(key_rows(&srv.url).await.iter().all(|k| k.encrypted));
}

/// `start_service` on `config`, which must fail; returns the error text.
async fn start_fails(config: authd::config::Config) -> String {
    let url = config.database_url().expect("url").to_owned();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    match authd::server::start_service(Arc::new(config), &url, clock).await {
        Ok(svc) => {
            svc.pool().close();
            panic!("start_service succeeded but should have failed");
        }
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn an_encrypted_database_needs_the_right_master_key() {
    let (master, _) = new_master_key();
    let srv = TestServer::start_with(|c| c.master_key = Some(master.clone().into())).await;
    let (_, pair) = srv.user_session().await;
    let config = srv.config.clone();
    let clock = srv.clock.clone();
    srv.stop().await;
    let rows_before = key_rows(config.database_url().expect("url")).await;

    // No master key: start-up fails and names the variable.
    let mut none = config.clone();
    none.master_key = None;
    let err = start_fails(none).await;
    assert!(err.contains("AUTHD_MASTER_KEY"), "{err}");

    // A different (well-formed) master key: start-up fails clearly.
    let mut wrong = config.clone();
    wrong.master_key = Some(new_master_key().0.into());
    let err = start_fails(wrong).await;
    assert!(err.contains("AUTHD_MASTER_KEY"), "{err}");
    assert!(err.contains("decrypt"), "{err}");

    // The failed starts changed nothing.
    let url = config.database_url().expect("url").to_owned();
    let rows_after = key_rows(&url).await;
    assert_eq!(
        rows_before
            .iter()
            .map(|r| &r.private_key)
            .collect::<Vec<_>>(),
        rows_after
            .iter()
            .map(|r| &r.private_key)
            .collect::<Vec<_>>()
    );

    // The right key (written in hex this time) still works, and so do the old tokens.
    let mut hex_config = config.clone();
    let b64 = master.clone();
    hex_config.master_key = Some(hex(&STANDARD.decode(b64).expect("b64")).into());
    let srv = TestServer::start_on(hex_config, clock).await;
    assert_token_works(&srv, &pair.access_token, "token after a hex-key restart").await;
    try_refresh(&srv, &pair.refresh_token)
        .await
        .expect("refresh after restart");
}

#[tokio::test]
async fn setting_a_master_key_later_seals_plaintext_rows_in_place() {
    let srv = TestServer::start().await;
    let url = srv.url.clone();
    let (user, pair) = srv.user_session().await;
    let admin = srv.admin_session().await;
    rotate_ok(&srv, &admin.access_token).await;

    let plain_keys = key_rows(&url).await;
    let plain_secrets = secret_rows(&url).await;
    assert_eq!(plain_keys.len(), 2);
    assert!(plain_keys.iter().all(|k| !k.encrypted));
    assert!(plain_secrets.iter().all(|s| !s.encrypted));
    // Without a master key a dump can mint tokens: this is what the master key is for.
    let signer = kid_of(&pair.access_token);
    let signer_row = plain_keys.iter().find(|k| k.kid == signer).expect("row");
    assert!(ed25519_dalek::SigningKey::from_pkcs8_der(&signer_row.private_key).is_ok());
    let forged = forge(&pair.access_token, &signer, &signer_row.private_key).expect("forge");
    assert_token_works(&srv, &forged, "control: minted from a plaintext dump").await;

    let mut config = srv.config.clone();
    let clock = srv.clock.clone();
    srv.stop().await;

    let (master, master_bytes) = new_master_key();
    config.master_key = Some(master.into());
    let srv = TestServer::start_on(config.clone(), clock.clone()).await;

    let sealed_keys = key_rows(&url).await;
    let sealed_secrets = secret_rows(&url).await;
    assert_eq!(sealed_keys.len(), plain_keys.len());
    assert_eq!(sealed_secrets.len(), plain_secrets.len());
    for (before, after) in plain_keys.iter().zip(&sealed_keys) {
        assert_eq!(before.kid, after.kid);
        assert!(after.encrypted, "key {} not sealed in place", after.kid);
        assert_ne!(after.private_key, before.private_key);
        assert_eq!(after.public_key, before.public_key);
        let opened = open_sealed(
            &master_bytes,
            &after.private_key,
            &format!("signing_key:{}", after.kid),
        );
        assert_eq!(opened, before.private_key, "sealing kept the key");
        assert_dump_cannot_mint(&srv, after, &pair.access_token).await;
    }
    for (before, after) in plain_secrets.iter().zip(&sealed_secrets) {
        assert_eq!(before.name, after.name);
        assert!(after.encrypted, "secret {} not sealed in place", after.name);
        assert_ne!(after.value, before.value);
        let opened = open_sealed(
            &master_bytes,
            &after.value,
            &format!("server_secret:{}", after.name),
        );
        assert_eq!(opened, before.value, "sealing kept the secret");
    }

    // Everything issued before still works.
    assert_token_works(&srv, &pair.access_token, "token issued before sealing").await;
    let next = try_refresh(&srv, &pair.refresh_token)
        .await
        .expect("refresh token issued before sealing");
    assert_token_works(&srv, &next.access_token, "refreshed after sealing").await;
    srv.login(&user.email, PASSWORD).await;

    // And from now on the database needs the key.
    srv.stop().await;
    let mut none = config.clone();
    none.master_key = None;
    let err = start_fails(none).await;
    assert!(err.contains("AUTHD_MASTER_KEY"), "{err}");
    // A second start with the key finds everything sealed and changes nothing.
    let srv = TestServer::start_on(config, clock).await;
    let again = key_rows(&url).await;
    assert_eq!(
        again.iter().map(|k| &k.private_key).collect::<Vec<_>>(),
        sealed_keys
            .iter()
            .map(|k| &k.private_key)
            .collect::<Vec<_>>()
    );
    assert_token_works(&srv, &next.access_token, "token after the second restart").await;
}

#[tokio::test]
async fn a_malformed_master_key_stops_start_up() {
    let url = fresh_database().await;
    let bad = [
        "short".to_owned(),
        "not base64 at all!!".to_owned(),
        "*".repeat(44),
        // 31 and 33 bytes.
        STANDARD.encode([7u8; 31]),
        STANDARD.encode([7u8; 33]),
        // 63 and 65 hex digits.
        "0".repeat(63),
        "a".repeat(65),
        // 64 characters, not all hex.
        format!("{}zz", "0".repeat(62)),
        " ".to_owned(),
    ];
    for key in bad {
        let mut c = test_config(&url);
        c.master_key = Some(key.clone().into());
        let err = start_fails(c).await;
        assert!(
            err.contains("AUTHD_MASTER_KEY"),
            "master key {key:?}: unclear error {err}"
        );
        assert!(
            !err.contains(&key) || key.len() < 8,
            "the error echoes the key: {err}"
        );
    }
    // Nothing was written by the failed starts.
    assert!(key_rows(&url).await.is_empty());
    assert!(secret_rows(&url).await.is_empty());

    // Every documented encoding of 32 bytes works.
    let bytes = [0x5au8; 32];
    for key in [
        hex(&bytes),
        hex(&bytes).to_uppercase(),
        STANDARD.encode(bytes),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes),
        base64::engine::general_purpose::URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
    ] {
        let url = fresh_database().await;
        let mut c = test_config(&url);
        c.master_key = Some(key.clone().into());
        let svc =
            authd::server::start_service(Arc::new(c), &url, Arc::new(ManualClock::new(Utc::now())))
                .await
                .unwrap_or_else(|e| panic!("master key {key:?} refused: {e}"));
        svc.pool().close();
        assert!(key_rows(&url).await.iter().all(|k| k.encrypted));
    }
}
