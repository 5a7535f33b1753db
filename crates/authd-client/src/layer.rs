//! [`AuthLayer`] (built by [`AuthLayerBuilder`]) and the service it wraps around a tonic server's
//! routes, [`AuthService`], with its allocation-free [`ResponseFuture`].
//!
//! Per call: a path listed as public passes untouched; otherwise the `authorization: Bearer`
//! token is checked (locally, or by ValidateToken in remote mode), the role the path requires (if
//! any) is compared with the caller's, and the [`Principal`] goes into the request's extensions.
//! A refusal is answered by the layer itself, as a gRPC status; the inner service never sees it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use authd_proto::auth_service_client::AuthServiceClient;
use authd_token::Role;
use http::HeaderValue;
use tonic::transport::Channel;

use crate::clock::{Clock, SystemClock};
use crate::key::ServiceKey;
use crate::local::LocalState;
use crate::principal::Principal;
use crate::reject::Rejection;
use crate::remote::Remote;
use crate::watch::{self, Backoff};

/// The default fail-closed bound: with no message from the stream for longer, calls get
/// UNAVAILABLE. authd sends a heartbeat every second.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(5);
/// The default number of verified tokens kept: about 10 MB (an entry is the token, typically
/// 700-900 bytes, plus its principal). A token evicted is verified again (tens of microseconds).
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// Configures an [`AuthLayer`]; made by [`AuthLayer::builder`], finished by
/// [`local`](AuthLayerBuilder::local) or [`remote`](AuthLayerBuilder::remote).
#[derive(Clone)]
pub struct AuthLayerBuilder {
    channel: Channel,
    key: ServiceKey,
    issuer: String,
    audience: String,
    stale_after: Duration,
    cache_capacity: usize,
    backoff_initial: Duration,
    backoff_max: Duration,
    remote_timeout: Duration,
    clock: Arc<dyn Clock>,
    roles: HashMap<String, Role>,
    public: Vec<String>,
}

impl std::fmt::Debug for AuthLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayerBuilder")
            .field("key", &self.key)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("stale_after", &self.stale_after)
            .field("roles", &self.roles)
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl AuthLayerBuilder {
    /// The expected `iss` claim: authd's `AUTHD_ISSUER` (default `authd`).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = issuer.into();
        self
    }

    /// The expected `aud` claim: authd's `AUTHD_AUDIENCE` (default `authd`).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// Local mode: refuse every call with UNAVAILABLE once the revocation stream has been silent
    /// for longer than this (default [`DEFAULT_STALE_AFTER`]). Also the time after which a silent
    /// stream is dropped and reopened.
    pub fn stale_after(mut self, bound: Duration) -> Self {
        self.stale_after = bound;
        self
    }

    /// Local mode: how many verified tokens to keep (default [`DEFAULT_CACHE_CAPACITY`]).
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// Local mode: the reconnect delays, from `initial` doubling up to `max`, each with jitter
    /// (defaults 100 ms and 5 s).
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Remote mode: how long to wait for ValidateToken before answering UNAVAILABLE (default 2 s).
    pub fn remote_timeout(mut self, timeout: Duration) -> Self {
        self.remote_timeout = timeout;
        self
    }

    /// The clock (default [`SystemClock`]); tests pass a [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Requires at least `role` for the method at `path` (`/package.Service/Method`); a caller
    /// with a lower role gets PERMISSION_DENIED. Roles are ordered `User < Moderator < Admin`.
    pub fn require_role(mut self, path: impl Into<String>, role: Role) -> Self {
        self.roles.insert(path.into(), role);
        self
    }

    /// Lets calls whose path starts with `prefix` through without a token (for example
    /// `"/grpc.health.v1.Health/"`). They carry no [`Principal`].
    pub fn public(mut self, prefix: impl Into<String>) -> Self {
        self.public.push(prefix.into());
        self
    }

    /// Local mode: verifies tokens in-process against the keys and revocations that authd's
    /// WatchRevocations pushes, and starts that stream on the current tokio runtime (it stops when
    /// the last clone of the layer is dropped). Calls get UNAVAILABLE until the first snapshot has
    /// arrived; [`AuthLayer::wait_ready`] waits for it.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn` does).
    pub fn local(self) -> AuthLayer {
        let (layer, state) = self.local_state();
        watch::spawn(
            &state,
            AuthServiceClient::new(self.channel),
            self.key,
            self.stale_after,
            Backoff::new(self.backoff_initial, self.backoff_max),
        );
        layer
    }

    fn local_state(&self) -> (AuthLayer, Arc<LocalState>) {
        let state = Arc::new(LocalState::new(
            self.issuer.clone(),
            self.audience.clone(),
            self.clock.clone(),
            self.stale_after,
            self.cache_capacity,
        ));
        let layer = AuthLayer(Arc::new(Shared {
            mode: Mode::Local(state.clone()),
            roles: self.roles.clone(),
            public: self.public.clone(),
        }));
        (layer, state)
    }

    /// Local mode without a stream: the state is fed by [`AuthLayer::apply`]. For benchmarks and
    /// tests of the check itself; a service uses [`local`](Self::local).
    #[doc(hidden)]
    pub fn local_unconnected(self) -> AuthLayer {
        self.local_state().0
    }

    /// Remote mode: every call is checked by authd's ValidateToken (see the crate doc for what
    /// that costs and what it caches: nothing).
    pub fn remote(self) -> AuthLayer {
        AuthLayer(Arc::new(Shared {
            mode: Mode::Remote(Box::new(Remote {
                client: AuthServiceClient::new(self.channel),
                key: self.key,
                timeout: self.remote_timeout,
                clock: self.clock,
            })),
            roles: self.roles,
            public: self.public,
        }))
    }
}

enum Mode {
    Local(Arc<LocalState>),
    Remote(Box<Remote>),
}

struct Shared {
    mode: Mode,
    roles: HashMap<String, Role>,
    public: Vec<String>,
}

impl Shared {
    fn is_public(&self, path: &str) -> bool {
        self.public.iter().any(|p| path.starts_with(p.as_str()))
    }

    fn authorize(&self, path: &str, p: &Principal) -> Result<(), Rejection> {
        if self.roles.is_empty() {
            return Ok(());
        }
        match self.roles.get(path) {
            Some(&role) if !p.has_role(role) => Err(Rejection::Forbidden(role)),
            _ => Ok(()),
        }
    }
}

/// A tower layer that authenticates the calls of a tonic server with authd. Cheap to clone; see
/// the [crate documentation](crate) for an example.
#[derive(Clone)]
pub struct AuthLayer(Arc<Shared>);

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.0.mode {
            Mode::Local(_) => "local",
            Mode::Remote(_) => "remote",
        };
        f.debug_struct("AuthLayer")
            .field("mode", &mode)
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl AuthLayer {
    /// Starts configuring a layer that talks to authd over `channel` (for example
    /// `Channel::from_static("http://authd:50051").connect_lazy()`) and authenticates with `key`.
    pub fn builder(channel: Channel, key: ServiceKey) -> AuthLayerBuilder {
        AuthLayerBuilder {
            channel,
            key,
            issuer: "authd".into(),
            audience: "authd".into(),
            stale_after: DEFAULT_STALE_AFTER,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            remote_timeout: Duration::from_secs(2),
            clock: Arc::new(SystemClock::new()),
            roles: HashMap::new(),
            public: Vec::new(),
        }
    }

    /// Whether calls can be checked now: in local mode, the snapshot has arrived and the stream
    /// spoke within the bound; remote mode is always ready (each call finds out).
    pub fn is_ready(&self) -> bool {
        match &self.0.mode {
            Mode::Local(s) => s.is_fresh(),
            Mode::Remote(_) => true,
        }
    }

    /// Waits until [`is_ready`](Self::is_ready), at most `timeout`; returns whether it is.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_ready() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Feeds one WatchRevocations message to a layer made by `local_unconnected`.
    #[doc(hidden)]
    pub fn apply(&self, msg: authd_proto::WatchRevocationsResponse) {
        if let Mode::Local(s) = &self.0.mode {
            s.apply(msg);
        }
    }

    /// The local-mode check of one call, as the service runs it (None in remote mode).
    #[doc(hidden)]
    pub fn check_local(
        &self,
        path: &str,
        authorization: Option<&HeaderValue>,
    ) -> Option<Result<Principal, Rejection>> {
        let Mode::Local(state) = &self.0.mode else {
            return None;
        };
        Some(bearer(authorization).and_then(|t| {
            let p = state.check(t)?;
            self.0.authorize(path, &p)?;
            Ok(p)
        }))
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            shared: self.0.clone(),
        }
    }
}

/// The token of an `authorization` value, read as authd reads it (scheme `Bearer` in any case).
fn bearer(value: Option<&HeaderValue>) -> Result<&str, Rejection> {
    let value = value
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(Rejection::Missing)?;
    match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Ok(rest.trim()),
        _ => Err(Rejection::Invalid),
    }
}

/// The service made by [`AuthLayer`] around a tonic server's routes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

pin_project_lite::pin_project! {
    /// The future of [`AuthService`]: the inner service's own future, an immediate refusal, or
    /// (remote mode only) a boxed ValidateToken round trip. Local mode allocates nothing here.
    #[project = Proj]
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Inner { #[pin] fut: F },
        Refused { response: Option<http::Response<B>> },
        Remote { fut: BoxFuture<http::Response<B>, E> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<B>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut } => fut.poll(cx),
            KindProj::Refused { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            KindProj::Remote { fut } => fut.as_mut().poll(cx),
        }
    }
}

fn refuse<F, B: Default, E>(r: Rejection) -> ResponseFuture<F, B, E> {
    ResponseFuture {
        kind: Kind::Refused {
            response: Some(r.into_status().into_http()),
        },
    }
}

impl<S, ReqB, ResB> tower_service::Service<http::Request<ReqB>> for AuthService<S>
where
    S: tower_service::Service<http::Request<ReqB>, Response = http::Response<ResB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqB>) -> Self::Future {
        let shared = &self.shared;
        let path = req.uri().path();
        if shared.is_public(path) {
            return ResponseFuture {
                kind: Kind::Inner {
                    fut: self.inner.call(req),
                },
            };
        }
        let token = match bearer(req.headers().get(http::header::AUTHORIZATION)) {
            Ok(t) => t,
            Err(r) => return refuse(r),
        };
        match &shared.mode {
            Mode::Local(state) => {
                let checked = state
                    .check(token)
                    .and_then(|p| shared.authorize(path, &p).map(|()| p));
                match checked {
                    Ok(p) => {
                        req.extensions_mut().insert(p);
                        ResponseFuture {
                            kind: Kind::Inner {
                                fut: self.inner.call(req),
                            },
                        }
                    }
                    Err(r) => refuse(r),
                }
            }
            Mode::Remote(remote) => {
                let remote = Remote::clone(remote);
                let token = token.to_owned();
                let shared = self.shared.clone();
                // The service that was polled ready goes into the future; a clone stays.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let fut = async move {
                    let checked = remote
                        .check(token)
                        .await
                        .and_then(|p| shared.authorize(req.uri().path(), &p).map(|()| p));
                    match checked {
                        Ok(p) => {
                            req.extensions_mut().insert(p);
                            inner.call(req).await
                        }
                        Err(r) => Ok(r.into_status().into_http()),
                    }
                };
                ResponseFuture {
                    kind: Kind::Remote { fut: Box::pin(fut) },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_read_as_authd_reads_it() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer(None), Err(Rejection::Missing));
        assert_eq!(bearer(Some(&v("  "))), Err(Rejection::Missing));
        assert_eq!(bearer(Some(&v("Basic abc"))), Err(Rejection::Invalid));
        assert_eq!(bearer(Some(&v("abc"))), Err(Rejection::Invalid));
        assert_eq!(bearer(Some(&v("bearer  abc "))), Ok("abc"));
        assert_eq!(bearer(Some(&v("Bearer x.y.z"))), Ok("x.y.z"));
        let non_ascii = HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap();
        assert_eq!(bearer(Some(&non_ascii)), Err(Rejection::Missing));
    }
}
