//! The client side of the wire: the tonic [`Endpoint`] settings (tcp_nodelay, small HTTP/2
//! windows, connect timeout), opening the HTTP/2 connections eagerly before a run, raising the
//! open-files limit so a thousand connections fit, and naming gRPC status codes.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Every message of the API is below 64 KiB, so a stream never needs a bigger window.
const STREAM_WINDOW: u32 = 64 * 1024;
/// Room for a few replies in flight on one connection.
const CONNECTION_WINDOW: u32 = 256 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections being opened at once; more would overflow the server's accept backlog.
const CONNECT_PARALLELISM: usize = 64;

/// The endpoint every connection of a run is opened from.
pub fn endpoint(addr: &str) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(addr.to_owned())
        .map_err(|e| format!("--addr {addr:?} is not a URI: {e}"))?;
    endpoint
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .http2_adaptive_window(false)
        .user_agent("authd-bench")
        .map_err(|e| format!("user agent: {e}"))
}

/// Opens `n` HTTP/2 connections now (not lazily), a bounded number at a time.
pub async fn connect_all(endpoint: &Endpoint, n: u32) -> Result<Vec<Channel>, String> {
    let n = n as usize;
    let mut channels = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    let mut next = 0usize;
    let mut slots: Vec<Option<Channel>> = vec![None; n];
    while next < n || !pending.is_empty() {
        while next < n && pending.len() < CONNECT_PARALLELISM {
            let ep = endpoint.clone();
            let i = next;
            pending.spawn(async move { (i, ep.connect().await) });
            next += 1;
        }
        let Some(joined) = pending.join_next().await else {
            break;
        };
        let (i, result) = joined.map_err(|e| format!("connect task failed: {e}"))?;
        let channel = result.map_err(|e| {
            format!(
                "cannot open connection {} of {n} to {}: {}",
                i + 1,
                endpoint.uri(),
                error_chain(&e)
            )
        })?;
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(channel);
        }
    }
    for (i, slot) in slots.into_iter().enumerate() {
        channels.push(slot.ok_or_else(|| format!("connection {} was never opened", i + 1))?);
    }
    Ok(channels)
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_rejects_garbage() {
        assert!(endpoint("http://127.0.0.1:50051").is_ok());
        assert!(endpoint("not a uri").is_err());
    }
}
