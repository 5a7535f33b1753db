//! Size and HTTP/2 limits shared by the server, the transport and the layers. A leaf module: it
//! imports nothing from the crate, so every side can read the same numbers.

use std::time::Duration;

/// Largest request message the server decodes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest total size of a request's metadata (header names and values, plus 32 bytes of
/// overhead per entry as HPACK counts them).
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Header blocks larger than this are refused by HTTP/2 itself; the gRPC limit on metadata
/// ([`MAX_METADATA_BYTES`]) is lower, so clients get a proper gRPC status first.
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// Concurrent streams (calls) per HTTP/2 connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 keepalive: ping idle connections, drop them if the ping is not answered.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Rapid-reset protection (CVE-2023-44487): streams reset by the client before they were
/// accepted, and streams the server had to reset for protocol errors, per connection.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 50;
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
/// HTTP/2 flow-control windows. Messages are at most 64 KiB, so a 128 KiB stream window never
/// stalls a call, and the connection window bounds what one client can make authd buffer
/// (hyper's defaults are 1 MiB each, which 1,000 connections could turn into a gigabyte).
pub const STREAM_WINDOW_BYTES: u32 = 128 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 512 * 1024;
