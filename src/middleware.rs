//! Tower layers around every gRPC service: the server-side request deadline, and the mapping of
//! transport-level client errors to the status codes of the API contract.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::{Code, Status};

/// Largest total size of a request's metadata (header names and values, plus 32 bytes of
/// overhead per entry as HPACK counts them).
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

/// Answers DEADLINE_EXCEEDED when a call runs past `AUTHD_REQUEST_TIMEOUT` (tonic's own timeout
/// answers CANCELLED). The abandoned handler is dropped; `db::Conn` makes that safe mid-transaction.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer(pub Duration);

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            timeout: self.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S, Req, B> tower::Service<http::Request<Req>> for Deadline<S>
where
    S: tower::Service<http::Request<Req>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Default + Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<http::Response<B>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Req>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let timeout = self.timeout;
        let fut = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(%path, ?timeout, "request timed out");
                    Ok(Status::deadline_exceeded("request timed out").into_http())
                }
            }
        })
    }
}

/// Client mistakes that tonic reports with server-error codes get the contract's codes instead:
/// a malformed protobuf message (tonic: INTERNAL) is INVALID_ARGUMENT, a message over the size limit
/// (tonic: OUT_OF_RANGE) is RESOURCE_EXHAUSTED, and metadata over [`MAX_METADATA_BYTES`] is refused
/// with RESOURCE_EXHAUSTED before the call runs.
#[derive(Debug, Clone, Copy)]
pub struct ClientErrorLayer;

impl<S> tower::Layer<S> for ClientErrorLayer {
    type Service = ClientErrors<S>;
    fn layer(&self, inner: S) -> ClientErrors<S> {
        ClientErrors { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ClientErrors<S> {
    inner: S,
}

/// The size of a header block as HPACK accounts for it.
pub fn metadata_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 32)
        .sum()
}

/// The replacement status for a response that reports a client mistake with the wrong code.
fn remap(status: &Status) -> Option<Status> {
    match status.code() {
        Code::Internal
            if status
                .message()
                .starts_with("failed to decode Protobuf message")
                || status.message().starts_with("protocol error") =>
        {
            Some(Status::invalid_argument(
                "malformed request: not a valid protobuf message for this method",
            ))
        }
        Code::OutOfRange if status.message().contains("message length too large") => {
            Some(Status::resource_exhausted(format!(
                "request message too large (limit {} KiB)",
                crate::server::MAX_MESSAGE_BYTES / 1024
            )))
        }
        _ => None,
    }
}

impl<S, Req, B> tower::Service<http::Request<Req>> for ClientErrors<S>
where
    S: tower::Service<http::Request<Req>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Default + Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<http::Response<B>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Req>) -> Self::Future {
        if metadata_size(req.headers()) > MAX_METADATA_BYTES {
            let status = Status::resource_exhausted(format!(
                "request metadata too large (limit {} KiB)",
                MAX_METADATA_BYTES / 1024
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            // Errors raised before the handler ran come back trailers-only: the status is in the headers.
            match Status::from_header_map(response.headers()).and_then(|s| remap(&s)) {
                Some(status) => Ok(status.into_http()),
                None => Ok(response),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaps_only_transport_client_errors() {
        let decode = Status::internal("failed to decode Protobuf message: invalid wire type");
        assert_eq!(
            remap(&decode).map(|s| s.code()),
            Some(Code::InvalidArgument)
        );
        let big = Status::out_of_range(
            "Error, decoded message length too large: found 99 bytes, the limit is: 9 bytes",
        );
        assert_eq!(remap(&big).map(|s| s.code()), Some(Code::ResourceExhausted));
        assert!(remap(&Status::internal("internal error")).is_none());
        assert!(remap(&Status::unauthenticated("x")).is_none());
    }
}
