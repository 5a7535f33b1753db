//! Logging set-up: the `AUTHD_LOG` filter (with the targets that would leak secrets held at INFO),
//! the process-wide subscriber, as text or JSON, and [`background_writer`], which writes the lines
//! on a thread of its own.
//!
//! **Why a thread.** A log line written straight to stderr is a `write` on the thread that logged
//! it: an async worker. If the reader of stderr (a container runtime, a pipe) falls behind, the
//! write blocks and with it every RPC on that worker. Lines are therefore queued (bounded:
//! [`LOG_QUEUE_LINES`]) and written by a thread in batches, one `write` per batch rather than per
//! line. A line that finds the queue full is dropped and counted in
//! `authd_log_lines_dropped_total`: logging never holds up a request. At exit the
//! [`LogFlushGuard`] waits (at most [`LOG_FLUSH_TIMEOUT`]) for the queued lines to be written.

use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant};

/// Log lines that may wait for the writer thread; a line that finds the queue full is dropped.
pub const LOG_QUEUE_LINES: usize = 16_384;
/// The writer thread's pause after each batch: under load the lines of a few milliseconds go out
/// in one `write`, and loggers rarely have to wake the thread (it is not waiting while it pauses).
const LOG_BATCH_PAUSE: Duration = Duration::from_millis(5);
/// How long [`LogFlushGuard`] waits at exit for the queued lines to be written.
pub const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// The writer thread's buffer.
const LOG_BUFFER_BYTES: usize = 64 * 1024;

/// Log targets held at INFO whatever `AUTHD_LOG` asks for: at DEBUG `tokio_postgres` logs every
/// query's parameters, which include password hashes and, without a master key, the signing keys
/// and server secrets.
pub const SECRET_LEAKING_LOG_TARGETS: [&str; 1] = ["tokio_postgres::query"];

/// The log filter for `directives` (`AUTHD_LOG`, `EnvFilter` syntax; `info` if it does not
/// parse), with [`SECRET_LEAKING_LOG_TARGETS`] held at INFO.
pub fn log_filter(directives: &str) -> tracing_subscriber::EnvFilter {
    let mut filter = tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for target in SECRET_LEAKING_LOG_TARGETS {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Installs the process-wide log subscriber: [`log_filter`] of `directives`, written to `writer`,
/// human-readable for `format` "text", one JSON object per line for "json" (event fields at the top
/// level, the innermost span's fields, e.g. an RPC's `method`, `request_id`, `code` and
/// `latency_ms`, under `span`).
pub fn init_logging<W>(
    directives: &str,
    format: &str,
    writer: W,
) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter(directives))
        .with_writer(writer);
    if format.eq_ignore_ascii_case("json") {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        // Colours only on a terminal: log collectors store escape codes verbatim.
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    }
}

enum LogMsg {
    Line(Vec<u8>),
    /// Write out everything queued before this, then answer.
    Flush(SyncSender<()>),
}

/// A `MakeWriter` whose lines are written by the thread of [`background_writer`].
#[derive(Clone)]
pub struct BackgroundWriter {
    queue: SyncSender<LogMsg>,
    dropped: Arc<AtomicU64>,
}

impl BackgroundWriter {
    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One event's writer: `tracing_subscriber::fmt` formats a whole line and writes it with one
/// `write_all`, so each `write` queues one line.
pub struct QueuedLine<'a>(&'a BackgroundWriter);

impl Write for QueuedLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Full, or the thread is gone: the line is lost either way, and counted.
        if self.0.queue.try_send(LogMsg::Line(buf.to_vec())).is_err() {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metric_names::LOG_LINES_DROPPED).increment(1);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BackgroundWriter {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine(self)
    }
}

/// Held by `main` until exit; dropping it writes out the queued lines (see [`LOG_FLUSH_TIMEOUT`]).
pub struct LogFlushGuard {
    queue: SyncSender<LogMsg>,
}

impl Drop for LogFlushGuard {
    fn drop(&mut self) {
        let deadline = Instant::now() + LOG_FLUSH_TIMEOUT;
        let (ack, acked) = sync_channel(1);
        let mut msg = LogMsg::Flush(ack);
        // The queue may be full (a stalled stderr): wait for room, up to the deadline.
        loop {
            match self.queue.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    msg = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        let _ = acked.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// Starts the thread that writes log lines to `out` (see the module docs), with a queue of
/// [`LOG_QUEUE_LINES`].
pub fn background_writer<W: Write + Send + 'static>(
    out: W,
) -> io::Result<(BackgroundWriter, LogFlushGuard)> {
    background_writer_with(out, LOG_QUEUE_LINES)
}

fn background_writer_with<W: Write + Send + 'static>(
    out: W,
    queue_lines: usize,
) -> io::Result<(BackgroundWriter, LogFlushGuard)> {
    let (queue, lines) = sync_channel(queue_lines);
    std::thread::Builder::new()
        .name("authd-log".into())
        .spawn(move || write_lines(&lines, out))?;
    Ok((
        BackgroundWriter {
            queue: queue.clone(),
            dropped: Arc::new(AtomicU64::new(0)),
        },
        LogFlushGuard { queue },
    ))
}

/// The writer thread: waits for a line, writes everything queued, flushes once, pauses.
fn write_lines<W: Write>(lines: &Receiver<LogMsg>, out: W) {
    let mut out = BufWriter::with_capacity(LOG_BUFFER_BYTES, out);
    // Write errors are dropped: there is nowhere left to report them.
    while let Ok(mut msg) = lines.recv() {
        loop {
            match msg {
                LogMsg::Line(line) => {
                    let _ = out.write_all(&line);
                }
                LogMsg::Flush(ack) => {
                    let _ = out.flush();
                    let _ = ack.try_send(());
                }
            }
            match lines.try_recv() {
                Ok(next) => msg = next,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let _ = out.flush();
        std::thread::sleep(LOG_BATCH_PAUSE);
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer that blocks while the test holds `gate`; `entered` tells
    /// that a write has begun.
    #[derive(Clone, Default)]
    struct Gated {
        out: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
        entered: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.entered.store(true, Ordering::SeqCst);
            let _open = self.gate.lock().unwrap();
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn log(writer: &BackgroundWriter, line: &str) {
        use tracing_subscriber::fmt::MakeWriter;
        writer.make_writer().write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn lines_arrive_whole_and_in_order_by_exit() {
        let sink = Gated::default();
        let (writer, guard) = background_writer(sink.clone()).unwrap();
        let want: String = (0..5_000).map(|i| format!("line {i}\n")).collect();
        for i in 0..5_000 {
            log(&writer, &format!("line {i}\n"));
        }
        drop(guard);
        assert_eq!(
            String::from_utf8(sink.out.lock().unwrap().clone()).unwrap(),
            want
        );
        assert_eq!(writer.dropped(), 0);
    }

    #[test]
    fn a_stalled_output_drops_lines_instead_of_blocking_the_logger() {
        let sink = Gated::default();
        let closed = sink.gate.lock().unwrap();
        let (writer, guard) = background_writer_with(sink.clone(), 8).unwrap();
        // The thread takes the first line and blocks writing it out; then 8 lines fit in the
        // queue and the other 91 are dropped, and none of these calls waits.
        log(&writer, "line 0\n");
        while !sink.entered.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 1..100 {
            log(&writer, &format!("line {i}\n"));
        }
        assert_eq!(writer.dropped(), 91);
        drop(closed);
        drop(guard);
        let written = String::from_utf8(sink.out.lock().unwrap().clone()).unwrap();
        let want: String = (0..9).map(|i| format!("line {i}\n")).collect();
        assert_eq!(written, want);
    }
}
