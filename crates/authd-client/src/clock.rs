//! Time as a parameter: [`Clock`] gives the layer the wall time (for token expiry) and a monotonic
//! time (for the fail-closed bound). [`SystemClock`] is the real one; [`ManualClock`] is moved by
//! tests.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// The time source of an [`AuthLayer`](crate::AuthLayer).
pub trait Clock: Send + Sync + 'static {
    /// The wall time, compared with a token's `exp`, `nbf` and `iat`.
    fn now(&self) -> DateTime<Utc>;
    /// A monotonic time since an arbitrary origin, used to measure how long ago the revocation
    /// stream last spoke.
    fn monotonic(&self) -> Duration;
}

/// The system's clocks: [`Utc::now`] and [`Instant`].
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A system clock whose monotonic origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to ([`ManualClock::advance`]): both times move together.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<(DateTime<Utc>, Duration)>,
}

impl ManualClock {
    /// A clock that reads `start` until advanced.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new((start, Duration::ZERO)),
        }
    }

    /// Moves both times forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        now.0 += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        now.1 += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.now.lock().unwrap_or_else(|e| e.into_inner()).0
    }
    fn monotonic(&self) -> Duration {
        self.now.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}
