//! Tower layers around every gRPC service: one span and log line per call with its request id
//! ([`RpcTraceLayer`]), the server-side request deadline, and the mapping of transport-level client
//! errors to the status codes of the API contract. [`observe_response`] tells layers a call's final
//! code (the metrics layer in `crate::metrics` uses it too).

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
///
/// It also puts the call's deadline, its `grpc-timeout` capped by `AUTHD_REQUEST_TIMEOUT` and
/// counted from now, into the request's extensions as a [`RequestDeadline`](crate::domain::RequestDeadline)
/// (the bcrypt pool admits a password check only if it can finish by then).
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

    fn call(&mut self, mut req: http::Request<Req>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let timeout = self.timeout;
        let budget = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
            .map_or(timeout, |t| t.min(timeout));
        if let Some(at) = std::time::Instant::now().checked_add(budget) {
            req.extensions_mut()
                .insert(crate::domain::RequestDeadline(at));
        }
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

/// A `grpc-timeout` header value: at most 8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`), as the gRPC over HTTP/2 spec defines it. None if it does not parse.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n.checked_mul(3600)?),
        b'M' => Duration::from_secs(n.checked_mul(60)?),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

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

// ----- observing a call until its final status is known -----------------------------------------

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

// ----- one span and one log line per call ------------------------------------------------------

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
/// calls. The request id (the client's
/// `x-request-id`, or a generated one) is returned in the response's `x-request-id`. No other
/// metadata is ever logged. Place it outermost, so it sees the code the client receives.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTraceLayer;

/// The one API method whose successful calls are logged at DEBUG (see [`RpcTrace`]).
const VALIDATE_TOKEN_PATH: &str = "/authd.v1.AuthService/ValidateToken";

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
        // ValidateToken runs on every request of every other service: its successes are logged at
        // DEBUG like health checks (an INFO line each would cost more than the call); its
        // failures stay at INFO.
        let quiet_if_ok = method == VALIDATE_TOKEN_PATH;
        let span = if health {
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
            log_span.record("code", tracing::field::display(grpc_code_name(code)));
            log_span.record("latency_ms", latency_ms);
            if health || (quiet_if_ok && code == Code::Ok) {
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
    fn grpc_timeouts() {
        assert_eq!(
            parse_grpc_timeout(b"100m"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(parse_grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [
            &b""[..],
            b"S",
            b"123456789S",
            b"10s",
            b"-1S",
            b"1.5S",
            b"10",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

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
