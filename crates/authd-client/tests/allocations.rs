//! The hot path allocates nothing beyond the `Principal`: a counting global allocator (per thread)
//! around the local check of a cached token and around the whole `AuthService::call`.
//!
//! Counting, not timing: this is a property of the code, so it is asserted; the speed is in
//! `benches/local_check.rs` and BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use authd_client::{AuthLayer, Principal, Role, ServiceKey};
use authd_proto::{Jwk, JwkSet, RevokedSession, WatchRevocationsResponse};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use http::HeaderValue;
use tower::{Layer, Service};
use uuid::Uuid;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

fn token(sk: &SigningKey, sid: Uuid, now: i64) -> String {
    let claims = authd_token::AccessClaims {
        iss: "authd".into(),
        aud: "authd".into(),
        sub: Uuid::now_v7().to_string(),
        exp: now + 900,
        iat: now,
        nbf: now,
        jti: Uuid::now_v7().to_string(),
        client_id: "web".into(),
        sid: sid.to_string(),
        role: "admin".into(),
        email: "ada@example.com".into(),
        preferred_username: None,
        amr: vec!["pwd".into()],
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some("k1".into());
    let der = sk.to_pkcs8_der().unwrap();
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
    )
    .unwrap()
}

fn poll_now<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("not ready"),
    }
}

#[tokio::test]
async fn a_cached_check_allocates_nothing_and_a_call_only_the_principals_slot() {
    let sk = SigningKey::from_bytes(&[5; 32]);
    let now = chrono::Utc::now().timestamp();
    let channel = tonic::transport::Channel::from_static("http://127.0.0.1:9").connect_lazy();
    let layer = AuthLayer::builder(channel, ServiceKey::new("sk_t").unwrap())
        .require_role("/demo.v1.Demo/Delete", Role::Admin)
        .local_unconnected();
    let revoked_sid = Uuid::now_v7();
    layer.apply(WatchRevocationsResponse {
        revoked_sessions: vec![RevokedSession {
            session_id: revoked_sid.to_string(),
            expire_time: None,
        }],
        jwks: Some(JwkSet {
            keys: vec![Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: URL_SAFE_NO_PAD.encode(sk.verifying_key().to_bytes()),
                kid: "k1".into(),
                alg: "EdDSA".into(),
                r#use: "sig".into(),
            }],
        }),
        snapshot_complete: true,
        ..Default::default()
    });
    let header =
        HeaderValue::from_str(&format!("Bearer {}", token(&sk, Uuid::now_v7(), now))).unwrap();
    let path = "/demo.v1.Demo/Delete";
    // The first check verifies and caches (and allocates).
    assert!(layer.check_local(path, Some(&header)).unwrap().is_ok());

    let before = allocations();
    for _ in 0..1000 {
        let p = layer.check_local(path, Some(&header)).unwrap().unwrap();
        std::hint::black_box(p);
    }
    assert_eq!(
        allocations() - before,
        0,
        "a cached check allocates nothing"
    );

    // The whole service call: the principal's slot in the request extensions, nothing else.
    let mut svc = layer.layer(tower::service_fn(|req: http::Request<()>| async move {
        Ok::<_, Infallible>(http::Response::new(
            req.extensions().get::<Principal>().is_some(),
        ))
    }));
    let mut worst = 0;
    for _ in 0..100 {
        let mut req = http::Request::builder()
            .uri("http://svc/demo.v1.Demo/Delete")
            .body(())
            .unwrap();
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, header.clone());
        let before = allocations();
        let resp = poll_now(svc.call(req)).unwrap();
        worst = worst.max(allocations() - before);
        assert!(*resp.body());
    }
    // http::Extensions is a boxed map created on the first insert: the box, the map's table and
    // the boxed Principal handle (a reference count, not a copy of the principal).
    assert!(worst <= 3, "{worst} allocations per call");
    println!("allocations per AuthService::call with a cached token: {worst}");

    // A revoked session's token is refused without allocating in the check either.
    let revoked =
        HeaderValue::from_str(&format!("Bearer {}", token(&sk, revoked_sid, now))).unwrap();
    assert!(layer.check_local(path, Some(&revoked)).unwrap().is_err());
}
