//! How connections are accepted, on every listener: TCP_NODELAY, a pause instead of a stop when
//! accepting fails (out of file descriptors), TLS handshakes in tasks of their own, and one deadline
//! (`AUTHD_HANDSHAKE_TIMEOUT`) by which a new connection must have finished its TLS handshake and
//! its opening: the HTTP/2 preface and first SETTINGS frame, or its first HTTP/1 request headers
//! ([`HandshakeDeadline`]). Clients that connect and then send nothing, or half of it, would
//! otherwise hold a file descriptor each for as long as they like. Connections per address are not
//! capped: sidecar proxies put every client on 127.0.0.1. Connections report no vectored writes, so
//! that a small reply leaves in one write (see `HandshakeDeadline::is_write_vectored`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;

/// The HTTP/2 connection preface every client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The length of an HTTP/2 frame header.
const H2_FRAME_HEADER: usize = 9;

/// How far a connection has come towards its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// Reading the first bytes: `n` of them match the HTTP/2 preface so far.
    Start { n: usize },
    /// HTTP/2: the preface is complete; `header` bytes of the first frame's header seen, whose
    /// length is `len` so far.
    H2Frame { header: usize, len: usize },
    /// HTTP/2: `left` bytes of the first frame's payload still to come.
    H2Payload { left: usize },
    /// HTTP/1: the last bytes seen matched `n` bytes of `\r\n\r\n`.
    H1 { n: usize },
    /// The preface and first SETTINGS frame, or the request's headers (`http1`), have arrived.
    Done { http1: bool },
}

impl Opening {
    /// Feeds the next bytes read from the client.
    fn feed(&mut self, bytes: &[u8]) {
        const CRLFCRLF: &[u8; 4] = b"\r\n\r\n";
        for (i, &b) in bytes.iter().enumerate() {
            *self = match *self {
                Opening::Start { n } if b == H2_PREFACE[n] => {
                    if n + 1 == H2_PREFACE.len() {
                        Opening::H2Frame { header: 0, len: 0 }
                    } else {
                        Opening::Start { n: n + 1 }
                    }
                }
                // Not HTTP/2: an HTTP/1 request line and headers. Rescan what was read so far.
                Opening::Start { n } => {
                    let mut h1 = Opening::H1 { n: 0 };
                    h1.feed(&H2_PREFACE[..n]);
                    h1.feed(&[b]);
                    h1
                }
                Opening::H2Frame { header, len } => {
                    let len = if header < 3 {
                        (len << 8) | usize::from(b)
                    } else {
                        len
                    };
                    match header + 1 {
                        H2_FRAME_HEADER if len == 0 => Opening::Done { http1: false },
                        H2_FRAME_HEADER => Opening::H2Payload { left: len },
                        header => Opening::H2Frame { header, len },
                    }
                }
                Opening::H2Payload { left } => {
                    let rest = bytes.len() - i;
                    if rest >= left {
                        *self = Opening::Done { http1: false };
                        return;
                    }
                    *self = Opening::H2Payload { left: left - rest };
                    return;
                }
                Opening::H1 { n } => {
                    if b == CRLFCRLF[n] {
                        if n + 1 == CRLFCRLF.len() {
                            Opening::Done { http1: true }
                        } else {
                            Opening::H1 { n: n + 1 }
                        }
                    } else if b == b'\r' {
                        Opening::H1 { n: 1 }
                    } else {
                        Opening::H1 { n: 0 }
                    }
                }
                Opening::Done { .. } => return,
            };
        }
    }
}

/// A connection that must complete its opening (the HTTP/2 preface and first SETTINGS frame, or the
/// first HTTP/1 request's headers) before a deadline. Past it, reads and writes fail with
/// `TimedOut`, so the HTTP server closes the connection. After the opening, it is a plain
/// pass-through.
pub struct HandshakeDeadline<IO> {
    io: IO,
    /// `None` once the opening is complete (or with no limit).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    opening: Opening,
    /// HTTP/1 only: the headers of every later request on the connection must arrive within
    /// this long of its first byte, too.
    each_http1_request: Option<Duration>,
}

impl<IO> HandshakeDeadline<IO> {
    /// `io` must complete its opening within `timeout` (`None` or zero: no limit).
    pub fn new(io: IO, timeout: Option<Duration>) -> Self {
        Self::until(io, deadline_after(timeout))
    }

    /// `io` must complete its opening by `deadline` (`None`: no limit).
    pub fn until(io: IO, deadline: Option<tokio::time::Instant>) -> Self {
        Self {
            io,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            opening: Opening::Start { n: 0 },
            each_http1_request: None,
        }
    }

    /// On an HTTP/1 connection, bounds the headers of every later request by `timeout` as well
    /// (from the request's first byte). Only for listeners whose requests have no bodies, whose
    /// bytes would be taken for the next request's headers.
    pub fn each_http1_request(mut self, timeout: Option<Duration>) -> Self {
        self.each_http1_request = timeout.filter(|t| !t.is_zero());
        self
    }

    /// Err(TimedOut) once the deadline has passed without a complete opening.
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        let expired = self
            .deadline
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        if expired {
            tracing::debug!("closing a connection that did not finish its opening in time");
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no complete HTTP/2 preface or HTTP/1 request headers in time",
            ));
        }
        Ok(())
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HandshakeDeadline<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        // Between two HTTP/1 requests: the next one's first byte starts its deadline.
        let next_request = match (&this.deadline, this.opening, this.each_http1_request) {
            (None, Opening::Done { http1: true }, Some(timeout)) => Some(timeout),
            (None, _, _) => return Pin::new(&mut this.io).poll_read(cx, buf),
            (Some(_), _, _) => None,
        };
        this.check(cx)?;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = &buf.filled()[before..];
            if let Some(timeout) = next_request
                && !read.is_empty()
            {
                this.opening = Opening::H1 { n: 0 };
                this.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
            }
            this.opening.feed(read);
            if matches!(this.opening, Opening::Done { .. }) {
                this.deadline = None;
            }
        }
        polled
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HandshakeDeadline<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    /// `false`, whatever the socket can do, so that a reply goes out in one write.
    ///
    /// With vectored writes, h2 keeps any DATA payload of 256 bytes or more out of its write buffer
    /// and flushes before the frame after it. A Refresh reply (about 600 bytes) took two writes, its
    /// headers and message, then its trailers, and no two replies shared a write: about two `writev`
    /// per Refresh under load, each of which on loopback also runs the receiver's side of TCP. Without
    /// vectored writes, h2 copies payloads under 1 KiB into its buffer, so a reply's frames, and
    /// those of the other replies ready at the same time, leave in one write. A larger payload (a
    /// long ListUsers page) is still written from its own buffer, in one more write.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for HandshakeDeadline<IO>
{
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The deadline `timeout` from now (`None` or zero: none).
fn deadline_after(timeout: Option<Duration>) -> Option<tokio::time::Instant> {
    timeout
        .filter(|t| !t.is_zero())
        .map(|t| tokio::time::Instant::now() + t)
}

/// After an accept error that is not about one connection (e.g. out of file descriptors), the
/// accept loop waits this long before trying again, instead of spinning or stopping the server.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The accepted connections of a listener, with TCP_NODELAY and a [`HandshakeDeadline`].
/// (`Server::tcp_nodelay` applies only to listeners tonic binds itself; without it, Nagle's
/// algorithm and delayed ACKs stall small replies by ~40 ms.)
pub struct Incoming {
    listener: TcpListener,
    handshake_timeout: Option<Duration>,
    /// See [`HandshakeDeadline::each_http1_request`].
    each_http1_request: bool,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Incoming {
    /// Connections of `listener` that must complete their opening within `handshake_timeout`
    /// (`None`: no limit, e.g. under [`TlsIncoming`], which sets the deadline after TLS).
    pub fn new(listener: TcpListener, handshake_timeout: Option<Duration>) -> Self {
        Self {
            listener,
            handshake_timeout,
            each_http1_request: false,
            backoff: None,
        }
    }

    /// Bounds the headers of every HTTP/1 request by the handshake timeout, not only the first
    /// one's ([`HandshakeDeadline::each_http1_request`]): for a listener of body-less requests.
    pub fn each_http1_request(mut self) -> Self {
        self.each_http1_request = true;
        self
    }

    fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<(
        HandshakeDeadline<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )> {
        let each = self
            .each_http1_request
            .then_some(self.handshake_timeout)
            .flatten();
        self.poll_accept_tcp(cx).map(|(stream, addr)| {
            let io = HandshakeDeadline::new(stream, self.handshake_timeout);
            (io.each_http1_request(each), addr)
        })
    }

    /// The next accepted TCP connection, with TCP_NODELAY.
    fn poll_accept_tcp(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<(tokio::net::TcpStream, std::net::SocketAddr)> {
        loop {
            if let Some(backoff) = &mut self.backoff {
                std::task::ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            match std::task::ready!(self.listener.poll_accept(cx)) {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready((stream, addr));
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; retrying shortly");
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_BACKOFF)));
                }
            }
        }
    }
}

/// Accept errors that concern only the one connection.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
    )
}

impl tokio_stream::Stream for Incoming {
    type Item = std::io::Result<HandshakeDeadline<tokio::net::TcpStream>>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_accept(cx).map(|(io, _)| Some(Ok(io)))
    }
}

/// The connections of a TLS listener: each is accepted, its TLS handshake run in a task of its
/// own, and handed on once the handshake is done, wrapped in a [`HandshakeDeadline`] whose deadline
/// is the same one the handshake had (accept time + `AUTHD_HANDSHAKE_TIMEOUT`). So a client that
/// completes TLS and then stalls inside its HTTP/2 preface is closed too.
pub struct TlsIncoming {
    tcp: Incoming,
    acceptor: tokio_rustls::TlsAcceptor,
    timeout: Duration,
    handshakes: tokio::task::JoinSet<std::io::Result<TlsConn>>,
}

/// A TLS connection as [`TlsIncoming`] yields it.
pub type TlsConn = HandshakeDeadline<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// At most this many connections are accepted in one poll before finished handshakes are handed on.
const ACCEPT_BATCH: usize = 32;

impl TlsIncoming {
    pub fn new(tcp: Incoming, acceptor: tokio_rustls::TlsAcceptor, timeout: Duration) -> Self {
        Self {
            tcp,
            acceptor,
            timeout,
            handshakes: tokio::task::JoinSet::new(),
        }
    }
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = std::io::Result<TlsConn>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut more = true;
        for _ in 0..ACCEPT_BATCH {
            let Poll::Ready((stream, _)) = this.tcp.poll_accept_tcp(cx) else {
                more = false;
                break;
            };
            let acceptor = this.acceptor.clone();
            let deadline = deadline_after(Some(this.timeout));
            this.handshakes.spawn(async move {
                let accept = acceptor.accept(stream);
                let tls = match deadline {
                    Some(d) => tokio::time::timeout_at(d, accept).await.map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??,
                    None => accept.await?,
                };
                Ok(HandshakeDeadline::until(tls, deadline))
            });
        }
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Ok(conn)))) => return Poll::Ready(Some(Ok(conn))),
                Poll::Ready(Some(Ok(Err(e)))) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                }
                Poll::Ready(Some(Err(_))) => {}
                // The listener registered the waker, unless a full batch was accepted: then
                // come back for the rest.
                Poll::Ready(None) | Poll::Pending => {
                    if more {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The gRPC listener's connections: plaintext, or TLS.
pub enum Listener {
    Plain(Incoming),
    Tls(TlsIncoming),
}

impl axum::serve::Listener for Incoming {
    type Io = HandshakeDeadline<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }
    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step` and tells whether the opening completed.
    fn opened(bytes: &[u8], step: usize) -> bool {
        let mut o = Opening::Start { n: 0 };
        for chunk in bytes.chunks(step) {
            o.feed(chunk);
        }
        matches!(o, Opening::Done { .. })
    }

    #[test]
    fn openings() {
        let settings = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64";
        let mut h2 = H2_PREFACE.to_vec();
        h2.extend_from_slice(settings);
        let empty_settings = [&H2_PREFACE[..], b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"].concat();
        let h1 = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n";
        for step in [1, 2, 5, 24, 100] {
            assert!(opened(&h2, step), "h2 in steps of {step}");
            assert!(
                opened(&empty_settings, step),
                "empty SETTINGS in steps of {step}"
            );
            assert!(opened(h1, step), "h1 in steps of {step}");
            assert!(!opened(&h2[..h2.len() - 1], step), "h2 minus a byte");
            assert!(!opened(&H2_PREFACE[..12], step), "half a preface");
            assert!(!opened(&h1[..h1.len() - 2], step), "unfinished h1 headers");
            assert!(!opened(b"", step));
        }
        // A request that starts like the preface but is not one is HTTP/1.
        assert!(opened(b"PRI * HTTP/1.1\r\n\r\n", 3));
        assert!(!opened(b"GET / HTTP/1.1\r\n\r\r\n", 1));
    }
}
