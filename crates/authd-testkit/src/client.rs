//! The one typed test client: request builders, metadata helpers (bearer, API key,
//! `x-forwarded-for`) and the RPC wrappers the tests share, each written once. The wrappers that
//! return `Result` are named `try_*` (or, for the self-service calls, after the RPC) and leave the
//! assertion to the test; `TestServer::login`/`register` expect success.

use authd::config::{Config, parse_net};
use authd::proto;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::server::TestServer;

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

/// Register; the created user.
pub async fn try_register(
    srv: &TestServer,
    req: proto::RegisterRequest,
) -> Result<proto::User, Status> {
    srv.auth()
        .await
        .register(req)
        .await
        .map(|r| r.into_inner().user.expect("user in RegisterResponse"))
}

/// Login (any request, any metadata).
pub async fn try_login(
    srv: &TestServer,
    req: impl tonic::IntoRequest<proto::LoginRequest>,
) -> Result<proto::TokenPair, Status> {
    srv.auth().await.login(req).await.map(|r| r.into_inner())
}

/// Refresh with `refresh_token`.
pub async fn try_refresh(
    srv: &TestServer,
    refresh_token: &str,
) -> Result<proto::TokenPair, Status> {
    srv.auth()
        .await
        .refresh(proto::RefreshRequest {
            refresh_token: refresh_token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// GetMe with `authorization: Bearer <token>`.
pub async fn get_me(srv: &TestServer, token: &str) -> Result<proto::User, Status> {
    srv.users()
        .await
        .get_me(with_bearer(proto::GetMeRequest {}, token))
        .await
        .map(|r| r.into_inner())
}

/// UpdateMe with `authorization: Bearer <token>`.
pub async fn update_me(
    srv: &TestServer,
    token: &str,
    req: proto::UpdateMeRequest,
) -> Result<proto::User, Status> {
    srv.users()
        .await
        .update_me(with_bearer(req, token))
        .await
        .map(|r| r.into_inner())
}

/// ChangePassword; the number of sessions it revoked.
pub async fn change_password(
    srv: &TestServer,
    token: &str,
    current: &str,
    new: &str,
) -> Result<i64, Status> {
    srv.users()
        .await
        .change_password(with_bearer(
            proto::ChangePasswordRequest {
                current_password: current.into(),
                new_password: new.into(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().revoked_sessions)
}

/// DeleteMe, confirmed with `password`.
pub async fn delete_me(srv: &TestServer, token: &str, password: &str) -> Result<(), Status> {
    srv.users()
        .await
        .delete_me(with_bearer(
            proto::DeleteMeRequest {
                password: password.into(),
            },
            token,
        ))
        .await
        .map(|_| ())
}

/// GetJwks: the published keys.
pub async fn jwks(srv: &TestServer) -> Vec<proto::Jwk> {
    srv.auth()
        .await
        .get_jwks(proto::GetJwksRequest {})
        .await
        .expect("GetJwks")
        .into_inner()
        .keys
}

/// CreateServiceKey named `name`, as the holder of `token` (an admin).
pub async fn try_create_service_key(
    srv: &TestServer,
    token: &str,
    name: &str,
) -> Result<proto::CreateServiceKeyResponse, Status> {
    srv.auth()
        .await
        .create_service_key(with_bearer(
            proto::CreateServiceKeyRequest {
                name: name.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}
