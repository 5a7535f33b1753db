//! [`GrpcMetricsLayer`]: the go-grpc-prometheus server metrics of every call
//! (`grpc_server_started_total`, `grpc_server_handled_total`, `grpc_server_handling_seconds`; see
//! [`crate::metrics`]), labelled by the method's service, name and type from the descriptor sets.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use ::metrics::{counter, histogram};
use prost::Message;
use tonic::Code;

use crate::layers::BoxFuture;
use crate::layers::completion::{Completion, CompletionBody, grpc_code_name, observe_response};
use crate::metrics::{GRPC_HANDLED, GRPC_HANDLING_SECONDS, GRPC_STARTED};

/// The labels of one gRPC method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodLabels {
    pub service: &'static str,
    pub method: &'static str,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub kind: &'static str,
}

/// Paths that name no served method are counted under this, so a client cannot create series.
const UNKNOWN_METHOD: MethodLabels = MethodLabels {
    service: "unknown",
    method: "unknown",
    kind: "unknown",
};

/// The served methods (API, Envoy ext_authz, health, reflection), from their descriptor sets.
fn method_table() -> &'static HashMap<String, MethodLabels> {
    static TABLE: OnceLock<HashMap<String, MethodLabels>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = HashMap::new();
        for set in [
            crate::proto::FILE_DESCRIPTOR_SET,
            crate::grpc::ext_authz::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    let full = if package.is_empty() {
                        service.name().to_owned()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    let full: &'static str = Box::leak(full.into_boxed_str());
                    for m in &service.method {
                        let kind = match (m.client_streaming(), m.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        let name: &'static str = Box::leak(m.name().to_owned().into_boxed_str());
                        table.insert(
                            format!("/{full}/{name}"),
                            MethodLabels {
                                service: full,
                                method: name,
                                kind,
                            },
                        );
                    }
                }
            }
        }
        table
    })
}

/// The labels of a request path such as `/authd.v1.AuthService/Login`.
pub fn method_labels(path: &str) -> MethodLabels {
    method_table().get(path).copied().unwrap_or(UNKNOWN_METHOD)
}

/// Records the go-grpc-prometheus server metrics of every call. Place it outside the layers that
/// rewrite statuses, so it counts the code the client receives.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, Req, B> tower::Service<http::Request<Req>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<Req>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<CompletionBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Req>) -> Self::Future {
        let m = method_labels(req.uri().path());
        counter!(
            GRPC_STARTED,
            "grpc_service" => m.service,
            "grpc_method" => m.method,
            "grpc_type" => m.kind
        )
        .increment(1);
        let start = Instant::now();
        let mut completion = Completion::new(move |code: Code| {
            counter!(
                GRPC_HANDLED,
                "grpc_service" => m.service,
                "grpc_method" => m.method,
                "grpc_type" => m.kind,
                "grpc_code" => grpc_code_name(code)
            )
            .increment(1);
            histogram!(
                GRPC_HANDLING_SECONDS,
                "grpc_service" => m.service,
                "grpc_method" => m.method,
                "grpc_type" => m.kind
            )
            .record(start.elapsed().as_secs_f64());
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(response) => Ok(observe_response(response, completion)),
                Err(e) => {
                    completion.finish(Code::Unknown);
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH: &str = crate::proto::auth_service_server::SERVICE_NAME;

    #[test]
    fn method_labels_come_from_the_descriptors() {
        assert_eq!(
            method_labels(&format!("/{AUTH}/Login")),
            MethodLabels {
                service: AUTH,
                method: "Login",
                kind: "unary"
            }
        );
        assert_eq!(
            method_labels("/grpc.health.v1.Health/Watch").kind,
            "server_stream"
        );
        assert_eq!(
            method_labels("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").kind,
            "bidi_stream"
        );
        assert_eq!(
            method_labels("/envoy.service.auth.v3.Authorization/Check").method,
            "Check"
        );
        assert_eq!(method_labels(&format!("/{AUTH}/Nope")), UNKNOWN_METHOD);
        assert_eq!(method_labels("/x"), UNKNOWN_METHOD);
    }
}
