//! [`Principal`]: the verified caller that the layer puts into the request extensions, and
//! [`RequestExt`], the one-line way for a handler to get it or to require a role.

use std::sync::Arc;

use authd_token::{Role, VerifiedToken};
use chrono::{DateTime, Utc};
use tonic::Status;
use uuid::Uuid;

use crate::reject::Rejection;

/// A caller whose access token the [`AuthLayer`](crate::AuthLayer) verified. Cheap to clone (one
/// reference count): the layer hands the same one to every call that presents the same token.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal(Arc<Inner>);

#[derive(Clone, PartialEq, Eq)]
struct Inner {
    user_id: Uuid,
    session_id: Uuid,
    role: Role,
    email: String,
    username: Option<String>,
    issue_time: DateTime<Utc>,
    expire_time: DateTime<Utc>,
    amr: Vec<String>,
}

impl Principal {
    /// A principal with these fields (the layer makes them; tests of handlers may too). Its
    /// [`amr`](Principal::amr) is `["pwd"]`; see [`with_amr`](Principal::with_amr).
    pub fn new(
        user_id: Uuid,
        session_id: Uuid,
        role: Role,
        email: impl Into<String>,
        username: Option<String>,
        issue_time: DateTime<Utc>,
        expire_time: DateTime<Utc>,
    ) -> Self {
        Self::build(
            user_id,
            session_id,
            role,
            email.into(),
            username,
            (issue_time, expire_time),
            authd_token::default_amr(),
        )
    }

    /// [`Principal::new`] with its `amr`, in one allocation.
    pub(crate) fn build(
        user_id: Uuid,
        session_id: Uuid,
        role: Role,
        email: String,
        username: Option<String>,
        (issue_time, expire_time): (DateTime<Utc>, DateTime<Utc>),
        amr: Vec<String>,
    ) -> Self {
        Self(Arc::new(Inner {
            user_id,
            session_id,
            role,
            email,
            username: username.filter(|u| !u.is_empty()),
            issue_time,
            expire_time,
            amr,
        }))
    }

    /// The same principal with the authentication methods `amr` (RFC 8176).
    pub fn with_amr(self, amr: Vec<String>) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.0);
        inner.amr = amr;
        Self(Arc::new(inner))
    }

    /// How the user authenticated (the token's `amr` claim, RFC 8176): `["pwd"]`, or
    /// `["pwd", "otp"]` after a second factor.
    pub fn amr(&self) -> &[String] {
        &self.0.amr
    }

    /// Whether the user passed a second factor (`amr` contains `otp`): a handler that demands one
    /// refuses the call otherwise.
    pub fn has_second_factor(&self) -> bool {
        self.0.amr.iter().any(|m| m == authd_token::AMR_OTP)
    }

    /// The user's id (the token's `sub`).
    pub fn user_id(&self) -> Uuid {
        self.0.user_id
    }

    /// The session's id (the token's `sid`): logging out ends it.
    pub fn session_id(&self) -> Uuid {
        self.0.session_id
    }

    /// The user's role when the token was issued.
    pub fn role(&self) -> Role {
        self.0.role
    }

    /// The user's e-mail address when the token was issued.
    pub fn email(&self) -> &str {
        &self.0.email
    }

    /// The user's username when the token was issued, if the account had one.
    pub fn username(&self) -> Option<&str> {
        self.0.username.as_deref()
    }

    /// When the token was issued (`iat`).
    pub fn issue_time(&self) -> DateTime<Utc> {
        self.0.issue_time
    }

    /// When the token expires (`exp`).
    pub fn expire_time(&self) -> DateTime<Utc> {
        self.0.expire_time
    }

    /// Whether the caller has at least `role` (`User < Moderator < Admin`).
    pub fn has_role(&self, role: Role) -> bool {
        self.0.role >= role
    }

    /// `Ok` if the caller has at least `role`, else PERMISSION_DENIED.
    pub fn require_role(&self, role: Role) -> Result<(), Status> {
        if self.has_role(role) {
            Ok(())
        } else {
            Err(Rejection::Forbidden(role).into_status())
        }
    }

    pub(crate) fn exp_secs(&self) -> i64 {
        self.0.expire_time.timestamp()
    }
}

impl From<VerifiedToken> for Principal {
    fn from(v: VerifiedToken) -> Self {
        Self::build(
            v.user_id,
            v.session_id,
            v.role,
            v.email,
            v.username,
            (v.issue_time, v.expire_time),
            v.amr,
        )
    }
}

/// Redacts nothing secret (a principal holds no token) but keeps the e-mail out of logs.
impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("user_id", &self.0.user_id)
            .field("session_id", &self.0.session_id)
            .field("role", &self.0.role)
            .field("expire_time", &self.0.expire_time)
            .field("amr", &self.0.amr)
            .finish_non_exhaustive()
    }
}

/// The caller of a request that went through the [`AuthLayer`](crate::AuthLayer), from a handler.
///
/// ```
/// use authd_client::{RequestExt, Role};
/// use tonic::{Request, Response, Status};
///
/// async fn delete_everything(req: Request<()>) -> Result<Response<()>, Status> {
///     let admin = req.require_role(Role::Admin)?;
///     println!("{} deletes everything", admin.user_id());
///     Ok(Response::new(()))
/// }
/// ```
pub trait RequestExt {
    /// The caller; UNAUTHENTICATED (TOKEN_MISSING) if the layer did not authenticate this call
    /// (it is not installed, or the method is public).
    fn principal(&self) -> Result<&Principal, Status>;

    /// The caller if it has at least `role`, else PERMISSION_DENIED (or UNAUTHENTICATED as
    /// [`principal`](RequestExt::principal)).
    fn require_role(&self, role: Role) -> Result<&Principal, Status> {
        let p = self.principal()?;
        p.require_role(role)?;
        Ok(p)
    }
}

impl<T> RequestExt for tonic::Request<T> {
    fn principal(&self) -> Result<&Principal, Status> {
        self.extensions()
            .get::<Principal>()
            .ok_or_else(|| Rejection::Missing.into_status())
    }
}

impl<T> RequestExt for http::Request<T> {
    fn principal(&self) -> Result<&Principal, Status> {
        self.extensions()
            .get::<Principal>()
            .ok_or_else(|| Rejection::Missing.into_status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amr_defaults_to_pwd_and_comes_from_the_token() {
        let t = Utc::now();
        let p = Principal::new(Uuid::nil(), Uuid::nil(), Role::User, "a@b.c", None, t, t);
        assert_eq!(p.amr(), ["pwd"]);
        assert!(!p.has_second_factor());
        let v = VerifiedToken {
            key_id: "k".into(),
            user_id: Uuid::nil(),
            session_id: Uuid::nil(),
            role: Role::User,
            email: "a@b.c".into(),
            username: None,
            issue_time: t,
            expire_time: t,
            amr: vec!["pwd".into(), "otp".into()],
        };
        let p = Principal::from(v);
        assert_eq!(p.amr(), ["pwd", "otp"]);
        assert!(p.has_second_factor());
        assert!(p.clone().with_amr(vec!["pwd".into()]).amr() == ["pwd"]);
    }
}
