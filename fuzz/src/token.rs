//! The `token_validation` target: [`Verifier::verify`] (crate `authd-token`, the checks the server
//! and its clients share) on arbitrary and on structure-aware input.
//!
//! The input's first byte selects a mode (`byte % 4`):
//!
//! | mode | what is verified |
//! |---|---|
//! | 0 | the rest of the input, as lossy UTF-8 |
//! | 1 | a valid token with the rest spliced into its header, payload or signature segment (or the whole) |
//! | 2 | a token re-signed with the real key whose header and payload JSON are the rest of the input, split at the first `0xFF` (no `0xFF`: the valid header and the input as payload) |
//! | 3 | a token re-signed with the real key after splicing the rest into the valid header or claims JSON |
//!
//! Modes 2 and 3 carry a valid signature, so the fuzzer reaches the header rules and the claim checks
//! behind the signature. Splicing (modes 1 and 3) reads `[selector, offset_lo, offset_hi, bytes...]`:
//! the part is `selector & 3` in mode 1 (header, payload, signature, whole token) and `selector & 1`
//! in mode 3 (header or claims JSON); the edit is `(selector >> 2) & 3` (overwrite, insert, replace
//! the tail, delete `bytes[0]` bytes) at `offset % (len + 1)`.
//!
//! Beyond "never panics", every accepted token is checked against the rules `verify` promises
//! (RFC 8725 / RFC 9068): EdDSA, `typ` at+jwt, a known `kid`, no key-bearing or `crit` header, the
//! right `iss` and `aud`, time claims within the leeway, and results that match the claims. A token
//! refused as `Expired` has a header that passes and a past `exp`; it need not be signed, since
//! `verify` reads `exp` before the signature. Header and claims are read as the verifier reads them:
//! the members checked, as JSON values; every other member skipped unread.
//!
//! The key is fixed (derived from a constant seed), not random, so that checked-in seeds are valid
//! tokens and every crash reproduces. A second fixed key is published but signs nothing, as right
//! after a rotation. Tokens are signed as the server signs them (jsonwebtoken, EdDSA, `typ` at+jwt,
//! `kid`); signing is the server's, so the fixture does it itself.

use std::sync::OnceLock;

use authd_token::{
    ACCESS_TOKEN_TYP, AccessClaims, LEEWAY_SECS, MAX_TOKEN_BYTES, PublicKey, Role, TokenError,
    VerifiedToken, Verifier,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeZone, Utc};
use ed25519_dalek::Signer;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const ISSUER: &str = "authd";
pub const AUDIENCE: &str = "authd";
/// The fixed verification time: 2025-01-01T00:00:00Z.
pub const NOW: i64 = 1_735_689_600;
/// Lifetime of the fixture's valid token.
pub const TTL: i64 = 900;
const SEED: [u8; 32] = *b"authd-fuzz-fixed-ed25519-seed-01";
/// The published key that signs nothing.
const NEXT_SEED: [u8; 32] = *b"authd-fuzz-fixed-ed25519-seed-02";

/// The verifier, the raw signing key behind it and a valid token, built once per process.
pub struct Fixture {
    pub verifier: Verifier,
    pub kid: String,
    pub now: DateTime<Utc>,
    pub valid_token: String,
    pub valid_header: Vec<u8>,
    pub valid_claims: Vec<u8>,
    signer: ed25519_dalek::SigningKey,
    encoding_key: jsonwebtoken::EncodingKey,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// The shared fixture. Panics (once, on the first input) only if the harness itself is broken.
pub fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(build_fixture)
}

fn build_fixture() -> Fixture {
    let now = Utc
        .timestamp_opt(NOW, 0)
        .single()
        .expect("fixed time is valid");
    let signer = ed25519_dalek::SigningKey::from_bytes(&SEED);
    let kid = thumbprint(&signer.verifying_key().to_bytes());
    let next = ed25519_dalek::SigningKey::from_bytes(&NEXT_SEED);
    let verifier = Verifier::new([
        PublicKey::new(kid.clone(), signer.verifying_key().to_bytes()),
        PublicKey::new(
            thumbprint(&next.verifying_key().to_bytes()),
            next.verifying_key().to_bytes(),
        ),
    ]);
    let der = signer.to_pkcs8_der().expect("encode fixed key");
    let encoding_key = jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes());
    let valid_token = sign_as_authd(&encoding_key, &kid, &valid_claims(NOW));
    let (header, claims, _) = split(&valid_token).expect("three segments");
    let valid_header = URL_SAFE_NO_PAD.decode(header).expect("header b64");
    let valid_claims = URL_SAFE_NO_PAD.decode(claims).expect("claims b64");
    let f = Fixture {
        verifier,
        kid,
        now,
        valid_token,
        valid_header,
        valid_claims,
        signer,
        encoding_key,
    };
    assert!(
        f.verifier
            .verify(&f.valid_token, ISSUER, AUDIENCE, now)
            .is_ok(),
        "fuzz fixture broken: the valid token does not verify"
    );
    assert_eq!(
        f.sign_raw(&f.valid_header, &f.valid_claims),
        f.valid_token,
        "fuzz fixture broken: sign_raw differs from jsonwebtoken::encode"
    );
    f
}

/// The claims of a valid access token issued at `iat`.
pub fn valid_claims(iat: i64) -> AccessClaims {
    AccessClaims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: "0193a6c4-0000-7000-8000-000000000001".into(),
        exp: iat + TTL,
        iat,
        nbf: iat,
        jti: "0193a6c4-0000-7000-8000-0000000000aa".into(),
        client_id: "authd".into(),
        sid: "0193a6c4-0000-7000-8000-000000000002".into(),
        role: "user".into(),
        email: "alice@example.com".into(),
        preferred_username: Some("alice".into()),
        amr: vec!["pwd".into()],
    }
}

/// RFC 7638 thumbprint, as authd computes its `kid`s.
fn thumbprint(public: &[u8]) -> String {
    let x = URL_SAFE_NO_PAD.encode(public);
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// Signs `claims` as the server's keyring does.
fn sign_as_authd(key: &jsonwebtoken::EncodingKey, kid: &str, claims: &AccessClaims) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

impl Fixture {
    /// A token over `claims`, signed with the active key as the server signs.
    pub fn sign(&self, claims: &AccessClaims) -> String {
        sign_as_authd(&self.encoding_key, &self.kid, claims)
    }

    /// A compact JWS over arbitrary header and payload bytes, signed with the active key.
    pub fn sign_raw(&self, header: &[u8], payload: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let sig = self.signer.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

/// The header, payload and signature segments, split as jsonwebtoken splits them (from the right).
fn split(token: &str) -> Option<(&str, &str, &str)> {
    let (message, sig) = token.rsplit_once('.')?;
    let (header, payload) = message.rsplit_once('.')?;
    Some((header, payload, sig))
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    match mode % 4 {
        0 => verify_checked(&String::from_utf8_lossy(rest)),
        1 => {
            let token = splice_token(&f.valid_token, rest);
            verify_checked(&String::from_utf8_lossy(&token));
        }
        2 => {
            let (header, payload) = match rest.iter().position(|&b| b == 0xFF) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (f.valid_header.as_slice(), rest),
            };
            verify_checked(&f.sign_raw(header, payload));
        }
        _ => {
            let (mut header, mut claims) = (f.valid_header.clone(), f.valid_claims.clone());
            let Some((&sel, _)) = rest.split_first() else {
                return;
            };
            let target = if sel & 1 == 0 {
                &mut header
            } else {
                &mut claims
            };
            splice(target, rest);
            verify_checked(&f.sign_raw(&header, &claims));
        }
    }
}

/// Mode 1: edits one segment of the valid token (part 3: the whole token).
fn splice_token(valid: &str, ctl: &[u8]) -> Vec<u8> {
    let Some((&sel, _)) = ctl.split_first() else {
        return valid.as_bytes().to_vec();
    };
    let part = usize::from(sel & 3);
    if part == 3 {
        let mut whole = valid.as_bytes().to_vec();
        splice(&mut whole, ctl);
        return whole;
    }
    let mut segs: Vec<Vec<u8>> = valid.split('.').map(|s| s.as_bytes().to_vec()).collect();
    if let Some(seg) = segs.get_mut(part) {
        splice(seg, ctl);
    }
    segs.join(&b'.')
}

/// Applies `[selector, offset_lo, offset_hi, bytes...]` to `target`.
fn splice(target: &mut Vec<u8>, ctl: &[u8]) {
    let (sel, off, bytes) = match ctl {
        [sel, lo, hi, bytes @ ..] => (*sel, usize::from(u16::from_le_bytes([*lo, *hi])), bytes),
        [sel, lo] => (*sel, usize::from(*lo), &[][..]),
        [sel] => (*sel, 0, &[][..]),
        [] => return,
    };
    let off = off % (target.len() + 1);
    match (sel >> 2) & 3 {
        0 => {
            let end = (off + bytes.len()).min(target.len());
            target.splice(off..end, bytes.iter().copied());
        }
        1 => {
            target.splice(off..off, bytes.iter().copied());
        }
        2 => {
            target.truncate(off);
            target.extend_from_slice(bytes);
        }
        _ => {
            let n = usize::from(bytes.first().copied().unwrap_or(1));
            let end = (off + n).min(target.len());
            target.drain(off..end);
        }
    }
}

/// Verifies `token` at the fixed time and checks the outcome against what `verify` promises.
pub fn verify_checked(token: &str) {
    let f = fixture();
    let result = f.verifier.verify(token, ISSUER, AUDIENCE, f.now);
    match result {
        Ok(v) => check_accepted(f, token, &v),
        Err(TokenError::Expired) => check_expired(f, token),
        Err(TokenError::Invalid) => {}
    }
}

/// A header as jsonwebtoken reads it: the members `verify` rules on, as JSON values. Every other
/// member is skipped unread, as serde skips it, so that the harness does not refuse what the
/// verifier never reads (invalid UTF-8 or a number beyond `f64` in an unknown member).
#[derive(Deserialize)]
struct HeaderView {
    alg: Option<Value>,
    typ: Option<Value>,
    kid: Option<Value>,
    jwk: Option<Value>,
    jku: Option<Value>,
    x5u: Option<Value>,
    x5c: Option<Value>,
    crit: Option<Value>,
}

/// The claims `check_accepted` compares with the result, read as [`HeaderView`] is.
#[derive(Deserialize)]
struct ClaimsView {
    iss: Option<Value>,
    aud: Option<Value>,
    sub: Option<Value>,
    sid: Option<Value>,
    role: Option<Value>,
    email: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    iat: Option<Value>,
}

/// The one claim an `Expired` answer rests on: `verify` reads `exp` before the signature and the
/// other claims.
#[derive(Deserialize)]
struct ExpView {
    exp: Option<Value>,
}

fn decode<T: serde::de::DeserializeOwned>(seg: &str, what: &str) -> T {
    let bytes = URL_SAFE_NO_PAD
        .decode(seg)
        .unwrap_or_else(|e| panic!("{what}: a segment that is not base64url: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("{what}: a segment that does not read as the verifier reads it: {e}")
    })
}

/// The header rules that hold for every token `verify` did not call invalid (accepted or expired);
/// returns the header's `kid` and the payload segment.
fn checked_header<'t>(f: &Fixture, token: &'t str, what: &str) -> (String, &'t str) {
    assert!(
        !token.is_empty() && token.len() <= MAX_TOKEN_BYTES,
        "{what}: a token of {} bytes",
        token.len()
    );
    let (h, p, _) =
        split(token).unwrap_or_else(|| panic!("{what}: a token without three segments"));
    let header: HeaderView = decode(h, what);
    let text = |v: &Option<Value>| v.as_ref().and_then(Value::as_str).unwrap_or("").to_owned();
    assert_eq!(text(&header.alg), "EdDSA", "{what}: alg");
    let typ = text(&header.typ);
    assert!(
        typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYP)
            || typ.eq_ignore_ascii_case("application/at+jwt"),
        "{what}: typ {typ:?}"
    );
    for (name, member) in [
        ("jwk", &header.jwk),
        ("jku", &header.jku),
        ("x5u", &header.x5u),
        ("x5c", &header.x5c),
        ("crit", &header.crit),
    ] {
        assert!(member.is_none(), "{what}: a header with {name}");
    }
    let kid = text(&header.kid);
    assert!(
        f.verifier.jwks().iter().any(|k| k.kid == kid),
        "{what}: unknown kid {kid:?}"
    );
    (kid, p)
}

fn int(claim: &Option<Value>, name: &str) -> i64 {
    claim
        .as_ref()
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("{name} is not an integer: {claim:?}"))
}

fn check_accepted(f: &Fixture, token: &str, v: &VerifiedToken) {
    let (kid, payload) = checked_header(f, token, "accepted");
    // Only the fixed key can have signed anything the fuzzer produced.
    assert_eq!(kid, f.kid, "accepted a token signed by another key");
    let c: ClaimsView = decode(payload, "accepted");
    let s = |v: &Option<Value>| v.as_ref().and_then(Value::as_str).map(str::to_owned);
    assert_eq!(s(&c.iss).as_deref(), Some(ISSUER), "accepted iss");
    assert_eq!(s(&c.aud).as_deref(), Some(AUDIENCE), "accepted aud");
    let (exp, nbf, iat) = (int(&c.exp, "exp"), int(&c.nbf, "nbf"), int(&c.iat, "iat"));
    let (now, leeway) = (i128::from(NOW), i128::from(LEEWAY_SECS));
    assert!(now < i128::from(exp) + leeway, "accepted expired exp {exp}");
    assert!(i128::from(nbf) <= now + leeway, "accepted future nbf {nbf}");
    assert!(i128::from(iat) <= now + leeway, "accepted future iat {iat}");
    assert_eq!(v.expire_time.timestamp(), exp);
    assert_eq!(v.issue_time.timestamp(), iat);
    let id = |v: &Option<Value>| s(v).and_then(|x| uuid::Uuid::parse_str(&x).ok());
    assert_eq!(Some(v.user_id), id(&c.sub), "user_id differs from sub");
    assert_eq!(
        Some(v.session_id),
        id(&c.sid),
        "session_id differs from sid"
    );
    assert_eq!(Some(v.role), s(&c.role).as_deref().and_then(Role::parse));
    assert_eq!(Some(v.email.as_str()), s(&c.email).as_deref());
}

fn check_expired(f: &Fixture, token: &str) {
    // `Expired` is said of a token whose header passes and whose `exp` is past. `verify` reads `exp`
    // before the signature (a refusal either way), so the token need not be signed by any key, and
    // its other claims need not be well formed.
    let (_, payload) = checked_header(f, token, "called expired");
    let c: ExpView = decode(payload, "called expired");
    let exp = int(&c.exp, "exp");
    assert!(
        i128::from(NOW) >= i128::from(exp) + i128::from(LEEWAY_SECS),
        "called a token with exp {exp} expired"
    );
}
