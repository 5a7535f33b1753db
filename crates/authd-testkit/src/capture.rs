//! An in-memory sink for captured log output (`tracing_subscriber` writes into it).

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Everything written so far.
pub type Buffer = Arc<Mutex<Vec<u8>>>;

/// A `tracing_subscriber` writer that appends to a [`Buffer`].
pub struct BufferWriter(pub Buffer);

impl Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
