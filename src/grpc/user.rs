//! `auth.v1.UserService` handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::authorization;
use crate::domain::Authd;
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

fn not_yet(method: &str) -> Status {
    Status::unimplemented(format!("{method} is not implemented yet"))
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn get_me(
        &self,
        req: Request<proto::GetMeRequest>,
    ) -> Result<Response<proto::User>, Status> {
        let p = self.svc.authenticate(authorization(req.metadata())).await?;
        Ok(Response::new(self.svc.get_me(&p).await?.into()))
    }

    async fn update_me(
        &self,
        _req: Request<proto::UpdateMeRequest>,
    ) -> Result<Response<proto::User>, Status> {
        Err(not_yet("UpdateMe"))
    }

    async fn change_password(
        &self,
        _req: Request<proto::ChangePasswordRequest>,
    ) -> Result<Response<proto::ChangePasswordResponse>, Status> {
        Err(not_yet("ChangePassword"))
    }

    async fn delete_me(
        &self,
        _req: Request<proto::DeleteMeRequest>,
    ) -> Result<Response<proto::DeleteMeResponse>, Status> {
        Err(not_yet("DeleteMe"))
    }

    async fn list_my_sessions(
        &self,
        _req: Request<proto::ListMySessionsRequest>,
    ) -> Result<Response<proto::ListMySessionsResponse>, Status> {
        Err(not_yet("ListMySessions"))
    }

    async fn revoke_my_session(
        &self,
        _req: Request<proto::RevokeMySessionRequest>,
    ) -> Result<Response<proto::RevokeMySessionResponse>, Status> {
        Err(not_yet("RevokeMySession"))
    }

    async fn list_users(
        &self,
        _req: Request<proto::ListUsersRequest>,
    ) -> Result<Response<proto::ListUsersResponse>, Status> {
        Err(not_yet("ListUsers"))
    }

    async fn get_user(
        &self,
        _req: Request<proto::GetUserRequest>,
    ) -> Result<Response<proto::User>, Status> {
        Err(not_yet("GetUser"))
    }

    async fn revoke_user_sessions(
        &self,
        _req: Request<proto::RevokeUserSessionsRequest>,
    ) -> Result<Response<proto::RevokeUserSessionsResponse>, Status> {
        Err(not_yet("RevokeUserSessions"))
    }

    async fn create_user(
        &self,
        _req: Request<proto::CreateUserRequest>,
    ) -> Result<Response<proto::User>, Status> {
        Err(not_yet("CreateUser"))
    }

    async fn update_user(
        &self,
        _req: Request<proto::UpdateUserRequest>,
    ) -> Result<Response<proto::User>, Status> {
        Err(not_yet("UpdateUser"))
    }

    async fn delete_user(
        &self,
        _req: Request<proto::DeleteUserRequest>,
    ) -> Result<Response<proto::DeleteUserResponse>, Status> {
        Err(not_yet("DeleteUser"))
    }

    async fn list_audit_events(
        &self,
        _req: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        Err(not_yet("ListAuditEvents"))
    }
}
