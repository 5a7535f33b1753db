//! The WatchRevocations loop of local mode: connect, apply every message to the [`LocalState`],
//! and on any failure reconnect with [`Backoff`] and resume with the last resume token.
//!
//! A stream that stays silent for `stale_after` is dropped and reopened: the layer fails closed
//! after that bound anyway, and another replica (behind the same address) may be healthy. The loop
//! ends when every handle on the state (every clone of the layer) is gone.

use std::sync::{Arc, Weak};
use std::time::Duration;

use authd_proto::WatchRevocationsRequest;
use authd_proto::auth_service_client::AuthServiceClient;
use tonic::transport::Channel;

use crate::key::ServiceKey;
use crate::local::LocalState;

/// Exponential backoff with jitter: each delay is drawn uniformly from the upper half of
/// `initial * 2^n`, capped at `max`; a message from the stream resets it.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u8);
        Self {
            initial,
            max: max.max(initial),
            current: initial,
            seed,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The next delay, in `[d/2, d]` with `d` the current step; doubles the step.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // xorshift64: enough to spread reconnecting clients, no cryptography needed.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let d = self.current;
        let frac = (self.seed >> 11) as f64 / (1u64 << 53) as f64;
        self.current = (self.current * 2).min(self.max);
        d.mul_f64(0.5 + frac / 2.0)
    }
}

pub(crate) struct Watch {
    pub(crate) state: Weak<LocalState>,
    pub(crate) client: AuthServiceClient<Channel>,
    pub(crate) key: ServiceKey,
    pub(crate) stale_after: Duration,
    pub(crate) backoff: Backoff,
}

impl Watch {
    pub(crate) async fn run(mut self) {
        let mut resume = String::new();
        loop {
            if self.state.strong_count() == 0 {
                return;
            }
            match self.stream_once(&mut resume).await {
                Ok(()) => tracing::info!("authd-client: revocation stream ended; reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %e, "authd-client: revocation stream failed; reconnecting")
                }
            }
            if self.state.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
    }

    /// One stream, until it ends, fails or falls silent. Ok when it ended cleanly.
    async fn stream_once(&mut self, resume: &mut String) -> Result<(), String> {
        let mut req = tonic::Request::new(WatchRevocationsRequest {
            resume_token: resume.clone(),
        });
        self.key.add_to(req.metadata_mut());
        let mut stream = match tokio::time::timeout(
            self.stale_after,
            self.client.watch_revocations(req),
        )
        .await
        {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Err(describe(&status)),
            Err(_) => return Err("no answer to WatchRevocations".into()),
        };
        loop {
            match tokio::time::timeout(self.stale_after, stream.message()).await {
                Ok(Ok(Some(msg))) => {
                    let Some(state) = self.state.upgrade() else {
                        return Ok(());
                    };
                    if let Some(token) = state.apply(msg) {
                        *resume = token;
                    }
                    self.backoff.reset();
                }
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(status)) => return Err(describe(&status)),
                Err(_) => return Err(format!("no message for {:?}", self.stale_after)),
            }
        }
    }
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Starts the loop on the current tokio runtime.
pub(crate) fn spawn(
    state: &Arc<LocalState>,
    client: AuthServiceClient<Channel>,
    key: ServiceKey,
    stale_after: Duration,
    backoff: Backoff,
) {
    let watch = Watch {
        state: Arc::downgrade(state),
        client,
        key,
        stale_after,
        backoff,
    };
    tokio::spawn(watch.run());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[1] >= Duration::from_millis(100) && d[1] <= Duration::from_millis(200));
        for x in &d {
            assert!(*x <= Duration::from_secs(2));
        }
        assert!(d[7] >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
