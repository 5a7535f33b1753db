//! The tower layers around every gRPC service, and [`grpc_stack`], the one function that builds
//! them into the one stack the server uses. From the outside in:
//!
//! 1. [`trace::RpcTraceLayer`]: one span and log line per call with its request id;
//! 2. [`metrics::GrpcMetricsLayer`]: the go-grpc-prometheus metrics;
//! 3. [`client_errors::ClientErrorLayer`]: transport-level client mistakes get the contract's codes;
//! 4. [`deadline::DeadlineLayer`]: the server-side request deadline;
//! 5. [`client::ClientLayer`]: the client (address, user agent, proxy key, deadline), resolved
//!    once, into the request's extensions;
//! 6. [`auth::AuthLayer`]: bearer authentication, once, the caller into the request's extensions.
//!
//! The first two sit outside the layers that rewrite statuses, so they see the code the client
//! receives. [`completion`] tells them a call's final code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tower::layer::util::{Identity, Stack};

use crate::config::Config;
use crate::domain::Authd;

pub mod auth;
pub mod client;
pub mod client_errors;
pub mod completion;
pub mod deadline;
pub mod metrics;
pub mod trace;

pub(crate) type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

/// The layer stack of the gRPC services, outermost first (see the module doc).
pub type GrpcStack = Stack<
    auth::AuthLayer,
    Stack<
        client::ClientLayer,
        Stack<
            deadline::DeadlineLayer,
            Stack<
                client_errors::ClientErrorLayer,
                Stack<metrics::GrpcMetricsLayer, Stack<trace::RpcTraceLayer, Identity>>,
            >,
        >,
    >,
>;

/// Builds the one layer stack of the gRPC services, with `AUTHD_REQUEST_TIMEOUT` and
/// `AUTHD_TRUSTED_PROXIES` from `config`.
pub fn grpc_stack(svc: Arc<Authd>, config: &Config) -> tower::ServiceBuilder<GrpcStack> {
    tower::ServiceBuilder::new()
        .layer(trace::RpcTraceLayer)
        .layer(metrics::GrpcMetricsLayer)
        .layer(client_errors::ClientErrorLayer)
        .layer(deadline::DeadlineLayer(config.request_timeout))
        .layer(client::ClientLayer {
            svc: svc.clone(),
            trusted: Arc::new(config.trusted_proxies.clone()),
        })
        .layer(auth::AuthLayer(svc))
}
