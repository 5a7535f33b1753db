//! authd's access tokens, without the server: the claims ([`AccessClaims`]), the roles ([`Role`]),
//! the published keys ([`PublicJwk`], [`Jwks`]) and the [`Verifier`] that applies authd's RFC 9068
//! checks. The server signs tokens and verifies them with this crate; a downstream service (or the
//! authd client) verifies them with the same code, from the keys authd publishes.
//!
//! An access token is a JWT signed with EdDSA (Ed25519). [`Verifier::verify`] accepts one only if
//!
//! - it is at most [`MAX_TOKEN_BYTES`] long;
//! - its header names `alg: EdDSA` (nothing else, whatever the key), `typ: at+jwt` (or
//!   `application/at+jwt`) and the `kid` of a key the verifier holds (and that key has not retired);
//! - its header brings no key of its own (`jwk`, `jku`, `x5u`, `x5c`) and no `crit` extension;
//! - its signature verifies, `iss` and `aud` are the expected ones, `sub` and `sid` are UUIDs and
//!   `role` a [`Role`];
//! - `nbf` and `iat` are not after `now` and `exp` is after `now`, each with [`LEEWAY_SECS`] of
//!   leeway.
//!
//! A token refused for its `exp` is [`TokenError::Expired`]. After the header, `exp` is read (with
//! `iss` and `aud`) from the unverified payload, before the signature and the other claims, since
//! the answer is a refusal either way: `Expired` says "refresh and retry", not that the token was
//! ever signed. Every other refusal is [`TokenError::Invalid`], with no detail for a prober.
//!
//! Time is a parameter: nothing here reads the clock. Whether the token's session is still alive is
//! not something a token can say; the server checks revocation itself.
//!
//! # Example
//!
//! A service that fetched authd's `/.well-known/jwks.json` verifies a bearer token:
//!
//! ```
//! use authd_token::{Jwks, Role, TokenError, Verifier};
//! # use ed25519_dalek::pkcs8::EncodePrivateKey;
//! # let sk = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
//! # let jwks_json = serde_json::to_string(&Jwks {
//! #     keys: vec![authd_token::PublicJwk::ed25519("k1", &sk.verifying_key().to_bytes())],
//! # })?;
//! # let now = chrono::DateTime::from_timestamp(1_735_689_600, 0).ok_or("time")?;
//! # let claims = authd_token::AccessClaims {
//! #     iss: "https://auth.example.com".into(), aud: "https://api.example.com".into(),
//! #     sub: "0193a6c4-0000-7000-8000-000000000001".into(), exp: now.timestamp() + 900,
//! #     iat: now.timestamp(), nbf: now.timestamp(), jti: "j".into(), client_id: "web".into(),
//! #     sid: "0193a6c4-0000-7000-8000-000000000002".into(), role: "admin".into(),
//! #     email: "ada@example.com".into(), preferred_username: None, amr: vec!["pwd".into()],
//! # };
//! # let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
//! # header.typ = Some("at+jwt".into());
//! # header.kid = Some("k1".into());
//! # let der = sk.to_pkcs8_der()?;
//! # let token = jsonwebtoken::encode(&header, &claims,
//! #     &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()))?;
//! let jwks: Jwks = serde_json::from_str(&jwks_json)?;
//! let verifier = Verifier::from_jwks(&jwks);
//!
//! let v = verifier.verify(&token, "https://auth.example.com", "https://api.example.com", now)?;
//! assert_eq!(v.role, Role::Admin);
//! assert_eq!(v.email, "ada@example.com");
//!
//! // An hour later the same token is expired: the client refreshes and retries.
//! let later = now + chrono::Duration::hours(1);
//! assert_eq!(
//!     verifier.verify(&token, "https://auth.example.com", "https://api.example.com", later),
//!     Err(TokenError::Expired),
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Crypto backend
//!
//! jsonwebtoken needs exactly one crypto backend, chosen by this crate's features: `jwt-aws-lc-rs`
//! (the default) or `jwt-rust-crypto` (with `default-features = false`). The authd server forwards
//! its features of the same names.

// jsonwebtoken 11 panics at the first sign or verify unless exactly one backend is enabled.
#[cfg(all(feature = "jwt-rust-crypto", feature = "jwt-aws-lc-rs"))]
compile_error!(
    "features `jwt-rust-crypto` and `jwt-aws-lc-rs` are exclusive; with the other one, build with `--no-default-features`"
);
#[cfg(not(any(feature = "jwt-rust-crypto", feature = "jwt-aws-lc-rs")))]
compile_error!(
    "enable exactly one jsonwebtoken backend feature: `jwt-aws-lc-rs` (the default) or `jwt-rust-crypto`"
);

mod claims;
mod jwk;
mod role;
mod verifier;

pub use claims::{AMR_OTP, AMR_PASSWORD, AccessClaims, VerifiedToken, default_amr};
pub use jwk::{Jwks, PublicJwk};
pub use role::Role;
pub use verifier::{PublicKey, TokenError, Verifier};

/// The JOSE `typ` of access tokens (RFC 9068 section 2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: i64 = 2;
/// Tokens longer than this (in bytes) are rejected before parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;
