use authd_testkit::*;

// Issue F, sections 2 and 3: password checks are reserved atomically before bcrypt, so concurrent
// guesses get no more checks than sequential ones (per client, per identifier past the hourly cap,
// and for `current_password`); the client is an IPv4 address or an IPv6 /64; past the hourly cap an
// identifier gets one check per doubling slot across all addresses, except from known addresses.
//
// Many callers run at once and the outcomes are counted; time is the server's ManualClock, and
// nothing here asserts on latency. Client addresses come from `x-forwarded-for`, believed because
// the test client (127.0.0.1) is a trusted proxy.

use authd::proto;
use authd::proto::login_request::Identifier;
use chrono::Duration as ChronoDuration;
use tonic::{Code, Status};

/// A password that is never right.
const WRONG: &str = "Wrong-Horse-Battery-Staple-99";

fn login_req(id: &Identifier, password: &str) -> proto::LoginRequest {
    proto::LoginRequest {
        identifier: Some(id.clone()),
        password: password.into(),
    }
}

/// How many calls had their password checked (answered by the check: OK, UNAUTHENTICATED) and
/// how many were refused by the throttle (RESOURCE_EXHAUSTED, with a `retry-after`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Outcomes {
    checked: usize,
    refused: usize,
}

impl Outcomes {
    fn add<T>(&mut self, r: Result<T, Status>) {
        let one = Codes::of([r]);
        let checked = one.count(Code::Ok) + one.count(Code::Unauthenticated);
        let refused = one.count(Code::ResourceExhausted);
        assert_eq!(checked + refused, 1, "unexpected status: {one:?}");
        self.checked += checked;
        self.refused += refused;
    }
}

/// Logins for `id`, all at once, one from each of `ips`.
async fn concurrent_logins(
    srv: &TestServer,
    id: &Identifier,
    password: &str,
    ips: &[String],
) -> Outcomes {
    let auth = srv.auth().await;
    let mut calls = tokio::task::JoinSet::new();
    for ip in ips {
        let mut auth = auth.clone();
        let req = from_ip(login_req(id, password), ip);
        calls.spawn(async move { auth.login(req).await.map(|_| ()) });
    }
    let mut out = Outcomes::default();
    while let Some(r) = calls.join_next().await {
        out.add(r.expect("login task"));
    }
    out
}

async fn login_from(
    srv: &TestServer,
    ip: &str,
    id: &Identifier,
    password: &str,
) -> Result<(), Status> {
    srv.auth()
        .await
        .login(from_ip(login_req(id, password), ip))
        .await
        .map(|_| ())
}

fn addresses(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

// ----- one client -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_wrong_passwords_from_one_client_get_no_more_checks_than_sequential_ones() {
    let srv = TestServer::start_with(|c| {
        behind_proxy(c);
        c.login_max_failures = 5;
        c.login_max_failures_per_hour = 1_000;
    })
    .await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let id = Identifier::Email(email.clone());

    // 20 wrong passwords at once from one address: exactly the 5 a sequential guesser gets.
    let one = vec!["198.51.100.7".to_owned(); 20];
    let out = concurrent_logins(&srv, &id, WRONG, &one).await;
    assert_eq!(
        out,
        Outcomes {
            checked: 5,
            refused: 15
        },
        "{out:?}"
    );

    // The same for an identifier that has no account: nothing tells them apart.
    let ghost = Identifier::Email(unique_email());
    let out = concurrent_logins(&srv, &ghost, WRONG, &one).await;
    assert_eq!(
        out,
        Outcomes {
            checked: 5,
            refused: 15
        },
        "{out:?}"
    );

    // Once the wait is over, one more check (the 6th failure), then 2 s.
    srv.clock.advance(ChronoDuration::seconds(1));
    let out = concurrent_logins(&srv, &id, WRONG, &one).await;
    assert_eq!(
        out,
        Outcomes {
            checked: 1,
            refused: 19
        },
        "{out:?}"
    );
    srv.clock.advance(ChronoDuration::seconds(2));
    login_from(&srv, "198.51.100.7", &id, PASSWORD)
        .await
        .expect("the right password after the wait");
    // The success reset the count: five checks again.
    let out = concurrent_logins(&srv, &id, WRONG, &one).await;
    assert_eq!(
        out,
        Outcomes {
            checked: 5,
            refused: 15
        },
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_current_password_checks_get_no_more_checks_than_sequential_ones() {
    let srv = TestServer::start_with(|c| {
        c.login_max_failures = 5;
        c.login_max_failures_per_hour = 1_000;
    })
    .await;
    let (_, pair) = srv.user_session().await;
    let users = srv.users().await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut users = users.clone();
        let token = pair.access_token.clone();
        calls.spawn(async move {
            users
                .change_password(with_bearer(
                    proto::ChangePasswordRequest {
                        current_password: WRONG.into(),
                        new_password: OTHER_PASSWORD.into(),
                    },
                    &token,
                ))
                .await
                .map(|_| ())
        });
    }
    let mut out = Outcomes::default();
    while let Some(r) = calls.join_next().await {
        out.add(r.expect("ChangePassword task"));
    }
    assert_eq!(
        out,
        Outcomes {
            checked: 5,
            refused: 15
        },
        "{out:?}"
    );
}

#[tokio::test]
async fn an_abandoned_reservation_counts_as_one_failure_and_expires() {
    let srv = TestServer::start_with(|c| {
        c.login_max_failures = 1;
        c.login_max_failures_per_hour = 1_000;
    })
    .await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    // A call cancelled between its reservation and its password check leaves the reservation
    // behind, as if the call had been dropped mid-way.
    srv.svc
        .abandon_login_reservation(&email, "127.0.0.1")
        .await
        .expect("reserve");
    // It counts as one failure: the usual 1 s wait, no longer.
    let e = expect_code(
        srv.auth().await.login(login_email(&email, PASSWORD)).await,
        Code::ResourceExhausted,
    );
    assert_eq!(e.metadata().get("retry-after").unwrap(), "1");
    srv.clock.advance(ChronoDuration::seconds(1));
    srv.login(&email, PASSWORD).await;
}

// ----- IPv6 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn addresses_of_one_ipv6_64_are_throttled_as_one_client() {
    let srv = TestServer::start_with(|c| {
        behind_proxy(c);
        c.login_max_failures = 5;
        c.login_max_failures_per_hour = 1_000;
    })
    .await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let id = Identifier::Email(email.clone());

    // 12 wrong passwords, each from another address of 2001:db8:1:2::/64.
    let mut out = Outcomes::default();
    for i in 1..=12 {
        out.add(login_from(&srv, &format!("2001:db8:1:2::{i:x}"), &id, WRONG).await);
    }
    assert_eq!(
        out,
        Outcomes {
            checked: 5,
            refused: 7
        },
        "{out:?}"
    );
    // Even the right password waits, from any address of that /64...
    expect_code(
        login_from(&srv, "2001:db8:1:2:ffff:ffff:ffff:ffff", &id, PASSWORD).await,
        Code::ResourceExhausted,
    );
    // ...while the neighbouring /64 is another client.
    login_from(&srv, "2001:db8:1:3::1", &id, PASSWORD)
        .await
        .expect("another /64 is not throttled");
}

// ----- distributed guessing ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_hourly_cap_an_identifier_gets_one_check_per_doubling_slot() {
    const CAP: usize = 8;
    let srv = TestServer::start_with(|c| {
        behind_proxy(c);
        c.login_max_failures = 1_000;
        c.login_max_failures_per_hour = CAP as u32;
    })
    .await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let id = Identifier::Email(email.clone());
    // The owner logs in from home before the attack.
    let home = "203.0.113.50";
    login_from(&srv, home, &id, PASSWORD).await.expect("owner");

    // 40 fresh addresses at once: the cap, plus the one check of the first slot.
    let out = concurrent_logins(&srv, &id, WRONG, &addresses("198.51.100.", 40)).await;
    assert_eq!(
        out,
        Outcomes {
            checked: CAP + 1,
            refused: 40 - CAP - 1
        },
        "{out:?}"
    );

    // An unknown identifier is treated the same, check for check.
    let ghost = Identifier::Email(unique_email());
    let ghost_out = concurrent_logins(&srv, &ghost, WRONG, &addresses("198.51.100.", 40)).await;
    assert_eq!(ghost_out, out);

    // The slot is shared by every address: fresh ones are refused too, even with the right
    // password, and told when the slot frees.
    let out = concurrent_logins(&srv, &id, WRONG, &addresses("192.0.2.", 20)).await;
    assert_eq!(
        out,
        Outcomes {
            checked: 0,
            refused: 20
        },
        "{out:?}"
    );
    let e = expect_code(
        login_from(&srv, "192.0.2.99", &id, PASSWORD).await,
        Code::ResourceExhausted,
    );
    assert_eq!(e.metadata().get("retry-after").unwrap(), "1");

    // The owner's known address is exempt.
    login_from(&srv, home, &id, PASSWORD)
        .await
        .expect("an address with a recent successful login is let through past the cap");

    // After D = 1 s one more check across all addresses; then D = 2 s, 4 s, ...
    let mut d = 1;
    for round in 0..4 {
        srv.clock.advance(ChronoDuration::seconds(d));
        let ips = addresses(&format!("198.18.{round}."), 20);
        let out = concurrent_logins(&srv, &id, WRONG, &ips).await;
        assert_eq!(
            out,
            Outcomes {
                checked: 1,
                refused: 19
            },
            "round {round}: {out:?}"
        );
        d *= 2;
        let e = expect_code(
            login_from(&srv, "192.0.2.99", &id, WRONG).await,
            Code::ResourceExhausted,
        );
        assert_eq!(
            e.metadata().get("retry-after").unwrap(),
            d.to_string().as_str(),
            "round {round}"
        );
    }
    // Still exempt.
    login_from(&srv, home, &id, PASSWORD)
        .await
        .expect("owner from home");

    // An hour after the last failure the cap no longer applies and D starts again.
    srv.clock.advance(ChronoDuration::minutes(61));
    let out = concurrent_logins(&srv, &id, WRONG, &addresses("198.51.100.", 40)).await;
    assert_eq!(
        out,
        Outcomes {
            checked: CAP + 1,
            refused: 40 - CAP - 1
        },
        "{out:?}"
    );
}

#[tokio::test]
async fn the_slot_delay_is_capped_at_15_minutes() {
    let srv = TestServer::start_with(|c| {
        behind_proxy(c);
        c.login_max_failures = 1_000;
        c.login_max_failures_per_hour = 2;
    })
    .await;
    let id = Identifier::Username(unique_username());
    let mut out = Outcomes::default();
    for i in 0..2 {
        out.add(login_from(&srv, &format!("198.51.100.{i}"), &id, WRONG).await);
    }
    // Slots of 1, 2, 4, ..., 512, then 900, 900 s.
    let mut waits = Vec::new();
    for i in 0..13 {
        out.add(login_from(&srv, &format!("198.18.0.{i}"), &id, WRONG).await);
        let e = expect_code(
            login_from(&srv, "192.0.2.1", &id, WRONG).await,
            Code::ResourceExhausted,
        );
        let wait: i64 = e
            .metadata()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        waits.push(wait);
        srv.clock.advance(ChronoDuration::seconds(wait));
    }
    assert_eq!(
        out,
        Outcomes {
            checked: 15,
            refused: 0
        }
    );
    assert_eq!(
        waits,
        [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900]
    );
}

async fn rows(srv: &TestServer, table: &str) -> i64 {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut conn = AsyncPgConnection::establish(&srv.url)
        .await
        .expect("connect");
    diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
        .get_result::<Count>(&mut conn)
        .await
        .expect("count")
        .n
}

#[tokio::test]
async fn known_addresses_expire_after_30_days_and_the_prune_job_forgets_them() {
    let srv = TestServer::start_with(|c| {
        behind_proxy(c);
        c.login_max_failures = 1_000;
        c.login_max_failures_per_hour = 1;
    })
    .await;
    let email = unique_email();
    srv.register(&email, PASSWORD).await;
    let id = Identifier::Email(email.clone());
    let home = "203.0.113.50";
    login_from(&srv, home, &id, PASSWORD).await.expect("owner");
    // The success is recorded for the account's e-mail and re-check keys.
    assert_eq!(rows(&srv, "login_known_clients").await, 2);

    // 29 days later the address is still known: past the cap it is let through.
    srv.clock.advance(ChronoDuration::days(29));
    let mut out = Outcomes::default();
    for ip in addresses("198.51.100.", 3) {
        out.add(login_from(&srv, &ip, &id, WRONG).await);
    }
    assert_eq!(
        out,
        Outcomes {
            checked: 2,
            refused: 1
        }
    );
    login_from(&srv, home, &id, PASSWORD)
        .await
        .expect("known for 30 days");

    // 30 days after that success, it is a stranger again.
    srv.clock
        .advance(ChronoDuration::days(30) + ChronoDuration::seconds(1));
    for ip in addresses("198.51.100.", 2) {
        login_from(&srv, &ip, &id, WRONG).await.unwrap_err();
    }
    expect_code(
        login_from(&srv, home, &id, PASSWORD).await,
        Code::ResourceExhausted,
    );

    // The prune job forgets known addresses, idle slots and old failures.
    srv.clock.advance(ChronoDuration::days(31));
    srv.svc.prune().await.expect("prune");
    for table in ["login_known_clients", "login_guard", "login_failures"] {
        assert_eq!(rows(&srv, table).await, 0, "{table}");
    }
}
