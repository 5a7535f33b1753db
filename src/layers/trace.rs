//! [`RpcTraceLayer`]: one span and one log line per call, with its request id.

use std::task::{Context, Poll};

use tonic::Code;

use crate::layers::BoxFuture;
use crate::layers::completion::{Completion, CompletionBody, grpc_code_name, observe_response};
use crate::proto::auth_service_server;

/// The request id header, read from the request and set on the response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id taken from a client; longer (or non-printable) ids are replaced.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// The client's `x-request-id` if it is 1 to [`MAX_REQUEST_ID_CHARS`] printable ASCII characters,
/// otherwise a new UUID.
pub fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID_CHARS
                && id.bytes().all(|b| (0x20..=0x7e).contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// One span per call (`rpc`, with `method`, `request_id`, and once it ends `code` and `latency_ms`)
/// and one log line when it ends: INFO, DEBUG for `grpc.health.v1` and successful ValidateToken
/// and Envoy ext_authz Check calls. Those token checks run in a DEBUG span (like health checks);
/// one that fails gets an INFO `rpc` span with the same fields, and its INFO line, when it ends. The request id (the client's
/// `x-request-id`, or a generated one) is returned in the response's `x-request-id`. No other
/// metadata is ever logged. Place it outermost, so it sees the code the client receives.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTraceLayer;

/// The token-checking methods, whose successful calls are logged at DEBUG (see [`RpcTrace`]):
/// ValidateToken and Envoy's ext_authz Check (whose denials are successful calls too).
fn is_validate_token(path: &str) -> bool {
    let called = path.strip_prefix('/').and_then(|p| p.split_once('/'));
    called == Some((auth_service_server::SERVICE_NAME, "ValidateToken"))
        || called == Some(("envoy.service.auth.v3.Authorization", "Check"))
}

impl<S> tower::Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;
    fn layer(&self, inner: S) -> RpcTrace<S> {
        RpcTrace { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcTrace<S> {
    inner: S,
}

/// Longest method path put into a log line.
const MAX_LOGGED_PATH_CHARS: usize = 256;

impl<S, Req, B> tower::Service<http::Request<Req>> for RpcTrace<S>
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

    fn call(&mut self, mut req: http::Request<Req>) -> Self::Future {
        use tracing::Instrument;

        let id = request_id(req.headers());
        let header = http::HeaderValue::from_str(&id).ok();
        if let Some(h) = &header {
            req.headers_mut().insert(REQUEST_ID_HEADER, h.clone());
        }
        let path = req.uri().path();
        let method = path.get(..MAX_LOGGED_PATH_CHARS).unwrap_or(path).to_owned();
        let health = method.starts_with("/grpc.health.v1.");
        // ValidateToken (and Check) runs on every request of every other service: its successes are logged at
        // DEBUG like health checks (an INFO line each would cost more than the call); its
        // failures stay at INFO.
        let quiet_if_ok = is_validate_token(&method);
        // Health checks and token checks run in a DEBUG span (nothing to build when DEBUG is off).
        // A token check that fails gets its INFO span and line when it ends, with the same fields.
        let span = if health || quiet_if_ok {
            tracing::debug_span!(
                "rpc",
                method = %method,
                request_id = %id,
                code = tracing::field::Empty,
                latency_ms = tracing::field::Empty,
            )
        } else {
            tracing::info_span!(
                "rpc",
                method = %method,
                request_id = %id,
                code = tracing::field::Empty,
                latency_ms = tracing::field::Empty,
            )
        };
        let start = std::time::Instant::now();
        let log_span = span.clone();
        let mut completion = Completion::new(move |code: Code| {
            let latency_ms = (start.elapsed().as_secs_f64() * 1e6).round() / 1e3;
            if quiet_if_ok && code != Code::Ok {
                let failed = tracing::info_span!(
                    "rpc",
                    method = %method,
                    request_id = %id,
                    code = %grpc_code_name(code),
                    latency_ms,
                );
                tracing::info!(parent: &failed, "rpc finished");
                return;
            }
            log_span.record("code", tracing::field::display(grpc_code_name(code)));
            log_span.record("latency_ms", latency_ms);
            if health || quiet_if_ok {
                tracing::debug!(parent: &log_span, "rpc finished");
            } else {
                tracing::info!(parent: &log_span, "rpc finished");
            }
        });
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        let fut = fut.instrument(span);
        Box::pin(async move {
            match fut.await {
                Ok(mut response) => {
                    if let Some(h) = header {
                        response.headers_mut().insert(REQUEST_ID_HEADER, h);
                    }
                    Ok(observe_response(response, completion))
                }
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

    #[test]
    fn request_ids_are_printable_ascii_and_bounded() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            REQUEST_ID_HEADER,
            http::HeaderValue::from_static("abc-123 x"),
        );
        assert_eq!(request_id(&headers), "abc-123 x");
        for bad in [
            "x".repeat(MAX_REQUEST_ID_CHARS + 1),
            "tab\there".into(),
            String::new(),
        ] {
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&bad) {
                headers.insert(REQUEST_ID_HEADER, v);
            }
            let id = request_id(&headers);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{bad:?} -> {id}");
        }
        // Not ASCII (obs-text is a valid header value).
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_bytes(b"caf\xc3\xa9") {
            headers.insert(REQUEST_ID_HEADER, v);
        }
        assert!(headers.contains_key(REQUEST_ID_HEADER));
        assert!(uuid::Uuid::parse_str(&request_id(&headers)).is_ok());
        let max = "y".repeat(MAX_REQUEST_ID_CHARS);
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&max) {
            headers.insert(REQUEST_ID_HEADER, v);
        }
        assert_eq!(request_id(&headers), max);
    }
}
