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

/// VerifyEmail with `token` (no credentials).
pub async fn verify_email(srv: &TestServer, token: &str) -> Result<proto::User, Status> {
    srv.auth()
        .await
        .verify_email(proto::VerifyEmailRequest {
            token: token.into(),
        })
        .await
        .map(|r| r.into_inner().user.expect("user in VerifyEmailResponse"))
}

/// ConfirmEmailChange with `token` (no credentials).
pub async fn confirm_email_change(
    srv: &TestServer,
    token: &str,
) -> Result<proto::ConfirmEmailChangeResponse, Status> {
    srv.auth()
        .await
        .confirm_email_change(proto::ConfirmEmailChangeRequest {
            token: token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// ResendVerification for `email` (any metadata, no credentials needed).
pub async fn resend_verification(
    srv: &TestServer,
    req: impl tonic::IntoRequest<proto::ResendVerificationRequest>,
) -> Result<(), Status> {
    srv.users().await.resend_verification(req).await.map(|_| ())
}

/// UpdateMe with a new e-mail, then ConfirmEmailChange with the link mailed (as an `.eml` file)
/// to the new address: the change applied. The confirmed account.
pub async fn change_email(
    srv: &TestServer,
    token: &str,
    new_email: &str,
    current_password: &str,
) -> Result<proto::User, Status> {
    let to = new_email.trim().to_ascii_lowercase();
    let before = crate::mailbox::eml_tokens(srv, &to, "confirm-email-change").len();
    update_me(
        srv,
        token,
        proto::UpdateMeRequest {
            email: Some(new_email.into()),
            current_password: current_password.into(),
            ..Default::default()
        },
    )
    .await?;
    let tokens =
        crate::mailbox::wait_eml_tokens(srv, &to, "confirm-email-change", before + 1).await;
    let confirmed = confirm_email_change(srv, &tokens[before]).await?;
    Ok(confirmed.user.expect("user in ConfirmEmailChangeResponse"))
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

/// EnrollTotp with the caller's password.
pub async fn enroll_totp(
    srv: &TestServer,
    token: &str,
    password: &str,
) -> Result<proto::EnrollTotpResponse, Status> {
    srv.users()
        .await
        .enroll_totp(with_bearer(
            proto::EnrollTotpRequest {
                current_password: password.into(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}

/// ConfirmTotp with `code`.
pub async fn confirm_totp(
    srv: &TestServer,
    token: &str,
    code: &str,
) -> Result<proto::ConfirmTotpResponse, Status> {
    srv.users()
        .await
        .confirm_totp(with_bearer(
            proto::ConfirmTotpRequest { code: code.into() },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}

/// VerifyMfa: the second step of a login.
pub async fn try_verify_mfa(
    srv: &TestServer,
    mfa_token: &str,
    code: &str,
) -> Result<proto::LoginResponse, Status> {
    srv.auth()
        .await
        .verify_mfa(proto::VerifyMfaRequest {
            mfa_token: mfa_token.into(),
            code: code.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// DisableTotp; the number of other sessions it revoked.
pub async fn disable_totp(
    srv: &TestServer,
    token: &str,
    password: &str,
    code: &str,
) -> Result<i64, Status> {
    srv.users()
        .await
        .disable_totp(with_bearer(
            proto::DisableTotpRequest {
                current_password: password.into(),
                code: code.into(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().revoked_sessions)
}

/// RegenerateRecoveryCodes; the new codes.
pub async fn regenerate_recovery_codes(
    srv: &TestServer,
    token: &str,
    code: &str,
) -> Result<Vec<String>, Status> {
    srv.users()
        .await
        .regenerate_recovery_codes(with_bearer(
            proto::RegenerateRecoveryCodesRequest { code: code.into() },
            token,
        ))
        .await
        .map(|r| r.into_inner().recovery_codes)
}

/// ResetUserMfa of `user_id`, as the holder of `token`; the number of sessions it revoked.
pub async fn reset_user_mfa(srv: &TestServer, token: &str, user_id: &str) -> Result<i64, Status> {
    srv.users()
        .await
        .reset_user_mfa(with_bearer(
            proto::ResetUserMfaRequest {
                user_id: user_id.into(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().revoked_sessions)
}
