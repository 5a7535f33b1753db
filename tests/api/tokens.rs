//! Access-token validation, tampering, JWKS, service keys, health, restart.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use authd::clock::{Clock, ManualClock};
use authd::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use authd::proto;
use authd::server::REFLECTED_SERVICES;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{Duration, Utc};
use diesel_async::RunQueryDsl;
use ed25519_dalek::Signer;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use hmac::Mac;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use authd_testkit::*;

// ----- helpers -----------------------------------------------------------------------------------

/// What ValidateToken must answer for anything that is not a live access token: `valid=false` and
/// every other field empty.
fn not_valid() -> proto::ValidateTokenResponse {
    proto::ValidateTokenResponse {
        valid: false,
        ..Default::default()
    }
}

/// ValidateToken with `x-api-key: key` (or no key at all).
async fn validate_raw(
    srv: &TestServer,
    key: Option<&str>,
    token: &str,
) -> Result<proto::ValidateTokenResponse, Status> {
    let msg = proto::ValidateTokenRequest {
        access_token: token.into(),
    };
    let req = match key {
        Some(k) => with_key(msg, k),
        None => Request::new(msg),
    };
    srv.auth()
        .await
        .validate_token(req)
        .await
        .map(|r| r.into_inner())
}

/// ValidateToken that must answer OK.
async fn validate_ok(srv: &TestServer, key: &str, token: &str) -> proto::ValidateTokenResponse {
    match validate_raw(srv, Some(key), token).await {
        Ok(v) => v,
        Err(s) => panic!("ValidateToken failed: {s:?}"),
    }
}

/// Asserts UNAUTHENTICATED with the given `ErrorInfo.reason`.
#[track_caller]
fn expect_unauthenticated<T: std::fmt::Debug>(result: Result<T, Status>, want_reason: &str) {
    let status = expect_code(result, Code::Unauthenticated);
    assert_eq!(
        reason(&status).as_deref(),
        Some(want_reason),
        "wrong reason in {status:?}"
    );
}

async fn register_named(srv: &TestServer, email: &str, username: &str) -> proto::User {
    srv.auth()
        .await
        .register(proto::RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
            username: username.into(),
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
        })
        .await
        .expect("register")
        .into_inner()
        .user
        .expect("user in RegisterResponse")
}

async fn health(srv: &TestServer, service: &str) -> Result<i32, Status> {
    srv.health()
        .await
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[derive(diesel::QueryableByName)]
struct BytesRow {
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    b: Vec<u8>,
}

/// Every row of every table of the database, as JSON text (bytea shows as `\x<hex>`).
async fn dump_database(url: &str) -> Vec<String> {
    let mut conn = connect_db(url).await;
    let tables: Vec<TextRow> = diesel::sql_query(
        "SELECT table_name::text AS t FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .load(&mut conn)
    .await
    .expect("list tables");
    assert!(tables.iter().any(|t| t.t == "refresh_tokens"));
    let mut rows = Vec::new();
    for table in tables {
        let r: Vec<TextRow> = diesel::sql_query(format!(
            "SELECT row_to_json(x)::text AS t FROM \"{}\" x",
            table.t
        ))
        .load(&mut conn)
        .await
        .expect("dump table");
        rows.extend(r.into_iter().map(|r| format!("{}: {}", table.t, r.t)));
    }
    rows
}

/// Asserts that `secret` appears nowhere in the database, neither as text nor as raw bytes.
fn assert_not_stored(dump: &[String], secret: &str) {
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let body = secret.split_once('_').map_or(secret, |(_, b)| b);
    for row in dump {
        assert!(!row.contains(secret), "secret stored in clear: {row}");
        assert!(!row.contains(body), "secret body stored in clear: {row}");
        assert!(!row.contains(&hex), "secret stored as raw bytes: {row}");
    }
}

// ----- JWT construction --------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_json(v: &Value) -> String {
    b64(&serde_json::to_vec(v).expect("json"))
}

fn unb64_json(s: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD.decode(s).expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}

/// Header, claims and signature (still encoded) of a compact JWS.
fn split_jwt(token: &str) -> (Value, Value, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    (
        unb64_json(parts[0]),
        unb64_json(parts[1]),
        parts[2].to_owned(),
    )
}

/// A JWS signed with Ed25519 over exactly this header and these claims.
fn sign_eddsa(header: &Value, claims: &Value, key: &ed25519_dalek::SigningKey) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

/// A JWS "signed" with HMAC-SHA256 under `secret`.
fn sign_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(secret).expect("hmac key");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

fn new_signing_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng)
}

/// A server that trusts (but does not sign with) a key pair the test holds, plus a user session.
struct Forge {
    srv: TestServer,
    key: ed25519_dalek::SigningKey,
    kid: String,
    user: proto::User,
    pair: proto::LoginResponse,
    svc_key: String,
}

impl Forge {
    async fn new() -> Self {
        let url = fresh_database().await;
        let config = test_config(&url);
        let clock = Arc::new(ManualClock::new(Utc::now()));
        // The first start generates the server's own signing key.
        TestServer::start_on(config.clone(), clock.clone())
            .await
            .stop()
            .await;
        // Then our key: published and trusted for verification, but older, so it does not sign.
        let key = new_signing_key();
        let kid = format!("test-{}", uuid::Uuid::new_v4().simple());
        let der = key.to_pkcs8_der().expect("pkcs8");
        let public = key.verifying_key().to_bytes();
        let when = clock.now() - Duration::days(1);
        insert_signing_key(
            &mut connect_db(&url).await,
            &kid,
            der.as_bytes(),
            &public,
            when,
        )
        .await;

        let srv = TestServer::start_on(config, clock).await;
        let email = unique_email();
        let user = register_named(&srv, &email, &unique_username()).await;
        let pair = srv.login(&email, PASSWORD).await;
        let svc_key = srv.service_key().await;
        Forge {
            srv,
            key,
            kid,
            user,
            pair,
            svc_key,
        }
    }

    fn header(&self) -> Value {
        json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": self.kid })
    }

    /// Claims exactly like the server's, for the fixture's user and session.
    fn claims(&self) -> Value {
        let now = self.srv.clock.now().timestamp();
        json!({
            "iss": "authd",
            "aud": "authd",
            "sub": self.user.id,
            "exp": now + 600,
            "iat": now,
            "nbf": now,
            "jti": uuid::Uuid::new_v4().to_string(),
            "client_id": "authd",
            "sid": self.pair.session_id,
            "role": "user",
            "email": self.user.email,
            "preferred_username": self.user.username,
        })
    }

    fn mint(&self, header: &Value, claims: &Value) -> String {
        sign_eddsa(header, claims, &self.key)
    }

    fn with_claim(&self, name: &str, value: Value) -> String {
        let mut c = self.claims();
        c[name] = value;
        self.mint(&self.header(), &c)
    }

    fn without_claim(&self, name: &str) -> String {
        let mut c = self.claims();
        c.as_object_mut().expect("object").remove(name);
        self.mint(&self.header(), &c)
    }

    fn with_header(&self, name: &str, value: Value) -> String {
        let mut h = self.header();
        h[name] = value;
        self.mint(&h, &self.claims())
    }

    fn without_header(&self, name: &str) -> String {
        let mut h = self.header();
        h.as_object_mut().expect("object").remove(name);
        self.mint(&h, &self.claims())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// ValidateToken: OK, valid=false. Bearer: TOKEN_INVALID.
    Invalid,
    /// ValidateToken: OK, valid=false. Bearer: TOKEN_EXPIRED.
    Expired,
    /// ValidateToken: INVALID_ARGUMENT (over the size limit). Bearer: TOKEN_INVALID.
    TooLarge,
}

// ----- ValidateToken: the caller's service key and input checks ----------------------------------

#[tokio::test]
async fn validate_token_requires_a_service_key() {
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    let key = srv.service_key().await;
    assert!(validate_ok(&srv, &key, &pair.access_token).await.valid);

    // Missing key.
    expect_code(
        validate_raw(&srv, None, &pair.access_token).await,
        Code::Unauthenticated,
    );
    // Blank key.
    expect_code(
        validate_raw(&srv, Some("   "), &pair.access_token).await,
        Code::Unauthenticated,
    );
    // Wrong key, with and without the prefix of real keys.
    expect_code(
        validate_raw(&srv, Some("sk_not-a-real-key"), &pair.access_token).await,
        Code::Unauthenticated,
    );
    expect_code(
        validate_raw(&srv, Some("wrong"), &pair.access_token).await,
        Code::Unauthenticated,
    );
    // A near miss: the real key with one character changed.
    let mut near = key.clone();
    let last = near.pop().expect("non-empty key");
    near.push(if last == 'A' { 'B' } else { 'A' });
    expect_code(
        validate_raw(&srv, Some(&near), &pair.access_token).await,
        Code::Unauthenticated,
    );
    // A user's access token is not a service key.
    expect_code(
        validate_raw(&srv, Some(&pair.access_token), &pair.access_token).await,
        Code::Unauthenticated,
    );

    // A revoked key.
    let admin = srv.admin_session().await;
    let created = try_create_service_key(&srv, &admin.access_token, "soon revoked")
        .await
        .expect("create service key");
    assert!(
        validate_ok(&srv, &created.key, &pair.access_token)
            .await
            .valid
    );
    srv.auth()
        .await
        .revoke_service_key(with_bearer(
            proto::RevokeServiceKeyRequest {
                id: created.id.clone(),
            },
            &admin.access_token,
        ))
        .await
        .expect("revoke service key");
    expect_code(
        validate_raw(&srv, Some(&created.key), &pair.access_token).await,
        Code::Unauthenticated,
    );
    // Other keys are unaffected.
    assert!(validate_ok(&srv, &key, &pair.access_token).await.valid);

    // The caller is authenticated before the input is validated.
    expect_code(validate_raw(&srv, None, "").await, Code::Unauthenticated);
    expect_code(
        validate_raw(&srv, Some("wrong"), "").await,
        Code::Unauthenticated,
    );
    expect_code(
        validate_raw(&srv, None, &"a".repeat(10 * 1024)).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn validate_token_rejects_empty_and_oversized_tokens() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    expect_code(
        validate_raw(&srv, Some(&key), "").await,
        Code::InvalidArgument,
    );
    expect_code(
        validate_raw(&srv, Some(&key), "   ").await,
        Code::InvalidArgument,
    );
    expect_code(
        validate_raw(&srv, Some(&key), &"a".repeat(10 * 1024)).await,
        Code::InvalidArgument,
    );
    // 10 KiB that looks like a JWT.
    let (_, pair) = srv.user_session().await;
    let padded = format!("{}{}", pair.access_token, "A".repeat(10 * 1024));
    expect_code(
        validate_raw(&srv, Some(&key), &padded).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn validate_token_without_key_when_not_required() {
    let srv = TestServer::start_with(|c| c.validate_require_key = false).await;
    let (user, pair) = srv.user_session().await;
    let v = validate_raw(&srv, None, &pair.access_token)
        .await
        .expect("no key needed");
    assert!(v.valid);
    assert_eq!(v.user_id, user.id);
    assert_eq!(
        validate_raw(&srv, None, "garbage").await.expect("OK"),
        not_valid()
    );
    expect_code(validate_raw(&srv, None, "").await, Code::InvalidArgument);
}

#[tokio::test]
async fn validate_token_returns_every_field_of_a_valid_token() {
    let srv = TestServer::start().await;
    let email = unique_email();
    let username = unique_username();
    let user = register_named(&srv, &email, &username).await;
    let issued_at = srv.clock.now().timestamp();
    let pair = srv.login(&email, PASSWORD).await;
    let key = srv.service_key().await;

    let v = validate_ok(&srv, &key, &pair.access_token).await;
    let expected = proto::ValidateTokenResponse {
        valid: true,
        user_id: user.id.clone(),
        email: email.clone(),
        username: username.clone(),
        role: proto::Role::User as i32,
        session_id: pair.session_id.clone(),
        expire_time: Some(prost_types::Timestamp {
            seconds: issued_at + 900,
            nanos: 0,
        }),
        issue_time: Some(prost_types::Timestamp {
            seconds: issued_at,
            nanos: 0,
        }),
        amr: vec!["pwd".into()],
    };
    assert_eq!(v, expected);
    assert_eq!(v.role(), proto::Role::User);
    assert_eq!(pair.expires_in, 900);

    // The same answer as the token's own claims.
    let (_, claims, _) = split_jwt(&pair.access_token);
    assert_eq!(claims["sub"], json!(user.id));
    assert_eq!(claims["sid"], json!(pair.session_id));
    assert_eq!(claims["iat"], json!(issued_at));
    assert_eq!(claims["exp"], json!(issued_at + 900));

    // A user without a username gets an empty one.
    let (plain, plain_pair) = srv.user_session().await;
    let v = validate_ok(&srv, &key, &plain_pair.access_token).await;
    assert!(v.valid);
    assert_eq!(v.user_id, plain.id);
    assert_eq!(v.username, "");
    assert_eq!(v.email, plain.email);
    assert_ne!(v.session_id, pair.session_id);

    // The role is the enum, for every role.
    for (db_role, want) in [
        ("moderator", proto::Role::Moderator),
        ("admin", proto::Role::Admin),
    ] {
        diesel::sql_query("UPDATE users SET role = $1 WHERE id = $2")
            .bind::<diesel::sql_types::Text, _>(db_role)
            .bind::<diesel::sql_types::Uuid, _>(uuid::Uuid::parse_str(&plain.id).expect("uuid"))
            .execute(&mut connect_db(&srv.url).await)
            .await
            .expect("set role");
        let p = srv.login(&plain.email, PASSWORD).await;
        let v = validate_ok(&srv, &key, &p.access_token).await;
        assert_eq!(v.role(), want);
        let (_, claims, _) = split_jwt(&p.access_token);
        assert_eq!(claims["role"], json!(db_role));
    }

    // Leading and trailing whitespace is tolerated.
    let v = validate_ok(&srv, &key, &format!("  {}  ", pair.access_token)).await;
    assert!(v.valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_token_under_concurrent_use_of_one_key() {
    let srv = Arc::new(TestServer::start().await);
    let (user, pair) = srv.user_session().await;
    let key = srv.service_key().await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let srv = srv.clone();
        let key = key.clone();
        let token = if i % 3 == 0 {
            "garbage".to_owned()
        } else {
            pair.access_token.clone()
        };
        tasks.push(tokio::spawn(async move {
            (i, validate_raw(&srv, Some(&key), &token).await)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.expect("task");
        let v = r.expect("ValidateToken under concurrency");
        if i % 3 == 0 {
            assert_eq!(v, not_valid());
        } else {
            assert!(v.valid);
            assert_eq!(v.user_id, user.id);
        }
    }
}

// ----- revocation seen by ValidateToken -----------------------------------------------------------

#[tokio::test]
async fn logout_by_refresh_token_invalidates_the_access_token() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let (_, pair) = srv.user_session().await;
    let (_, other) = srv.user_session().await;
    assert!(validate_ok(&srv, &key, &pair.access_token).await.valid);

    srv.auth()
        .await
        .logout(proto::LogoutRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .expect("logout by refresh token, without a bearer");

    assert_eq!(
        validate_ok(&srv, &key, &pair.access_token).await,
        not_valid()
    );
    expect_unauthenticated(get_me(&srv, &pair.access_token).await, "TOKEN_INVALID");
    expect_code(
        try_refresh(&srv, &pair.refresh_token).await,
        Code::Unauthenticated,
    );
    // Someone else's session is untouched.
    assert!(validate_ok(&srv, &key, &other.access_token).await.valid);
}

#[tokio::test]
async fn logout_by_bearer_invalidates_the_access_token() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let pair = srv.login(&email, PASSWORD).await;
    let second = srv.login(&email, PASSWORD).await;

    srv.auth()
        .await
        .logout(with_bearer(
            proto::LogoutRequest::default(),
            &pair.access_token,
        ))
        .await
        .expect("logout by bearer");

    assert_eq!(
        validate_ok(&srv, &key, &pair.access_token).await,
        not_valid()
    );
    expect_unauthenticated(get_me(&srv, &pair.access_token).await, "TOKEN_INVALID");
    // Only the bearer's session: the same user's other session lives on.
    let v = validate_ok(&srv, &key, &second.access_token).await;
    assert!(v.valid);
    assert_eq!(v.session_id, second.session_id);
}

#[tokio::test]
async fn logout_all_invalidates_every_session_of_the_caller() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let a = srv.login(&email, PASSWORD).await;
    let b = srv.login(&email, PASSWORD).await;
    let c = srv.login(&email, PASSWORD).await;
    let (_, other) = srv.user_session().await;

    let resp = srv
        .auth()
        .await
        .logout_all(with_bearer(proto::LogoutAllRequest {}, &b.access_token))
        .await
        .expect("logout all")
        .into_inner();
    assert_eq!(resp.revoked_sessions, 3);

    for pair in [&a, &b, &c] {
        assert_eq!(
            validate_ok(&srv, &key, &pair.access_token).await,
            not_valid()
        );
        expect_unauthenticated(get_me(&srv, &pair.access_token).await, "TOKEN_INVALID");
    }
    assert!(validate_ok(&srv, &key, &other.access_token).await.valid);
}

#[tokio::test]
async fn refresh_reuse_invalidates_the_sessions_access_tokens() {
    let srv = TestServer::start_with(|c| c.refresh_reuse_grace = StdDuration::ZERO).await;
    let key = srv.service_key().await;
    let (_, first) = srv.user_session().await;
    let second = try_refresh(&srv, &first.refresh_token)
        .await
        .expect("first rotation");
    assert_eq!(second.session_id, first.session_id);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert!(validate_ok(&srv, &key, &second.access_token).await.valid);
    assert!(validate_ok(&srv, &key, &first.access_token).await.valid);

    // The spent token comes back: reuse. The whole session dies.
    expect_code(
        try_refresh(&srv, &first.refresh_token).await,
        Code::Unauthenticated,
    );
    for token in [&first.access_token, &second.access_token] {
        assert_eq!(validate_ok(&srv, &key, token).await, not_valid());
        expect_unauthenticated(get_me(&srv, token).await, "TOKEN_INVALID");
    }
    expect_code(
        try_refresh(&srv, &second.refresh_token).await,
        Code::Unauthenticated,
    );
}

// ----- tampering -----------------------------------------------------------------------------------

#[tokio::test]
async fn forged_and_tampered_tokens_are_rejected() {
    let f = Forge::new().await;
    let srv = &f.srv;
    let now = srv.clock.now().timestamp();

    // The server publishes both its own key and ours; it signs with its own.
    let keys = jwks(srv).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    let (server_header, server_claims, server_sig) = split_jwt(&f.pair.access_token);
    let server_kid = server_header["kid"].as_str().expect("kid").to_owned();
    assert_ne!(server_kid, f.kid);
    let server_x = keys
        .iter()
        .find(|k| k.kid == server_kid)
        .expect("server key in JWKS")
        .x
        .clone();
    assert!(keys.iter().any(|k| k.kid == f.kid));

    // Control: a token minted with the trusted test key and correct claims is valid.
    let good = f.mint(&f.header(), &f.claims());
    let v = validate_ok(srv, &f.svc_key, &good).await;
    assert!(v.valid, "control token must be valid");
    assert_eq!(v.user_id, f.user.id);
    assert_eq!(v.session_id, f.pair.session_id);
    assert_eq!(v.email, f.user.email);
    assert_eq!(v.username, f.user.username);
    assert_eq!(v.role(), proto::Role::User);
    assert_eq!(
        v.expire_time,
        Some(prost_types::Timestamp {
            seconds: now + 600,
            nanos: 0
        })
    );
    let me = get_me(srv, &good).await.expect("control token on GetMe");
    assert_eq!(me.id, f.user.id);
    // "application/at+jwt" is the same media type (RFC 9068 section 2.1).
    assert!(
        validate_ok(
            srv,
            &f.svc_key,
            &f.with_header("typ", json!("application/at+jwt"))
        )
        .await
        .valid
    );
    // And the server's own token is valid, of course.
    assert!(
        validate_ok(srv, &f.svc_key, &f.pair.access_token)
            .await
            .valid
    );

    let attacker = new_signing_key();
    let mut cases: Vec<(String, String, Expect)> = Vec::new();
    let mut case = |name: &str, token: String, expect: Expect| {
        cases.push((name.to_owned(), token, expect));
    };

    // --- the algorithm ---
    let mut none_claims = f.claims();
    none_claims["role"] = json!("admin");
    case(
        "alg none, empty signature",
        format!(
            "{}.{}.",
            b64_json(&json!({ "alg": "none", "typ": "at+jwt", "kid": f.kid })),
            b64_json(&none_claims)
        ),
        Expect::Invalid,
    );
    case(
        "alg none, server's signature kept",
        format!(
            "{}.{}.{}",
            b64_json(&json!({ "alg": "none", "typ": "at+jwt", "kid": server_kid })),
            b64_json(&server_claims),
            server_sig
        ),
        Expect::Invalid,
    );
    case(
        "alg None (capitalised), no signature",
        format!(
            "{}.{}.",
            b64_json(&json!({ "alg": "None", "typ": "at+jwt" })),
            b64_json(&f.claims())
        ),
        Expect::Invalid,
    );
    let server_public = URL_SAFE_NO_PAD.decode(&server_x).expect("x is base64url");
    let hs_header = json!({ "alg": "HS256", "typ": "at+jwt", "kid": server_kid });
    case(
        "HS256 keyed with the server's raw public key",
        sign_hs256(&hs_header, &f.claims(), &server_public),
        Expect::Invalid,
    );
    case(
        "HS256 keyed with the server's base64url public key",
        sign_hs256(&hs_header, &f.claims(), server_x.as_bytes()),
        Expect::Invalid,
    );
    case(
        "HS256 keyed with the trusted test public key",
        sign_hs256(
            &json!({ "alg": "HS256", "typ": "at+jwt", "kid": f.kid }),
            &f.claims(),
            &f.key.verifying_key().to_bytes(),
        ),
        Expect::Invalid,
    );
    case(
        "alg EdDSA header on an HS256 token",
        {
            let input = format!("{}.{}", b64_json(&f.header()), b64_json(&f.claims()));
            let mut mac =
                <hmac::Hmac<Sha256> as Mac>::new_from_slice(&server_public).expect("hmac key");
            mac.update(input.as_bytes());
            format!("{input}.{}", b64(&mac.finalize().into_bytes()))
        },
        Expect::Invalid,
    );

    // --- the signature ---
    let mut admin_claims = server_claims.clone();
    admin_claims["role"] = json!("admin");
    case(
        "server token, role changed to admin, original signature",
        format!(
            "{}.{}.{}",
            b64_json(&server_header),
            b64_json(&admin_claims),
            server_sig
        ),
        Expect::Invalid,
    );
    let mut later_claims = server_claims.clone();
    later_claims["exp"] = json!(now + 86_400);
    case(
        "server token, exp extended, original signature",
        format!(
            "{}.{}.{}",
            b64_json(&server_header),
            b64_json(&later_claims),
            server_sig
        ),
        Expect::Invalid,
    );
    let good_parts: Vec<&str> = good.split('.').collect();
    let mut other_user = f.claims();
    other_user["sub"] = json!(uuid::Uuid::new_v4().to_string());
    case(
        "test-key token, sub changed, original signature",
        format!(
            "{}.{}.{}",
            good_parts[0],
            b64_json(&other_user),
            good_parts[2]
        ),
        Expect::Invalid,
    );
    case(
        "signature of another token",
        format!("{}.{}.{}", good_parts[0], good_parts[1], server_sig),
        Expect::Invalid,
    );
    case(
        "trusted kid, signed by an untrusted key",
        sign_eddsa(&f.header(), &f.claims(), &attacker),
        Expect::Invalid,
    );
    case(
        "server kid, signed by the test key",
        f.mint(
            &json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": server_kid }),
            &f.claims(),
        ),
        Expect::Invalid,
    );
    case(
        "truncated signature",
        good[..good.len() - 4].to_owned(),
        Expect::Invalid,
    );
    case(
        "signature removed",
        format!("{}.{}.", good_parts[0], good_parts[1]),
        Expect::Invalid,
    );
    case(
        "one signature bit flipped",
        {
            let mut sig = URL_SAFE_NO_PAD.decode(good_parts[2]).expect("signature");
            sig[0] ^= 0x01;
            format!("{}.{}.{}", good_parts[0], good_parts[1], b64(&sig))
        },
        Expect::Invalid,
    );

    // --- the header ---
    case(
        "typ JWT",
        f.with_header("typ", json!("JWT")),
        Expect::Invalid,
    );
    case(
        "typ refresh+jwt",
        f.with_header("typ", json!("rt+jwt")),
        Expect::Invalid,
    );
    case("typ missing", f.without_header("typ"), Expect::Invalid);
    case("kid missing", f.without_header("kid"), Expect::Invalid);
    case(
        "unknown kid",
        f.with_header("kid", json!("no-such-kid")),
        Expect::Invalid,
    );
    let own_jwk = json!({
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
        "x": b64(&f.key.verifying_key().to_bytes()),
    });
    case(
        "jwk header (even the trusted key)",
        f.with_header("jwk", own_jwk),
        Expect::Invalid,
    );
    let attacker_jwk = json!({
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
        "x": b64(&attacker.verifying_key().to_bytes()),
    });
    case(
        "jwk header with the attacker's key, signed by the attacker",
        sign_eddsa(
            &json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": f.kid, "jwk": attacker_jwk }),
            &f.claims(),
            &attacker,
        ),
        Expect::Invalid,
    );
    case(
        "jku header",
        f.with_header("jku", json!("https://attacker.example/jwks.json")),
        Expect::Invalid,
    );
    case(
        "x5u header",
        f.with_header("x5u", json!("https://attacker.example/cert.pem")),
        Expect::Invalid,
    );
    case(
        "x5c header",
        f.with_header("x5c", json!(["MIIBszCCAVmgAwIBAgIUQ"])),
        Expect::Invalid,
    );
    case(
        "crit header",
        f.with_header("crit", json!(["exp"])),
        Expect::Invalid,
    );

    // --- the claims ---
    case(
        "wrong aud",
        f.with_claim("aud", json!("another-service")),
        Expect::Invalid,
    );
    case(
        "aud list without authd",
        f.with_claim("aud", json!(["another-service"])),
        Expect::Invalid,
    );
    case(
        "wrong iss",
        f.with_claim("iss", json!("https://attacker.example")),
        Expect::Invalid,
    );
    for claim in [
        "iss", "aud", "sub", "exp", "iat", "nbf", "jti", "sid", "role",
    ] {
        case(
            &format!("missing {claim}"),
            f.without_claim(claim),
            Expect::Invalid,
        );
    }
    case(
        "string exp",
        f.with_claim("exp", json!("9999999999")),
        Expect::Invalid,
    );
    case(
        "null exp",
        f.with_claim("exp", Value::Null),
        Expect::Invalid,
    );
    case(
        "nbf in the future",
        f.with_claim("nbf", json!(now + 300)),
        Expect::Invalid,
    );
    let mut expired = f.claims();
    expired["iat"] = json!(now - 960);
    expired["nbf"] = json!(now - 960);
    expired["exp"] = json!(now - 60);
    case(
        "expired exp",
        f.mint(&f.header(), &expired),
        Expect::Expired,
    );
    case(
        "unknown role",
        f.with_claim("role", json!("superuser")),
        Expect::Invalid,
    );
    case(
        "role in upper case",
        f.with_claim("role", json!("ADMIN")),
        Expect::Invalid,
    );
    case(
        "sub not a UUID",
        f.with_claim("sub", json!("admin")),
        Expect::Invalid,
    );
    case(
        "sid of no session",
        f.with_claim("sid", json!(uuid::Uuid::new_v4().to_string())),
        Expect::Invalid,
    );
    case(
        "sid not a UUID",
        f.with_claim("sid", json!("session")),
        Expect::Invalid,
    );
    case(
        "claims not an object",
        f.mint(&f.header(), &json!(["authd"])),
        Expect::Invalid,
    );

    // --- not an access token at all ---
    case(
        "refresh token as access token",
        f.pair.refresh_token.clone(),
        Expect::Invalid,
    );
    case(
        "service key as access token",
        f.svc_key.clone(),
        Expect::Invalid,
    );
    case("garbage", "garbage".to_owned(), Expect::Invalid);
    case("three dots of garbage", "a.b.c".to_owned(), Expect::Invalid);
    case("only dots", "..".to_owned(), Expect::Invalid);
    case(
        "random base64url segments",
        {
            let mut bytes = [0u8; 96];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            format!(
                "{}.{}.{}",
                b64(&bytes[..32]),
                b64(&bytes[32..64]),
                b64(&bytes[64..])
            )
        },
        Expect::Invalid,
    );
    case(
        "header that is not JSON",
        format!("{}.{}.{}", b64(b"{not json"), good_parts[1], good_parts[2]),
        Expect::Invalid,
    );
    case(
        "four segments",
        format!("{good}.{}", good_parts[2]),
        Expect::Invalid,
    );
    case(
        "over-long, correctly signed",
        f.with_claim("pad", json!("x".repeat(5000))),
        Expect::TooLarge,
    );

    let mut failures = Vec::new();
    for (name, token, expect) in &cases {
        let validated = validate_raw(srv, Some(&f.svc_key), token).await;
        match (expect, validated) {
            (Expect::Invalid | Expect::Expired, Ok(v)) if v == not_valid() => {}
            (Expect::TooLarge, Err(s)) if s.code() == Code::InvalidArgument => {}
            (_, other) => failures.push(format!("{name}: ValidateToken answered {other:?}")),
        }
        let want = match expect {
            Expect::Expired => "TOKEN_EXPIRED",
            Expect::Invalid | Expect::TooLarge => "TOKEN_INVALID",
        };
        match get_me(srv, token).await {
            Err(s) if s.code() == Code::Unauthenticated && reason(&s).as_deref() == Some(want) => {}
            other => failures.push(format!(
                "{name}: GetMe answered {other:?}, want UNAUTHENTICATED {want}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Nothing above disturbed the real session.
    assert!(validate_ok(srv, &f.svc_key, &good).await.valid);
    assert!(get_me(srv, &f.pair.access_token).await.is_ok());
}

#[tokio::test]
async fn a_token_for_a_revoked_session_is_rejected_even_if_freshly_signed() {
    let f = Forge::new().await;
    let token = f.mint(&f.header(), &f.claims());
    assert!(validate_ok(&f.srv, &f.svc_key, &token).await.valid);
    f.srv
        .auth()
        .await
        .logout(with_bearer(
            proto::LogoutRequest::default(),
            &f.pair.access_token,
        ))
        .await
        .expect("logout");
    // A new token, correctly signed, for the now revoked session.
    let token = f.mint(&f.header(), &f.claims());
    assert_eq!(validate_ok(&f.srv, &f.svc_key, &token).await, not_valid());
    expect_unauthenticated(get_me(&f.srv, &token).await, "TOKEN_INVALID");
}

// ----- expiry --------------------------------------------------------------------------------------

#[tokio::test]
async fn access_tokens_expire_with_a_small_leeway() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let start = srv.clock.now().timestamp();
    let (_, pair) = srv.user_session().await;
    let v = validate_ok(&srv, &key, &pair.access_token).await;
    assert!(v.valid);
    let exp = v.expire_time.expect("expire_time").seconds;
    assert_eq!(exp, start + 900);

    // One second before exp: still valid.
    srv.clock.advance(Duration::seconds(exp - 1 - start));
    assert_eq!(srv.clock.now().timestamp(), exp - 1);
    assert!(validate_ok(&srv, &key, &pair.access_token).await.valid);
    assert!(get_me(&srv, &pair.access_token).await.is_ok());

    // Ten seconds after exp: expired (leeway is at most a few seconds).
    srv.clock.advance(Duration::seconds(11));
    assert_eq!(srv.clock.now().timestamp(), exp + 10);
    assert_eq!(
        validate_ok(&srv, &key, &pair.access_token).await,
        not_valid()
    );
    expect_unauthenticated(get_me(&srv, &pair.access_token).await, "TOKEN_EXPIRED");

    // The session lives on: the refresh token still gives a fresh, valid access token.
    let next = try_refresh(&srv, &pair.refresh_token)
        .await
        .expect("refresh after access expiry");
    let v = validate_ok(&srv, &key, &next.access_token).await;
    assert!(v.valid);
    assert_eq!(v.session_id, pair.session_id);
}

#[tokio::test]
async fn access_token_rejected_after_sixteen_minutes() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let (_, pair) = srv.user_session().await;
    assert!(validate_ok(&srv, &key, &pair.access_token).await.valid);
    srv.clock.advance(Duration::minutes(16));
    assert_eq!(
        validate_ok(&srv, &key, &pair.access_token).await,
        not_valid()
    );
    expect_unauthenticated(get_me(&srv, &pair.access_token).await, "TOKEN_EXPIRED");
    // Bearer-protected RPCs of the AuthService too.
    expect_unauthenticated(
        srv.auth()
            .await
            .logout_all(with_bearer(proto::LogoutAllRequest {}, &pair.access_token))
            .await,
        "TOKEN_EXPIRED",
    );
}

#[tokio::test]
async fn a_configured_access_token_ttl_is_honoured() {
    let srv = TestServer::start_with(|c| c.access_token_ttl = StdDuration::from_secs(60)).await;
    let key = srv.service_key().await;
    let (_, pair) = srv.user_session().await;
    assert_eq!(pair.expires_in, 60);
    let v = validate_ok(&srv, &key, &pair.access_token).await;
    let (iat, exp) = (
        v.issue_time.expect("issue_time").seconds,
        v.expire_time.expect("expire_time").seconds,
    );
    assert_eq!(exp - iat, 60);
    srv.clock.advance(Duration::seconds(70));
    assert_eq!(
        validate_ok(&srv, &key, &pair.access_token).await,
        not_valid()
    );
}

// ----- JWKS ----------------------------------------------------------------------------------------

#[tokio::test]
async fn jwks_publishes_the_key_that_signs_access_tokens() {
    let srv = TestServer::start().await;
    let (user, pair) = srv.user_session().await;
    let keys = jwks(&srv).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let k = &keys[0];
    assert_eq!(k.kty, "OKP");
    assert_eq!(k.crv, "Ed25519");
    assert_eq!(k.alg, "EdDSA");
    assert_eq!(k.r#use, "sig");
    assert!(!k.kid.is_empty());
    let x = URL_SAFE_NO_PAD
        .decode(&k.x)
        .expect("x is unpadded base64url");
    assert_eq!(x.len(), 32);

    // The header is RFC 9068's, with the published kid.
    let header = jsonwebtoken::decode_header(&pair.access_token).expect("header");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.kid.as_deref(), Some(k.kid.as_str()));

    // Local verification, as another service would do it.
    let decoding = jsonwebtoken::DecodingKey::from_ed_components(&k.x).expect("decoding key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_issuer(&["authd"]);
    validation.set_audience(&["authd"]);
    validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub", "iss", "aud"]);
    let data = jsonwebtoken::decode::<Value>(&pair.access_token, &decoding, &validation)
        .expect("an issued token verifies with the published key");
    let c = data.claims;
    assert_eq!(c["iss"], json!("authd"));
    assert_eq!(c["aud"], json!("authd"));
    assert_eq!(c["sub"], json!(user.id));
    assert_eq!(c["sid"], json!(pair.session_id));
    assert_eq!(c["role"], json!("user"));
    assert_eq!(c["email"], json!(user.email));
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert!(c["client_id"].as_str().is_some_and(|j| !j.is_empty()));
    let (iat, nbf, exp) = (
        c["iat"].as_i64().expect("iat"),
        c["nbf"].as_i64().expect("nbf"),
        c["exp"].as_i64().expect("exp"),
    );
    assert!(nbf <= iat);
    assert_eq!(exp - iat, 900);

    // Every token has its own jti.
    let again = srv.login(&user.email, PASSWORD).await;
    let (_, c2, _) = split_jwt(&again.access_token);
    assert_ne!(c2["jti"], c["jti"]);

    // The local check refuses a different audience, and a different key.
    let mut other_aud = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    other_aud.set_audience(&["billing"]);
    assert!(jsonwebtoken::decode::<Value>(&pair.access_token, &decoding, &other_aud).is_err());
    let stranger = b64(&new_signing_key().verifying_key().to_bytes());
    let stranger = jsonwebtoken::DecodingKey::from_ed_components(&stranger).expect("key");
    assert!(jsonwebtoken::decode::<Value>(&pair.access_token, &stranger, &validation).is_err());

    // GetJwks needs no credentials and is stable.
    assert_eq!(jwks(&srv).await, keys);
}

// ----- service keys --------------------------------------------------------------------------------

async fn create_key(
    srv: &TestServer,
    bearer: Option<&str>,
    name: &str,
) -> Result<proto::CreateServiceKeyResponse, Status> {
    let msg = proto::CreateServiceKeyRequest {
        name: name.into(),
        ..Default::default()
    };
    let req = match bearer {
        Some(t) => with_bearer(msg, t),
        None => Request::new(msg),
    };
    srv.auth()
        .await
        .create_service_key(req)
        .await
        .map(|r| r.into_inner())
}

async fn list_keys(
    srv: &TestServer,
    bearer: Option<&str>,
) -> Result<Vec<proto::ServiceKey>, Status> {
    let msg = proto::ListServiceKeysRequest {};
    let req = match bearer {
        Some(t) => with_bearer(msg, t),
        None => Request::new(msg),
    };
    srv.auth()
        .await
        .list_service_keys(req)
        .await
        .map(|r| r.into_inner().keys)
}

async fn revoke_key(srv: &TestServer, bearer: Option<&str>, id: &str) -> Result<(), Status> {
    let msg = proto::RevokeServiceKeyRequest { id: id.into() };
    let req = match bearer {
        Some(t) => with_bearer(msg, t),
        None => Request::new(msg),
    };
    srv.auth().await.revoke_service_key(req).await.map(|_| ())
}

#[tokio::test]
async fn service_key_rpcs_require_an_admin() {
    let srv = TestServer::start().await;
    let (_, user) = srv.user_session().await;
    let some_id = uuid::Uuid::new_v4().to_string();

    // No bearer.
    expect_unauthenticated(create_key(&srv, None, "x").await, "TOKEN_MISSING");
    expect_unauthenticated(list_keys(&srv, None).await, "TOKEN_MISSING");
    expect_unauthenticated(revoke_key(&srv, None, &some_id).await, "TOKEN_MISSING");
    // A bad bearer.
    expect_unauthenticated(create_key(&srv, Some("nope"), "x").await, "TOKEN_INVALID");
    expect_unauthenticated(list_keys(&srv, Some("nope")).await, "TOKEN_INVALID");
    expect_unauthenticated(
        revoke_key(&srv, Some("nope"), "not-a-uuid").await,
        "TOKEN_INVALID",
    );

    // A USER: the role is checked before the input.
    let u = Some(user.access_token.as_str());
    expect_code(create_key(&srv, u, "x").await, Code::PermissionDenied);
    expect_code(create_key(&srv, u, "").await, Code::PermissionDenied);
    expect_code(list_keys(&srv, u).await, Code::PermissionDenied);
    expect_code(revoke_key(&srv, u, &some_id).await, Code::PermissionDenied);
    expect_code(
        revoke_key(&srv, u, "not-a-uuid").await,
        Code::PermissionDenied,
    );
    expect_code(revoke_key(&srv, u, "").await, Code::PermissionDenied);

    // A USER cannot revoke an existing key either, and it keeps working.
    let key_id = {
        let admin = srv.admin_session().await;
        create_key(&srv, Some(&admin.access_token), "kept")
            .await
            .expect("admin creates")
    };
    expect_code(
        revoke_key(&srv, u, &key_id.id).await,
        Code::PermissionDenied,
    );
    assert!(
        validate_ok(&srv, &key_id.key, &user.access_token)
            .await
            .valid
    );
}

#[tokio::test]
async fn service_key_lifecycle() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let a = Some(admin.access_token.as_str());
    let admin_id = get_me(&srv, &admin.access_token).await.expect("admin").id;
    let (_, user) = srv.user_session().await;
    let created_at = srv.clock.now().timestamp();

    // Create.
    let created = create_key(&srv, a, "billing-service")
        .await
        .expect("create");
    let id = uuid::Uuid::parse_str(&created.id).expect("id is a UUID");
    assert_eq!(created.name, "billing-service");
    assert!(
        created.key.len() >= 43,
        "at least 256 bits: {}",
        created.key
    );
    let second = create_key(&srv, a, "reports").await.expect("create second");
    assert_ne!(second.key, created.key);
    assert_ne!(second.id, created.id);

    // Listed without the key, with the creator and the time; never used yet.
    let listed = list_keys(&srv, a).await.expect("list");
    assert_eq!(listed.len(), 2, "{listed:?}");
    let entry = listed
        .iter()
        .find(|k| k.id == created.id)
        .expect("listed")
        .clone();
    assert_eq!(entry.name, "billing-service");
    assert_eq!(entry.creator_id, admin_id);
    assert_eq!(
        entry.create_time.as_ref().map(|t| t.seconds),
        Some(created_at)
    );
    assert_eq!(entry.last_use_time, None);
    let shown = format!("{listed:?}");
    assert!(!shown.contains(&created.key) && !shown.contains(&second.key));

    // It works on ValidateToken, and the use is recorded.
    srv.clock.advance(Duration::seconds(30));
    let used_at = srv.clock.now().timestamp();
    let v = validate_ok(&srv, &created.key, &user.access_token).await;
    assert!(v.valid);
    // The use is recorded off the request path, so it may land just after the reply.
    let mut listed = list_keys(&srv, a).await.expect("list");
    for _ in 0..100 {
        let entry = listed.iter().find(|k| k.id == created.id).expect("listed");
        if entry.last_use_time.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        listed = list_keys(&srv, a).await.expect("list");
    }
    let entry = listed.iter().find(|k| k.id == created.id).expect("listed");
    assert_eq!(
        entry.last_use_time.as_ref().map(|t| t.seconds),
        Some(used_at)
    );
    let other = listed.iter().find(|k| k.id == second.id).expect("listed");
    assert_eq!(other.last_use_time, None);

    // Only a hash is stored.
    let mut conn = connect_db(&srv.url).await;
    let hashes: Vec<BytesRow> =
        diesel::sql_query("SELECT key_hash AS b FROM service_keys WHERE id = $1")
            .bind::<diesel::sql_types::Uuid, _>(id)
            .load(&mut conn)
            .await
            .expect("select key_hash");
    assert_eq!(hashes.len(), 1);
    assert_ne!(hashes[0].b, created.key.as_bytes());
    assert!(!hashes[0].b.is_empty());
    let rows: Vec<TextRow> =
        diesel::sql_query("SELECT row_to_json(k)::text AS t FROM service_keys k WHERE id = $1")
            .bind::<diesel::sql_types::Uuid, _>(id)
            .load(&mut conn)
            .await
            .expect("select row");
    assert_not_stored(
        &rows.iter().map(|r| r.t.clone()).collect::<Vec<_>>(),
        &created.key,
    );
    assert_not_stored(&dump_database(&srv.url).await, &created.key);
    assert_not_stored(&dump_database(&srv.url).await, &second.key);

    // Revoke.
    revoke_key(&srv, a, &created.id).await.expect("revoke");
    expect_code(
        validate_raw(&srv, Some(&created.key), &user.access_token).await,
        Code::Unauthenticated,
    );
    let listed = list_keys(&srv, a).await.expect("list");
    assert!(listed.iter().all(|k| k.id != created.id), "{listed:?}");
    assert!(listed.iter().any(|k| k.id == second.id));
    assert!(
        validate_ok(&srv, &second.key, &user.access_token)
            .await
            .valid
    );

    // Revoking again, or an unknown id: NOT_FOUND. A malformed id: INVALID_ARGUMENT.
    expect_code(revoke_key(&srv, a, &created.id).await, Code::NotFound);
    expect_code(
        revoke_key(&srv, a, &uuid::Uuid::new_v4().to_string()).await,
        Code::NotFound,
    );
    expect_code(
        revoke_key(&srv, a, "not-a-uuid").await,
        Code::InvalidArgument,
    );
    expect_code(revoke_key(&srv, a, "").await, Code::InvalidArgument);
    expect_code(
        revoke_key(&srv, a, &"f".repeat(10_000)).await,
        Code::InvalidArgument,
    );

    // Names.
    expect_code(create_key(&srv, a, "").await, Code::InvalidArgument);
    expect_code(create_key(&srv, a, "   ").await, Code::InvalidArgument);
    expect_code(
        create_key(&srv, a, &"n".repeat(10_000)).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn a_service_key_belongs_to_the_deployment_not_its_creator() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let admin_id = get_me(&srv, &admin.access_token).await.expect("admin").id;
    let (_, user) = srv.user_session().await;
    let created = create_key(&srv, Some(&admin.access_token), "deployment")
        .await
        .expect("create");

    // The creator logs out everywhere: the key keeps working.
    srv.auth()
        .await
        .logout_all(with_bearer(proto::LogoutAllRequest {}, &admin.access_token))
        .await
        .expect("logout all");
    assert!(
        validate_ok(&srv, &created.key, &user.access_token)
            .await
            .valid
    );

    // The creator's account goes away: the key keeps working, and its creator is forgotten.
    diesel::sql_query("DELETE FROM users WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(uuid::Uuid::parse_str(&admin_id).expect("uuid"))
        .execute(&mut connect_db(&srv.url).await)
        .await
        .expect("delete the admin");
    assert!(
        validate_ok(&srv, &created.key, &user.access_token)
            .await
            .valid
    );
    let other_admin = srv.admin_session().await;
    let listed = list_keys(&srv, Some(&other_admin.access_token))
        .await
        .expect("list");
    let entry = listed.iter().find(|k| k.id == created.id).expect("listed");
    assert_eq!(entry.creator_id, "");
    // Keys made without an admin (the CLI path) have no creator either.
    let cli_key = srv.service_key().await;
    assert!(validate_ok(&srv, &cli_key, &user.access_token).await.valid);
    let listed = list_keys(&srv, Some(&other_admin.access_token))
        .await
        .expect("list");
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|k| k.creator_id.is_empty()));
}

#[tokio::test]
async fn refresh_tokens_are_stored_only_as_sha256() {
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    let next = try_refresh(&srv, &pair.refresh_token)
        .await
        .expect("refresh");
    assert!(
        next.refresh_token.len() >= 43,
        "at least 256 bits: {}",
        next.refresh_token
    );

    let mut conn = connect_db(&srv.url).await;
    let session = uuid::Uuid::parse_str(&pair.session_id).expect("session id");
    // The session row keeps the SHA-256 of its current token; current-format tokens have no rows
    // of their own (issue J, P4).
    let hashes: Vec<BytesRow> = diesel::sql_query(
        "SELECT refresh_hash AS b FROM sessions WHERE id = $1 \
         UNION ALL SELECT token_hash AS b FROM refresh_tokens WHERE session_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(session)
    .load(&mut conn)
    .await
    .expect("select token_hash");
    let stored: Vec<Vec<u8>> = hashes.into_iter().map(|r| r.b).collect();
    let sha = |t: &str| Sha256::digest(t.as_bytes()).to_vec();
    assert_eq!(stored, vec![sha(&next.refresh_token)]);

    let dump = dump_database(&srv.url).await;
    assert!(dump.iter().any(|r| r.starts_with("sessions:")));
    assert_not_stored(&dump, &pair.refresh_token);
    assert_not_stored(&dump, &next.refresh_token);
}

// ----- bootstrap admin -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bootstrap_admin_is_created_once() {
    let email = format!("Root-{}@Example.COM", uuid::Uuid::new_v4().simple());
    let stored_email = email.to_lowercase();
    let (e, p) = (email.clone(), OTHER_PASSWORD.to_owned());
    let srv = TestServer::start_with(move |c| {
        c.bootstrap_admin_email = Some(e);
        c.bootstrap_admin_password = Some(p.into());
    })
    .await;

    let pair = srv.login(&email, OTHER_PASSWORD).await;
    let me = get_me(&srv, &pair.access_token).await.expect("GetMe");
    assert_eq!(me.role(), proto::Role::Admin);
    assert_eq!(me.email, stored_email);
    assert!(me.active);
    let key = srv.service_key().await;
    let v = validate_ok(&srv, &key, &pair.access_token).await;
    assert_eq!(v.role(), proto::Role::Admin);
    // The bootstrap admin creates the first service key.
    let first = create_key(&srv, Some(&pair.access_token), "first")
        .await
        .expect("bootstrap admin creates a service key");
    assert!(
        validate_ok(&srv, &first.key, &pair.access_token)
            .await
            .valid
    );

    let count = |url: String, email: String| async move {
        let rows: Vec<Count> =
            diesel::sql_query("SELECT count(*) AS n FROM users WHERE lower(email) = $1")
                .bind::<diesel::sql_types::Text, _>(email)
                .load(&mut connect_db(&url).await)
                .await
                .expect("count");
        rows[0].n
    };
    assert_eq!(count(srv.url.clone(), stored_email.clone()).await, 1);

    // Two more replicas start together on the same database with the same settings.
    let (b, c) = tokio::join!(
        TestServer::start_on(srv.config.clone(), srv.clock.clone()),
        TestServer::start_on(srv.config.clone(), srv.clock.clone()),
    );
    assert_eq!(count(srv.url.clone(), stored_email.clone()).await, 1);
    for s in [&srv, &b, &c] {
        s.login(&email, OTHER_PASSWORD).await;
    }

    // A different password at a later start does not touch the existing admin.
    let mut changed = srv.config.clone();
    changed.bootstrap_admin_password = Some(PASSWORD.into());
    let d = TestServer::start_on(changed, srv.clock.clone()).await;
    assert_eq!(count(srv.url.clone(), stored_email.clone()).await, 1);
    d.login(&email, OTHER_PASSWORD).await;
    expect_code(
        d.auth().await.login(login_email(&email, PASSWORD)).await,
        Code::Unauthenticated,
    );
    let total: Vec<Count> = diesel::sql_query("SELECT count(*) AS n FROM users")
        .load(&mut connect_db(&srv.url).await)
        .await
        .expect("count users");
    assert_eq!(total[0].n, 1);
}

#[tokio::test]
async fn no_bootstrap_admin_without_both_settings() {
    let email = unique_email();
    let e = email.clone();
    let srv = TestServer::start_with(move |c| {
        c.bootstrap_admin_email = Some(e);
        c.bootstrap_admin_password = None;
    })
    .await;
    expect_code(
        srv.auth()
            .await
            .login(login_email(&email, OTHER_PASSWORD))
            .await,
        Code::Unauthenticated,
    );
}

// ----- restart -------------------------------------------------------------------------------------

#[tokio::test]
async fn restart_keeps_users_keys_and_sessions() {
    let url = fresh_database().await;
    let config = test_config(&url);
    let clock = Arc::new(ManualClock::new(Utc::now()));

    let first = TestServer::start_on(config.clone(), clock.clone()).await;
    let email = unique_email();
    let username = unique_username();
    let user = register_named(&first, &email, &username).await;
    let pair = first.login(&email, PASSWORD).await;
    let key = first.service_key().await;
    let keys_before = jwks(&first).await;
    let before = validate_ok(&first, &key, &pair.access_token).await;
    assert!(before.valid);
    first.stop().await;

    let second = TestServer::start_on(config, clock).await;
    // Same signing key.
    assert_eq!(jwks(&second).await, keys_before);
    // The old access token, and the old service key.
    let after = validate_ok(&second, &key, &pair.access_token).await;
    assert_eq!(after, before);
    let me = get_me(&second, &pair.access_token)
        .await
        .expect("old token after restart");
    assert_eq!(me.id, user.id);
    assert_eq!(me.username, username);
    // Login, by e-mail and by username.
    second.login(&email, PASSWORD).await;
    second
        .auth()
        .await
        .login(login_username(&username, PASSWORD))
        .await
        .expect("login by username after restart");
    // The old refresh token still rotates, and the new access token has the same kid.
    let next = try_refresh(&second, &pair.refresh_token)
        .await
        .expect("refresh after restart");
    assert_eq!(next.session_id, pair.session_id);
    let (h_old, _, _) = split_jwt(&pair.access_token);
    let (h_new, _, _) = split_jwt(&next.access_token);
    assert_eq!(h_old["kid"], h_new["kid"]);
    assert_eq!(h_new["kid"], json!(keys_before[0].kid));
    assert!(validate_ok(&second, &key, &next.access_token).await.valid);
}

// ----- health --------------------------------------------------------------------------------------

const API_HEALTH_SERVICES: [&str; 3] = ["", "authd.v1.AuthService", "authd.v1.UserService"];

#[tokio::test]
async fn health_reports_serving() {
    let srv = TestServer::start().await;
    for service in API_HEALTH_SERVICES.iter().chain(["liveness"].iter()) {
        assert_eq!(
            health(&srv, service).await.expect("health check"),
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    expect_code(health(&srv, "no.such.Service").await, Code::NotFound);
    expect_code(health(&srv, "authd.v1.Nope").await, Code::NotFound);
}

async fn statuses(srv: &TestServer) -> Vec<Option<i32>> {
    let mut out = Vec::new();
    for s in API_HEALTH_SERVICES {
        out.push(health(srv, s).await.ok());
    }
    out
}

/// Waits (at most 10 s) until every API health service reports `status`.
async fn wait_for_readiness(srv: &TestServer, status: ServingStatus, what: &str) {
    let want = vec![Some(status as i32); API_HEALTH_SERVICES.len()];
    wait_until(what, StdDuration::from_secs(10), || async {
        statuses(srv).await == want
    })
    .await;
}

async fn assert_live(srv: &TestServer) {
    assert_eq!(
        health(srv, "liveness").await.expect("liveness"),
        ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_follows_the_database() {
    let tmp = tempfile::Builder::new()
        .prefix("authd-h")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let options = || EmbeddedOptions {
        data_dir: tmp.path().to_path_buf(),
        ephemeral: false,
        max_connections: 50,
    };
    let pg = EmbeddedPostgres::start(options())
        .await
        .expect("start private cluster");
    ensure_database(&pg, "authd").await;
    let url = pg.database_url("authd");
    let mut config = test_config(&url);
    config.db_timeout = StdDuration::from_secs(2);
    let srv = TestServer::start_on(config, Arc::new(ManualClock::new(Utc::now()))).await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let pair = srv.login(&email, PASSWORD).await;
    wait_for_readiness(&srv, ServingStatus::Serving, "readiness SERVING").await;

    // The database goes away.
    pg.stop().await.expect("stop cluster");
    wait_for_readiness(&srv, ServingStatus::NotServing, "readiness NOT_SERVING").await;
    assert_live(&srv).await;
    expect_code(
        srv.auth().await.login(login_email(&email, PASSWORD)).await,
        Code::Unavailable,
    );
    expect_code(get_me(&srv, &pair.access_token).await, Code::Unavailable);
    // A refresh's batch (`domain::sessions::rotations`) gets no connection: UNAVAILABLE, and the
    // token stays unspent.
    expect_code(
        try_refresh(&srv, &pair.refresh_token).await,
        Code::Unavailable,
    );
    // GetJwks needs no database.
    assert_eq!(jwks(&srv).await.len(), 1);

    // It comes back: the server recovers without a restart.
    let pg = EmbeddedPostgres::start(options())
        .await
        .expect("restart private cluster");
    wait_for_readiness(&srv, ServingStatus::Serving, "readiness SERVING again").await;
    assert_live(&srv).await;
    let again = srv.login(&email, PASSWORD).await;
    get_me(&srv, &again.access_token)
        .await
        .expect("GetMe after recovery");
    get_me(&srv, &pair.access_token)
        .await
        .expect("an old token after recovery");
    let rotated = try_refresh(&srv, &pair.refresh_token)
        .await
        .expect("the refresh token the outage refused, after recovery");
    assert_eq!(rotated.session_id, pair.session_id);

    srv.stop().await;
    pg.stop().await.expect("stop cluster");
}

/// Ready means the database answers *and* the revocation view is fresh: token checks fail closed
/// on a stale view, so a replica whose polls fail must leave the balancer even though its database
/// answers a ping, and come back only once its view has caught up.
#[tokio::test]
async fn readiness_follows_a_stale_revocation_view() {
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    wait_for_readiness(&srv, ServingStatus::Serving, "readiness SERVING").await;

    // The view's poll reads service_keys: without the table every poll fails, and after 3 s
    // (views::MAX_STALENESS) the view is stale.
    srv.exec("ALTER TABLE service_keys RENAME TO service_keys_hidden")
        .await;
    wait_for_readiness(
        &srv,
        ServingStatus::NotServing,
        "readiness NOT_SERVING on a stale view",
    )
    .await;
    // The database answers: calls that need no view work, token checks fail closed.
    assert_live(&srv).await;
    srv.register(&unique_email(), PASSWORD).await;
    expect_code(get_me(&srv, &pair.access_token).await, Code::Unavailable);

    srv.exec("ALTER TABLE service_keys_hidden RENAME TO service_keys")
        .await;
    wait_for_readiness(
        &srv,
        ServingStatus::Serving,
        "readiness SERVING once the view is fresh",
    )
    .await;
    // Ready means the token checks work: at once, not after the next poll.
    get_me(&srv, &pair.access_token)
        .await
        .expect("GetMe as soon as readiness is SERVING");
    srv.stop().await;
}

/// Creates database `name` in `pg` unless it exists.
async fn ensure_database(pg: &EmbeddedPostgres, name: &str) {
    let mut conn = connect_db(&pg.database_url("postgres")).await;
    let rows: Vec<Count> =
        diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
            .bind::<diesel::sql_types::Text, _>(name)
            .load(&mut conn)
            .await
            .expect("look up database");
    if rows[0].n == 0 {
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
    }
}

// ----- reflection ----------------------------------------------------------------------------------

/// Reflection lists exactly the allowlist, [`REFLECTED_SERVICES`]: the API, health and Envoy's
/// ext_authz.
fn assert_lists_the_allowlist(mut names: Vec<String>) {
    names.sort();
    let mut want: Vec<&str> = REFLECTED_SERVICES.to_vec();
    want.sort_unstable();
    assert_eq!(names, want);
    for expected in [
        "envoy.service.auth.v3.Authorization",
        "authd.v1.AuthService",
        "authd.v1.UserService",
        "grpc.health.v1.Health",
    ] {
        assert!(want.contains(&expected), "{expected} not in the allowlist");
    }
}

#[tokio::test]
async fn reflection_v1_lists_exactly_the_allowlist() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let srv = TestServer::start().await;
    let mut client = ServerReflectionClient::new(srv.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let resp: ServerReflectionResponse = stream
        .message()
        .await
        .expect("reflection v1 stream")
        .expect("a response");
    let names: Vec<String> = match resp.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    };
    assert_lists_the_allowlist(names);
}

#[tokio::test]
async fn reflection_v1alpha_lists_exactly_the_allowlist() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::{ServerReflectionRequest, ServerReflectionResponse};

    let srv = TestServer::start().await;
    let mut client = ServerReflectionClient::new(srv.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let resp: ServerReflectionResponse = stream
        .message()
        .await
        .expect("reflection v1alpha stream")
        .expect("a response");
    let names: Vec<String> = match resp.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    };
    assert_lists_the_allowlist(names);
}
