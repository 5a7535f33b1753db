//! Request builders, metadata helpers (bearer, API key, `x-forwarded-for`), fixture values and
//! status assertions: everything the tests need to build a call or judge its answer, without a
//! server.

use authd::config::{Config, parse_net};
use authd::proto;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// A password that strength estimators accept, so fixtures survive stricter policies.
pub const PASSWORD: &str = "Correct-Horse-Battery-Staple-42";
pub const OTHER_PASSWORD: &str = "Tr0ub4dor&3-Quantum-Walrus";

pub fn login_email(email: &str, password: &str) -> proto::LoginRequest {
    proto::LoginRequest {
        identifier: Some(proto::login_request::Identifier::Email(email.into())),
        password: password.into(),
    }
}

pub fn login_username(username: &str, password: &str) -> proto::LoginRequest {
    proto::LoginRequest {
        identifier: Some(proto::login_request::Identifier::Username(username.into())),
        password: password.into(),
    }
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

pub fn unique_username() -> String {
    format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A request with `authorization: Bearer <token>`.
pub fn with_bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    r
}

/// A request with `x-api-key: <key>`.
pub fn with_key<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-api-key", key.parse().expect("metadata"));
    r
}

/// The `ErrorInfo.reason` of a status, if any.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// Asserts the code of a failed call and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "unexpected status: {s:?}");
            s
        }
    }
}

/// Trusts the proxy at 127.0.0.1, so that `x-forwarded-for` ([`from_ip`]) names the client.
pub fn behind_proxy(c: &mut Config) {
    c.trusted_proxies = vec![parse_net("127.0.0.1").expect("net")].into();
}

/// A request from client `ip`, through the (trusted or not) proxy at 127.0.0.1.
pub fn from_ip<T>(msg: T, ip: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-forwarded-for", ip.parse().expect("ip metadata"));
    r
}

/// A RegisterRequest with only e-mail and password.
pub fn reg(email: &str, password: &str) -> proto::RegisterRequest {
    proto::RegisterRequest {
        email: email.into(),
        password: password.into(),
        ..Default::default()
    }
}
