//! Observing a call until its final gRPC status is known ([`observe_response`]), which the trace
//! and metrics layers both need, and the names of the codes as go-grpc-prometheus prints them.

use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Code;

type Frame = http_body::Frame<bytes::Bytes>;

/// A callback run exactly once with the call's final gRPC code: from the response headers of a
/// trailers-only response (how errors usually end), from the trailers when the response body
/// ends (how successful calls and streams end), or `Cancelled` when the call is dropped before
/// either (the client went away).
pub struct Completion(Option<Box<dyn FnOnce(Code) + Send + 'static>>);

impl Completion {
    pub fn new(f: impl FnOnce(Code) + Send + 'static) -> Self {
        Self(Some(Box::new(f)))
    }

    /// Runs the callback, unless it already ran.
    pub fn finish(&mut self, code: Code) {
        if let Some(f) = self.0.take() {
            f(code);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Completion")
            .field(&self.0.is_some())
            .finish()
    }
}

/// A response body that runs its [`Completion`] when the trailers (or the end) go by.
pub struct CompletionBody<B> {
    inner: Pin<Box<B>>,
    completion: Completion,
}

impl<B> std::fmt::Debug for CompletionBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionBody")
            .field("completion", &self.completion)
            .finish_non_exhaustive()
    }
}

impl<B: Default> Default for CompletionBody<B> {
    fn default() -> Self {
        Self {
            inner: Box::pin(B::default()),
            completion: Completion(None),
        }
    }
}

impl<B> axum::body::HttpBody for CompletionBody<B>
where
    B: axum::body::HttpBody<Data = axum::body::Bytes>,
{
    type Data = axum::body::Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame, Self::Error>>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status_code(trailers).unwrap_or(Code::Unknown);
                    this.completion.finish(code);
                }
            }
            // The stream broke, or ended without a status.
            Poll::Ready(Some(Err(_)) | None) => this.completion.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// Wraps `response` so that `completion` runs with its final code: at once for a trailers-only
/// response (`grpc-status` in the headers), otherwise when the body's trailers are sent.
pub fn observe_response<B>(
    response: http::Response<B>,
    mut completion: Completion,
) -> http::Response<CompletionBody<B>> {
    if let Some(code) = grpc_status_code(response.headers()) {
        completion.finish(code);
    }
    response.map(|inner| CompletionBody {
        inner: Box::pin(inner),
        completion,
    })
}

/// The `grpc-status` in a header or trailer map.
pub fn grpc_status_code(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.trim().parse::<i32>().ok().map(Code::from_i32)
}

/// A code's name as go-grpc-prometheus (Go's `codes.Code.String()`) prints it.
pub use authd_proto::code_name::go as grpc_code_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_from_headers_and_their_names() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status_code(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(grpc_status_code(&headers), Some(Code::Unauthenticated));
        assert_eq!(grpc_code_name(Code::Ok), "OK");
        assert_eq!(grpc_code_name(Code::Cancelled), "Canceled");
        assert_eq!(grpc_code_name(Code::InvalidArgument), "InvalidArgument");
        assert_eq!(grpc_code_name(Code::Unauthenticated), "Unauthenticated");
    }

    #[test]
    fn completion_runs_once_and_reports_drops_as_cancelled() {
        use std::sync::{Arc, Mutex};
        let seen: Arc<Mutex<Vec<Code>>> = Arc::default();
        let s = seen.clone();
        let mut c =
            Completion::new(move |code| s.lock().unwrap_or_else(|e| e.into_inner()).push(code));
        c.finish(Code::Ok);
        c.finish(Code::Internal);
        drop(c);
        let s = seen.clone();
        drop(Completion::new(move |code| {
            s.lock().unwrap_or_else(|e| e.into_inner()).push(code)
        }));
        assert_eq!(
            *seen.lock().unwrap_or_else(|e| e.into_inner()),
            vec![Code::Ok, Code::Cancelled]
        );
    }
}
