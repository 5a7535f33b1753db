//! [`AuthLayer`]: bearer authentication, once per call, for every method that needs an access
//! token. The layer verifies the `authorization` metadata through the domain
//! ([`Authd::authenticate`]) and puts the caller, a [`Principal`], into the request's extensions;
//! handlers read it with `grpc::principal`. A call that fails gets the same
//! UNAUTHENTICATED status (and ErrorInfo reason) the handlers returned before.
//!
//! Which methods need a token: every UserService method but those in
//! [`USER_SERVICE_PUBLIC_METHODS`], and the AuthService methods in
//! [`AUTH_SERVICE_BEARER_METHODS`]. Logout is not among them: it authenticates only when no refresh
//! token is given, which depends on the request body, so its handler does it itself.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;

use crate::domain::Authd;
use crate::layers::BoxFuture;
use crate::proto::{auth_service_server, user_service_server};

/// The AuthService methods that need a bearer token.
pub const AUTH_SERVICE_BEARER_METHODS: [&str; 5] = [
    "LogoutAll",
    "CreateServiceKey",
    "ListServiceKeys",
    "RotateSigningKey",
    "RevokeServiceKey",
];

/// The UserService methods that need no bearer token: ResendVerification (an unverified user may
/// be unable to log in).
pub const USER_SERVICE_PUBLIC_METHODS: [&str; 1] = ["ResendVerification"];

/// Whether a call to `path` (`/package.Service/Method`) needs a bearer token.
pub fn needs_bearer_token(path: &str) -> bool {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    (service == user_service_server::SERVICE_NAME && !USER_SERVICE_PUBLIC_METHODS.contains(&method))
        || (service == auth_service_server::SERVICE_NAME
            && AUTH_SERVICE_BEARER_METHODS.contains(&method))
}

/// See the module doc.
#[derive(Debug, Clone)]
pub struct AuthLayer(pub Arc<Authd>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            svc: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    svc: Arc<Authd>,
}

impl<S, Req, B> tower::Service<http::Request<Req>> for Auth<S>
where
    S: tower::Service<http::Request<Req>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    Req: Send + 'static,
    B: Default + Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<http::Response<B>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Req>) -> Self::Future {
        if !needs_bearer_token(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // The service that was polled ready goes into the future; a clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let svc = self.svc.clone();
        Box::pin(async move {
            let authorization = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            match svc.authenticate(authorization).await {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    inner.call(req).await
                }
                Err(e) => Ok(Status::from(e).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_methods_need_a_token() {
        let auth = auth_service_server::SERVICE_NAME;
        let users = user_service_server::SERVICE_NAME;
        assert!(needs_bearer_token(&format!("/{users}/GetMe")));
        assert!(needs_bearer_token(&format!("/{auth}/LogoutAll")));
        for open in [
            "Login",
            "Register",
            "Refresh",
            "Logout",
            "ValidateToken",
            "GetJwks",
            "VerifyEmail",
            "ConfirmEmailChange",
            "RequestPasswordReset",
            "ResetPassword",
        ] {
            assert!(!needs_bearer_token(&format!("/{auth}/{open}")), "{open}");
        }
        assert!(!needs_bearer_token(&format!("/{users}/ResendVerification")));
        assert!(needs_bearer_token(&format!("/{users}/UpdateMe")));
        assert!(!needs_bearer_token("/grpc.health.v1.Health/Check"));
        // Envoy's ext_authz authenticates its caller by service key, in the domain.
        assert!(!needs_bearer_token(
            "/envoy.service.auth.v3.Authorization/Check"
        ));
        assert!(!needs_bearer_token("/x"));
    }
}
