//! Writes the checked-in seed corpus, `fuzz/seeds/<target>/`, and runs every seed through its target.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds
//!
//! Token seeds are signed with the fuzz fixture's fixed key, so the valid ones really verify.

use std::path::Path;

use authd::proto;
use authd_fuzz::token::{self, AUDIENCE, ISSUER, NOW, fixture};
use authd_token::TokenError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let f = fixture();
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let claims_json = String::from_utf8_lossy(&f.valid_claims).into_owned();
    let header_json = String::from_utf8_lossy(&f.valid_header).into_owned();
    let expired = f.sign(&token::valid_claims(NOW - 3600));
    assert_eq!(
        f.verifier
            .verify(&expired, ISSUER, AUDIENCE, f.now)
            .unwrap_err(),
        TokenError::Expired
    );
    let (h, p) = (
        f.valid_token.split('.').next().unwrap_or_default(),
        f.valid_token.split('.').nth(1).unwrap_or_default(),
    );
    let alg_none = format!("{}.{p}.", b64(r#"{"alg":"none","typ":"at+jwt"}"#));
    let hs256 = format!(
        "{}.{p}.{}",
        b64(&format!(
            r#"{{"alg":"HS256","typ":"at+jwt","kid":"{}"}}"#,
            f.kid
        )),
        b64("not-a-mac")
    );
    let jku = format!(
        r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}","jku":"https://evil.example/jwks"}}"#,
        f.kid
    );
    let exp = token::NOW + token::TTL;
    let string_exp = claims_json.replace(&format!("\"exp\":{exp}"), &format!("\"exp\":\"{exp}\""));
    let admin = claims_json.replace("\"role\":\"user\"", "\"role\":\"admin\"");

    let mut tok: Vec<(&str, Vec<u8>)> = vec![
        ("m0-valid", cat(0, f.valid_token.as_bytes())),
        ("m0-expired", cat(0, expired.as_bytes())),
        ("m0-alg-none", cat(0, alg_none.as_bytes())),
        ("m0-hs256", cat(0, hs256.as_bytes())),
        (
            "m0-truncated",
            cat(0, &f.valid_token.as_bytes()[..f.valid_token.len() - 5]),
        ),
        ("m0-two-segments", cat(0, format!("{h}.{p}").as_bytes())),
        // Mode 1: [1, selector, offset_lo, offset_hi, bytes]; selector 0b0101 = insert into payload.
        (
            "m1-insert-payload",
            [&[1u8, 0b0101, 10, 0][..], b"QUFB"].concat(),
        ),
        (
            "m1-overwrite-sig",
            [&[1u8, 0b0010, 0, 0][..], b"AAAA"].concat(),
        ),
        ("m1-whole", [&[1u8, 0b0111, 0, 0][..], b"x."].concat()),
        // Mode 2: [2, header JSON, 0xFF, claims JSON], re-signed with the real key.
        (
            "m2-valid",
            [
                &[2u8][..],
                f.valid_header.as_slice(),
                &[0xFF],
                f.valid_claims.as_slice(),
            ]
            .concat(),
        ),
        (
            "m2-admin",
            [
                &[2u8][..],
                f.valid_header.as_slice(),
                &[0xFF],
                admin.as_bytes(),
            ]
            .concat(),
        ),
        (
            "m2-jku",
            [
                &[2u8][..],
                jku.as_bytes(),
                &[0xFF],
                f.valid_claims.as_slice(),
            ]
            .concat(),
        ),
        (
            "m2-string-exp",
            [
                &[2u8][..],
                header_json.as_bytes(),
                &[0xFF],
                string_exp.as_bytes(),
            ]
            .concat(),
        ),
        // Mode 3: [3, selector, offset_lo, offset_hi, bytes]; odd selector = claims JSON.
        ("m3-claims-noop", vec![3u8, 0b0001, 0, 0]),
        (
            "m3-header-insert",
            [&[3u8, 0b0100, 1, 0][..], b"\"crit\":[\"exp\"],"].concat(),
        ),
    ];
    tok.sort_by(|a, b| a.0.cmp(b.0));
    write(&root.join("token_validation"), &tok, authd_fuzz::token::run)?;

    let reg = proto::RegisterRequest {
        email: "Alice@Example.com".into(),
        password: "correct horse battery staple".into(),
        username: "alice".into(),
        first_name: "Alice".into(),
        last_name: "Liddell".into(),
    };
    let req: Vec<(&str, Vec<u8>)> = vec![
        ("register", reg.encode_to_vec()),
        (
            "login-email",
            proto::LoginRequest {
                identifier: Some(proto::login_request::Identifier::Email(
                    " alice@example.com ".into(),
                )),
                password: "correct horse battery staple".into(),
            }
            .encode_to_vec(),
        ),
        (
            "login-username",
            proto::LoginRequest {
                identifier: Some(proto::login_request::Identifier::Username("alice".into())),
                password: "\u{FB01}\u{FB01}\u{FB01}\u{FB01}\u{FB01}".into(),
            }
            .encode_to_vec(),
        ),
        (
            "refresh",
            proto::RefreshRequest {
                refresh_token: "rt_3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            }
            .encode_to_vec(),
        ),
        (
            "validate-token",
            proto::ValidateTokenRequest {
                access_token: f.valid_token.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "update-me",
            proto::UpdateMeRequest {
                username: Some("alice.l".into()),
                first_name: Some(" Al ".into()),
                last_name: Some(String::new()),
                email: Some("alice@example.org".into()),
                current_password: "correct horse battery staple".into(),
            }
            .encode_to_vec(),
        ),
        (
            "change-password",
            proto::ChangePasswordRequest {
                current_password: "correct horse battery staple".into(),
                new_password: "\u{20AC}".repeat(24),
            }
            .encode_to_vec(),
        ),
        (
            "create-user",
            proto::CreateUserRequest {
                email: "bob@example.com".into(),
                password: "Tr0ub4dor&3-and-more".into(),
                username: "bob".into(),
                first_name: "Bob".into(),
                last_name: String::new(),
                role: proto::Role::Moderator as i32,
                email_verified: false,
            }
            .encode_to_vec(),
        ),
        (
            "update-user",
            proto::UpdateUserRequest {
                user_id: "0193a6c4-0000-7000-8000-000000000001".into(),
                email: Some("carol@example.com".into()),
                username: Some(String::new()),
                first_name: None,
                last_name: Some("C".into()),
                role: Some(proto::Role::Admin as i32),
                active: Some(false),
                password: Some("another long passphrase".into()),
            }
            .encode_to_vec(),
        ),
        (
            "list-users",
            proto::ListUsersRequest {
                page_size: 10,
                page_token: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
                query: "ali%_".into(),
                role: 7,
                active: Some(true),
            }
            .encode_to_vec(),
        ),
        (
            "create-service-key",
            proto::CreateServiceKeyRequest {
                name: "billing".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ];
    write(
        &root.join("request_validation"),
        &req,
        authd_fuzz::requests::run,
    )
}

fn cat(mode: u8, rest: &[u8]) -> Vec<u8> {
    [&[mode][..], rest].concat()
}

fn write(dir: &Path, seeds: &[(&str, Vec<u8>)], run: fn(&[u8])) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in seeds {
        run(bytes);
        std::fs::write(dir.join(name), bytes)?;
        println!("{} ({} bytes)", dir.join(name).display(), bytes.len());
    }
    Ok(())
}
