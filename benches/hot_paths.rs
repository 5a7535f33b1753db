//! Micro-benchmarks (criterion) of the CPU-bound functions on authd's hot paths: no database, no
//! network, no bcrypt (see `login_timing` for a whole Login).
//!
//! ```sh
//! cargo bench --bench hot_paths                      # everything, well under a minute
//! cargo bench --bench hot_paths -- token_            # token_verify/* and token_sign only
//! cargo bench --bench hot_paths --no-default-features --features jwt-rust-crypto -- token_
//! ```
//!
//! Criterion's usual options follow the `--` (e.g. `--measurement-time 5`, `--save-baseline NAME`,
//! `--baseline NAME`). The defaults below are short (0.5 s warm-up, 2 s measurement) so the suite
//! stays quick on a small machine; lengthen them for a decision that hinges on a few per cent.
//!
//! What each group measures:
//!
//! - `token_verify/cold`: [`Keyring::verify`] (`authd_token::Verifier::verify`) of a freshly signed access token: header checks,
//!   the EdDSA signature and claims through jsonwebtoken, then the time and UUID checks. This is
//!   a ValidateToken or bearer-token check that misses the token cache.
//! - `token_verify/cached`: what the same call costs on a cache hit, exactly as the service runs
//!   it: [`TokenCache::get`] (a fast keyed hash of the token, a lookup and a full comparison) on
//!   a warm cache.
//! - `token_sign`: [`Keyring::sign`] of the claims of one access token, as Login and Refresh do.
//!   jsonwebtoken decodes the PKCS#8 signing key on every call, under either backend; that is
//!   included.
//! - `refresh_token/hash`: [`HashedToken::of`], the SHA-256 a refresh token is looked up by.
//! - `refresh_token/successor`: a random successor ([`opaque::new_refresh_token`]) sealed for
//!   grace replays ([`opaque::ReplayBox::seal`]: HKDF-SHA256, ChaCha20-Poly1305). A refresh
//!   computes both.
//! - `password_policy/new_password`: [`password::new_password`], NFKC normalization plus the
//!   length rules, of a realistic passphrase.
//! - `password_policy/strength`: [`password::check_strength`] of the same passphrase with the
//!   account's e-mail and username as context (zxcvbn), as Register and password changes do.
//!
//! The token benchmarks depend on the jsonwebtoken crypto backend chosen by the crate features
//! `jwt-aws-lc-rs` (the default) and `jwt-rust-crypto` (third command above). To compare the two,
//! alternate runs of both, each saving a baseline (`-- token_ --save-baseline aws-1`, then
//! `rc-1`, ...), and read the medians from `target/criterion/<bench>/<baseline>/estimates.json`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use authd::api::mfa::{qr, recovery, totp};
use authd::api::opaque::{self, HashedToken};
use authd::api::password;
use authd::api::tokens::{AccessClaims, Keyring, TokenCache, Verifier, generate_key};
use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use uuid::Uuid;

const ISSUER: &str = "https://auth.example.com";
const AUDIENCE: &str = "https://api.example.com";
const EMAIL: &str = "margaret.hamilton@example.com";
const USERNAME: &str = "mhamilton";
/// Four unrelated words and a digit: what the password hint steers users to.
const PASSPHRASE: &str = "Lantern orbit Kelso walnut 7";

/// A keyring with one active Ed25519 key, built as the unit tests in `src/domain/tokens.rs` do.
fn keyring() -> Keyring {
    let k = generate_key().expect("generate key");
    let verifier = Verifier::new([k.public_key().expect("public key")]);
    Keyring::new(Some(k.signer().expect("signer")), verifier)
}

/// The claims of an access token as Login issues them (15 minutes).
fn claims(now: DateTime<Utc>) -> AccessClaims {
    AccessClaims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: Uuid::now_v7().to_string(),
        exp: now.timestamp() + 900,
        iat: now.timestamp(),
        nbf: now.timestamp(),
        jti: Uuid::new_v4().to_string(),
        client_id: "web".into(),
        sid: Uuid::now_v7().to_string(),
        role: "user".into(),
        email: EMAIL.into(),
        preferred_username: Some(USERNAME.into()),
        amr: vec!["pwd".into()],
    }
}

fn token_verify(c: &mut Criterion) {
    let now = Utc::now();
    let kr = keyring();
    let token = kr.sign(&claims(now)).expect("sign");
    let verified = kr.verify(&token, ISSUER, AUDIENCE, now).expect("verify");

    // A warm cache: the token under test among a thousand others.
    let cache = TokenCache::new(10_000);
    for i in 0..1_000u32 {
        cache.insert(&format!("{token}{i}"), Arc::new(verified.clone()), now);
    }
    cache.insert(&token, Arc::new(verified), now);
    assert!(matches!(cache.get(&kr, &token, now), Some(Ok(_))));

    let mut g = c.benchmark_group("token_verify");
    g.bench_function("cold", |b| {
        b.iter(|| {
            kr.verify(black_box(&token), ISSUER, AUDIENCE, now)
                .expect("verify")
        })
    });
    g.bench_function("cached", |b| {
        b.iter(|| {
            cache
                .get(&kr, black_box(&token), now)
                .expect("hit")
                .expect("valid")
        })
    });
    g.finish();
}

fn token_sign(c: &mut Criterion) {
    let now = Utc::now();
    let kr = keyring();
    let claims = claims(now);
    c.bench_function("token_sign", |b| {
        b.iter(|| kr.sign(black_box(&claims)).expect("sign"))
    });
}

fn refresh_token(c: &mut Criterion) {
    let token = opaque::new_refresh_token();
    let mut g = c.benchmark_group("refresh_token");
    g.bench_function("hash", |b| b.iter(|| HashedToken::of(black_box(&token))));
    // A random successor and its replay box (HKDF-SHA256 + ChaCha20-Poly1305), as Refresh makes them.
    g.bench_function("successor", |b| {
        b.iter(|| {
            let next = opaque::new_refresh_token();
            opaque::ReplayBox::seal(black_box(&token), &next)
        })
    });
    g.finish();
}

fn password_policy(c: &mut Criterion) {
    let normalized = password::new_password("password", PASSPHRASE).expect("valid");
    password::check_strength("password", &normalized, 3, &[EMAIL, USERNAME]).expect("strong");

    let mut g = c.benchmark_group("password_policy");
    g.bench_function("new_password", |b| {
        b.iter(|| password::new_password("password", black_box(PASSPHRASE)).expect("valid"))
    });
    g.bench_function("strength", |b| {
        b.iter(|| {
            password::check_strength("password", black_box(&normalized), 3, &[EMAIL, USERNAME])
                .expect("strong")
        })
    });
    g.finish();
}

/// The second factor's CPU work per call: a TOTP check (three HMAC-SHA1 steps, as VerifyMfa does
/// before its one UPDATE), a recovery code's keyed hash, and EnrollTotp's QR PNG.
fn mfa(c: &mut Criterion) {
    let seed = [7u8; totp::SEED_BYTES];
    let step = totp::step_at(Utc::now().timestamp());
    let code = totp::code(&seed, step);
    let user = Uuid::new_v4();
    let secret = [9u8; 32];
    let presented = recovery::generate();
    let uri = format!(
        "otpauth://totp/authd:{}?secret={}&issuer=authd&algorithm=SHA1&digits=6&period=30",
        EMAIL.replace('@', "%40"),
        totp::base32(&seed)
    );
    let mut g = c.benchmark_group("mfa");
    g.bench_function("totp_check", |b| {
        b.iter(|| totp::matching_step(&seed, black_box(&code), step).expect("match"))
    });
    g.bench_function("recovery_hash", |b| {
        b.iter(|| {
            let n = recovery::normalize(black_box(&presented)).expect("code");
            recovery::hash(&secret, user, &n)
        })
    });
    g.bench_function("qr_png", |b| {
        b.iter(|| qr::png(black_box(&uri)).expect("png"))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = token_verify, token_sign, refresh_token, password_policy, mfa
}
criterion_main!(hot_paths);
