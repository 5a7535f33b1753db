//! Issue F, section 3 and 6: client addresses. The per-IP rate limit keys IPv6 clients by /64;
//! `x-forwarded-for` is walked from the right past junk on its left; a gateway's proxy service key
//! may name its users' addresses (used for limits, sessions and audit) under a failure budget of its
//! own; unknown service keys are refused from the in-memory view without a database query and count
//! against the caller's per-IP limit.
//!
//! Every test client connects from 127.0.0.1. Time is the server's ManualClock; nothing asserts on
//! latency.

use std::collections::HashSet;
use std::time::Duration;

use authd::proto;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use tokio::io::AsyncWriteExt;
use tonic::{Code, Request, Status};

use authd_testkit::*;

const WRONG: &str = "Wrong-Horse-Battery-Staple-99";

/// `msg` with the given `x-forwarded-for` and, if any, `x-api-key`.
fn req<T>(msg: T, xff: Option<&str>, key: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(x) = xff {
        r.metadata_mut()
            .insert("x-forwarded-for", x.parse().unwrap());
    }
    if let Some(k) = key {
        r.metadata_mut().insert("x-api-key", k.parse().unwrap());
    }
    r
}

fn register_req(email: &str) -> proto::RegisterRequest {
    proto::RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
        ..Default::default()
    }
}

#[derive(diesel::QueryableByName)]
struct Ip {
    #[diesel(sql_type = Text)]
    ip_address: String,
}

/// The addresses of the audit events of `kind`.
async fn audit_ips(srv: &TestServer, kind: &str) -> Vec<String> {
    diesel::sql_query("SELECT ip_address FROM audit_events WHERE kind = $1")
        .bind::<Text, _>(kind)
        .load::<Ip>(&mut srv.db().await)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.ip_address)
        .collect()
}

/// The addresses of the live sessions.
async fn session_ips(srv: &TestServer) -> Vec<String> {
    diesel::sql_query("SELECT ip_address FROM sessions WHERE revoke_time IS NULL")
        .load::<Ip>(&mut srv.db().await)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.ip_address)
        .collect()
}

/// ListMySessions of `token`: the address of the session the token belongs to.
async fn my_session_ip(srv: &TestServer, token: &str) -> String {
    let sessions = srv.my_sessions(token).await;
    let current = sessions.iter().find(|s| s.current);
    current
        .unwrap_or_else(|| panic!("no current session in {sessions:?}"))
        .ip_address
        .clone()
}

/// CreateServiceKey through the API.
async fn create_key(
    srv: &TestServer,
    admin: &str,
    trusted_proxy: bool,
    cidrs: &[&str],
) -> Result<proto::CreateServiceKeyResponse, Status> {
    srv.auth()
        .await
        .create_service_key(with_bearer(
            proto::CreateServiceKeyRequest {
                name: "gateway".into(),
                trusted_proxy,
                allowed_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            },
            admin,
        ))
        .await
        .map(|r| r.into_inner())
}

// ----- 3a: IPv6 /64 ---------------------------------------------------------------------------------

#[tokio::test]
async fn ipv6_addresses_of_one_64_share_one_rate_limit_bucket() {
    let srv = TestServer::start_with(|c| {
        behind_proxy(c);
        c.rate_limit_per_ip = 5;
    })
    .await;
    // 12 calls at once, Register and Login, from 12 addresses of one /64.
    let calls = (0..12).map(|i| {
        let srv = &srv;
        async move {
            let ip = format!("2001:db8:1:2:{i:x}:{:x}::1", i * 7 + 1);
            let mut auth = srv.auth().await;
            if i % 2 == 0 {
                auth.register(req(register_req(&unique_email()), Some(&ip), None))
                    .await
                    .map(|_| ())
            } else {
                auth.login(req(login_email(&unique_email(), WRONG), Some(&ip), None))
                    .await
                    .map(|_| ())
            }
        }
    });
    let seen = Codes::of(authd_testkit::join_all(calls).await);
    assert_eq!(seen.count(Code::ResourceExhausted), 7, "{seen:?}");
    assert_eq!(
        seen.count(Code::Ok) + seen.count(Code::Unauthenticated),
        5,
        "{seen:?}"
    );
    // Another /64 has its own bucket; so has an IPv4 address.
    for ip in ["2001:db8:1:3::1", "198.51.100.20"] {
        srv.auth()
            .await
            .register(req(register_req(&unique_email()), Some(ip), None))
            .await
            .unwrap_or_else(|s| panic!("{ip}: {s:?}"));
    }
}

// ----- 3b: x-forwarded-for walk ---------------------------------------------------------------------

#[tokio::test]
async fn junk_left_of_the_client_in_x_forwarded_for_is_skipped() {
    let srv = TestServer::start_with(behind_proxy).await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let pair = srv
        .auth()
        .await
        .login(req(
            login_email(&email, PASSWORD),
            Some("junk, 198.51.100.9"),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        my_session_ip(&srv, &pair.access_token).await,
        "198.51.100.9"
    );
    assert!(
        audit_ips(&srv, "LOGIN_SUCCEEDED")
            .await
            .contains(&"198.51.100.9".to_owned())
    );
    // Junk reached before any untrusted address: the nearest trusted hop (the proxy itself).
    let pair = srv
        .auth()
        .await
        .login(req(
            login_email(&email, PASSWORD),
            Some("198.51.100.9, junk"),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(my_session_ip(&srv, &pair.access_token).await, "127.0.0.1");
}

// ----- 3c: proxy service keys ---------------------------------------------------------------------------

#[tokio::test]
async fn a_gateway_key_names_its_users_addresses_and_is_not_throttled_as_one_client() {
    // No trusted proxies: only the key makes authd believe the header.
    let srv = TestServer::start_with(|c| c.rate_limit_per_ip = 5).await;
    let admin = srv.admin_session().await;
    let created = create_key(&srv, &admin.access_token, true, &["127.0.0.0/8"])
        .await
        .unwrap();
    let key = created.key.clone();
    // The key is listed with its options.
    let listed = srv
        .auth()
        .await
        .list_service_keys(with_bearer(
            proto::ListServiceKeysRequest {},
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(listed[0].trusted_proxy);
    assert_eq!(listed[0].allowed_cidrs, vec!["127.0.0.0/8".to_owned()]);

    // First the gateway's own address spends its bucket of 5 (the admin's login took one)...
    let own = (0..6).map(|_| {
        let srv = &srv;
        async move {
            srv.auth()
                .await
                .login(login_email(&unique_email(), WRONG))
                .await
        }
    });
    let seen = Codes::of(authd_testkit::join_all(own).await);
    assert_eq!(seen.count(Code::Unauthenticated), 4, "{seen:?}");
    assert_eq!(seen.count(Code::ResourceExhausted), 2, "{seen:?}");
    // ...yet 100 users register and log in through the gateway, 20 at a time, each from its own
    // address.
    let users: Vec<(String, String)> = (0..100)
        .map(|i| {
            let ip = if i % 2 == 0 {
                format!("198.51.100.{i}")
            } else {
                format!("2001:db8:{i:x}::1")
            };
            (unique_email(), ip)
        })
        .collect();
    let mut pairs = Vec::new();
    for chunk in users.chunks(20) {
        let regs = chunk.iter().map(|(email, ip)| {
            let (srv, key) = (&srv, &key);
            async move {
                srv.auth()
                    .await
                    .register(req(register_req(email), Some(ip), Some(key)))
                    .await
            }
        });
        let seen = Codes::of(authd_testkit::join_all(regs).await);
        assert_eq!(seen.count(Code::Ok), chunk.len(), "{seen:?}");
        let logins = chunk.iter().map(|(email, ip)| {
            let (srv, key) = (&srv, &key);
            async move {
                srv.auth()
                    .await
                    .login(req(login_email(email, PASSWORD), Some(ip), Some(key)))
                    .await
                    .map(|r| (r.into_inner(), ip.clone()))
            }
        });
        for r in authd_testkit::join_all(logins).await {
            pairs.push(r.unwrap_or_else(|s| panic!("login through the gateway: {s:?}")));
        }
    }
    // Sessions and audit show the users' addresses, not the gateway's.
    for (pair, ip) in pairs.iter().take(4) {
        assert_eq!(&my_session_ip(&srv, &pair.access_token).await, ip);
    }
    let want: HashSet<String> = users.iter().map(|(_, ip)| ip.clone()).collect();
    let sessions: HashSet<String> = session_ips(&srv)
        .await
        .into_iter()
        .filter(|ip| ip != "127.0.0.1")
        .collect();
    assert_eq!(sessions, want);
    let logins: HashSet<String> = audit_ips(&srv, "LOGIN_SUCCEEDED")
        .await
        .into_iter()
        .filter(|ip| ip != "127.0.0.1")
        .collect();
    assert_eq!(logins, want);
    // Refresh and Logout through the gateway are attributed to the user too.
    let (pair, ip) = &pairs[0];
    let fresh = srv
        .auth()
        .await
        .refresh(req(
            proto::RefreshRequest {
                refresh_token: pair.refresh_token.clone(),
            },
            Some(ip),
            Some(&key),
        ))
        .await
        .unwrap()
        .into_inner();
    srv.auth()
        .await
        .logout(req(
            proto::LogoutRequest {
                refresh_token: fresh.refresh_token,
            },
            Some(ip),
            Some(&key),
        ))
        .await
        .unwrap();
    assert!(audit_ips(&srv, "LOGOUT").await.contains(ip));
    // Audit events say whose word the address is.
    #[derive(diesel::QueryableByName)]
    struct Detail {
        #[diesel(sql_type = Text)]
        detail: String,
    }
    let details: Vec<Detail> =
        diesel::sql_query("SELECT detail FROM audit_events WHERE kind = 'LOGIN_SUCCEEDED'")
            .load(&mut srv.db().await)
            .await
            .unwrap();
    let via = format!("via proxy key {}", created.id);
    assert_eq!(
        details.iter().filter(|d| d.detail.contains(&via)).count(),
        100
    );
}

#[tokio::test]
async fn x_forwarded_for_without_a_proxy_key_from_its_cidrs_is_ignored() {
    let srv = TestServer::start_with(|c| c.rate_limit_per_ip = 12).await;
    let admin = srv.admin_session().await;
    let a = &admin.access_token;
    let plain = create_key(&srv, a, false, &[]).await.unwrap().key;
    let elsewhere = create_key(&srv, a, true, &["192.0.2.0/24", "2001:db8::/32"])
        .await
        .unwrap()
        .key;
    let unknown = "sk_thisisnotakeythatauthdevercreated0000000";
    let email = unique_email();
    srv.svc
        .create_account(
            authd::api::NewAccount {
                email: email.clone(),
                password: PASSWORD.into(),
                ..Default::default()
            },
            authd::api::Role::User,
            None,
            &authd::api::ClientInfo::default(),
            "test",
        )
        .await
        .unwrap();
    // No key, a plain key, a proxy key from outside its CIDRs, an unknown key: each login is
    // attributed to the peer (127.0.0.1), and they all share its bucket.
    let variants: Vec<Option<&str>> = vec![None, Some(&plain), Some(&elsewhere), Some(unknown)];
    for key in &variants {
        let pair = srv
            .auth()
            .await
            .login(req(
                login_email(&email, PASSWORD),
                Some("198.51.100.9"),
                *key,
            ))
            .await
            .unwrap_or_else(|s| panic!("{key:?}: {s:?}"))
            .into_inner();
        assert_eq!(
            my_session_ip(&srv, &pair.access_token).await,
            "127.0.0.1",
            "{key:?}"
        );
        srv.auth()
            .await
            .logout(with_bearer(
                proto::LogoutRequest::default(),
                &pair.access_token,
            ))
            .await
            .unwrap();
    }
    // ValidateToken refuses a key used from outside its CIDRs (and that failure takes a token).
    let s = expect_code(
        srv.auth()
            .await
            .validate_token(with_key(
                proto::ValidateTokenRequest {
                    access_token: admin.access_token.clone(),
                },
                &elsewhere,
            ))
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s).as_deref(), Some("SERVICE_KEY_INVALID"));
    // 12 per minute: the admin's login, the 4 above and the refused key took 6; 6 are left,
    // whatever the header.
    let calls = (0..12).map(|i| {
        let (srv, key) = (&srv, variants[i % 4]);
        async move {
            srv.auth()
                .await
                .login(req(
                    login_email(&unique_email(), WRONG),
                    Some(&format!("198.51.100.{}", 100 + i)),
                    key,
                ))
                .await
        }
    });
    let seen = Codes::of(authd_testkit::join_all(calls).await);
    assert_eq!(seen.count(Code::Unauthenticated), 6, "{seen:?}");
    assert_eq!(seen.count(Code::ResourceExhausted), 6, "{seen:?}");
}

#[tokio::test]
async fn allowed_cidrs_are_validated_and_normalized() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await;
    let a = &admin.access_token;
    for bad in ["10.0.0.0/33", "example.com", "", "10.0.0.1/8/2"] {
        let s = expect_code(
            create_key(&srv, a, true, &["10.0.0.0/8", bad]).await,
            Code::InvalidArgument,
        );
        assert!(s.message().contains("allowed_cidrs[1]"), "{s:?}");
    }
    let too_many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    expect_code(
        create_key(&srv, a, true, &refs).await,
        Code::InvalidArgument,
    );
    create_key(
        &srv,
        a,
        true,
        &[
            "10.1.2.3/8",
            " 192.0.2.7 ",
            "2001:db8::1/32",
            "::ffff:10.9.0.0/112",
            "10.0.0.0/8",
        ],
    )
    .await
    .unwrap();
    let listed = srv
        .auth()
        .await
        .list_service_keys(with_bearer(proto::ListServiceKeysRequest {}, a))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].allowed_cidrs,
        vec!["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "10.9.0.0/16"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_keys_failure_budget_refuses_once_spent_by_concurrent_guesses() {
    let srv = TestServer::start_with(|c| c.proxy_key_max_failures_per_minute = 10).await;
    let admin = srv.admin_session().await;
    let key = create_key(&srv, &admin.access_token, true, &[])
        .await
        .unwrap()
        .key;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let login = |password: &'static str, ip: String| {
        let (srv, key, email) = (&srv, &key, &email);
        async move {
            srv.auth()
                .await
                .login(req(login_email(email, password), Some(&ip), Some(key)))
                .await
        }
    };
    // Right passwords do not spend the budget.
    let seen = Codes::of(
        authd_testkit::join_all((0..10).map(|i| login(PASSWORD, format!("198.51.100.{i}")))).await,
    );
    assert_eq!(seen.count(Code::Ok), 10, "{seen:?}");
    // 30 concurrent guesses, each from an invented address: 10 are checked.
    let seen = Codes::of(
        authd_testkit::join_all((0..30).map(|i| login(WRONG, format!("203.0.113.{i}")))).await,
    );
    assert_eq!(seen.count(Code::Unauthenticated), 10, "{seen:?}");
    assert_eq!(seen.count(Code::ResourceExhausted), 20, "{seen:?}");
    // Spent: even the right password is not checked through this key...
    let s = expect_code(
        login(PASSWORD, "198.51.100.77".into()).await,
        Code::ResourceExhausted,
    );
    assert!(s.message().contains("proxy key"), "{s:?}");
    // ...while the same user logs in directly, and the budget refills with time.
    srv.login(&email, PASSWORD).await;
    srv.clock.advance(chrono::Duration::seconds(61));
    login(PASSWORD, "198.51.100.77".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_password_checks_through_a_proxy_key_share_its_budget() {
    let srv = TestServer::start_with(|c| c.proxy_key_max_failures_per_minute = 3).await;
    let admin = srv.admin_session().await;
    let key = create_key(&srv, &admin.access_token, true, &[])
        .await
        .unwrap()
        .key;
    let (_, pair) = srv.user_session().await;
    let calls = (0..8).map(|i| {
        let (srv, key, token) = (&srv, &key, &pair.access_token);
        async move {
            let mut r = req(
                proto::ChangePasswordRequest {
                    current_password: WRONG.into(),
                    new_password: OTHER_PASSWORD.into(),
                },
                Some(&format!("203.0.113.{i}")),
                Some(key),
            );
            r.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            srv.users().await.change_password(r).await
        }
    });
    let seen = Codes::of(authd_testkit::join_all(calls).await);
    assert_eq!(seen.count(Code::Unauthenticated), 3, "{seen:?}");
    assert_eq!(seen.count(Code::ResourceExhausted), 5, "{seen:?}");
}

#[tokio::test]
async fn cli_creates_proxy_keys_with_cidrs() {
    let srv = TestServer::start().await;
    let run = |args: Vec<&'static str>| {
        let url = srv.url.clone();
        async move {
            let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_authd"));
            for (k, _) in std::env::vars_os() {
                if let Some(k) = k.to_str()
                    && (k.starts_with("AUTHD_") || k == "DATABASE_URL")
                {
                    cmd.env_remove(k);
                }
            }
            let mut child = cmd
                .args(&args)
                .env("DATABASE_URL", url)
                .env("AUTHD_BCRYPT_COST", "4")
                .env("AUTHD_DB_POOL_SIZE", "2")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let _ = child.stdin.take().unwrap().shutdown().await;
            tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
                .await
                .unwrap()
                .unwrap()
        }
    };
    let out = run(vec![
        "service-keys",
        "create",
        "edge",
        "--trusted-proxy",
        "--allowed-cidr",
        "127.0.0.1",
        "--allowed-cidr",
        "2001:db8::/32",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let bad = run(vec![
        "service-keys",
        "create",
        "edge",
        "--allowed-cidr",
        "nope",
    ])
    .await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("allowed_cidrs[0]"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // The running server picks the new key up at its next poll, and honours it.
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let mut ip = String::new();
    for _ in 0..100 {
        let pair = srv
            .auth()
            .await
            .login(req(
                login_email(&email, PASSWORD),
                Some("198.51.100.4"),
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner();
        ip = my_session_ip(&srv, &pair.access_token).await;
        if ip == "198.51.100.4" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ip, "198.51.100.4");
}

// ----- 6c: unknown service keys ---------------------------------------------------------------------------

#[tokio::test]
async fn random_service_keys_cost_no_query_and_spend_the_per_ip_limit() {
    let srv = TestServer::start_with(|c| c.rate_limit_per_ip = 10).await;
    // A session made without the API, so the bucket of 127.0.0.1 is full.
    let email = unique_email();
    let account = authd::api::NewAccount {
        email: email.clone(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    let nobody = authd::api::ClientInfo::default();
    let role = authd::api::Role::User;
    srv.svc
        .create_account(account, role, None, &nobody, "test")
        .await
        .unwrap();
    let id = authd::api::LoginIdentifier::Email(email);
    let authd::api::LoginOutcome::Tokens(pair) =
        srv.svc.login(Some(id), PASSWORD, &nobody).await.unwrap()
    else {
        panic!("no second factor here");
    };
    // Every connection of the pool is taken: a key check that needed the database would wait for
    // one (AUTHD_DB_TIMEOUT) and fail UNAVAILABLE.
    srv.svc.sync_views().await.unwrap();
    let mut held = Vec::new();
    for _ in 0..srv.config.db_pool_size {
        held.push(srv.svc.pool().get().await.unwrap());
    }
    let calls = (0..30).map(|i| {
        let (srv, token) = (&srv, &pair.access_token);
        async move {
            let r = srv
                .auth()
                .await
                .validate_token(with_key(
                    proto::ValidateTokenRequest {
                        access_token: token.clone(),
                    },
                    &format!("sk_random{i}{}", uuid::Uuid::new_v4().simple()),
                ))
                .await;
            if let Err(s) = &r
                && s.code() == Code::Unauthenticated
            {
                assert_eq!(reason(s).as_deref(), Some("SERVICE_KEY_INVALID"));
            }
            r
        }
    });
    let seen = Codes::of(authd_testkit::join_all(calls).await);
    drop(held);
    assert_eq!(seen.count(Code::Unauthenticated), 10, "{seen:?}");
    assert_eq!(seen.count(Code::ResourceExhausted), 20, "{seen:?}");
}

#[tokio::test]
async fn a_key_created_on_another_replica_works_after_the_next_poll() {
    let a = TestServer::start().await;
    let mut config = a.config.clone();
    config.database_url = Some(a.url.clone().into());
    let b = TestServer::start_on(config, a.clock.clone()).await;
    let admin = a.admin_session().await;
    let (_, pair) = a.user_session().await;
    let key = create_key(&a, &admin.access_token, false, &[])
        .await
        .unwrap()
        .key;
    let mut last = None;
    for _ in 0..100 {
        let r = b
            .auth()
            .await
            .validate_token(with_key(
                proto::ValidateTokenRequest {
                    access_token: pair.access_token.clone(),
                },
                &key,
            ))
            .await;
        match r {
            Ok(v) => {
                assert!(v.into_inner().valid);
                return;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
                last = Some(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the key never worked on the other replica: {last:?}");
}
