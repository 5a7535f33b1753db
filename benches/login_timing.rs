//! Login timing equality: the median latency of a failed Login for an unknown account and for a
//! wrong password must differ by less than 10 %, so timing does not reveal whether an account exists.
//!
//! It runs the real server in-process on 127.0.0.1 against the testkit's private PostgreSQL and calls it with a
//! real tonic client, alternating the two kinds of failure so that machine noise hits both alike.
//!
//! ```sh
//! cargo bench --bench login_timing -- [ROUNDS] [BCRYPT_COST]     # defaults: 200 rounds, cost 12
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use authd::clock::SystemClock;
use authd::config::Config;
use authd::proto::auth_service_client::AuthServiceClient;
use authd::proto::{LoginRequest, RegisterRequest, login_request::Identifier};
use authd::server;
use authd_testkit::PASSWORD;
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let rounds: usize = args.first().map_or(Ok(200), |s| s.parse())?;
    let cost: u32 = args.get(1).map_or(Ok(12), |s| s.parse())?;

    // A fresh database on the testkit's private PostgreSQL (stopped when the process exits).
    let url = authd_testkit::fresh_database().await;

    let mut config = Config::defaults();
    config.database_url = Some(url.clone().into());
    config.bcrypt_cost = cost;
    // Measure the password path, not the brute-force defences.
    config.rate_limit_per_ip = 0;
    config.login_max_failures = u32::MAX;
    config.login_max_failures_per_hour = u32::MAX;
    let shared = Arc::new(config);
    let svc = server::start_service(shared.clone(), &url, Arc::new(SystemClock)).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server::serve(svc.clone(), shared, listener, async {
        let _ = stop_rx.await;
    }));

    let mut client = AuthServiceClient::connect(format!("http://{addr}")).await?;
    let email = "timing@example.com";
    client
        .register(RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await?;

    let attempt = |who: String| {
        let mut client = client.clone();
        async move {
            let started = Instant::now();
            let result = client
                .login(LoginRequest {
                    identifier: Some(Identifier::Email(who)),
                    password: "Wrong-Horse-Battery-Staple-42".into(),
                })
                .await;
            let took = started.elapsed();
            match result {
                Err(s) if s.code() == tonic::Code::Unauthenticated => Ok(took),
                other => Err(format!("expected UNAUTHENTICATED, got {other:?}")),
            }
        }
    };

    // Warm up connections, caches and the blocking pool.
    for i in 0..5 {
        attempt(format!("warmup{i}@example.com")).await?;
        attempt(email.into()).await?;
    }
    let mut unknown = Vec::with_capacity(rounds);
    let mut wrong = Vec::with_capacity(rounds);
    for i in 0..rounds {
        // Alternate which goes first so drift affects both.
        if i % 2 == 0 {
            unknown.push(attempt(format!("nobody{i}@example.com")).await?);
            wrong.push(attempt(email.into()).await?);
        } else {
            wrong.push(attempt(email.into()).await?);
            unknown.push(attempt(format!("nobody{i}@example.com")).await?);
        }
    }
    let (mu, mw) = (median(&mut unknown), median(&mut wrong));
    let diff = (ms(mu) - ms(mw)).abs() / ms(mu).min(ms(mw)) * 100.0;
    println!("login timing, bcrypt cost {cost}, {rounds} rounds each");
    println!("  unknown account  median {:8.2} ms", ms(mu));
    println!("  wrong password   median {:8.2} ms", ms(mw));
    println!("  difference       {diff:8.2} %  (target < 10 %)");
    println!(
        "{{\"cost\":{cost},\"rounds\":{rounds},\"unknown_median_ms\":{:.3},\"wrong_median_ms\":{:.3},\"difference_percent\":{diff:.3}}}",
        ms(mu),
        ms(mw)
    );

    let _ = stop_tx.send(());
    let _ = server_task.await;
    svc.pool().close();
    if diff >= 10.0 {
        return Err(format!("timing difference {diff:.2} % is not below 10 %").into());
    }
    Ok(())
}
