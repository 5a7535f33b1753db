//! The vocabulary of the bcrypt pool that the hasher and the pool share: the pool's settings
//! ([`PoolOptions`]), a job's [`Admission`] (its client queue and deadline), the refusal message,
//! and the measured run times ([`RunTimes`]).

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use crate::domain::settings::{BCRYPT_SCHED_IDLE, BcryptPoolSettings};
use crate::domain::{ClientKey, Error};

/// The settings of the bcrypt pool, resolved: no "auto" is left in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    /// Threads that run bcrypt (at least 1).
    pub threads: usize,
    /// Jobs of one client that may wait for a thread beyond the running ones (a memory cap).
    pub queue: usize,
    /// Nice value of the threads (0-19), or [`BCRYPT_SCHED_IDLE`].
    pub nice: u8,
    /// The deadline of a job whose caller has none: `AUTHD_REQUEST_TIMEOUT` from its submission.
    pub deadline: Duration,
}

/// [`PoolOptions::queue`] when `AUTHD_BCRYPT_QUEUE` is unset.
pub const DEFAULT_QUEUE_PER_CLIENT: usize = 64;

impl PoolOptions {
    /// `AUTHD_BCRYPT_CONCURRENCY` (0 = the cores available to the process), `AUTHD_BCRYPT_QUEUE`
    /// (unset = 64 per client), `AUTHD_BCRYPT_NICE` and `AUTHD_REQUEST_TIMEOUT`.
    pub fn from_settings(settings: &BcryptPoolSettings) -> Self {
        let threads = match settings.concurrency {
            0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            n => usize::try_from(n).unwrap_or(1),
        };
        let queue = settings.queue.map_or(DEFAULT_QUEUE_PER_CLIENT, |q| {
            usize::try_from(q).unwrap_or(usize::MAX)
        });
        Self {
            threads,
            queue,
            nice: settings.nice.min(BCRYPT_SCHED_IDLE),
            deadline: settings.default_deadline,
        }
    }
}

/// What a caller gets when its password check cannot be admitted (see the module docs).
pub const POOL_FULL_MESSAGE: &str = "too many password checks in progress; retry shortly";

/// Which fair queue a job joins and by when it must be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The client's queue; None is the one queue shared by calls with no known address.
    pub client: Option<ClientKey>,
    /// None: no deadline (the start-up dummy hash, test holds).
    pub deadline: Option<Instant>,
}

pub(super) fn stopped() -> Error {
    Error::internal("the bcrypt pool stopped before the job finished")
}

// ----- run-time estimates --------------------------------------------------------------------------

/// The pool's measured bcrypt run time per cost: an exponentially weighted moving average of the
/// wall time of each run on a pool thread (so it includes the time the thread lost to other
/// threads of the machine), seeded by the start-up dummy hash.
#[derive(Debug, Clone, Default)]
pub struct RunTimes {
    /// Seconds per run, by cost (index 0-31).
    pub(super) ewma: [Option<f64>; 32],
}

impl RunTimes {
    /// Weight of a new sample.
    const ALPHA: f64 = 0.2;
    /// The guess before anything was measured: a run at cost 12 on a current core.
    const GUESS_COST_12_SECS: f64 = 0.25;

    pub(super) fn index(cost: u32) -> usize {
        usize::try_from(cost.clamp(4, 31)).unwrap_or(31)
    }

    /// Adds one measured run.
    pub fn record(&mut self, cost: u32, secs: f64) {
        let slot = &mut self.ewma[Self::index(cost)];
        *slot = Some(match *slot {
            Some(old) => old + Self::ALPHA * (secs - old),
            None => secs,
        });
    }

    /// Expected seconds of one run at `cost`: its average, else the nearest measured cost scaled by
    /// 2 per step (each step doubles bcrypt's work), else a guess.
    pub fn estimate(&self, cost: u32) -> f64 {
        let i = Self::index(cost);
        if let Some(v) = self.ewma[i] {
            return v;
        }
        let nearest = self
            .ewma
            .iter()
            .enumerate()
            .filter_map(|(c, v)| v.map(|v| (c, v)))
            .min_by_key(|(c, _)| c.abs_diff(i));
        let (base_cost, base) = nearest.unwrap_or((12, Self::GUESS_COST_12_SECS));
        let steps = i32::try_from(i).unwrap_or(31) - i32::try_from(base_cost).unwrap_or(12);
        base * 2f64.powi(steps)
    }
}
