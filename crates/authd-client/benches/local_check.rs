//! The cost of the layer's local check (issue H): a cached token, in the shape the layer runs it.
//!
//! - `check_cached`: `AuthLayer`'s local check of one call (bearer parsing, fail-closed test,
//!   cache lookup, expiry, revoked set with 10,000 entries, role table), as `AuthService::call`
//!   runs it;
//! - `service_call_cached`: the whole `AuthService::call` around a ready inner service, the
//!   `Principal` inserted into the request's extensions, the future polled to completion (request
//!   construction is excluded);
//! - `verify_uncached`: what a miss costs, the full Ed25519 verification (authd-token's
//!   `Verifier::verify`).
//!
//! Run: `CARGO_TARGET_DIR=/work/wt/target-release cargo bench -p authd-client --bench local_check`.
//! criterion runs on one thread: checks/s on one core = 1 / time per iteration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use authd_client::{AuthLayer, Principal, Role, ServiceKey};
use authd_proto::{Jwk, JwkSet, RevokedSession, WatchRevocationsResponse};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use http::HeaderValue;
use tower::{Layer, Service};
use uuid::Uuid;

fn token(sk: &SigningKey, now: i64) -> String {
    let claims = authd_token::AccessClaims {
        iss: "authd".into(),
        aud: "authd".into(),
        sub: Uuid::now_v7().to_string(),
        exp: now + 900,
        iat: now,
        nbf: now,
        jti: Uuid::now_v7().to_string(),
        client_id: "web".into(),
        sid: Uuid::now_v7().to_string(),
        role: "admin".into(),
        email: "ada.lovelace@example.com".into(),
        preferred_username: Some("ada".into()),
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

fn poll_ready<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("the inner service is always ready"),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let sk = SigningKey::from_bytes(&[42; 32]);
    let now = chrono::Utc::now().timestamp();
    let channel = tonic::transport::Channel::from_static("http://127.0.0.1:9").connect_lazy();
    let layer = AuthLayer::builder(channel, ServiceKey::new("sk_bench").unwrap())
        .require_role("/demo.v1.Demo/Delete", Role::Admin)
        // No stream feeds heartbeats here: without this the state would go stale (fail closed)
        // 5 s into the run, and the rest would measure the refusal.
        .stale_after(std::time::Duration::from_secs(24 * 3600))
        .local_unconnected();
    let revoked = (0..10_000)
        .map(|_| RevokedSession {
            session_id: Uuid::now_v7().to_string(),
            expire_time: Some(prost_types::Timestamp {
                seconds: now + 900,
                nanos: 0,
            }),
        })
        .collect();
    layer.apply(WatchRevocationsResponse {
        revoked_sessions: revoked,
        resume_token: "r".into(),
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
    });
    let tok = token(&sk, now);
    println!("token: {} bytes", tok.len());
    let header = HeaderValue::from_str(&format!("Bearer {tok}")).unwrap();
    let path = "/demo.v1.Demo/Delete";
    assert!(layer.check_local(path, Some(&header)).unwrap().is_ok());

    let mut g = c.benchmark_group("authd_client");
    g.bench_function("check_cached", |b| {
        b.iter(|| {
            layer
                .check_local(black_box(path), Some(black_box(&header)))
                .unwrap()
                .unwrap()
        })
    });

    let mut svc = layer.layer(tower::service_fn(|req: http::Request<()>| async move {
        let ok = req.extensions().get::<Principal>().is_some();
        Ok::<_, Infallible>(http::Response::new(ok))
    }));
    g.bench_function("service_call_cached", |b| {
        b.iter_batched(
            || {
                let mut req = http::Request::builder()
                    .uri("http://svc/demo.v1.Demo/Delete")
                    .body(())
                    .unwrap();
                req.headers_mut()
                    .insert(http::header::AUTHORIZATION, header.clone());
                req
            },
            |req| {
                let resp = poll_ready(svc.call(req)).unwrap();
                assert!(*resp.body());
                resp
            },
            BatchSize::SmallInput,
        )
    });

    let verifier = authd_token::Verifier::new([authd_token::PublicKey::new(
        "k1",
        sk.verifying_key().to_bytes(),
    )]);
    let at = chrono::DateTime::from_timestamp(now, 0).unwrap();
    g.bench_function("verify_uncached", |b| {
        b.iter(|| {
            verifier
                .verify(black_box(&tok), "authd", "authd", at)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
