//! The tower layers around every gRPC service, and [`grpc_stack`], the one function that builds
//! them into the one stack the server uses. From the outside in:
//!
//! 1. [`trace::RpcTraceLayer`]: one span and log line per call with its request id;
//! 2. [`metrics::GrpcMetricsLayer`]: the go-grpc-prometheus metrics;
//! 3. [`client_errors::ClientErrorLayer`]: transport-level client mistakes get the contract's codes;
//! 4. [`deadline::DeadlineLayer`]: the server-side request deadline;
//! 5. [`auth::AuthLayer`]: bearer authentication, once, the caller into the request's extensions.
//!
//! The first two sit outside the layers that rewrite statuses, so they see the code the client
//! receives. [`completion`] tells them a call's final code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tower::layer::util::{Identity, Stack};

use crate::domain::Authd;

pub mod auth;
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
        deadline::DeadlineLayer,
        Stack<
            client_errors::ClientErrorLayer,
            Stack<metrics::GrpcMetricsLayer, Stack<trace::RpcTraceLayer, Identity>>,
        >,
    >,
>;

/// Builds the one layer stack of the gRPC services; `request_timeout` is `AUTHD_REQUEST_TIMEOUT`.
pub fn grpc_stack(svc: Arc<Authd>, request_timeout: Duration) -> tower::ServiceBuilder<GrpcStack> {
    tower::ServiceBuilder::new()
        .layer(trace::RpcTraceLayer)
        .layer(metrics::GrpcMetricsLayer)
        .layer(client_errors::ClientErrorLayer)
        .layer(deadline::DeadlineLayer(request_timeout))
        .layer(auth::AuthLayer(svc))
}
