//! [`PasswordHasher`]: bcrypt hashing and verification on the pool of `pool.rs`, the dummy hash of
//! unknown accounts, the padding of failed checks against cheaper hashes, and the pool settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::jobs::*;
use super::policy::*;
use super::pool::*;
use crate::domain::settings::PasswordSettings;
use crate::domain::{ClientInfo, ClientKey, Error, Result};

/// Hashes and verifies passwords on its own bounded pool of bcrypt threads (see the module docs).
/// The threads end when the hasher is dropped.
pub struct PasswordHasher {
    pub(super) cost: u32,
    pub(super) dummy_hash: Arc<str>,
    pub(super) pool: Pool,
    /// The deadline of a caller without one, from the submission.
    pub(super) default_deadline: Duration,
    /// Failed checks against a cheaper stored hash that were padded with a dummy check.
    pub(super) padded: Arc<AtomicU64>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("cost", &self.cost)
            .field("threads", &self.pool.threads)
            .field("queue_per_client", &self.pool.per_client)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// The hasher the settings describe (`AUTHD_BCRYPT_COST`, `AUTHD_BCRYPT_CONCURRENCY`,
    /// `AUTHD_BCRYPT_QUEUE`, `AUTHD_BCRYPT_NICE`, `AUTHD_REQUEST_TIMEOUT`).
    pub async fn from_settings(settings: &PasswordSettings) -> Result<Self> {
        Self::new(
            settings.bcrypt_cost,
            PoolOptions::from_settings(&settings.pool),
        )
        .await
    }

    /// Starts the pool's threads and prepares the dummy hash for unknown accounts (one bcrypt run at
    /// `cost`, on the pool, which also seeds the pool's run-time estimate).
    pub async fn new(cost: u32, options: PoolOptions) -> Result<Self> {
        let pool = Pool::start(options)?;
        tracing::info!(
            threads = pool.threads,
            queue_per_client = pool.per_client,
            nice = options.nice,
            cost,
            "bcrypt pool started"
        );
        let startup = Admission {
            client: None,
            deadline: None,
        };
        let dummy_hash = pool
            .run(
                startup,
                move |t| t.estimate(cost),
                move |m| {
                    let mut seed = [0u8; 16];
                    rand::Rng::fill(&mut rand::thread_rng(), &mut seed);
                    m.time(cost, || bcrypt::hash(hex_encode(&seed), cost))
                        .map_err(Error::internal)
                },
            )
            .await??;
        Ok(Self {
            cost,
            dummy_hash: dummy_hash.into(),
            pool,
            default_deadline: options.deadline,
            padded: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// The queue and deadline of a call from `client`.
    pub(super) fn admission(&self, client: &ClientInfo) -> Admission {
        Admission {
            client: client.key(),
            deadline: client
                .deadline
                .or_else(|| Instant::now().checked_add(self.default_deadline)),
        }
    }

    /// Hashes a normalized password (see [`new_password`]) for `client`.
    pub async fn hash(&self, password: String, client: &ClientInfo) -> Result<String> {
        let cost = self.cost;
        self.pool
            .run(
                self.admission(client),
                move |t| t.estimate(cost),
                move |m| {
                    m.time(cost, || bcrypt::hash(password, cost))
                        .map_err(Error::internal)
                },
            )
            .await?
    }

    /// Verifies a normalized password against `hash`, or against the dummy hash when `hash` is None
    /// (unknown account) or the password cannot match, so every failure costs the same. A failure
    /// against a hash cheaper than the configured cost (made before `AUTHD_BCRYPT_COST` was raised)
    /// is padded, in the same job, with a verification against the dummy hash.
    pub async fn verify(
        &self,
        password: Option<String>,
        hash: Option<&str>,
        client: &ClientInfo,
    ) -> Result<bool> {
        let real = password.is_some() && hash.is_some();
        let hash: Arc<str> = hash.map_or_else(|| Arc::clone(&self.dummy_hash), Arc::from);
        let password = password.unwrap_or_default();
        let cost = self.cost;
        let stored_cost = hash_cost(&hash).unwrap_or(cost);
        let pad = (stored_cost < cost).then(|| Arc::clone(&self.dummy_hash));
        let padding = pad.is_some();
        let padded = Arc::clone(&self.padded);
        let ok = self
            .pool
            .run(
                self.admission(client),
                move |t| t.estimate(stored_cost) + if padding { t.estimate(cost) } else { 0.0 },
                move |m| {
                    let ok = m.time(stored_cost, || {
                        bcrypt::verify(&password, &hash).unwrap_or(false)
                    });
                    if !ok && let Some(dummy) = pad {
                        m.time(cost, || bcrypt::verify(&password, &dummy).unwrap_or(false));
                        padded.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(crate::metric_names::BCRYPT_PADDED).increment(1);
                    }
                    ok
                },
            )
            .await?;
        Ok(real && ok)
    }

    /// Refuses at once, as [`verify`](Self::verify) would, a check of `client` that the pool could
    /// not admit now, so that a call bound to be refused skips its database work first (Login
    /// calls it before looking the account up: a refused flood then costs little CPU). The real
    /// admission happens again when the check is submitted.
    pub fn precheck(&self, client: &ClientInfo) -> Result<()> {
        let cost = self.cost;
        self.pool
            .precheck(self.admission(client), move |t| t.estimate(cost))
    }

    /// For tests: how many jobs wait for a thread (all clients).
    #[doc(hidden)]
    pub fn waiting(&self) -> usize {
        self.pool.shared.lock().waiting
    }

    /// For tests: how many failed checks were padded to the configured cost.
    #[doc(hidden)]
    pub fn padded_checks(&self) -> u64 {
        self.padded.load(Ordering::Relaxed)
    }

    /// For tests: occupies one place in the pool (a thread, or a place in the unknown client's
    /// queue until a thread takes it) with a job that blocks until the returned [`Hold`] is
    /// released or dropped. Fails like a password check would when that queue is full.
    #[doc(hidden)]
    pub fn hold(&self) -> Result<Hold> {
        let expected = self.pool.estimate(self.cost);
        self.hold_for(None, Duration::from_secs_f64(expected))
    }

    /// For tests: [`hold`](Self::hold) in the queue of `client`, counted by admission as a job that
    /// runs for `expected`. Holds have no deadline of their own.
    #[doc(hidden)]
    pub fn hold_for(&self, client: Option<ClientKey>, expected: Duration) -> Result<Hold> {
        let (started_tx, started) = oneshot::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let who = Admission {
            client,
            deadline: None,
        };
        let expected = expected.as_secs_f64();
        let done = self.pool.submit(
            who,
            move |_| expected,
            move |_| {
                let _ = started_tx.send(());
                // Returns when the Hold's sender is dropped.
                let _ = release_rx.recv();
            },
        )?;
        Ok(Hold {
            started: Some(started),
            release,
            done,
        })
    }
}

/// A job that keeps a pool place busy until released (see [`PasswordHasher::hold`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct Hold {
    pub(super) started: Option<oneshot::Receiver<()>>,
    pub(super) release: std::sync::mpsc::Sender<()>,
    pub(super) done: oneshot::Receiver<()>,
}

impl Hold {
    /// Waits until a pool thread runs the job.
    pub async fn started(&mut self) -> Result<()> {
        if let Some(started) = self.started.take() {
            started.await.map_err(|_| stopped())?;
        }
        Ok(())
    }

    /// Lets the job finish and waits until its place in the pool is free again.
    pub async fn release(self) -> Result<()> {
        let Hold { release, done, .. } = self;
        drop(release);
        done.await.map_err(|_| stopped())
    }
}
