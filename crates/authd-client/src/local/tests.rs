use std::sync::Arc;
use std::time::Duration;

use authd_proto::{Jwk, JwkSet, RevokedSession, WatchRevocationsResponse};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use uuid::Uuid;

use super::LocalState;
use crate::clock::ManualClock;
use crate::reject::Rejection;

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn jwk(kid: &str, sk: &SigningKey) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: URL_SAFE_NO_PAD.encode(sk.verifying_key().to_bytes()),
        kid: kid.into(),
        alg: "EdDSA".into(),
        r#use: "sig".into(),
    }
}

fn sign(kid: &str, sk: &SigningKey, sid: Uuid, now: DateTime<Utc>, ttl: i64) -> String {
    let claims = authd_token::AccessClaims {
        iss: "authd".into(),
        aud: "authd".into(),
        sub: Uuid::now_v7().to_string(),
        exp: now.timestamp() + ttl,
        iat: now.timestamp(),
        nbf: now.timestamp(),
        jti: Uuid::now_v7().to_string(),
        client_id: "t".into(),
        sid: sid.to_string(),
        role: "moderator".into(),
        email: "m@example.com".into(),
        preferred_username: Some("mod".into()),
        amr: vec!["pwd".into()],
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid.into());
    let der = sk.to_pkcs8_der().unwrap();
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
    )
    .unwrap()
}

fn snapshot(keys: Vec<Jwk>) -> WatchRevocationsResponse {
    WatchRevocationsResponse {
        jwks: Some(JwkSet { keys }),
        snapshot_complete: true,
        resume_token: "r1".into(),
        ..Default::default()
    }
}

fn heartbeat() -> WatchRevocationsResponse {
    WatchRevocationsResponse::default()
}

struct Fixture {
    clock: Arc<ManualClock>,
    state: LocalState,
    sk: SigningKey,
}

fn fixture() -> Fixture {
    let clock = Arc::new(ManualClock::new(start()));
    let state = LocalState::new(
        "authd".into(),
        "authd".into(),
        clock.clone(),
        Duration::from_secs(5),
        1000,
    );
    let sk = SigningKey::from_bytes(&[7; 32]);
    Fixture { clock, state, sk }
}

#[test]
fn fails_closed_until_the_snapshot_and_after_the_bound() {
    let f = fixture();
    let t = sign("k1", &f.sk, Uuid::now_v7(), start(), 900);
    assert_eq!(f.state.check(&t), Err(Rejection::Unavailable));
    // A message that does not complete a snapshot is not enough.
    f.state.apply(WatchRevocationsResponse {
        jwks: Some(JwkSet {
            keys: vec![jwk("k1", &f.sk)],
        }),
        ..Default::default()
    });
    assert_eq!(f.state.check(&t), Err(Rejection::Unavailable));
    assert_eq!(
        f.state.apply(snapshot(vec![jwk("k1", &f.sk)])).as_deref(),
        Some("r1")
    );
    let p = f.state.check(&t).unwrap();
    assert_eq!(p.role(), authd_token::Role::Moderator);
    assert_eq!(p.email(), "m@example.com");
    assert_eq!(p.username(), Some("mod"));

    f.clock.advance(Duration::from_secs(5));
    assert!(
        f.state.check(&t).is_ok(),
        "exactly at the bound: still fresh"
    );
    f.clock.advance(Duration::from_millis(1));
    assert_eq!(f.state.check(&t), Err(Rejection::Unavailable));
    assert_eq!(f.state.apply(heartbeat()), None);
    assert!(f.state.check(&t).is_ok(), "a heartbeat brings it back");
}

#[test]
fn a_revocation_refuses_a_cached_token_at_once_and_others_stay() {
    let f = fixture();
    f.state.apply(snapshot(vec![jwk("k1", &f.sk)]));
    let (s1, s2) = (Uuid::now_v7(), Uuid::now_v7());
    let (t1, t2) = (
        sign("k1", &f.sk, s1, start(), 900),
        sign("k1", &f.sk, s2, start(), 900),
    );
    assert!(f.state.check(&t1).is_ok());
    assert!(f.state.check(&t1).is_ok(), "cached");
    f.state.apply(WatchRevocationsResponse {
        revoked_sessions: vec![RevokedSession {
            session_id: s1.to_string(),
            expire_time: Some(prost_types::Timestamp {
                seconds: start().timestamp() + 900,
                nanos: 0,
            }),
        }],
        ..Default::default()
    });
    assert_eq!(f.state.check(&t1), Err(Rejection::Invalid));
    assert!(f.state.check(&t2).is_ok());
    // A new token of the revoked session (not cached) is refused too.
    let t1b = sign("k1", &f.sk, s1, start(), 800);
    assert_eq!(f.state.check(&t1b), Err(Rejection::Invalid));
}

#[test]
fn expiry_follows_the_clock_for_cached_tokens_and_revocations_are_pruned() {
    let f = fixture();
    f.state.apply(snapshot(vec![jwk("k1", &f.sk)]));
    let sid = Uuid::now_v7();
    let t = sign("k1", &f.sk, sid, start(), 60);
    assert!(f.state.check(&t).is_ok());
    f.state.apply(WatchRevocationsResponse {
        revoked_sessions: vec![RevokedSession {
            session_id: Uuid::now_v7().to_string(),
            expire_time: Some(prost_types::Timestamp {
                seconds: start().timestamp() + 60,
                nanos: 0,
            }),
        }],
        ..Default::default()
    });
    assert_eq!(f.state.revoked_len(), 1);
    f.clock.advance(Duration::from_secs(61));
    f.state.apply(heartbeat());
    assert!(f.state.check(&t).is_ok(), "within the 2 s leeway");
    f.clock.advance(Duration::from_secs(1));
    f.state.apply(heartbeat());
    assert_eq!(f.state.check(&t), Err(Rejection::Expired));
    // Pruning runs at most every 30 s.
    f.clock.advance(Duration::from_secs(30));
    f.state.apply(heartbeat());
    assert_eq!(f.state.revoked_len(), 0, "expired revocations are dropped");
}

#[test]
fn new_keys_verify_as_soon_as_they_arrive_and_removed_ones_stop() {
    let f = fixture();
    f.state.apply(snapshot(vec![jwk("k1", &f.sk)]));
    let sk2 = SigningKey::from_bytes(&[9; 32]);
    let old = sign("k1", &f.sk, Uuid::now_v7(), start(), 900);
    let new = sign("k2", &sk2, Uuid::now_v7(), start(), 900);
    assert!(f.state.check(&old).is_ok());
    assert_eq!(f.state.check(&new), Err(Rejection::Invalid));
    f.state.apply(WatchRevocationsResponse {
        jwks: Some(JwkSet {
            keys: vec![jwk("k2", &sk2)],
        }),
        ..Default::default()
    });
    assert!(f.state.check(&new).is_ok());
    assert_eq!(
        f.state.check(&old),
        Err(Rejection::Invalid),
        "the cache went with the key"
    );
}

#[test]
fn malformed_and_forged_tokens_are_invalid() {
    let f = fixture();
    f.state.apply(snapshot(vec![jwk("k1", &f.sk)]));
    let good = sign("k1", &f.sk, Uuid::now_v7(), start(), 900);
    let other = SigningKey::from_bytes(&[1; 32]);
    let forged = sign("k1", &other, Uuid::now_v7(), start(), 900);
    let (head, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.rsplit_once('.').unwrap();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("k1".into()),
            typ: Some("at+jwt".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &serde_json::json!({"sub": "x"}),
        &jsonwebtoken::EncodingKey::from_secret(b"k"),
    )
    .unwrap();
    let huge = "a".repeat(1 << 20);
    let cases = [
        String::new(),
        "garbage".into(),
        "a.b.c".into(),
        "....".into(),
        format!("{head}.e30.{sig}"),
        format!("{good}x"),
        forged,
        hs256,
        huge,
        "é.ü.ß".into(),
        "\u{0}\u{1}.\u{7f}.x".into(),
    ];
    for c in &cases {
        assert_eq!(f.state.check(c), Err(Rejection::Invalid), "{:.40}", c);
    }
    assert!(f.state.check(&good).is_ok());
}
