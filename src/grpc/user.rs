//! `authd.v1.UserService` handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{client_info, principal, role_arg, timestamp};
use crate::domain::Authd;
use crate::domain::accounts::NewAccount;
use crate::domain::accounts::{AdminUpdate, ProfileUpdate, UserQuery};
use crate::proto;
use crate::proto::user_service_server::UserService;

/// The UserService implementation.
#[derive(Debug, Clone)]
pub struct UserApi {
    svc: Arc<Authd>,
}

impl UserApi {
    pub fn new(svc: Arc<Authd>) -> Self {
        Self { svc }
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn get_me(
        &self,
        req: Request<proto::GetMeRequest>,
    ) -> Result<Response<proto::User>, Status> {
        let p = principal(&req)?;
        Ok(Response::new(self.svc.get_me(&p).await?.into()))
    }

    async fn update_me(
        &self,
        req: Request<proto::UpdateMeRequest>,
    ) -> Result<Response<proto::User>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        let r = req.into_inner();
        let upd = ProfileUpdate {
            username: r.username,
            first_name: r.first_name,
            last_name: r.last_name,
            email: r.email,
            current_password: r.current_password,
        };
        Ok(Response::new(
            self.svc.update_me(&p, upd, &client).await?.into(),
        ))
    }

    async fn resend_verification(
        &self,
        req: Request<proto::ResendVerificationRequest>,
    ) -> Result<Response<proto::ResendVerificationResponse>, Status> {
        let client = client_info(&req)?;
        self.svc
            .resend_verification(&req.get_ref().email, &client)
            .await?;
        Ok(Response::new(proto::ResendVerificationResponse {}))
    }

    async fn change_password(
        &self,
        req: Request<proto::ChangePasswordRequest>,
    ) -> Result<Response<proto::ChangePasswordResponse>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        let r = req.into_inner();
        let revoked_sessions = self
            .svc
            .change_password(&p, &r.current_password, &r.new_password, &client)
            .await?;
        Ok(Response::new(proto::ChangePasswordResponse {
            revoked_sessions,
        }))
    }

    async fn delete_me(
        &self,
        req: Request<proto::DeleteMeRequest>,
    ) -> Result<Response<proto::DeleteMeResponse>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        self.svc
            .delete_me(&p, &req.get_ref().password, &client)
            .await?;
        Ok(Response::new(proto::DeleteMeResponse {}))
    }

    async fn list_my_sessions(
        &self,
        req: Request<proto::ListMySessionsRequest>,
    ) -> Result<Response<proto::ListMySessionsResponse>, Status> {
        let p = principal(&req)?;
        let sessions = self
            .svc
            .list_my_sessions(&p)
            .await?
            .into_iter()
            .map(|s| proto::Session {
                id: s.id.to_string(),
                create_time: Some(timestamp(s.create_time)),
                last_use_time: Some(timestamp(s.last_use_time)),
                expire_time: Some(timestamp(s.expire_time)),
                user_agent: s.user_agent,
                ip_address: s.ip_address,
                current: s.current,
                amr: s.amr,
            })
            .collect();
        Ok(Response::new(proto::ListMySessionsResponse { sessions }))
    }

    async fn revoke_my_session(
        &self,
        req: Request<proto::RevokeMySessionRequest>,
    ) -> Result<Response<proto::RevokeMySessionResponse>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        self.svc
            .revoke_my_session(&p, &req.get_ref().session_id, &client)
            .await?;
        Ok(Response::new(proto::RevokeMySessionResponse {}))
    }

    async fn list_users(
        &self,
        req: Request<proto::ListUsersRequest>,
    ) -> Result<Response<proto::ListUsersResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let page = self
            .svc
            .list_users(
                &p,
                UserQuery {
                    page_size: r.page_size,
                    page_token: r.page_token,
                    query: r.query,
                    role: Some(role_arg(r.role)),
                    active: r.active,
                },
            )
            .await?;
        Ok(Response::new(proto::ListUsersResponse {
            users: page.users.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size,
            total_size_is_estimate: page.total_size_is_estimate,
        }))
    }

    async fn get_user(
        &self,
        req: Request<proto::GetUserRequest>,
    ) -> Result<Response<proto::User>, Status> {
        let p = principal(&req)?;
        Ok(Response::new(
            self.svc.get_user(&p, &req.get_ref().user_id).await?.into(),
        ))
    }

    async fn revoke_user_sessions(
        &self,
        req: Request<proto::RevokeUserSessionsRequest>,
    ) -> Result<Response<proto::RevokeUserSessionsResponse>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        let revoked_sessions = self
            .svc
            .revoke_user_sessions(&p, &req.get_ref().user_id, &client)
            .await?;
        Ok(Response::new(proto::RevokeUserSessionsResponse {
            revoked_sessions,
        }))
    }

    async fn create_user(
        &self,
        req: Request<proto::CreateUserRequest>,
    ) -> Result<Response<proto::User>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        let r = req.into_inner();
        let input = NewAccount {
            email: r.email,
            password: r.password,
            username: r.username,
            first_name: r.first_name,
            last_name: r.last_name,
            email_verified: r.email_verified,
        };
        let account = self
            .svc
            .create_user(&p, input, role_arg(r.role), &client)
            .await?;
        Ok(Response::new(account.into()))
    }

    async fn update_user(
        &self,
        req: Request<proto::UpdateUserRequest>,
    ) -> Result<Response<proto::User>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        let r = req.into_inner();
        let upd = AdminUpdate {
            email: r.email,
            username: r.username,
            first_name: r.first_name,
            last_name: r.last_name,
            role: r.role.map(role_arg),
            active: r.active,
            password: r.password,
        };
        let account = self.svc.update_user(&p, &r.user_id, upd, &client).await?;
        Ok(Response::new(account.into()))
    }

    async fn delete_user(
        &self,
        req: Request<proto::DeleteUserRequest>,
    ) -> Result<Response<proto::DeleteUserResponse>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        self.svc
            .delete_user(&p, &req.get_ref().user_id, &client)
            .await?;
        Ok(Response::new(proto::DeleteUserResponse {}))
    }

    async fn list_audit_events(
        &self,
        req: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let page = self
            .svc
            .list_audit_events(&p, &r.user_id, r.page_size, &r.page_token)
            .await?;
        let events = page
            .events
            .into_iter()
            .map(|e| proto::AuditEvent {
                id: e.id.to_string(),
                user_id: e.user_id.map(|u| u.to_string()).unwrap_or_default(),
                actor_id: e.actor_id.map(|u| u.to_string()).unwrap_or_default(),
                kind: e.kind,
                ip_address: e.ip_address,
                user_agent: e.user_agent,
                detail: e.detail,
                create_time: Some(timestamp(e.create_time)),
            })
            .collect();
        Ok(Response::new(proto::ListAuditEventsResponse {
            events,
            next_page_token: page.next_page_token,
        }))
    }

    async fn enroll_totp(
        &self,
        req: Request<proto::EnrollTotpRequest>,
    ) -> Result<Response<proto::EnrollTotpResponse>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        let e = self
            .svc
            .enroll_totp(&p, &req.get_ref().current_password, &client)
            .await?;
        Ok(Response::new(proto::EnrollTotpResponse {
            secret: e.secret,
            otpauth_uri: e.otpauth_uri,
            qr_png: e.qr_png,
        }))
    }

    async fn confirm_totp(
        &self,
        req: Request<proto::ConfirmTotpRequest>,
    ) -> Result<Response<proto::ConfirmTotpResponse>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        let r = self
            .svc
            .confirm_totp(&p, &req.get_ref().code, &client)
            .await?;
        Ok(Response::new(proto::ConfirmTotpResponse {
            recovery_codes: r.codes,
            revoked_sessions: r.revoked_sessions,
        }))
    }

    async fn disable_totp(
        &self,
        req: Request<proto::DisableTotpRequest>,
    ) -> Result<Response<proto::DisableTotpResponse>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        let r = req.get_ref();
        let revoked_sessions = self
            .svc
            .disable_totp(&p, &r.current_password, &r.code, &client)
            .await?;
        Ok(Response::new(proto::DisableTotpResponse {
            revoked_sessions,
        }))
    }

    async fn regenerate_recovery_codes(
        &self,
        req: Request<proto::RegenerateRecoveryCodesRequest>,
    ) -> Result<Response<proto::RegenerateRecoveryCodesResponse>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        let recovery_codes = self
            .svc
            .regenerate_recovery_codes(&p, &req.get_ref().code, &client)
            .await?;
        Ok(Response::new(proto::RegenerateRecoveryCodesResponse {
            recovery_codes,
        }))
    }

    async fn reset_user_mfa(
        &self,
        req: Request<proto::ResetUserMfaRequest>,
    ) -> Result<Response<proto::ResetUserMfaResponse>, Status> {
        let p = principal(&req)?;
        let client = client_info(&req)?;
        let revoked_sessions = self
            .svc
            .reset_user_mfa(&p, &req.get_ref().user_id, &client)
            .await?;
        Ok(Response::new(proto::ResetUserMfaResponse {
            revoked_sessions,
        }))
    }
}
