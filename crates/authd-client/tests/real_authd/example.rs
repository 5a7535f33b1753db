//! The example, `examples/protected_service.rs`, built into this test and run against a real
//! authd, called over the network by a real gRPC health client.

use std::time::{Duration, Instant};

use authd_testkit::{TestServer, with_bearer};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{logout, reason};

#[allow(dead_code)]
#[path = "../../examples/protected_service.rs"]
mod protected_service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_protects_its_service_against_a_real_authd() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(protected_service::serve(
        format!("http://{}", srv.addr),
        key,
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut health = HealthClient::new(channel);
    let (_, user) = srv.user_session().await;
    let admin = srv.admin_session().await;
    let check = |token: &str| with_bearer(HealthCheckRequest::default(), token);

    // UNAVAILABLE until the snapshot is in, then OK.
    let t0 = Instant::now();
    loop {
        match health.check(check(&user.access_token)).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::Unavailable && t0.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    let s = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::Unauthenticated, "TOKEN_MISSING")
    );
    let s = health.check(check("not-a-token")).await.unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::Unauthenticated, "TOKEN_INVALID")
    );

    // Watch is for admins.
    let s = health.watch(check(&user.access_token)).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    let mut stream = health
        .watch(check(&admin.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());

    // A logout on authd closes the door within a second.
    let t0 = Instant::now();
    logout(&srv, &user.access_token).await;
    loop {
        match health.check(check(&user.access_token)).await {
            Err(s) if s.code() == Code::Unauthenticated => break,
            Ok(_) if t0.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    println!("example: logout -> refused over gRPC in {:?}", t0.elapsed());

    drop(stream);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
