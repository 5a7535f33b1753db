use authd_testkit::*;

// Register, Login, Refresh (rotation, reuse detection, grace window, races, expiry), Logout,
// LogoutAll and GetMe, end to end against the real server and PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use authd::clock::Clock;
use authd::proto;
use chrono::Duration as ChronoDuration;
use diesel::sql_types::{Bool, Text};
use tokio::task::JoinSet;
use tonic::{Code, Request, Status};

const DAY: i64 = 86_400;

// ----- helpers ------------------------------------------------------------------------------------

fn reg_username(email: &str, username: &str) -> proto::RegisterRequest {
    proto::RegisterRequest {
        username: username.into(),
        ..reg(email, PASSWORD)
    }
}

#[track_caller]
fn assert_invalid(result: Result<proto::User, Status>, what: &str) {
    match result {
        Ok(u) => panic!("{what}: expected INVALID_ARGUMENT, got OK: {u:?}"),
        Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}"),
    }
}

async fn try_get_me(srv: &TestServer, access_token: &str) -> Result<proto::User, Status> {
    srv.users()
        .await
        .get_me(with_bearer(proto::GetMeRequest {}, access_token))
        .await
        .map(|r| r.into_inner())
}

async fn logout_with_refresh(srv: &TestServer, refresh_token: &str) -> Result<(), Status> {
    srv.auth()
        .await
        .logout(proto::LogoutRequest {
            refresh_token: refresh_token.into(),
        })
        .await
        .map(|_| ())
}

async fn logout_all(srv: &TestServer, access_token: &str) -> Result<i64, Status> {
    srv.auth()
        .await
        .logout_all(with_bearer(proto::LogoutAllRequest {}, access_token))
        .await
        .map(|r| r.into_inner().revoked_sessions)
}

/// The session of `access_token` is live: ValidateToken says valid and GetMe works.
async fn assert_access_live(srv: &TestServer, access_token: &str) {
    let v = srv.validate(access_token).await;
    assert!(v.valid, "access token should be valid: {v:?}");
    try_get_me(srv, access_token)
        .await
        .expect("GetMe with a live access token");
}

/// The session of `access_token` is revoked: ValidateToken says invalid (every other field empty)
/// and GetMe answers UNAUTHENTICATED / TOKEN_INVALID.
async fn assert_access_dead(srv: &TestServer, access_token: &str) {
    let v = srv.validate(access_token).await;
    assert_eq!(
        v,
        proto::ValidateTokenResponse::default(),
        "a revoked session's token must read as invalid with every field empty"
    );
    let err = expect_code(try_get_me(srv, access_token).await, Code::Unauthenticated);
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"), "{err:?}");
}

/// `pair`'s session is revoked: its access token is dead and its refresh token is refused.
async fn assert_session_dead(srv: &TestServer, pair: &proto::LoginResponse) {
    assert_access_dead(srv, &pair.access_token).await;
    expect_code(
        try_refresh(srv, &pair.refresh_token).await,
        Code::Unauthenticated,
    );
}

async fn set_active(srv: &TestServer, email: &str, active: bool) {
    use diesel_async::RunQueryDsl;
    let n = diesel::sql_query("UPDATE users SET active = $1 WHERE email = $2")
        .bind::<Bool, _>(active)
        .bind::<Text, _>(email)
        .execute(&mut srv.db().await)
        .await
        .expect("update users.active");
    assert_eq!(n, 1, "exactly one account has e-mail {email}");
}

async fn count_users(srv: &TestServer, where_clause: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(format!(
        "SELECT count(*) AS n FROM users WHERE {where_clause}"
    ))
    .get_result::<Count>(&mut srv.db().await)
    .await
    .expect("count users")
    .n
}

fn secs(ts: Option<prost_types::Timestamp>) -> i64 {
    ts.expect("timestamp is set").seconds
}

fn now_secs(srv: &TestServer) -> i64 {
    srv.clock.now().timestamp()
}

// ----- Register ------------------------------------------------------------------------------------

#[tokio::test]
async fn register_returns_an_active_user_with_normalized_email() {
    let srv = TestServer::start().await;
    let user = try_register(
        &srv,
        proto::RegisterRequest {
            email: "  Alice.Smith+Tag@Example.COM \t".into(),
            password: PASSWORD.into(),
            username: "Alice_W.9-x".into(),
            first_name: "Alice".into(),
            last_name: "Smith-Jones".into(),
        },
    )
    .await
    .expect("register");

    uuid::Uuid::parse_str(&user.id).expect("id is a UUID");
    assert_eq!(user.email, "alice.smith+tag@example.com");
    assert_eq!(user.username, "Alice_W.9-x", "username keeps its case");
    assert_eq!(user.first_name, "Alice");
    assert_eq!(user.last_name, "Smith-Jones");
    assert_eq!(user.role, proto::Role::User as i32);
    assert!(user.active);
    assert_eq!(secs(user.create_time), now_secs(&srv));
    assert_eq!(secs(user.update_time), now_secs(&srv));
    assert_eq!(user.last_login_time, None, "never logged in yet");

    // Stored the same way: GetMe shows the same profile.
    let pair = srv.login("alice.smith+tag@example.com", PASSWORD).await;
    let me = try_get_me(&srv, &pair.access_token).await.expect("GetMe");
    assert_eq!(me.id, user.id);
    assert_eq!(me.email, "alice.smith+tag@example.com");
    assert_eq!(me.username, "Alice_W.9-x");
    assert_eq!(me.first_name, "Alice");
    assert_eq!(me.last_name, "Smith-Jones");
    assert_eq!(me.role, proto::Role::User as i32);
    assert!(me.active);
}

#[tokio::test]
async fn register_without_optional_fields() {
    let srv = TestServer::start().await;
    // Two accounts without a username: "no username" is not a taken username.
    let a = try_register(&srv, reg("a@example.com", PASSWORD))
        .await
        .expect("a");
    let b = try_register(&srv, reg("b@example.com", PASSWORD))
        .await
        .expect("b");
    assert_ne!(a.id, b.id);
    for u in [&a, &b] {
        assert_eq!(u.username, "");
        assert_eq!(u.first_name, "");
        assert_eq!(u.last_name, "");
        assert_eq!(u.role, proto::Role::User as i32);
        assert!(u.active);
    }
}

#[tokio::test]
async fn register_duplicate_email_in_any_case_is_already_exists() {
    let srv = TestServer::start().await;
    try_register(&srv, reg("foo@x.com", PASSWORD))
        .await
        .expect("first");
    for dup in ["foo@x.com", "Foo@X.com", "FOO@X.COM", "  fOo@x.Com  "] {
        let err = expect_code(
            try_register(&srv, reg(dup, OTHER_PASSWORD)).await,
            Code::AlreadyExists,
        );
        assert!(!err.message().is_empty());
    }
    // And the other way round: mixed case first, lowercase second.
    try_register(&srv, reg("Bar@Y.org", PASSWORD))
        .await
        .expect("mixed case");
    expect_code(
        try_register(&srv, reg("bar@y.org", PASSWORD)).await,
        Code::AlreadyExists,
    );
    assert_eq!(count_users(&srv, "true").await, 2);
    // The original password still works: the duplicate did not overwrite anything.
    srv.login("FOO@x.com", PASSWORD).await;
    expect_code(
        try_login(&srv, login_email("foo@x.com", OTHER_PASSWORD)).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn register_duplicate_username_in_any_case_is_already_exists() {
    let srv = TestServer::start().await;
    try_register(&srv, reg_username("one@example.com", "alice"))
        .await
        .expect("first");
    for dup in ["alice", "ALICE", "Alice", "aLiCe"] {
        expect_code(
            try_register(&srv, reg_username("two@example.com", dup)).await,
            Code::AlreadyExists,
        );
    }
    // The refused sign-ups left nothing behind: the e-mail is still free.
    assert_eq!(count_users(&srv, "email = 'two@example.com'").await, 0);
    try_register(&srv, reg_username("two@example.com", "alice2"))
        .await
        .expect("other username");
}

#[tokio::test]
async fn register_rejects_missing_and_malformed_emails() {
    let srv = TestServer::start().await;
    let bad = [
        "",
        "   ",
        "plainaddress",
        "@example.com",
        "user@",
        "user@@example.com",
        "user@b@example.com",
        "a b@example.com",
        "user@exa mple.com",
        "user@-example.com",
        "user@example-.com",
        "user@example..com",
        "user@.example.com",
        "user@example.com.",
        "<user@example.com>",
        "user@exam_ple.com",
        "\"quoted\"@example.com",
        // Not ASCII.
        "jürgen@example.com",
        "user@exämple.com",
        "用户@example.com",
        "user@example.com\u{200B}",
    ];
    for email in bad {
        assert_invalid(try_register(&srv, reg(email, PASSWORD)).await, email);
    }
    assert_eq!(count_users(&srv, "true").await, 0);
}

#[tokio::test]
async fn register_email_is_at_most_254_characters() {
    let srv = TestServer::start().await;
    let local = "a".repeat(64);
    let domain_254 = format!("{}.{}.{}", "b".repeat(63), "c".repeat(63), "d".repeat(61));
    let max = format!("{local}@{domain_254}");
    assert_eq!(max.len(), 254);
    let user = try_register(&srv, reg(&max, PASSWORD))
        .await
        .expect("254 characters");
    assert_eq!(user.email, max);

    let domain_255 = format!("{}.{}.{}", "b".repeat(63), "c".repeat(63), "e".repeat(62));
    let over = format!("{local}@{domain_255}");
    assert_eq!(over.len(), 255);
    assert_invalid(
        try_register(&srv, reg(&over, PASSWORD)).await,
        "255 characters",
    );
    let way_over = format!("{}@example.com", "a".repeat(5000));
    assert_invalid(
        try_register(&srv, reg(&way_over, PASSWORD)).await,
        "5000 characters",
    );
}

#[tokio::test]
async fn register_username_rules() {
    let srv = TestServer::start().await;
    let long = "a".repeat(33);
    let bad = [
        "ab",
        "x",
        long.as_str(),
        "a b",
        " abc",
        "al!ce",
        "x@y.z",
        "émile",
        "user/name",
        "abc\u{0}",
        "tab\tname",
        "ümlaut",
    ];
    for (i, username) in bad.iter().enumerate() {
        assert_invalid(
            try_register(&srv, reg_username(&format!("bad{i}@example.com"), username)).await,
            username,
        );
    }
    let max = "Z".repeat(32);
    for (i, username) in ["abc", "A_b.c-9", "___", max.as_str()].iter().enumerate() {
        let u = try_register(&srv, reg_username(&format!("ok{i}@example.com"), username))
            .await
            .unwrap_or_else(|e| panic!("{username:?} should be accepted: {e:?}"));
        assert_eq!(u.username, *username);
    }
}

#[tokio::test]
async fn register_name_rules() {
    let srv = TestServer::start().await;
    let with_names = |email: &str, first: &str, last: &str| proto::RegisterRequest {
        first_name: first.into(),
        last_name: last.into(),
        ..reg(email, PASSWORD)
    };
    // 100 characters is fine, counted as characters, not bytes.
    let first = "é".repeat(100);
    let last = "L".repeat(100);
    let u = try_register(&srv, with_names("ok@example.com", &first, &last))
        .await
        .expect("100 characters each");
    assert_eq!(u.first_name, first);
    assert_eq!(u.last_name, last);
    let u = try_register(
        &srv,
        with_names("ok2@example.com", "José María", "O'Brien-Núñez"),
    )
    .await
    .expect("ordinary names");
    assert_eq!(u.first_name, "José María");
    assert_eq!(u.last_name, "O'Brien-Núñez");

    let over = "a".repeat(101);
    let over_multibyte = "é".repeat(101);
    let bad = [
        over.as_str(),
        over_multibyte.as_str(),
        "Ada\nLovelace",
        "Ada\u{0}",
        "A\tda",
        "Ad\ra",
        "Ada\u{1b}[31m",
        "Ada\u{7f}",
        "A\u{85}da",
        "\u{0}",
    ];
    for (i, name) in bad.iter().enumerate() {
        assert_invalid(
            try_register(&srv, with_names(&format!("f{i}@example.com"), name, "")).await,
            &format!("first_name {name:?}"),
        );
        assert_invalid(
            try_register(&srv, with_names(&format!("l{i}@example.com"), "", name)).await,
            &format!("last_name {name:?}"),
        );
    }
    assert_eq!(count_users(&srv, "true").await, 2);
}

#[tokio::test]
async fn register_password_length_rules() {
    // Length rules only; strength has tests of its own.
    let srv = TestServer::start_with(|c| c.min_password_score = 0).await;
    let mut n = 0;
    let mut email = || {
        n += 1;
        format!("pw{n}@example.com")
    };

    // Missing or too short (counted in Unicode scalar values, not bytes).
    for short in ["", "Aa1-Bb2", "€€€€€€€", "1234567"] {
        assert_invalid(try_register(&srv, reg(&email(), short)).await, short);
    }
    // 8 characters is enough, also when they are multi-byte.
    for ok in ["Aa1-Bb2-", "€€€€€€€€"] {
        try_register(&srv, reg(&email(), ok))
            .await
            .unwrap_or_else(|e| panic!("{ok:?} should be accepted: {e:?}"));
    }
    // At most 72 bytes of UTF-8; longer is refused, never truncated.
    assert_invalid(
        try_register(&srv, reg(&email(), &"a".repeat(73))).await,
        "73 bytes",
    );
    assert_invalid(
        try_register(&srv, reg(&email(), &"€".repeat(25))).await,
        "75 bytes",
    );
    assert_invalid(
        try_register(&srv, reg(&email(), &"a".repeat(5000))).await,
        "5000 bytes",
    );
    let euro_72 = "€".repeat(24);
    let e = email();
    try_register(&srv, reg(&e, &euro_72))
        .await
        .expect("24 x 3 bytes = 72 bytes");
    srv.login(&e, &euro_72).await;

    // A 72-byte password is used whole: its 71-byte prefix does not log in.
    let pw72: String = "Correct-Horse-Battery-Staple-".repeat(3)[..72].to_owned();
    assert_eq!(pw72.len(), 72);
    let e = email();
    try_register(&srv, reg(&e, &pw72)).await.expect("72 bytes");
    srv.login(&e, &pw72).await;
    expect_code(
        try_login(&srv, login_email(&e, &pw72[..71])).await,
        Code::Unauthenticated,
    );
    let mut changed_last = pw72.clone();
    changed_last.replace_range(71..72, "!");
    assert_ne!(changed_last, pw72);
    expect_code(
        try_login(&srv, login_email(&e, &changed_last)).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn register_password_rules_apply_after_nfkc() {
    // Length rules only; strength has tests of its own.
    let srv = TestServer::start_with(|c| c.min_password_score = 0).await;
    // U+FDFA is 3 bytes but expands under NFKC to 18 characters (33 bytes): 3 of them are
    // 13 raw bytes but 99 normalized bytes, over the limit.
    let expands = format!("Ab1-{}", "\u{FDFA}".repeat(3));
    assert!(expands.len() <= 72);
    assert_invalid(
        try_register(&srv, reg("expand@example.com", &expands)).await,
        "over 72 bytes after NFKC",
    );
    // 4 ligatures are 4 characters raw but 8 ("fifififi") after NFKC: long enough.
    try_register(&srv, reg("lig@example.com", &"\u{FB01}".repeat(4)))
        .await
        .expect("8 characters after NFKC");
    srv.login("lig@example.com", "fifififi").await;
}

#[tokio::test]
async fn login_matches_the_nfkc_form_of_the_password() {
    let srv = TestServer::start().await;
    // Registered with the ligature U+FB01, logged in with plain "fi", and the other way round.
    let ligature = "Sur\u{FB01}ng-Safari-2024";
    let plain = "Surfing-Safari-2024";
    try_register(&srv, reg("lig@example.com", ligature))
        .await
        .expect("register");
    srv.login("lig@example.com", plain).await;
    srv.login("lig@example.com", ligature).await;

    try_register(&srv, reg("plain@example.com", plain))
        .await
        .expect("register");
    srv.login("plain@example.com", ligature).await;
    // Full-width forms normalize to ASCII too.
    srv.login(
        "plain@example.com",
        "Ｓｕｒｆｉｎｇ－Ｓａｆａｒｉ－２０２４",
    )
    .await;
    expect_code(
        try_login(
            &srv,
            login_email("plain@example.com", "Surfing-Safari-2025"),
        )
        .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn register_ignores_a_role_sent_by_the_client() {
    let srv = TestServer::start().await;
    // A client that sends extra fields (here a CreateUserRequest, whose field 6 is `role`) to
    // Register still gets an ordinary active ROLE_USER.
    let mut grpc = tonic::client::Grpc::new(srv.channel().await);
    grpc.ready().await.expect("ready");
    let codec =
        tonic_prost::ProstCodec::<proto::CreateUserRequest, proto::RegisterResponse>::default();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/authd.v1.AuthService/Register");
    let user = grpc
        .unary(
            Request::new(proto::CreateUserRequest {
                email: "sneaky@example.com".into(),
                password: PASSWORD.into(),
                role: proto::Role::Admin as i32,
                ..Default::default()
            }),
            path,
            codec,
        )
        .await
        .expect("register with an extra role field")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(user.role, proto::Role::User as i32);
    assert!(user.active);

    let pair = srv.login("sneaky@example.com", PASSWORD).await;
    let v = srv.validate(&pair.access_token).await;
    assert!(v.valid);
    assert_eq!(v.role, proto::Role::User as i32);
    assert_eq!(
        try_get_me(&srv, &pair.access_token)
            .await
            .expect("GetMe")
            .role,
        proto::Role::User as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_case_variant_sign_ups_create_one_account() {
    let srv = TestServer::start_with(|c| c.db_pool_size = 10).await;
    let variants = [
        "race.user@example.com",
        "Race.User@Example.com",
        "RACE.USER@EXAMPLE.COM",
        "race.USER@example.COM",
        "Race.user@example.com",
        "rACE.uSER@eXAMPLE.cOM",
        "  race.user@Example.com",
        "RACE.user@example.com  ",
    ];
    let client = srv.auth().await;
    let mut set = JoinSet::new();
    for (i, email) in variants.iter().enumerate() {
        let mut client = client.clone();
        let req = proto::RegisterRequest {
            email: (*email).into(),
            password: PASSWORD.into(),
            first_name: format!("attempt{i}"),
            ..Default::default()
        };
        set.spawn(async move { client.register(req).await.map(|r| r.into_inner()) });
    }
    let results = set.join_all().await;
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 1, "exactly one sign-up wins: {results:?}");
    for r in &results {
        if let Err(s) = r {
            assert_eq!(s.code(), Code::AlreadyExists, "{s:?}");
        }
    }
    assert_eq!(
        ok[0].user.as_ref().expect("user").email,
        "race.user@example.com"
    );
    assert_eq!(count_users(&srv, "true").await, 1);
    srv.login("Race.User@example.com", PASSWORD).await;

    // Usernames that differ only in case, on different e-mails, race the same way.
    let names = [
        "Racer", "racer", "RACER", "rAcEr", "RaCeR", "racER", "RACer", "raceR",
    ];
    let mut set = JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let mut client = client.clone();
        let req = reg_username(&format!("racer{i}@example.com"), name);
        set.spawn(async move { client.register(req).await.map(|r| r.into_inner()) });
    }
    let results = set.join_all().await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "exactly one username sign-up wins: {results:?}"
    );
    for r in &results {
        if let Err(s) = r {
            assert_eq!(s.code(), Code::AlreadyExists, "{s:?}");
        }
    }
    assert_eq!(count_users(&srv, "lower(username) = 'racer'").await, 1);
    assert_eq!(count_users(&srv, "true").await, 2);
}

// ----- Login ---------------------------------------------------------------------------------------

#[tokio::test]
async fn login_by_email_ignores_case_and_surrounding_space() {
    let srv = TestServer::start().await;
    let user = try_register(&srv, reg("Mixed.Case@Example.com", PASSWORD))
        .await
        .expect("register");
    for email in [
        "mixed.case@example.com",
        "Mixed.Case@Example.com",
        "MIXED.CASE@EXAMPLE.COM",
        "  mixed.CASE@example.com \t",
    ] {
        let pair = try_login(&srv, login_email(email, PASSWORD))
            .await
            .unwrap_or_else(|e| panic!("login as {email:?}: {e:?}"));
        let v = srv.validate(&pair.access_token).await;
        assert!(v.valid);
        assert_eq!(v.user_id, user.id);
        assert_eq!(v.email, "mixed.case@example.com");
    }
}

#[tokio::test]
async fn login_by_username_ignores_case() {
    let srv = TestServer::start().await;
    let user = try_register(&srv, reg_username("camel@example.com", "CamelUser"))
        .await
        .expect("register");
    for name in ["CamelUser", "cameluser", "CAMELUSER", "cAMELuSER"] {
        let pair = try_login(&srv, login_username(name, PASSWORD))
            .await
            .unwrap_or_else(|e| panic!("login as {name:?}: {e:?}"));
        let me = try_get_me(&srv, &pair.access_token).await.expect("GetMe");
        assert_eq!(me.id, user.id);
        assert_eq!(me.username, "CamelUser");
    }
    // The identifier kinds are not interchangeable.
    expect_code(
        try_login(&srv, login_username("camel@example.com", PASSWORD)).await,
        Code::Unauthenticated,
    );
    expect_code(
        try_login(&srv, login_email("CamelUser", PASSWORD)).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn login_failures_are_indistinguishable() {
    let srv = TestServer::start().await;
    try_register(&srv, reg_username("known@example.com", "known"))
        .await
        .expect("register");

    let wrong_password = expect_code(
        try_login(&srv, login_email("known@example.com", OTHER_PASSWORD)).await,
        Code::Unauthenticated,
    );
    let message = wrong_password.message().to_owned();
    assert!(!message.is_empty());
    let lower = message.to_lowercase();
    for leak in ["not found", "unknown", "no such", "exist", "hash", "bcrypt"] {
        assert!(!lower.contains(leak), "message leaks {leak:?}: {message:?}");
    }

    let cases: Vec<(&str, proto::LoginRequest)> = vec![
        (
            "unknown e-mail",
            login_email("nobody@example.com", PASSWORD),
        ),
        (
            "unknown e-mail, wrong password",
            login_email("nobody@example.com", OTHER_PASSWORD),
        ),
        (
            "wrong password by username",
            login_username("known", OTHER_PASSWORD),
        ),
        ("unknown username", login_username("nobody", PASSWORD)),
        // Credentials that cannot match are bad credentials, not INVALID_ARGUMENT.
        ("malformed e-mail", login_email("not-an-email", PASSWORD)),
        ("malformed e-mail 2", login_email("a@b@c", PASSWORD)),
        (
            "non-ASCII e-mail",
            login_email("jürgen@example.com", PASSWORD),
        ),
        (
            "malformed username",
            login_username("no spaces allowed", PASSWORD),
        ),
        ("too short username", login_username("ab", PASSWORD)),
        (
            "password over 72 bytes",
            login_email("known@example.com", &"a".repeat(73)),
        ),
        (
            "password of 200 bytes",
            login_email("known@example.com", &"b".repeat(200)),
        ),
        (
            "password over 72 bytes after NFKC",
            login_email("known@example.com", &"\u{FDFA}".repeat(3)),
        ),
        (
            "password too short to exist",
            login_email("known@example.com", "short"),
        ),
        (
            "wrong case of password",
            login_email("known@example.com", &PASSWORD.to_uppercase()),
        ),
    ];
    for (what, req) in cases {
        let err = expect_code(try_login(&srv, req).await, Code::Unauthenticated);
        assert_eq!(
            err.message(),
            message,
            "{what}: same message as a wrong password"
        );
        assert_eq!(
            reason(&err),
            reason(&wrong_password),
            "{what}: same ErrorInfo as a wrong password"
        );
    }
    // A 73-byte password whose first 72 bytes are the real password does not log in either.
    let pw72: String = "Correct-Horse-Battery-Staple-".repeat(3)[..72].to_owned();
    try_register(&srv, reg("long@example.com", &pw72))
        .await
        .expect("register");
    let err = expect_code(
        try_login(&srv, login_email("long@example.com", &format!("{pw72}x"))).await,
        Code::Unauthenticated,
    );
    assert_eq!(err.message(), message);
}

#[tokio::test]
async fn login_missing_fields_are_invalid_argument() {
    let srv = TestServer::start().await;
    srv.register("someone@example.com", PASSWORD).await;
    let cases = [
        (
            "no identifier",
            proto::LoginRequest {
                identifier: None,
                password: PASSWORD.into(),
            },
        ),
        ("empty e-mail", login_email("", PASSWORD)),
        ("blank e-mail", login_email("   ", PASSWORD)),
        ("empty username", login_username("", PASSWORD)),
        ("empty password", login_email("someone@example.com", "")),
        ("empty password by username", login_username("someone", "")),
    ];
    for (what, req) in cases {
        let err = try_login(&srv, req).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
}

#[tokio::test]
async fn login_returns_a_complete_token_pair() {
    let srv = TestServer::start().await;
    let user = srv.register("pair@example.com", PASSWORD).await;
    let pair = srv.login("pair@example.com", PASSWORD).await;
    assert_eq!(pair.token_type, "Bearer");
    assert_eq!(
        pair.expires_in, 900,
        "access tokens last 15 minutes by default"
    );
    assert_eq!(
        pair.refresh_expires_in,
        7 * DAY,
        "idle lifetime is 7 days by default"
    );
    uuid::Uuid::parse_str(&pair.session_id).expect("session_id is a UUID");
    assert_eq!(pair.access_token.split('.').count(), 3, "a JWT");
    assert!(!pair.refresh_token.is_empty());
    assert_ne!(pair.refresh_token, pair.access_token);
    assert!(
        !pair.refresh_token.contains('.'),
        "the refresh token is opaque, not a JWT"
    );

    let v = srv.validate(&pair.access_token).await;
    assert!(v.valid);
    assert_eq!(v.user_id, user.id);
    assert_eq!(v.session_id, pair.session_id);
    assert_eq!(v.role, proto::Role::User as i32);
    assert_eq!(secs(v.issue_time), now_secs(&srv));
    assert_eq!(secs(v.expire_time) - secs(v.issue_time), 900);
}

#[tokio::test]
async fn login_token_lifetimes_follow_the_config() {
    let srv = TestServer::start_with(|c| {
        c.access_token_ttl = std::time::Duration::from_secs(120);
        c.refresh_token_ttl = std::time::Duration::from_secs(3600);
    })
    .await;
    srv.register("ttl@example.com", PASSWORD).await;
    let pair = srv.login("ttl@example.com", PASSWORD).await;
    assert_eq!(pair.expires_in, 120);
    assert_eq!(pair.refresh_expires_in, 3600);
}

#[tokio::test]
async fn refresh_expires_in_is_capped_by_the_absolute_lifetime() {
    let srv = TestServer::start_with(|c| {
        c.refresh_token_ttl = std::time::Duration::from_secs(7 * DAY as u64);
        c.session_max_lifetime = std::time::Duration::from_secs(10 * DAY as u64);
    })
    .await;
    srv.register("cap@example.com", PASSWORD).await;
    let pair = srv.login("cap@example.com", PASSWORD).await;
    assert_eq!(
        pair.refresh_expires_in,
        7 * DAY,
        "idle limit is the smaller at login"
    );

    srv.clock.advance(ChronoDuration::days(5));
    let next = try_refresh(&srv, &pair.refresh_token)
        .await
        .expect("refresh");
    assert_eq!(
        next.refresh_expires_in,
        5 * DAY,
        "min(7 days idle, 10 - 5 = 5 days left of the absolute limit)"
    );
    assert_eq!(next.expires_in, 900);

    // The session really ends then, not 7 days later.
    srv.clock
        .advance(ChronoDuration::days(5) - ChronoDuration::seconds(1));
    let last = try_refresh(&srv, &next.refresh_token)
        .await
        .expect("one second left");
    assert_eq!(last.refresh_expires_in, 1);
    srv.clock.advance(ChronoDuration::seconds(1));
    expect_code(
        try_refresh(&srv, &last.refresh_token).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn login_refresh_expires_in_when_the_absolute_lifetime_is_shorter() {
    let srv = TestServer::start_with(|c| {
        c.refresh_token_ttl = std::time::Duration::from_secs(7 * DAY as u64);
        c.session_max_lifetime = std::time::Duration::from_secs(3 * DAY as u64);
    })
    .await;
    srv.register("short@example.com", PASSWORD).await;
    let pair = srv.login("short@example.com", PASSWORD).await;
    assert_eq!(pair.refresh_expires_in, 3 * DAY);
    assert_eq!(pair.expires_in, 900);
}

#[tokio::test]
async fn login_to_a_deactivated_account() {
    let srv = TestServer::start().await;
    srv.register("off@example.com", PASSWORD).await;
    let unknown = expect_code(
        try_login(&srv, login_email("nobody@example.com", PASSWORD)).await,
        Code::Unauthenticated,
    );
    set_active(&srv, "off@example.com", false).await;

    let err = expect_code(
        try_login(&srv, login_email("off@example.com", PASSWORD)).await,
        Code::PermissionDenied,
    );
    assert_eq!(err.message(), "account disabled");
    // By username too? It has none; by e-mail in another case:
    expect_code(
        try_login(&srv, login_email("OFF@example.com", PASSWORD)).await,
        Code::PermissionDenied,
    );
    // A wrong password does not reveal that the account exists or is disabled.
    let err = expect_code(
        try_login(&srv, login_email("off@example.com", OTHER_PASSWORD)).await,
        Code::Unauthenticated,
    );
    assert_eq!(err.message(), unknown.message());
    assert_eq!(count_users(&srv, "last_login_time IS NOT NULL").await, 0);

    set_active(&srv, "off@example.com", true).await;
    srv.login("off@example.com", PASSWORD).await;
}

#[tokio::test]
async fn each_login_is_a_new_session_and_sets_last_login_time() {
    let srv = TestServer::start().await;
    srv.register("multi@example.com", PASSWORD).await;
    let first_login = now_secs(&srv);
    let a = srv.login("multi@example.com", PASSWORD).await;
    let me = try_get_me(&srv, &a.access_token).await.expect("GetMe");
    assert_eq!(secs(me.last_login_time), first_login);

    srv.clock.advance(ChronoDuration::hours(1));
    let b = srv.login("multi@example.com", PASSWORD).await;
    srv.clock.advance(ChronoDuration::minutes(1));
    let c = srv.login("multi@example.com", PASSWORD).await;
    let ids = [&a.session_id, &b.session_id, &c.session_id];
    assert_ne!(ids[0], ids[1]);
    assert_ne!(ids[1], ids[2]);
    assert_ne!(ids[0], ids[2]);
    assert_ne!(a.refresh_token, b.refresh_token);
    assert_ne!(b.refresh_token, c.refresh_token);

    let me = try_get_me(&srv, &c.access_token).await.expect("GetMe");
    assert_eq!(secs(me.last_login_time), now_secs(&srv));
    assert_eq!(secs(me.last_login_time), first_login + 3600 + 60);
    // The sessions are independent and all live. (`a` is 61 minutes old, so only b and c's
    // access tokens are still unexpired; a's refresh token still works.)
    for p in [&b, &c] {
        let v = srv.validate(&p.access_token).await;
        assert!(v.valid);
        assert_eq!(v.session_id, p.session_id);
    }
    let a2 = try_refresh(&srv, &a.refresh_token)
        .await
        .expect("refresh a");
    assert_eq!(a2.session_id, a.session_id);
    // A failed login does not touch last_login_time.
    srv.clock.advance(ChronoDuration::minutes(1));
    expect_code(
        try_login(&srv, login_email("multi@example.com", OTHER_PASSWORD)).await,
        Code::Unauthenticated,
    );
    let me = try_get_me(&srv, &a2.access_token).await.expect("GetMe");
    assert_eq!(secs(me.last_login_time), first_login + 3600 + 60);
}

// ----- Refresh -------------------------------------------------------------------------------------

#[tokio::test]
async fn refresh_rotates_the_pair() {
    let srv = TestServer::start().await;
    let (user, p0) = srv.user_session().await;
    srv.clock.advance(ChronoDuration::minutes(1));
    let p1 = try_refresh(&srv, &p0.refresh_token).await.expect("refresh");
    assert_ne!(p1.refresh_token, p0.refresh_token);
    assert_ne!(p1.access_token, p0.access_token);
    assert_eq!(p1.session_id, p0.session_id, "the session stays the same");
    assert_eq!(p1.token_type, "Bearer");
    assert_eq!(p1.expires_in, 900);
    assert_eq!(p1.refresh_expires_in, 7 * DAY, "the idle window restarts");

    let v = srv.validate(&p1.access_token).await;
    assert!(v.valid);
    assert_eq!(v.user_id, user.id);
    assert_eq!(v.session_id, p0.session_id);
    assert_eq!(secs(v.issue_time), now_secs(&srv));
    assert_eq!(
        try_get_me(&srv, &p1.access_token).await.expect("GetMe").id,
        user.id
    );

    // The chain goes on, each token different.
    let p2 = try_refresh(&srv, &p1.refresh_token)
        .await
        .expect("refresh again");
    let p3 = try_refresh(&srv, &p2.refresh_token)
        .await
        .expect("and again");
    let all = [&p0, &p1, &p2, &p3].map(|p| p.refresh_token.clone());
    for i in 0..all.len() {
        for j in i + 1..all.len() {
            assert_ne!(all[i], all[j]);
        }
    }
    assert_access_live(&srv, &p3.access_token).await;
}

#[tokio::test]
async fn refresh_reuse_in_strict_mode_revokes_the_session() {
    let srv = TestServer::start_with(|c| c.refresh_reuse_grace = std::time::Duration::ZERO).await;
    let (user, p0) = srv.user_session().await;
    // Another session of the same user, which reuse in the first must not touch.
    let other = srv.login(&user.email, PASSWORD).await;

    let p1 = try_refresh(&srv, &p0.refresh_token).await.expect("rotate");
    let p2 = try_refresh(&srv, &p1.refresh_token).await.expect("rotate");
    assert_access_live(&srv, &p2.access_token).await;

    // Presenting the spent p1 (even immediately, the grace window is off) is reuse.
    let err = expect_code(
        try_refresh(&srv, &p1.refresh_token).await,
        Code::Unauthenticated,
    );
    assert!(!err.message().is_empty());
    // The whole session is revoked: the newest refresh token and every access token.
    expect_code(
        try_refresh(&srv, &p2.refresh_token).await,
        Code::Unauthenticated,
    );
    assert_access_dead(&srv, &p2.access_token).await;
    assert_access_dead(&srv, &p0.access_token).await;
    // The other session lives on.
    assert_access_live(&srv, &other.access_token).await;
    try_refresh(&srv, &other.refresh_token)
        .await
        .expect("other session");
}

#[tokio::test]
async fn refresh_reuse_of_the_immediate_predecessor_in_strict_mode() {
    let srv = TestServer::start_with(|c| c.refresh_reuse_grace = std::time::Duration::ZERO).await;
    let (_, p0) = srv.user_session().await;
    let p1 = try_refresh(&srv, &p0.refresh_token).await.expect("rotate");
    expect_code(
        try_refresh(&srv, &p0.refresh_token).await,
        Code::Unauthenticated,
    );
    assert_session_dead(&srv, &p1).await;
}

#[tokio::test]
async fn refresh_grace_window_returns_the_same_successor() {
    let srv = TestServer::start().await; // default grace: 5s
    let (user, p0) = srv.user_session().await;
    let p1 = try_refresh(&srv, &p0.refresh_token).await.expect("rotate");

    srv.clock.advance(ChronoDuration::seconds(2));
    let again = try_refresh(&srv, &p0.refresh_token)
        .await
        .expect("immediate predecessor inside the grace window");
    assert_eq!(again.refresh_token, p1.refresh_token, "the same successor");
    assert_eq!(again.session_id, p1.session_id);
    assert_eq!(again.token_type, "Bearer");
    assert_access_live(&srv, &again.access_token).await;
    assert_access_live(&srv, &p1.access_token).await;

    // Later, but still inside the 5s window, still a replay.
    srv.clock.advance(ChronoDuration::seconds(2));
    let later = try_refresh(&srv, &p0.refresh_token).await.expect("at 4s");
    assert_eq!(later.refresh_token, p1.refresh_token);

    // The session stays alive: the successor rotates normally.
    let p2 = try_refresh(&srv, &p1.refresh_token)
        .await
        .expect("successor rotates");
    assert_ne!(p2.refresh_token, p1.refresh_token);
    // Now p1 is the immediate predecessor and replays to p2.
    let again = try_refresh(&srv, &p1.refresh_token)
        .await
        .expect("p1 replays");
    assert_eq!(again.refresh_token, p2.refresh_token);
    let me = try_get_me(&srv, &p2.access_token).await.expect("GetMe");
    assert_eq!(me.id, user.id);
    try_refresh(&srv, &p2.refresh_token)
        .await
        .expect("p2 rotates");
}

#[tokio::test]
async fn refresh_after_the_grace_window_is_reuse() {
    let srv = TestServer::start().await;
    let (_, p0) = srv.user_session().await;
    let p1 = try_refresh(&srv, &p0.refresh_token).await.expect("rotate");
    srv.clock.advance(ChronoDuration::seconds(6));
    expect_code(
        try_refresh(&srv, &p0.refresh_token).await,
        Code::Unauthenticated,
    );
    assert_session_dead(&srv, &p1).await;
    assert_access_dead(&srv, &p0.access_token).await;
}

#[tokio::test]
async fn refresh_two_generations_back_is_reuse_even_inside_the_window() {
    let srv = TestServer::start().await;
    let (_, p0) = srv.user_session().await;
    let p1 = try_refresh(&srv, &p0.refresh_token).await.expect("rotate");
    let p2 = try_refresh(&srv, &p1.refresh_token).await.expect("rotate");
    // No time has passed at all, but p0 is not the immediate predecessor of the live token.
    expect_code(
        try_refresh(&srv, &p0.refresh_token).await,
        Code::Unauthenticated,
    );
    assert_session_dead(&srv, &p2).await;
    // And after revocation even the immediate predecessor no longer replays.
    expect_code(
        try_refresh(&srv, &p1.refresh_token).await,
        Code::Unauthenticated,
    );
}

/// In strict mode, N clients refreshing the same token at once: the row lock serializes them, the
/// first rotates, and every later one presents a now-spent token, which is reuse. So exactly one
/// succeeds, the rest get UNAUTHENTICATED, and the session (including the winner's fresh pair)
/// ends up revoked. This is what the issue asks: strict mode (grace 0) treats any re-presentation as
/// theft; the grace window exists precisely so that concurrent refreshes do not log a client out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refresh_in_strict_mode() {
    let srv = TestServer::start_with(|c| {
        c.refresh_reuse_grace = std::time::Duration::ZERO;
        c.db_pool_size = 12;
    })
    .await;
    let (user, p0) = srv.user_session().await;
    let other = srv.login(&user.email, PASSWORD).await;
    let results = race_refresh(&srv, &p0.refresh_token, 10).await;

    let winners: Vec<&proto::LoginResponse> =
        results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one refresh wins: {results:?}");
    for r in &results {
        if let Err(s) = r {
            assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        }
    }
    let winner = winners[0];
    assert_eq!(winner.session_id, p0.session_id);
    // The losers were reuse, so the session is revoked, the winner's pair included.
    assert_session_dead(&srv, winner).await;
    assert_access_dead(&srv, &p0.access_token).await;
    // Only that session.
    assert_access_live(&srv, &other.access_token).await;
}

/// With the grace window, the same race is harmless: every caller gets the same successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refresh_in_grace_mode() {
    let srv = TestServer::start_with(|c| c.db_pool_size = 12).await;
    let (_, p0) = srv.user_session().await;
    let results = race_refresh(&srv, &p0.refresh_token, 10).await;

    let pairs: Vec<proto::LoginResponse> = results
        .into_iter()
        .map(|r| r.expect("every concurrent refresh succeeds inside the grace window"))
        .collect();
    let successor = &pairs[0].refresh_token;
    assert_ne!(successor, &p0.refresh_token);
    for p in &pairs {
        assert_eq!(&p.refresh_token, successor, "all get the same successor");
        assert_eq!(p.session_id, p0.session_id);
    }
    for p in &pairs {
        assert_access_live(&srv, &p.access_token).await;
    }
    let next = try_refresh(&srv, successor)
        .await
        .expect("the successor rotates");
    assert_access_live(&srv, &next.access_token).await;
}

async fn race_refresh(
    srv: &TestServer,
    refresh_token: &str,
    n: usize,
) -> Vec<Result<proto::LoginResponse, Status>> {
    let mut set = JoinSet::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    for _ in 0..n {
        // One connection per caller, as separate clients (or replicas' clients) would have.
        let mut client = srv.auth().await;
        let barrier = barrier.clone();
        let token = refresh_token.to_owned();
        set.spawn(async move {
            barrier.wait().await;
            client
                .refresh(proto::RefreshRequest {
                    refresh_token: token,
                })
                .await
                .map(|r| r.into_inner().into())
        });
    }
    set.join_all().await
}

#[tokio::test]
async fn refresh_token_expires_when_idle() {
    let srv = TestServer::start().await; // idle lifetime 7 days
    let (_, p0) = srv.user_session().await;
    // Used just before the idle limit: fine, and the window restarts.
    srv.clock
        .advance(ChronoDuration::days(7) - ChronoDuration::minutes(1));
    let p1 = try_refresh(&srv, &p0.refresh_token)
        .await
        .expect("within the idle window");
    assert_eq!(p1.refresh_expires_in, 7 * DAY);
    srv.clock.advance(ChronoDuration::days(6));
    let p2 = try_refresh(&srv, &p1.refresh_token)
        .await
        .expect("within the new window");
    // Unused for longer than the idle lifetime: gone.
    srv.clock
        .advance(ChronoDuration::days(7) + ChronoDuration::seconds(1));
    let err = expect_code(
        try_refresh(&srv, &p2.refresh_token).await,
        Code::Unauthenticated,
    );
    assert!(!err.message().is_empty());
}

#[tokio::test]
async fn refresh_token_expires_at_the_absolute_lifetime() {
    let srv = TestServer::start_with(|c| {
        c.refresh_token_ttl = std::time::Duration::from_secs(3600);
        c.session_max_lifetime = std::time::Duration::from_secs(3 * 3600);
    })
    .await;
    let (_, p0) = srv.user_session().await;
    let mut pair = p0;
    // Refresh every 50 minutes, always inside the 1-hour idle window.
    for step in 1..=3 {
        srv.clock.advance(ChronoDuration::minutes(50));
        pair = try_refresh(&srv, &pair.refresh_token)
            .await
            .unwrap_or_else(|e| panic!("refresh {step}: {e:?}"));
        let left = 3 * 3600 - step * 50 * 60;
        assert_eq!(
            pair.refresh_expires_in,
            left.min(3600),
            "after {step} refreshes"
        );
    }
    // 170 minutes in: 10 minutes left of the absolute limit.
    srv.clock.advance(ChronoDuration::minutes(20));
    pair = try_refresh(&srv, &pair.refresh_token)
        .await
        .expect("170 minutes");
    assert_eq!(pair.refresh_expires_in, 600);
    assert!(pair.expires_in <= 900);
    // 190 minutes in: the idle window would still be open, the absolute limit is not.
    srv.clock.advance(ChronoDuration::minutes(20));
    expect_code(
        try_refresh(&srv, &pair.refresh_token).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn refresh_input_checks() {
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    for empty in ["", "   "] {
        let err = expect_code(try_refresh(&srv, empty).await, Code::InvalidArgument);
        assert!(!err.message().is_empty());
    }
    let huge = format!("rt_{}", "A".repeat(600));
    expect_code(try_refresh(&srv, &huge).await, Code::InvalidArgument);
    expect_code(
        try_refresh(&srv, &"x".repeat(513)).await,
        Code::InvalidArgument,
    );

    // Well-sized but wrong: bad credentials.
    for wrong in [
        "garbage".to_owned(),
        "x".repeat(512),
        format!("rt_{}", "A".repeat(43)),
        pair.session_id.clone(),
        format!("{}x", pair.refresh_token),
        pair.refresh_token[..pair.refresh_token.len() - 1].to_owned(),
    ] {
        expect_code(try_refresh(&srv, &wrong).await, Code::Unauthenticated);
    }
    // None of that spent or revoked the real token.
    try_refresh(&srv, &pair.refresh_token)
        .await
        .expect("still good");
}

// ----- Logout --------------------------------------------------------------------------------------

#[tokio::test]
async fn logout_with_a_refresh_token_needs_no_bearer() {
    let srv = TestServer::start().await;
    let (user, pair) = srv.user_session().await;
    let other = srv.login(&user.email, PASSWORD).await;

    logout_with_refresh(&srv, &pair.refresh_token)
        .await
        .expect("logout by refresh token, no bearer");
    assert_session_dead(&srv, &pair).await;
    // Only that session.
    assert_access_live(&srv, &other.access_token).await;
    // Again: already revoked is still OK (RFC 7009).
    logout_with_refresh(&srv, &pair.refresh_token)
        .await
        .expect("already revoked");
}

#[tokio::test]
async fn logout_with_a_rotated_sessions_current_refresh_token() {
    let srv = TestServer::start().await;
    let (_, p0) = srv.user_session().await;
    let p1 = try_refresh(&srv, &p0.refresh_token).await.expect("rotate");
    logout_with_refresh(&srv, &p1.refresh_token)
        .await
        .expect("logout");
    assert_session_dead(&srv, &p1).await;
    assert_access_dead(&srv, &p0.access_token).await;
}

#[tokio::test]
async fn logout_with_an_unknown_refresh_token_is_ok() {
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    for token in [
        "garbage".to_owned(),
        format!("rt_{}", "A".repeat(43)),
        "x".repeat(512),
        pair.session_id.clone(),
    ] {
        logout_with_refresh(&srv, &token)
            .await
            .unwrap_or_else(|e| panic!("unknown token {token:?}: {e:?}"));
    }
    // An unknown token with a bearer: the token is what counts; the bearer's session is untouched.
    srv.auth()
        .await
        .logout(with_bearer(
            proto::LogoutRequest {
                refresh_token: "not-a-real-token".into(),
            },
            &pair.access_token,
        ))
        .await
        .expect("unknown token with a bearer");
    assert_access_live(&srv, &pair.access_token).await;
    // Over the size limit is malformed input.
    expect_code(
        logout_with_refresh(&srv, &"x".repeat(513)).await,
        Code::InvalidArgument,
    );
    assert_access_live(&srv, &pair.access_token).await;
}

#[tokio::test]
async fn logout_without_a_refresh_token_needs_a_bearer() {
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    let logout = |req: Request<proto::LogoutRequest>| {
        let srv = &srv;
        async move { srv.auth().await.logout(req).await.map(|r| r.into_inner()) }
    };
    let err = expect_code(
        logout(Request::new(proto::LogoutRequest::default())).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_MISSING"));
    let err = expect_code(
        logout(with_bearer(proto::LogoutRequest::default(), "garbage")).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"));
    // A refresh token is not a bearer token.
    let err = expect_code(
        logout(with_bearer(
            proto::LogoutRequest::default(),
            &pair.refresh_token,
        ))
        .await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"));
    assert_access_live(&srv, &pair.access_token).await;

    srv.clock.advance(ChronoDuration::minutes(16));
    let err = expect_code(
        logout(with_bearer(
            proto::LogoutRequest::default(),
            &pair.access_token,
        ))
        .await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_EXPIRED"));
    // Nothing was revoked by the failed calls.
    try_refresh(&srv, &pair.refresh_token)
        .await
        .expect("refresh");
}

#[tokio::test]
async fn logout_with_a_bearer_revokes_only_that_session() {
    let srv = TestServer::start().await;
    let (user, a) = srv.user_session().await;
    let b = srv.login(&user.email, PASSWORD).await;
    let (_, stranger) = srv.user_session().await;

    srv.auth()
        .await
        .logout(with_bearer(
            proto::LogoutRequest::default(),
            &a.access_token,
        ))
        .await
        .expect("logout");
    assert_session_dead(&srv, &a).await;
    // The same user's other session, and other users, are untouched.
    assert_access_live(&srv, &b.access_token).await;
    try_refresh(&srv, &b.refresh_token)
        .await
        .expect("b refreshes");
    assert_access_live(&srv, &stranger.access_token).await;

    // The revoked bearer can't log out again.
    let err = expect_code(
        srv.auth()
            .await
            .logout(with_bearer(
                proto::LogoutRequest::default(),
                &a.access_token,
            ))
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"));
}

// ----- LogoutAll -----------------------------------------------------------------------------------

#[tokio::test]
async fn logout_all_revokes_every_session_of_the_caller() {
    let srv = TestServer::start().await;
    let (user, s1) = srv.user_session().await;
    let s2 = srv.login(&user.email, PASSWORD).await;
    let s3 = srv.login(&user.email, PASSWORD).await;
    let ended = srv.login(&user.email, PASSWORD).await;
    logout_with_refresh(&srv, &ended.refresh_token)
        .await
        .expect("logout one");
    // s3 has rotated: still one session.
    let s3 = try_refresh(&srv, &s3.refresh_token)
        .await
        .expect("rotate s3");
    let (_, stranger) = srv.user_session().await;

    let revoked = logout_all(&srv, &s2.access_token).await.expect("LogoutAll");
    assert_eq!(
        revoked, 3,
        "the three live sessions, the current one included"
    );
    for s in [&s1, &s2, &s3] {
        assert_session_dead(&srv, s).await;
    }
    // Other users keep theirs.
    assert_access_live(&srv, &stranger.access_token).await;
    try_refresh(&srv, &stranger.refresh_token)
        .await
        .expect("stranger refreshes");

    // The caller's bearer is revoked too.
    let err = expect_code(
        logout_all(&srv, &s2.access_token).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"));
    // A new login works and is a fresh, lone session.
    let fresh = srv.login(&user.email, PASSWORD).await;
    assert_eq!(
        logout_all(&srv, &fresh.access_token)
            .await
            .expect("LogoutAll"),
        1
    );
}

#[tokio::test]
async fn logout_all_does_not_count_expired_sessions() {
    let srv =
        TestServer::start_with(|c| c.refresh_token_ttl = std::time::Duration::from_secs(3600))
            .await;
    let (user, old) = srv.user_session().await;
    srv.clock.advance(ChronoDuration::hours(2));
    let current = srv.login(&user.email, PASSWORD).await;
    // `old` idled out an hour ago: only the current session is live.
    assert_eq!(
        logout_all(&srv, &current.access_token)
            .await
            .expect("LogoutAll"),
        1
    );
    assert_session_dead(&srv, &current).await;
    expect_code(
        try_refresh(&srv, &old.refresh_token).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn logout_all_needs_a_bearer() {
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    let err = expect_code(
        srv.auth()
            .await
            .logout_all(proto::LogoutAllRequest {})
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_MISSING"));
    let err = expect_code(logout_all(&srv, "garbage").await, Code::Unauthenticated);
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"));
    let err = expect_code(
        logout_all(&srv, &pair.refresh_token).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"));
    assert_access_live(&srv, &pair.access_token).await;
}

// ----- GetMe ---------------------------------------------------------------------------------------

#[tokio::test]
async fn get_me_returns_the_callers_profile() {
    let srv = TestServer::start().await;
    let registered = try_register(
        &srv,
        proto::RegisterRequest {
            email: "Me@Example.com".into(),
            password: PASSWORD.into(),
            username: "MeMyself".into(),
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
        },
    )
    .await
    .expect("register");
    let (other, other_pair) = srv.user_session().await;
    srv.clock.advance(ChronoDuration::minutes(3));
    let pair = try_login(&srv, login_username("memyself", PASSWORD))
        .await
        .expect("login");

    let me = try_get_me(&srv, &pair.access_token).await.expect("GetMe");
    assert_eq!(me.id, registered.id);
    assert_eq!(me.email, "me@example.com");
    assert_eq!(me.username, "MeMyself");
    assert_eq!(me.first_name, "Ada");
    assert_eq!(me.last_name, "Lovelace");
    assert_eq!(me.role, proto::Role::User as i32);
    assert!(me.active);
    assert_eq!(me.create_time, registered.create_time);
    assert_eq!(secs(me.last_login_time), now_secs(&srv));

    // Each bearer sees its own account.
    let them = try_get_me(&srv, &other_pair.access_token)
        .await
        .expect("GetMe");
    assert_eq!(them.id, other.id);
    assert_eq!(them.email, other.email);
}

#[tokio::test]
async fn get_me_rejects_missing_invalid_expired_and_revoked_tokens() {
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    let get_me = |req: Request<proto::GetMeRequest>| {
        let srv = &srv;
        async move { srv.users().await.get_me(req).await.map(|r| r.into_inner()) }
    };

    let err = expect_code(
        get_me(Request::new(proto::GetMeRequest {})).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_MISSING"));

    for garbage in ["garbage", "a.b.c", &pair.refresh_token] {
        let err = expect_code(
            get_me(with_bearer(proto::GetMeRequest {}, garbage)).await,
            Code::Unauthenticated,
        );
        assert_eq!(
            reason(&err).as_deref(),
            Some("TOKEN_INVALID"),
            "{garbage:?}"
        );
    }
    // A tampered signature.
    let mut tampered = pair.access_token.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let err = expect_code(
        get_me(with_bearer(proto::GetMeRequest {}, &tampered)).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"));
    // Not a bearer scheme.
    let mut basic = Request::new(proto::GetMeRequest {});
    basic.metadata_mut().insert(
        "authorization",
        format!("Basic {}", pair.access_token)
            .parse()
            .expect("metadata"),
    );
    expect_code(get_me(basic).await, Code::Unauthenticated);

    // Still good before expiry...
    srv.clock.advance(ChronoDuration::minutes(14));
    try_get_me(&srv, &pair.access_token)
        .await
        .expect("14 minutes old");
    // ...expired after: TOKEN_EXPIRED tells the client to refresh, and refreshing works.
    srv.clock.advance(ChronoDuration::minutes(2));
    let err = expect_code(
        try_get_me(&srv, &pair.access_token).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_EXPIRED"));
    assert!(!srv.validate(&pair.access_token).await.valid);
    let fresh = try_refresh(&srv, &pair.refresh_token)
        .await
        .expect("refresh");
    try_get_me(&srv, &fresh.access_token)
        .await
        .expect("fresh token");

    // Revoked: TOKEN_INVALID (log in again), not TOKEN_EXPIRED.
    logout_with_refresh(&srv, &fresh.refresh_token)
        .await
        .expect("logout");
    let err = expect_code(
        try_get_me(&srv, &fresh.access_token).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&err).as_deref(), Some("TOKEN_INVALID"));
}

// ----- bcrypt placement ----------------------------------------------------------------------------

/// Login must run bcrypt on the bcrypt pool, never on a runtime worker. Proven without timing: on a
/// single-threaded runtime, with a bcrypt pool of exactly one thread, we occupy that thread. While it
/// is held, the runtime keeps serving (a ticker advances, and GetMe and Refresh, which need the
/// database but no bcrypt, complete), yet no Login can finish: each one waits in the pool's queue.
/// Had bcrypt run inline on the runtime thread, the logins would have completed. Once the thread is
/// released, every login succeeds.
#[test]
fn login_runs_bcrypt_on_the_bcrypt_pool() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let srv = TestServer::start_with(|c| {
            c.bcrypt_concurrency = 1;
            c.bcrypt_queue = Some(4);
        })
        .await;
        srv.register("blocking@example.com", PASSWORD).await;
        let warm = srv.login("blocking@example.com", PASSWORD).await;
        // Clients are connected before the pool is occupied.
        let auth = srv.auth().await;
        let users = srv.users().await;
        // Warm the database pool so no new connection is needed later.
        let mut warmups = JoinSet::new();
        for _ in 0..4 {
            let mut users = users.clone();
            let token = warm.access_token.clone();
            warmups.spawn(async move {
                users
                    .get_me(with_bearer(proto::GetMeRequest {}, &token))
                    .await
                    .map(|_| ())
            });
        }
        for r in warmups.join_all().await {
            r.expect("warm-up GetMe");
        }

        // Occupy the only bcrypt thread.
        let mut gate = srv.svc.hold_bcrypt().expect("hold the bcrypt thread");
        gate.started().await.expect("gate started");

        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
        };

        let mut logins = Vec::new();
        for _ in 0..4 {
            let mut auth = auth.clone();
            logins.push(tokio::spawn(async move {
                auth.login(login_email("blocking@example.com", PASSWORD))
                    .await
                    .map(|r| r.into_inner())
            }));
        }

        // The runtime keeps serving database-backed calls while the logins wait.
        let mut users2 = users.clone();
        users2
            .get_me(with_bearer(proto::GetMeRequest {}, &warm.access_token))
            .await
            .expect("GetMe while bcrypt is queued");
        let mut auth2 = auth.clone();
        let refreshed = auth2
            .refresh(proto::RefreshRequest {
                refresh_token: warm.refresh_token.clone(),
            })
            .await
            .expect("Refresh while bcrypt is queued")
            .into_inner();
        assert_eq!(refreshed.session_id, warm.session_id);

        let before = ticks.load(Ordering::Relaxed);
        while ticks.load(Ordering::Relaxed) < before + 200 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(
            logins.iter().all(|h| !h.is_finished()),
            "a Login finished while the bcrypt pool was occupied: bcrypt ran on the runtime thread"
        );

        gate.release().await.expect("release the gate");
        let mut sessions = std::collections::HashSet::new();
        for h in logins {
            let pair = h.await.expect("join").expect("login after release");
            sessions.insert(pair.session_id);
        }
        assert_eq!(sessions.len(), 4);
        ticker.abort();
    });
}
