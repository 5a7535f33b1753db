//! Protect a tonic service with [authd](https://github.com/): a tower layer, [`AuthLayer`], that
//! authenticates every call's `authorization: Bearer <access token>` and hands the handler the
//! caller as a [`Principal`].
//!
//! ```no_run
//! use authd_client::{AuthLayer, RequestExt, Role, ServiceKey};
//! use tonic::transport::{Channel, Server};
//! # async fn run(my_service: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//!
//! let authd = Channel::from_static("http://authd:50051").connect_lazy();
//! let auth = AuthLayer::builder(authd, ServiceKey::from_env("AUTHD_SERVICE_KEY")?)
//!     .require_role("/grpc.health.v1.Health/Watch", Role::Admin)
//!     .local();
//! Server::builder()
//!     .layer(auth)
//!     .add_service(my_service)
//!     .serve("0.0.0.0:50052".parse()?)
//!     .await?;
//! # Ok(()) }
//! // In a handler: `let caller = request.principal()?;` or `request.require_role(Role::Moderator)?;`
//! ```
//!
//! # Two modes
//!
//! **Local** ([`AuthLayerBuilder::local`]) verifies tokens in-process. A background task holds
//! authd's `WatchRevocations` stream open (authenticated with the [`ServiceKey`] as `x-api-key`):
//! it brings the signing keys and every ended session, first as a snapshot and then live, within a
//! second of a logout on any authd replica. A check is a lookup in a cache of verified tokens, an
//! expiry check and a lookup in the revoked set: no network, no allocation beyond the
//! [`Principal`] handle, well over a million checks per second on one core (see `BENCHMARKS.md`).
//!
//! **Remote** ([`AuthLayerBuilder::remote`]) calls authd's `ValidateToken` for every call and
//! caches nothing, for services that prefer not to hold keys: one round trip per call, and a
//! revocation holds as soon as authd sees it.
//!
//! Both put the same [`Principal`] into the request extensions.
//!
//! # Refusals
//!
//! The layer answers refused calls itself, with the statuses authd uses for its own methods:
//!
//! | Case | Status | `google.rpc.ErrorInfo` (domain `authd`) |
//! |---|---|---|
//! | no `authorization` metadata | UNAUTHENTICATED | `TOKEN_MISSING` |
//! | malformed, forged, wrong issuer/audience, unknown key, revoked session | UNAUTHENTICATED | `TOKEN_INVALID` |
//! | expired | UNAUTHENTICATED | `TOKEN_EXPIRED` (refresh and retry) |
//! | role below [`AuthLayerBuilder::require_role`] | PERMISSION_DENIED | — |
//! | local mode: no snapshot yet, or the stream silent for longer than [`AuthLayerBuilder::stale_after`] (default 5 s); remote mode: authd unreachable | UNAVAILABLE | — |
//!
//! # Fail closed
//!
//! authd sends a heartbeat every second while its own revocation view is fresh, and none while it
//! is not. When nothing has arrived for longer than the bound, the layer cannot know whether it
//! missed a logout, so it refuses every call with UNAVAILABLE until the stream is back. It drops a
//! silent stream and reconnects, with exponential backoff (100 ms doubling to 5 s, each delay
//! jittered) and the last `resume_token`, so that a reconnect to any replica continues without a
//! new snapshot.
//!
//! # Configuration
//!
//! The issuer and audience default to authd's defaults (`authd`); set them with
//! [`AuthLayerBuilder::issuer`] and [`AuthLayerBuilder::audience`] when `AUTHD_ISSUER` or
//! `AUTHD_AUDIENCE` are set. Time is a parameter ([`Clock`]): tests drive expiry with
//! [`ManualClock`].

#![warn(missing_docs)]

mod cache;
mod clock;
mod key;
mod layer;
mod local;
mod principal;
mod reject;
mod remote;
mod watch;

pub use authd_token::Role;
pub use clock::{Clock, ManualClock, SystemClock};
pub use key::{ServiceKey, ServiceKeyError};
pub use layer::{
    AuthLayer, AuthLayerBuilder, AuthService, DEFAULT_CACHE_CAPACITY, DEFAULT_STALE_AFTER,
    ResponseFuture,
};
pub use principal::{Principal, RequestExt};
pub use reject::Rejection;
