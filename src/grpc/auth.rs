//! `authd.v1.AuthService` handlers.

use std::sync::Arc;

use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::{
    authorization, caller, client_address, client_info, principal, role_to_proto, timestamp,
    uuid_text,
};
use crate::domain::Authd;
use crate::domain::accounts::NewAccount;
use crate::domain::service_keys::ServiceKeySpec;
use crate::domain::sessions::{LoginIdentifier, LoginOutcome, TokenPair};
use crate::domain::watch::WatchMessage;
use crate::proto;
use crate::proto::auth_service_server::AuthService;
use crate::proto::login_request::Identifier;

/// The AuthService implementation.
#[derive(Debug, Clone)]
pub struct AuthApi {
    svc: Arc<Authd>,
    /// `AUTHD_TLS_CLIENT_CA` is set: a verified client certificate authenticates ValidateToken.
    client_certificates: bool,
    /// Turns true when the drain stops accepting connections: WatchRevocations streams end.
    draining: watch::Receiver<bool>,
}

impl AuthApi {
    /// `draining` turns true when the server stops accepting connections (see
    /// `server::shutdown::drain`).
    pub fn new(
        svc: Arc<Authd>,
        client_certificates: bool,
        draining: watch::Receiver<bool>,
    ) -> Self {
        Self {
            svc,
            client_certificates,
            draining,
        }
    }
}

impl From<TokenPair> for proto::LoginResponse {
    fn from(t: TokenPair) -> Self {
        proto::LoginResponse {
            access_token: t.access_token,
            refresh_token: t.refresh_token,
            token_type: "Bearer".into(),
            expires_in: t.expires_in,
            refresh_expires_in: t.refresh_expires_in,
            session_id: t.session_id.to_string(),
            mfa_required: false,
            mfa_token: String::new(),
        }
    }
}

impl From<LoginOutcome> for proto::LoginResponse {
    fn from(o: LoginOutcome) -> Self {
        match o {
            LoginOutcome::Tokens(t) => t.into(),
            LoginOutcome::MfaRequired(ticket) => proto::LoginResponse {
                mfa_required: true,
                mfa_token: ticket.0,
                ..Default::default()
            },
        }
    }
}

/// The same fields as [`proto::LoginResponse`] (both were `TokenPair`; the wire is unchanged).
impl From<TokenPair> for proto::RefreshResponse {
    fn from(t: TokenPair) -> Self {
        proto::RefreshResponse {
            access_token: t.access_token,
            refresh_token: t.refresh_token,
            token_type: "Bearer".into(),
            expires_in: t.expires_in,
            refresh_expires_in: t.refresh_expires_in,
            session_id: t.session_id.to_string(),
        }
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn request_password_reset(
        &self,
        req: Request<proto::RequestPasswordResetRequest>,
    ) -> Result<Response<proto::RequestPasswordResetResponse>, Status> {
        let client = client_info(&req)?;
        self.svc
            .request_password_reset(&req.get_ref().email, &client)
            .await?;
        Ok(Response::new(proto::RequestPasswordResetResponse {}))
    }

    async fn reset_password(
        &self,
        req: Request<proto::ResetPasswordRequest>,
    ) -> Result<Response<proto::ResetPasswordResponse>, Status> {
        let client = client_info(&req)?;
        let r = req.into_inner();
        self.svc
            .reset_password(&r.token, &r.new_password, &client)
            .await?;
        Ok(Response::new(proto::ResetPasswordResponse {}))
    }

    async fn register(
        &self,
        req: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        let client = client_info(&req)?;
        let r = req.into_inner();
        let account = self
            .svc
            .register(
                NewAccount {
                    email: r.email,
                    password: r.password,
                    username: r.username,
                    first_name: r.first_name,
                    last_name: r.last_name,
                    email_verified: false,
                },
                &client,
            )
            .await?;
        Ok(Response::new(proto::RegisterResponse {
            user: Some(account.into()),
        }))
    }

    async fn verify_email(
        &self,
        req: Request<proto::VerifyEmailRequest>,
    ) -> Result<Response<proto::VerifyEmailResponse>, Status> {
        let client = client_info(&req)?;
        let account = self.svc.verify_email(&req.get_ref().token, &client).await?;
        Ok(Response::new(proto::VerifyEmailResponse {
            user: Some(account.into()),
        }))
    }

    async fn confirm_email_change(
        &self,
        req: Request<proto::ConfirmEmailChangeRequest>,
    ) -> Result<Response<proto::ConfirmEmailChangeResponse>, Status> {
        let client = client_info(&req)?;
        let changed = self
            .svc
            .confirm_email_change(&req.get_ref().token, &client)
            .await?;
        Ok(Response::new(proto::ConfirmEmailChangeResponse {
            user: Some(changed.account.into()),
            revoked_sessions: changed.revoked_sessions,
        }))
    }

    async fn login(
        &self,
        req: Request<proto::LoginRequest>,
    ) -> Result<Response<proto::LoginResponse>, Status> {
        let client = client_info(&req)?;
        let r = req.into_inner();
        let identifier = r.identifier.map(|i| match i {
            Identifier::Email(e) => LoginIdentifier::Email(e),
            Identifier::Username(u) => LoginIdentifier::Username(u),
        });
        let outcome = self.svc.login(identifier, &r.password, &client).await?;
        Ok(Response::new(outcome.into()))
    }

    async fn verify_mfa(
        &self,
        req: Request<proto::VerifyMfaRequest>,
    ) -> Result<Response<proto::LoginResponse>, Status> {
        let client = client_info(&req)?;
        let r = req.into_inner();
        let pair = self.svc.verify_mfa(&r.mfa_token, &r.code, &client).await?;
        Ok(Response::new(pair.into()))
    }

    async fn refresh(
        &self,
        req: Request<proto::RefreshRequest>,
    ) -> Result<Response<proto::RefreshResponse>, Status> {
        let client = client_info(&req)?;
        let pair = self
            .svc
            .refresh(&req.into_inner().refresh_token, &client)
            .await?;
        Ok(Response::new(pair.into()))
    }

    async fn logout(
        &self,
        req: Request<proto::LogoutRequest>,
    ) -> Result<Response<proto::LogoutResponse>, Status> {
        let client = client_info(&req)?;
        if req.get_ref().refresh_token.is_empty() {
            // Not in the auth layer: whether a token is needed depends on the request body.
            let p = self.svc.authenticate(authorization(req.metadata())).await?;
            self.svc.logout_session(&p, &client).await?;
        } else {
            self.svc
                .logout_by_refresh_token(&req.get_ref().refresh_token, &client)
                .await?;
        }
        Ok(Response::new(proto::LogoutResponse {}))
    }

    async fn logout_all(
        &self,
        req: Request<proto::LogoutAllRequest>,
    ) -> Result<Response<proto::LogoutAllResponse>, Status> {
        let p = principal(&req)?;
        let revoked_sessions = self.svc.logout_all(&p, &client_info(&req)?).await?;
        Ok(Response::new(proto::LogoutAllResponse { revoked_sessions }))
    }

    async fn validate_token(
        &self,
        req: Request<proto::ValidateTokenRequest>,
    ) -> Result<Response<proto::ValidateTokenResponse>, Status> {
        let source = client_address(&req)?;
        let answer = self
            .svc
            .validate_token(
                caller(&req, self.client_certificates),
                source,
                &req.get_ref().access_token,
            )
            .await?;
        let resp = match answer {
            None => proto::ValidateTokenResponse::default(),
            Some(v) => proto::ValidateTokenResponse {
                valid: true,
                user_id: uuid_text(v.user_id),
                email: v.email.clone(),
                username: v.username.clone().unwrap_or_default(),
                role: role_to_proto(v.role) as i32,
                session_id: uuid_text(v.session_id),
                expire_time: Some(timestamp(v.expire_time)),
                issue_time: Some(timestamp(v.issue_time)),
                amr: v.amr.clone(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn get_jwks(
        &self,
        _req: Request<proto::GetJwksRequest>,
    ) -> Result<Response<proto::GetJwksResponse>, Status> {
        let keys = self.svc.jwks().into_iter().map(jwk_to_proto).collect();
        Ok(Response::new(proto::GetJwksResponse { keys }))
    }

    async fn create_service_key(
        &self,
        req: Request<proto::CreateServiceKeyRequest>,
    ) -> Result<Response<proto::CreateServiceKeyResponse>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        let r = req.into_inner();
        let spec = ServiceKeySpec {
            name: r.name,
            trusted_proxy: r.trusted_proxy,
            allowed_cidrs: r.allowed_cidrs,
        };
        let (info, key) = self
            .svc
            .create_service_key_with(Some(&p), &spec, &client)
            .await?;
        Ok(Response::new(proto::CreateServiceKeyResponse {
            id: info.id.to_string(),
            name: info.name,
            key,
        }))
    }

    async fn list_service_keys(
        &self,
        req: Request<proto::ListServiceKeysRequest>,
    ) -> Result<Response<proto::ListServiceKeysResponse>, Status> {
        let p = principal(&req)?;
        let keys = self
            .svc
            .list_service_keys(&p)
            .await?
            .into_iter()
            .map(|k| proto::ServiceKey {
                id: k.id.to_string(),
                name: k.name,
                create_time: Some(timestamp(k.create_time)),
                last_use_time: k.last_use_time.map(timestamp),
                creator_id: k.creator_id.map(|c| c.to_string()).unwrap_or_default(),
                trusted_proxy: k.trusted_proxy,
                allowed_cidrs: k.allowed_cidrs,
            })
            .collect();
        Ok(Response::new(proto::ListServiceKeysResponse { keys }))
    }

    async fn rotate_signing_key(
        &self,
        req: Request<proto::RotateSigningKeyRequest>,
    ) -> Result<Response<proto::RotateSigningKeyResponse>, Status> {
        let p = principal(&req)?;
        let (kid, activate_time) = self.svc.rotate_signing_key(Some(&p)).await?;
        Ok(Response::new(proto::RotateSigningKeyResponse {
            kid,
            activate_time: Some(timestamp(activate_time)),
        }))
    }

    async fn revoke_service_key(
        &self,
        req: Request<proto::RevokeServiceKeyRequest>,
    ) -> Result<Response<proto::RevokeServiceKeyResponse>, Status> {
        let p = principal(&req)?;
        self.svc
            .revoke_service_key(&p, &req.get_ref().id, &client_info(&req)?)
            .await?;
        Ok(Response::new(proto::RevokeServiceKeyResponse {}))
    }

    type WatchRevocationsStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<proto::WatchRevocationsResponse, Status>> + Send,
        >,
    >;

    /// The caller as for ValidateToken, then the domain's stream (see [`crate::domain::watch`]),
    /// pumped by a task into a small channel until the client goes or the drain stops accepting
    /// connections (the stream then ends with OK).
    async fn watch_revocations(
        &self,
        req: Request<proto::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let source = client_address(&req)?;
        self.svc
            .authenticate_verifier(caller(&req, self.client_certificates), source)
            .await?;
        let mut watch = self
            .svc
            .watch_revocations(&req.get_ref().resume_token)
            .await?;
        let mut draining = self.draining.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            let drained = async move {
                let _ = draining.wait_for(|d| *d).await;
            };
            tokio::pin!(drained);
            loop {
                let message = tokio::select! {
                    biased;
                    () = &mut drained => return,
                    () = tx.closed() => return,
                    m = watch.next() => m,
                };
                tokio::select! {
                    biased;
                    () = &mut drained => return,
                    sent = tx.send(Ok(watch_response(message))) => if sent.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Messages a WatchRevocations stream may have ready before its client reads them. Beyond, the
/// stream waits (HTTP/2 flow control), and falls behind the revocation feed if it waits too long.
const WATCH_BUFFER: usize = 1;

fn jwk_to_proto(k: crate::domain::tokens::PublicJwk) -> proto::Jwk {
    proto::Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: k.x,
        kid: k.kid,
        alg: "EdDSA".into(),
        r#use: "sig".into(),
    }
}

fn watch_response(m: WatchMessage) -> proto::WatchRevocationsResponse {
    proto::WatchRevocationsResponse {
        revoked_sessions: m
            .revoked
            .into_iter()
            .map(|(id, until)| proto::RevokedSession {
                session_id: id.to_string(),
                expire_time: Some(timestamp(until)),
            })
            .collect(),
        resume_token: m.resume_token,
        jwks: m.keys.map(|keys| proto::JwkSet {
            keys: keys.into_iter().map(jwk_to_proto).collect(),
        }),
        snapshot_complete: m.snapshot_complete,
    }
}
