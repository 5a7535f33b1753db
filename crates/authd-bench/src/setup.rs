//! Setup of a run, through the public API only: a random run id, the bench users (Register with
//! random strong passwords), their sessions (Login for access and refresh tokens), and the
//! service key for ValidateToken (CreateServiceKey as the admin, revoked again by [`cleanup`]).
//!
//! Every setup call is retried with a short backoff on RESOURCE_EXHAUSTED (the server's bcrypt
//! queue or rate limit is full) and UNAVAILABLE, and at most `--setup-parallelism` run at once.
//! A failure names the RPC, the status code and the server's message.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authd_proto::auth_service_client::AuthServiceClient;
use authd_proto::{
    CreateServiceKeyRequest, LoginRequest, LoginResponse, RegisterRequest, RevokeServiceKeyRequest,
    login_request,
};
use rand::Rng;
use rand::distributions::Alphanumeric;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::cli::{Plan, Rpc};
use authd_proto::code_name::canonical as code_name;

/// Deadline of one setup call.
const SETUP_CALL_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_START: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// A server's `retry-after` is honoured up to this long.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);

/// A setup step that failed.
#[derive(Debug)]
pub struct SetupError {
    pub what: String,
    pub status: Option<Status>,
    pub hint: Option<&'static str>,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "setup failed: {}", self.what)?;
        if let Some(s) = &self.status {
            write!(f, ": {} {:?}", code_name(s.code()), s.message())?;
        }
        if let Some(h) = self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

impl SetupError {
    pub(crate) fn msg(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            status: None,
            hint: None,
        }
    }

    pub(crate) fn rpc(what: impl Into<String>, status: Status) -> Self {
        let hint = match status.code() {
            Code::ResourceExhausted => Some(
                "still refused after retrying; is the per-IP rate limit on? run authd with \
                 AUTHD_RATE_LIMIT_PER_IP=0",
            ),
            Code::Unavailable => Some("is authd running at --addr?"),
            Code::PermissionDenied => Some("registration closed, or the account is not an ADMIN"),
            _ => None,
        };
        Self {
            what: what.into(),
            status: Some(status),
            hint,
        }
    }
}

/// A registered bench user.
#[derive(Debug, Clone)]
pub struct BenchUser {
    pub email: String,
    pub password: String,
}

/// A logged-in session of a bench user.
#[derive(Debug, Clone)]
pub struct Session {
    /// Index into [`Prepared::users`].
    pub user: usize,
    pub access_token: String,
    pub refresh_token: String,
}

/// A service key this run created, to revoke at the end.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub id: String,
    admin_email: String,
    admin_password: String,
}

/// Everything the workers need.
#[derive(Debug, Default)]
pub struct Prepared {
    pub run_id: String,
    pub users: Vec<BenchUser>,
    /// One per user, shared (read-only) by validate and getme workers.
    pub shared_sessions: Vec<Session>,
    /// One per refresh worker: a refresh token rotates, so it is never shared.
    pub refresh_sessions: Vec<Session>,
    pub service_key: Option<MetadataValue<Ascii>>,
    pub created_key: Option<CreatedKey>,
}

/// What setup needs to know besides the plan.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    pub admin_email: Option<String>,
    pub admin_password: Option<String>,
    pub service_key: Option<String>,
    pub parallelism: u32,
    pub retry_for: Duration,
    /// Refresh workers bring their own tokens (`--refresh-tokens`): log no session in for them.
    pub refresh_tokens_given: bool,
}

/// A random id for this run, part of every e-mail address it registers.
pub fn new_run_id() -> String {
    random_string(10).to_ascii_lowercase()
}

fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A strong random password (zxcvbn scores 28 random alphanumerics 4 of 4).
pub(crate) fn new_password() -> String {
    format!("bench-{}", random_string(28))
}

pub fn user_email(run_id: &str, i: usize) -> String {
    format!("bench-{run_id}-{i}@bench.example")
}

/// Calls `f` until it succeeds, fails with a code other than RESOURCE_EXHAUSTED/UNAVAILABLE, or
/// `retry_for` has passed. `f` gets the attempt number (0 first).
pub async fn retrying<T, F, Fut>(retry_for: Duration, mut f: F) -> Result<T, Status>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + retry_for;
    let mut backoff = BACKOFF_START;
    let mut attempt = 0u32;
    loop {
        let status = match f(attempt).await {
            Ok(v) => return Ok(v),
            Err(s) => s,
        };
        if !matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) {
            return Err(status);
        }
        let wait = retry_after(&status).unwrap_or(backoff);
        if Instant::now() + wait > deadline {
            return Err(status);
        }
        // Jitter, so parallel setup calls do not come back in lockstep.
        let jitter = rand::thread_rng().gen_range(0..=wait.as_millis() as u64 / 4);
        tokio::time::sleep(wait + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        attempt += 1;
    }
}

fn retry_after(status: &Status) -> Option<Duration> {
    let secs: u64 = status
        .metadata()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(RETRY_AFTER_MAX))
}

pub(crate) fn with_timeout<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(SETUP_CALL_TIMEOUT);
    req
}

pub fn bearer(token: &str) -> Result<MetadataValue<Ascii>, SetupError> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| SetupError::msg("an access token is not valid ASCII metadata"))
}

pub(crate) async fn login(
    auth: &mut AuthServiceClient<Channel>,
    email: &str,
    password: &str,
    retry_for: Duration,
) -> Result<LoginResponse, Status> {
    retrying(retry_for, |_| {
        let mut auth = auth.clone();
        let req = with_timeout(LoginRequest {
            identifier: Some(login_request::Identifier::Email(email.to_owned())),
            password: password.to_owned(),
        });
        async move { auth.login(req).await.map(|r| r.into_inner()) }
    })
    .await
}

fn check_pair(pair: &LoginResponse, what: &str) -> Result<(), SetupError> {
    if pair.access_token.is_empty() || pair.refresh_token.is_empty() {
        return Err(SetupError::msg(format!(
            "{what}: OK but the token pair is incomplete"
        )));
    }
    Ok(())
}

/// Registers one user; a retried Register that meets ALREADY_EXISTS succeeded earlier.
async fn register(
    auth: AuthServiceClient<Channel>,
    email: String,
    retry_for: Duration,
) -> Result<BenchUser, SetupError> {
    let password = new_password();
    let reply = retrying(retry_for, |attempt| {
        let mut auth = auth.clone();
        let req = with_timeout(RegisterRequest {
            email: email.clone(),
            password: password.clone(),
            ..Default::default()
        });
        async move {
            match auth.register(req).await {
                Ok(r) => Ok(r.into_inner().user.map(|u| u.id)),
                Err(s) if attempt > 0 && s.code() == Code::AlreadyExists => Ok(None),
                Err(s) => Err(s),
            }
        }
    })
    .await
    .map_err(|s| SetupError::rpc(format!("AuthService/Register {email}"), s))?;
    // None: registered by an earlier attempt whose reply was lost.
    if reply.as_deref() == Some("") {
        return Err(SetupError::msg(format!(
            "AuthService/Register {email}: OK without a user id"
        )));
    }
    Ok(BenchUser { email, password })
}

/// Runs `tasks` with at most `parallelism` at once; results in task order.
pub(crate) async fn bounded<T, Fut>(parallelism: u32, tasks: Vec<Fut>) -> Result<Vec<T>, SetupError>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T, SetupError>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(parallelism.max(1) as usize));
    let mut set = JoinSet::new();
    let n = tasks.len();
    for (i, task) in tasks.into_iter().enumerate() {
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem
                .acquire_owned()
                .await
                .map_err(|_| SetupError::msg("setup semaphore closed"))?;
            task.await.map(|v| (i, v))
        });
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, v) = joined.map_err(|e| SetupError::msg(format!("setup task failed: {e}")))??;
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(v);
        }
    }
    out.into_iter()
        .map(|v| v.ok_or_else(|| SetupError::msg("a setup task returned nothing")))
        .collect()
}

/// Prepares everything `plan` needs on the server.
pub async fn prepare(
    channel: Channel,
    plan: &Plan,
    opts: &SetupOptions,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Prepared, SetupError> {
    let run_id = new_run_id();
    let auth = AuthServiceClient::new(channel);
    let mut prepared = Prepared {
        run_id: run_id.clone(),
        ..Default::default()
    };

    if plan.has(Rpc::Validate) {
        prepared.service_key =
            Some(service_key(auth.clone(), opts, &run_id, &mut prepared, log).await?);
    }

    if plan.users > 0 {
        log(&format!(
            "registering {} bench user(s) (run {run_id}, {} at a time)",
            plan.users, opts.parallelism
        ));
        let tasks = (0..plan.users as usize)
            .map(|i| register(auth.clone(), user_email(&run_id, i), opts.retry_for))
            .collect();
        prepared.users = bounded(opts.parallelism, tasks).await?;
    }

    // Shared sessions: one per user, for validate and getme workers.
    let shared = if plan.has(Rpc::Validate) || plan.has(Rpc::GetMe) {
        prepared.users.len()
    } else {
        0
    };
    let refresh = if opts.refresh_tokens_given {
        0
    } else {
        plan.workers_of(Rpc::Refresh) as usize
    };
    if shared + refresh > 0 {
        log(&format!(
            "logging in {} session(s) ({} at a time)",
            shared + refresh,
            opts.parallelism
        ));
    }
    let n_users = prepared.users.len().max(1);
    let session_users: Vec<usize> = (0..shared)
        .chain((0..refresh).map(|w| w % n_users))
        .collect();
    let tasks = session_users
        .iter()
        .map(|&u| {
            let mut auth = auth.clone();
            let user = prepared.users.get(u).cloned();
            let retry_for = opts.retry_for;
            async move {
                let user = user
                    .ok_or_else(|| SetupError::msg("a session needs a bench user, none exist"))?;
                let what = format!("AuthService/Login {}", user.email);
                let pair = login(&mut auth, &user.email, &user.password, retry_for)
                    .await
                    .map_err(|s| SetupError::rpc(what.clone(), s))?;
                check_pair(&pair, &what)?;
                Ok(Session {
                    user: u,
                    access_token: pair.access_token,
                    refresh_token: pair.refresh_token,
                })
            }
        })
        .collect();
    let mut sessions = bounded(opts.parallelism, tasks).await?;
    prepared.refresh_sessions = sessions.split_off(shared);
    prepared.shared_sessions = sessions;
    Ok(prepared)
}

/// The given service key, or a new one created as the admin.
async fn service_key(
    auth: AuthServiceClient<Channel>,
    opts: &SetupOptions,
    run_id: &str,
    prepared: &mut Prepared,
    log: &(dyn Fn(&str) + Sync),
) -> Result<MetadataValue<Ascii>, SetupError> {
    if let Some(key) = opts.service_key.as_deref().filter(|k| !k.is_empty()) {
        return key
            .parse()
            .map_err(|_| SetupError::msg("--service-key is not valid ASCII metadata"));
    }
    let (Some(email), Some(password)) = (
        opts.admin_email.as_deref().filter(|e| !e.is_empty()),
        opts.admin_password.as_deref(),
    ) else {
        return Err(SetupError::msg(
            "ValidateToken needs a service key: pass --service-key (AUTHD_BENCH_SERVICE_KEY), or \
             --admin-email and --admin-password (AUTHD_BENCH_ADMIN_EMAIL/_PASSWORD) of an ADMIN so \
             that the bench creates one",
        ));
    };
    log(&format!("creating a service key as {email}"));
    let (id, key) = create_key(
        auth,
        email,
        password,
        &format!("authd-bench-{run_id}"),
        opts.retry_for,
    )
    .await?;
    prepared.created_key = Some(CreatedKey {
        id,
        admin_email: email.to_owned(),
        admin_password: password.to_owned(),
    });
    key.parse()
        .map_err(|_| SetupError::msg("the new service key is not valid ASCII metadata"))
}

pub(crate) async fn admin_bearer(
    auth: &mut AuthServiceClient<Channel>,
    email: &str,
    password: &str,
    retry_for: Duration,
) -> Result<MetadataValue<Ascii>, SetupError> {
    let what = format!("AuthService/Login {email} (admin)");
    let pair = login(auth, email, password, retry_for)
        .await
        .map_err(|s| SetupError::rpc(what.clone(), s))?;
    check_pair(&pair, &what)?;
    bearer(&pair.access_token)
}

pub(crate) async fn create_key(
    mut auth: AuthServiceClient<Channel>,
    email: &str,
    password: &str,
    name: &str,
    retry_for: Duration,
) -> Result<(String, String), SetupError> {
    let bearer = admin_bearer(&mut auth, email, password, retry_for).await?;
    let reply = retrying(retry_for, |_| {
        let mut auth = auth.clone();
        let mut req = with_timeout(CreateServiceKeyRequest {
            name: name.to_owned(),
            ..Default::default()
        });
        req.metadata_mut().insert("authorization", bearer.clone());
        async move { auth.create_service_key(req).await.map(|r| r.into_inner()) }
    })
    .await
    .map_err(|s| SetupError::rpc("AuthService/CreateServiceKey", s))?;
    if reply.key.is_empty() || reply.id.is_empty() {
        return Err(SetupError::msg(
            "AuthService/CreateServiceKey: OK without a key or id",
        ));
    }
    Ok((reply.id, reply.key))
}

/// Revokes the service key this run created (best effort: a failure is only reported).
pub async fn cleanup(
    channel: Channel,
    prepared: &Prepared,
    retry_for: Duration,
) -> Result<(), SetupError> {
    let Some(created) = &prepared.created_key else {
        return Ok(());
    };
    let mut auth = AuthServiceClient::new(channel);
    let bearer = admin_bearer(
        &mut auth,
        &created.admin_email,
        &created.admin_password,
        retry_for,
    )
    .await?;
    retrying(retry_for, |_| {
        let mut auth = auth.clone();
        let mut req = with_timeout(RevokeServiceKeyRequest {
            id: created.id.clone(),
        });
        req.metadata_mut().insert("authorization", bearer.clone());
        async move { auth.revoke_service_key(req).await.map(|_| ()) }
    })
    .await
    .map_err(|s| SetupError::rpc("AuthService/RevokeServiceKey", s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_passwords() {
        let run = new_run_id();
        assert_eq!(run.len(), 10);
        let e = user_email(&run, 7);
        assert!(e.starts_with("bench-") && e.ends_with("-7@bench.example"));
        assert!(e.is_ascii());
        let p = new_password();
        assert!(p.len() >= 30 && p.len() <= 72);
        assert_ne!(p, new_password());
    }

    #[test]
    fn setup_error_names_rpc_code_and_message() {
        let e = SetupError::rpc(
            "AuthService/Register x@y.example",
            Status::invalid_argument("password is too weak"),
        );
        let s = e.to_string();
        assert!(s.contains("AuthService/Register"));
        assert!(s.contains("INVALID_ARGUMENT"));
        assert!(s.contains("password is too weak"));
    }

    #[tokio::test]
    async fn retries_only_transient_codes() {
        let mut calls = 0;
        let r: Result<u32, Status> = retrying(Duration::from_secs(5), |attempt| {
            calls += 1;
            async move {
                if attempt < 2 {
                    Err(Status::resource_exhausted("queue full"))
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 2);
        assert_eq!(calls, 3);

        let mut calls = 0;
        let r: Result<(), Status> = retrying(Duration::from_secs(5), |_| {
            calls += 1;
            async { Err(Status::invalid_argument("no")) }
        })
        .await;
        assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(calls, 1);

        let r: Result<(), Status> = retrying(Duration::from_millis(50), |_| async {
            Err(Status::unavailable("down"))
        })
        .await;
        assert_eq!(r.unwrap_err().code(), Code::Unavailable);
    }
}
