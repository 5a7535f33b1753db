//! The one typed test client: the RPC wrappers the tests share, each written once. The wrappers
//! that return `Result` are named `try_*` (or, for the self-service calls, after the RPC) and leave
//! the assertion to the test; `TestServer::login`/`register` expect success. Requests are built
//! with [`crate::requests`].

use authd::proto;
use tonic::Status;

use crate::requests::with_bearer;
use crate::server::TestServer;

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
) -> Result<proto::LoginResponse, Status> {
    srv.auth().await.login(req).await.map(|r| r.into_inner())
}

/// Refresh with `refresh_token`.
pub async fn try_refresh(
    srv: &TestServer,
    refresh_token: &str,
) -> Result<proto::LoginResponse, Status> {
    srv.auth()
        .await
        .refresh(proto::RefreshRequest {
            refresh_token: refresh_token.into(),
        })
        .await
        .map(|r| r.into_inner().into())
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
