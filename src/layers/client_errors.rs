//! [`ClientErrorLayer`]: transport-level client mistakes get the status codes of the API contract.

use std::task::{Context, Poll};

use tonic::{Code, Status};

use crate::layers::BoxFuture;
use crate::limits::{MAX_MESSAGE_BYTES, MAX_METADATA_BYTES};

/// Client mistakes that tonic reports with server-error codes get the contract's codes instead:
/// a malformed protobuf message, a body that ends inside a message frame, and a gRPC-Web body that
/// does not decode (bad base64; all tonic: INTERNAL) are INVALID_ARGUMENT, a message over the size
/// limit (tonic: OUT_OF_RANGE) is RESOURCE_EXHAUSTED, and metadata over [`MAX_METADATA_BYTES`] is
/// refused with RESOURCE_EXHAUSTED before the call runs.
///
/// Every one of these statuses is made by tonic's codec, the innermost service, while it reads the
/// request (tonic-web's decoding errors surface there too, as errors of the request body); it
/// reports them before the handler runs, as a trailers-only response, so this layer sees them in
/// the response headers. It sits inside the gRPC-Web layer (which adds only plain HTTP errors of
/// its own) and inside the trace and metrics layers, so logs and metrics record the rewritten code.
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
        // A request body that ends inside a gRPC message frame.
        Code::Internal
            if status
                .message()
                .starts_with("Unexpected EOF decoding stream") =>
        {
            Some(Status::invalid_argument(
                "malformed request: the body ends inside a gRPC message frame",
            ))
        }
        // A gRPC-Web body tonic-web cannot decode (bad base64, bad framing).
        Code::Internal | Code::DataLoss if status.message().starts_with("tonic-web: ") => {
            Some(Status::invalid_argument(format!(
                "malformed gRPC-Web request body: {}",
                status.message().trim_start_matches("tonic-web: ")
            )))
        }
        Code::OutOfRange if status.message().contains("message length too large") => {
            Some(Status::resource_exhausted(format!(
                "request message too large (limit {} KiB)",
                MAX_MESSAGE_BYTES / 1024
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
        for client_mistake in [
            Status::internal("Unexpected EOF decoding stream."),
            Status::internal("tonic-web: Invalid symbol 33, offset 0."),
        ] {
            let remapped = remap(&client_mistake).map(|s| (s.code(), s.message().to_owned()));
            assert!(
                matches!(&remapped, Some((Code::InvalidArgument, m)) if m.starts_with("malformed")),
                "{remapped:?}"
            );
        }
        assert!(remap(&Status::internal("internal error")).is_none());
        assert!(remap(&Status::unauthenticated("x")).is_none());
    }
}
