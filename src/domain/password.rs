//! Password rules and bcrypt hashing.
//!
//! Passwords are normalized to NFKC first; the rules apply to the normalized form: at least 8 Unicode
//! scalar values and at most 72 bytes of UTF-8 (bcrypt's limit; longer input is rejected, never
//! truncated). Raw input over [`MAX_PASSWORD_INPUT_BYTES`] is refused before normalizing.
//!
//! New passwords must also reach a minimum zxcvbn strength score (`AUTHD_MIN_PASSWORD_SCORE`, default
//! 3 of 4), estimated with the account's e-mail and username as context. There are no composition rules.
//!
//! Unknown accounts are verified against a dummy hash of the same cost so that they take as long as a
//! wrong password. A failed check against a stored hash cheaper than `AUTHD_BCRYPT_COST` (made before
//! the cost was raised) is padded, in the same pool job, with a verification against the dummy hash,
//! so that it costs at least as much as a check at the configured cost and known accounts with old
//! hashes do not answer faster than unknown ones (`authd_bcrypt_padded_total` counts these).
//!
//! ## The bcrypt pool
//!
//! Every bcrypt run (Login's verification, the dummy verification of unknown accounts, the hashes of
//! Register, CreateUser, ChangePassword and cost upgrades, and the dummy hash made at start-up) goes
//! to a pool of dedicated OS threads that [`PasswordHasher`] owns, never to a runtime worker or
//! tokio's shared blocking pool. The async caller only awaits a oneshot channel.
//!
//! - **Size**: `AUTHD_BCRYPT_CONCURRENCY` threads named `authd-bcrypt-<i>`; 0 (the default) means
//!   one per core available to the process (`std::thread::available_parallelism`, which respects
//!   the CPU affinity mask and a cgroup CPU quota), so logins can use every core.
//! - **Priority**: each thread sets its own priority from `AUTHD_BCRYPT_NICE`: by default nice 10
//!   (`setpriority(PRIO_PROCESS, gettid(), 10)`, Linux). CFS/EEVDF weighs a nice-10 thread 110
//!   against 1024 for a nice-0 one, so when the runtime's workers (at the process's priority) want
//!   every core, each bcrypt thread still gets about a tenth of one, and Health, ValidateToken, GetMe
//!   and the rest of the cheap calls keep the lion's share; none of them ever waits for this pool.
//!   `idle` (SCHED_IDLE) is still selectable, but starves the threads completely while cheap calls
//!   saturate the CPU (measured in BENCHMARKS.md). If the priority cannot be set, one warning is
//!   logged and the threads run at the process's priority.
//! - **Fair queues**: every job joins the queue of its client ([`ClientKey`]: an IPv4 address or an
//!   IPv6 /64; calls whose address is unknown share one queue). The threads serve the clients that
//!   have waiting jobs round-robin, the oldest job of each in turn, so a flood from a handful of
//!   addresses gets a handful of turns per round, while every other client gets its own.
//! - **Admission by time**: a job is admitted when its expected wait at its place in that order plus
//!   its own expected run time fits within its call's deadline (`grpc-timeout`, capped by
//!   `AUTHD_REQUEST_TIMEOUT`; `AUTHD_REQUEST_TIMEOUT` when the call has none). Otherwise it is
//!   refused at once with RESOURCE_EXHAUSTED, "too many password checks in progress; retry
//!   shortly", and `retry-after` = ceil(expected wait) (at least 1 s). The expected wait of a new
//!   job of client C, which has `d` jobs waiting already, is
//!
//!   ```text
//!   wait(C, d) = ( Σ over clients K with waiting jobs of min(len_K, d + 1) × t̄  +  Σ running jobs' remaining time ) / threads
//!   ```
//!
//!   (0 when a thread is idle for it). Round-robin serves the new job in C's (d+1)-th turn from now;
//!   before that every client K gets at most d+1 turns, so at most `min(len_K, d+1)` of its jobs go
//!   first (for C itself that is its own `d`). `t̄` is the mean expected run time of the waiting
//!   jobs, from the pool's measured throughput: an exponentially weighted moving average of the
//!   wall time of bcrypt runs per cost ([`RunTimes`], seeded by the start-up dummy hash; it includes
//!   the time the threads lose to other work, so it follows the load). A running job's remaining
//!   time is its expected run time minus its elapsed time. The sum is kept cheap with a count of the
//!   clients per queue length.
//!
//!   So a client's burst on an idle pool is served in full when the cores can finish it within its
//!   deadline, and a flooder's new checks wait behind its own (d grows with each) and are refused
//!   once they would miss their deadline, while a client with nothing waiting (d = 0) only waits
//!   for one job per active client. The deadline rule also bounds the whole queue: no client is
//!   admitted when the active clients' first jobs alone would overrun its deadline.
//! - **Memory cap**: at most `AUTHD_BCRYPT_QUEUE` (default 64) jobs of one client wait beyond the
//!   running ones; past that its jobs are refused like above (0: a job is admitted only when a thread
//!   is free for it). A refused Login has checked nothing: it does not count as a failed attempt.
//! - **Cancellation**: a job whose caller has gone away (a cancelled request, a deadline) when a
//!   thread takes it is skipped, not computed.
//! - **Metrics**: `authd_bcrypt_queue_depth` counts the admitted jobs not yet finished (waiting plus
//!   running); `authd_bcrypt_rejected_total{reason}` counts the refusals (`deadline`,
//!   `client_queue`); `authd_bcrypt_completed_total` the bcrypt runs done;
//!   `authd_bcrypt_expected_wait_seconds` is the expected wait computed for the latest job.
//! - **Shutdown**: dropping the hasher (with its [`Authd`](super::Authd)) drops the queued jobs
//!   (their callers get INTERNAL) and ends each thread after its current job, without blocking.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use unicode_normalization::UnicodeNormalization;

use super::{ClientInfo, ClientKey, Error, Result};
use crate::config::Config;

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 72;
/// A hard cap on the raw field, checked before any work (INVALID_ARGUMENT beyond it).
pub const MAX_PASSWORD_INPUT_BYTES: usize = 1024;

/// NFKC normalization.
pub fn normalize(raw: &str) -> String {
    raw.nfkc().collect()
}

/// Checks a new password (Register, and later password changes) and returns its normalized form.
pub fn new_password(field: &str, raw: &str) -> Result<String> {
    if raw.is_empty() {
        return Err(Error::invalid(format!("{field} is required")));
    }
    if raw.len() > MAX_PASSWORD_INPUT_BYTES {
        return Err(Error::invalid(format!(
            "{field} must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    let p = normalize(raw);
    if p.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::invalid(format!(
            "{field} must be at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if p.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid(format!(
            "{field} must be at most {MAX_PASSWORD_BYTES} bytes of UTF-8"
        )));
    }
    Ok(p)
}

/// Refuses a normalized password whose zxcvbn score is below `min_score`, with the estimator's hint.
/// `user_inputs` (e-mail, username) count as known words.
pub fn check_strength(
    field: &str,
    password: &str,
    min_score: u8,
    user_inputs: &[&str],
) -> Result<()> {
    if min_score == 0 {
        return Ok(());
    }
    // zxcvbn matches user inputs as whole tokens: give it each input and its words, so that the
    // local part of an e-mail address, or a part of it, counts as known.
    let mut inputs: Vec<&str> = Vec::new();
    for s in user_inputs.iter().filter(|s| !s.is_empty()) {
        inputs.push(s);
        if let Some((local, _)) = s.split_once('@') {
            inputs.push(local);
        }
        inputs.extend(
            s.split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.len() >= 3),
        );
    }
    let estimate = zxcvbn::zxcvbn(password, &inputs);
    let score = u8::from(estimate.score());
    if score >= min_score {
        return Ok(());
    }
    let mut hint =
        format!("{field} is too weak (strength {score} of 4, at least {min_score} needed).");
    if let Some(feedback) = estimate.feedback() {
        if let Some(w) = feedback.warning() {
            hint.push_str(&format!(" {w}."));
        }
        for s in feedback.suggestions() {
            hint.push_str(&format!(" {s}"));
        }
    }
    if !hint.contains("Add another word") {
        hint.push_str(" Longer passphrases of unrelated words are strong and easy to remember.");
    }
    Err(Error::InvalidArgument(hint.replace("..", ".")))
}

/// The cost of a bcrypt hash (`$2b$12$...`), if it parses.
pub fn hash_cost(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
}

/// A password offered to prove identity (Login and re-authentication). `Ok(None)` means it cannot
/// match any stored hash (too long or too short after normalizing), which callers treat as wrong.
pub fn presented_password(field: &str, raw: &str) -> Result<Option<String>> {
    if raw.is_empty() {
        return Err(Error::invalid(format!("{field} is required")));
    }
    if raw.len() > MAX_PASSWORD_INPUT_BYTES {
        return Err(Error::invalid(format!(
            "{field} must be at most {MAX_PASSWORD_INPUT_BYTES} bytes"
        )));
    }
    let p = normalize(raw);
    if p.len() > MAX_PASSWORD_BYTES || p.chars().count() < MIN_PASSWORD_CHARS {
        return Ok(None);
    }
    Ok(Some(p))
}

/// The settings of the bcrypt pool, resolved: no "auto" is left in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    /// Threads that run bcrypt (at least 1).
    pub threads: usize,
    /// Jobs of one client that may wait for a thread beyond the running ones (a memory cap).
    pub queue: usize,
    /// Nice value of the threads (0-19), or [`crate::config::BCRYPT_SCHED_IDLE`].
    pub nice: u8,
    /// The deadline of a job whose caller has none: `AUTHD_REQUEST_TIMEOUT` from its submission.
    pub deadline: Duration,
}

/// [`PoolOptions::queue`] when `AUTHD_BCRYPT_QUEUE` is unset.
pub const DEFAULT_QUEUE_PER_CLIENT: usize = 64;

impl PoolOptions {
    /// `AUTHD_BCRYPT_CONCURRENCY` (0 = the cores available to the process), `AUTHD_BCRYPT_QUEUE`
    /// (unset = 64 per client), `AUTHD_BCRYPT_NICE` and `AUTHD_REQUEST_TIMEOUT`.
    pub fn from_config(config: &Config) -> Self {
        let threads = match config.bcrypt_concurrency {
            0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            n => usize::try_from(n).unwrap_or(1),
        };
        let queue = config.bcrypt_queue.map_or(DEFAULT_QUEUE_PER_CLIENT, |q| {
            usize::try_from(q).unwrap_or(usize::MAX)
        });
        Self {
            threads,
            queue,
            nice: config.bcrypt_nice.min(crate::config::BCRYPT_SCHED_IDLE),
            deadline: config.request_timeout,
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

/// Hashes and verifies passwords on its own bounded pool of bcrypt threads (see the module docs).
/// The threads end when the hasher is dropped.
pub struct PasswordHasher {
    cost: u32,
    dummy_hash: Arc<str>,
    pool: Pool,
    /// The deadline of a caller without one, from the submission.
    default_deadline: Duration,
    /// Failed checks against a cheaper stored hash that were padded with a dummy check.
    padded: Arc<AtomicU64>,
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
    /// The hasher the configuration describes (`AUTHD_BCRYPT_COST`, `AUTHD_BCRYPT_CONCURRENCY`,
    /// `AUTHD_BCRYPT_QUEUE`, `AUTHD_BCRYPT_NICE`, `AUTHD_REQUEST_TIMEOUT`).
    pub async fn from_config(config: &Config) -> Result<Self> {
        Self::new(config.bcrypt_cost, PoolOptions::from_config(config)).await
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
    fn admission(&self, client: &ClientInfo) -> Admission {
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
    started: Option<oneshot::Receiver<()>>,
    release: std::sync::mpsc::Sender<()>,
    done: oneshot::Receiver<()>,
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

fn stopped() -> Error {
    Error::internal("the bcrypt pool stopped before the job finished")
}

// ----- run-time estimates --------------------------------------------------------------------------

/// The pool's measured bcrypt run time per cost: an exponentially weighted moving average of the
/// wall time of each run on a pool thread (so it includes the time the thread lost to other
/// threads of the machine), seeded by the start-up dummy hash.
#[derive(Debug, Clone, Default)]
pub struct RunTimes {
    /// Seconds per run, by cost (index 0-31).
    ewma: [Option<f64>; 32],
}

impl RunTimes {
    /// Weight of a new sample.
    const ALPHA: f64 = 0.2;
    /// The guess before anything was measured: a run at cost 12 on a current core.
    const GUESS_COST_12_SECS: f64 = 0.25;

    fn index(cost: u32) -> usize {
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

/// What a job may use while it runs: a timer that feeds [`RunTimes`].
pub struct Meter<'a> {
    shared: &'a Shared,
}

impl Meter<'_> {
    /// Runs `f`, one bcrypt run at `cost`, and records its wall time.
    pub fn time<R>(&self, cost: u32, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = f();
        let secs = start.elapsed().as_secs_f64();
        self.shared.lock().run_times.record(cost, secs);
        metrics::counter!(crate::metric_names::BCRYPT_COMPLETED).increment(1);
        r
    }
}

// ----- the pool ------------------------------------------------------------------------------------

/// The queue of a client: its [`ClientKey`], or None for calls with no known address.
type QueueKey = Option<ClientKey>;

/// A fixed set of named OS threads that take jobs from per-client queues, round-robin. Dropping
/// the pool drops the jobs still queued (their callers get an error) and lets each thread end
/// after its current job; nothing blocks on that.
struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    /// Jobs of one client that may wait beyond the running ones.
    per_client: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a job is queued or the pool shuts down.
    work: Condvar,
    /// Signalled when a thread ends.
    exited: Condvar,
    /// Whether a failure to lower the threads' priority was logged (once per pool is enough).
    nice_warned: AtomicBool,
}

#[derive(Default)]
struct State {
    /// The waiting jobs of each client that has any.
    queues: HashMap<QueueKey, VecDeque<Job>>,
    /// The clients with waiting jobs, in serving order: a thread serves the front one's oldest job
    /// and moves it to the back if it has more.
    ring: VecDeque<QueueKey>,
    /// How many clients have a queue of each length (lengths ≥ 1), for the expected wait.
    lengths: BTreeMap<usize, usize>,
    /// Waiting jobs, and the sum of their expected run times (seconds).
    waiting: usize,
    waiting_secs: f64,
    /// The job each thread runs: when it started and its expected run time.
    workers: Vec<Option<Running>>,
    busy: usize,
    run_times: RunTimes,
    live_threads: usize,
    shutdown: bool,
    /// Jobs dropped unrun because their caller had gone.
    skipped: u64,
}

#[derive(Debug, Clone, Copy)]
struct Running {
    started: Instant,
    expected: f64,
}

/// Why a job was refused (the `reason` label of `authd_bcrypt_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Refusal {
    /// Its expected wait plus its run time does not fit its deadline.
    Deadline { wait: f64 },
    /// Its client already has `AUTHD_BCRYPT_QUEUE` jobs waiting.
    ClientQueue { wait: f64 },
}

impl State {
    /// Expected seconds until a thread takes a new job of a client that has `depth` jobs waiting.
    ///
    /// Round-robin serves one job of each waiting client per round, and the new job is served in
    /// its client's round `depth + 1`; so before it go at most `min(len, depth + 1)` jobs of each
    /// client (its own `depth` ones included), and the running jobs' remaining time. All threads
    /// work on that in parallel.
    fn expected_wait(&self, depth: usize, threads: usize, now: Instant) -> f64 {
        if self.waiting < threads.saturating_sub(self.busy) {
            return 0.0; // an idle thread takes it at once
        }
        let ahead: usize = self
            .lengths
            .iter()
            .map(|(&len, &clients)| clients.saturating_mul(len.min(depth.saturating_add(1))))
            .sum();
        let per_job = if self.waiting > 0 {
            self.waiting_secs / self.waiting as f64
        } else {
            0.0
        };
        let running: f64 = self
            .workers
            .iter()
            .flatten()
            .map(|r| (r.expected - now.saturating_duration_since(r.started).as_secs_f64()).max(0.0))
            .sum();
        (ahead as f64 * per_job + running) / threads.max(1) as f64
    }

    /// The admission rule: Ok, or why not.
    fn admit(
        &self,
        who: &Admission,
        expected: f64,
        threads: usize,
        per_client: usize,
        now: Instant,
    ) -> Result<f64, Refusal> {
        let depth = self.queues.get(&who.client).map_or(0, VecDeque::len);
        let wait = self.expected_wait(depth, threads, now);
        if wait > 0.0 && depth >= per_client {
            return Err(Refusal::ClientQueue { wait });
        }
        if let Some(deadline) = who.deadline {
            let done = Duration::try_from_secs_f64(wait + expected)
                .ok()
                .and_then(|d| now.checked_add(d));
            if done.is_none_or(|done| done > deadline) {
                return Err(Refusal::Deadline { wait });
            }
        }
        Ok(wait)
    }

    /// One client's queue went from `from` to `to` jobs.
    fn relength(&mut self, from: usize, to: usize) {
        if from > 0
            && let Some(n) = self.lengths.get_mut(&from)
        {
            *n -= 1;
            if *n == 0 {
                self.lengths.remove(&from);
            }
        }
        if to > 0 {
            *self.lengths.entry(to).or_default() += 1;
        }
    }

    fn push(&mut self, key: QueueKey, job: Job) {
        self.waiting += 1;
        self.waiting_secs += job.expected;
        let queue = self.queues.entry(key).or_default();
        queue.push_back(job);
        let len = queue.len();
        if len == 1 {
            self.ring.push_back(key);
        }
        self.relength(len - 1, len);
    }

    /// The next job in round-robin order.
    fn pop(&mut self) -> Option<Job> {
        while let Some(key) = self.ring.pop_front() {
            let Some(queue) = self.queues.get_mut(&key) else {
                continue;
            };
            let Some(job) = queue.pop_front() else {
                self.queues.remove(&key);
                continue;
            };
            let len = queue.len();
            if len == 0 {
                self.queues.remove(&key);
            } else {
                self.ring.push_back(key);
            }
            self.relength(len + 1, len);
            self.waiting -= 1;
            self.waiting_secs = if self.waiting == 0 {
                0.0
            } else {
                (self.waiting_secs - job.expected).max(0.0)
            };
            return Some(job);
        }
        None
    }
}

/// A queued closure, and its unit of `authd_bcrypt_queue_depth`. The closure owns the sender of
/// its caller's oneshot.
struct Job {
    run: Box<dyn FnOnce(Slot<'_>) + Send>,
    depth: QueueDepth,
    /// Expected run time, seconds.
    expected: f64,
}

/// A job's place among the running ones. Dropping it (before the result is sent, or while unwinding)
/// frees the place, so a caller that has its result can submit again at once.
struct Slot<'a> {
    shared: &'a Shared,
    worker: usize,
    _depth: QueueDepth,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(w) = state.workers.get_mut(self.worker)
            && w.take().is_some()
        {
            state.busy = state.busy.saturating_sub(1);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock, so a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Pool {
    fn start(options: PoolOptions) -> Result<Self> {
        let threads = options.threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                workers: vec![None; threads],
                ..State::default()
            }),
            work: Condvar::new(),
            exited: Condvar::new(),
            nice_warned: AtomicBool::new(false),
        });
        // Built first, so that the threads already started end if a later one cannot start.
        let pool = Pool {
            shared,
            threads,
            per_client: options.queue,
        };
        for i in 0..threads {
            let shared = Arc::clone(&pool.shared);
            let nice = options.nice;
            pool.shared.lock().live_threads += 1;
            let spawned = std::thread::Builder::new()
                .name(format!("authd-bcrypt-{i}"))
                .spawn(move || worker(shared, i, nice));
            if let Err(e) = spawned {
                pool.shared.lock().live_threads -= 1;
                return Err(Error::internal(format!(
                    "cannot start bcrypt thread {i}: {e}"
                )));
            }
        }
        Ok(pool)
    }

    /// The current run-time estimate at `cost`, seconds.
    fn estimate(&self, cost: u32) -> f64 {
        self.shared.lock().run_times.estimate(cost)
    }

    /// The admission rule applied to a job of `who` expected to run `expected` seconds, with the
    /// refusal's metrics and error.
    fn admit(&self, state: &State, who: &Admission, expected: f64) -> Result<()> {
        let admitted = state.admit(who, expected, self.threads, self.per_client, Instant::now());
        let wait = match admitted {
            Ok(wait) | Err(Refusal::Deadline { wait } | Refusal::ClientQueue { wait }) => wait,
        };
        metrics::gauge!(crate::metric_names::BCRYPT_EXPECTED_WAIT).set(wait);
        let Err(refusal) = admitted else {
            return Ok(());
        };
        let reason = match refusal {
            Refusal::Deadline { .. } => "deadline",
            Refusal::ClientQueue { .. } => "client_queue",
        };
        metrics::counter!(crate::metric_names::BCRYPT_REJECTED, "reason" => reason).increment(1);
        tracing::debug!(reason, wait, "bcrypt job refused");
        Err(Error::ResourceExhausted {
            message: POOL_FULL_MESSAGE.into(),
            // The grpc layer rounds it up to whole seconds, at least 1.
            retry_after: Some(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX)),
        })
    }

    /// Whether a job of `who` expected to run `expected(estimates)` would be admitted now,
    /// without queuing anything.
    fn precheck(&self, who: Admission, expected: impl FnOnce(&RunTimes) -> f64) -> Result<()> {
        let state = self.shared.lock();
        if state.shutdown {
            return Err(stopped());
        }
        let expected = expected(&state.run_times);
        self.admit(&state, &who, expected)
    }

    /// Queues `f` in the queue of `who`, or refuses at once with RESOURCE_EXHAUSTED (see the
    /// module docs). `expected` gives the job's run time from the current estimates. The job is
    /// skipped if the receiver is gone by the time a thread takes it.
    fn submit<T: Send + 'static>(
        &self,
        who: Admission,
        expected: impl FnOnce(&RunTimes) -> f64,
        f: impl FnOnce(&Meter<'_>) -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.shared.lock();
        if state.shutdown {
            return Err(stopped());
        }
        let expected = expected(&state.run_times);
        if let Err(e) = self.admit(&state, &who, expected) {
            drop(state);
            return Err(e);
        }
        state.push(
            who.client,
            Job {
                run: Box::new(move |slot: Slot<'_>| {
                    if tx.is_closed() {
                        slot.shared.lock().skipped += 1;
                        drop(slot);
                        tracing::debug!("bcrypt job skipped: its caller has gone");
                        return;
                    }
                    let value = f(&Meter {
                        shared: slot.shared,
                    });
                    drop(slot);
                    let _ = tx.send(value);
                }),
                depth: QueueDepth::enter(),
                expected,
            },
        );
        drop(state);
        self.shared.work.notify_one();
        Ok(rx)
    }

    /// Submits `f` and waits for its result without blocking the async runtime.
    async fn run<T: Send + 'static>(
        &self,
        who: Admission,
        expected: impl FnOnce(&RunTimes) -> f64,
        f: impl FnOnce(&Meter<'_>) -> T + Send + 'static,
    ) -> Result<T> {
        self.submit(who, expected, f)?.await.map_err(|_| stopped())
    }

    /// The state the threads share, which outlives the pool until the last thread ends.
    #[cfg(test)]
    fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let queued = {
            let mut state = self.shared.lock();
            state.shutdown = true;
            state.ring.clear();
            state.lengths.clear();
            state.waiting = 0;
            state.waiting_secs = 0.0;
            std::mem::take(&mut state.queues)
        };
        self.shared.work.notify_all();
        // Outside the lock: dropping a job drops its sender, which wakes its caller.
        drop(queued);
    }
}

/// The loop of pool thread `index`.
fn worker(shared: Arc<Shared>, index: usize, nice: u8) {
    if let Err(e) = set_nice(nice)
        && !shared.nice_warned.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(nice, error = %e, "cannot lower the priority of the bcrypt threads; they run at the process's priority");
    }
    loop {
        let job = {
            let mut state = shared.lock();
            loop {
                if state.shutdown {
                    break None;
                }
                if let Some(job) = state.pop() {
                    if let Some(w) = state.workers.get_mut(index) {
                        *w = Some(Running {
                            started: Instant::now(),
                            expected: job.expected,
                        });
                        state.busy += 1;
                    }
                    break Some(job);
                }
                state = shared.work.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        let Some(Job { run, depth, .. }) = job else {
            break;
        };
        let slot = Slot {
            shared: &shared,
            worker: index,
            _depth: depth,
        };
        // A panicking job loses its result (its caller gets an error), not the thread.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || run(slot))).is_err() {
            tracing::error!("a bcrypt job panicked");
        }
    }
    shared.lock().live_threads -= 1;
    shared.exited.notify_all();
}

/// Sets the nice value of the calling thread (Linux schedules threads individually), or with
/// [`crate::config::BCRYPT_SCHED_IDLE`] the SCHED_IDLE policy: a thread that any other runnable
/// thread of the process preempts at once.
#[cfg(target_os = "linux")]
fn set_nice(nice: u8) -> std::io::Result<()> {
    if nice >= crate::config::BCRYPT_SCHED_IDLE {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_IDLE.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        return if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        };
    }
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    let Ok(tid) = libc::id_t::try_from(tid) else {
        return Err(std::io::Error::other("negative thread id"));
    };
    // SAFETY: setpriority takes plain integers and only changes the scheduling of thread `tid`.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, libc::c_int::from(nice)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_nice(nice: u8) -> std::io::Result<()> {
    if nice == 0 {
        Ok(())
    } else {
        Err(std::io::Error::other(
            "per-thread priorities are only set on Linux",
        ))
    }
}

/// One unit of `authd_bcrypt_queue_depth`, released on drop.
struct QueueDepth;

impl QueueDepth {
    fn enter() -> Self {
        metrics::gauge!(crate::metric_names::BCRYPT_QUEUE_DEPTH).increment(1.0);
        QueueDepth
    }
}

impl Drop for QueueDepth {
    fn drop(&mut self) {
        metrics::gauge!(crate::metric_names::BCRYPT_QUEUE_DEPTH).decrement(1.0);
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_apply_to_the_normalized_password() {
        // U+FB01 (ﬁ) normalizes to "fi" under NFKC.
        assert_eq!(normalize("\u{FB01}"), "fi");
        assert!(new_password("password", "short").is_err());
        assert!(new_password("password", "").is_err());
        // 7 ligatures -> 14 characters after NFKC.
        assert!(new_password("password", &"\u{FB01}".repeat(7)).is_ok());
        assert!(new_password("password", &"a".repeat(72)).is_ok());
        assert!(new_password("password", &"a".repeat(73)).is_err());
        // 24 three-byte characters = 72 bytes; 25 = 75 bytes.
        assert!(new_password("password", &"€".repeat(24)).is_ok());
        assert!(new_password("password", &"€".repeat(25)).is_err());
        assert!(new_password("password", &"a".repeat(5000)).is_err());
    }

    #[test]
    fn presented_passwords_that_cannot_match() {
        assert!(presented_password("password", "").is_err());
        assert!(matches!(
            presented_password("password", &"a".repeat(73)),
            Ok(None)
        ));
        assert!(presented_password("password", &"a".repeat(2000)).is_err());
        assert!(matches!(
            presented_password("password", "correct horse"),
            Ok(Some(_))
        ));
    }

    #[test]
    fn strength() {
        assert!(check_strength("password", "password1", 3, &[]).is_err());
        assert!(check_strength("password", "Correct-Horse-Battery-Staple-42", 3, &[]).is_ok());
        // The account's own e-mail is a known word.
        let email = "margaret.hamilton.apollo@example.com";
        assert!(check_strength("password", "margaret.hamilton.apollo", 3, &[email]).is_err());
        assert!(check_strength("password", "password1", 0, &[]).is_ok());
        let err = check_strength("password", "qwertyuiop", 3, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("too weak"), "{err}");
    }

    #[test]
    fn costs() {
        assert_eq!(hash_cost("$2b$04$abcdefghijklmnopqrstuv"), Some(4));
        assert_eq!(hash_cost("$2y$12$x"), Some(12));
        assert_eq!(hash_cost("garbage"), None);
    }

    fn options(threads: usize, queue: usize) -> PoolOptions {
        PoolOptions {
            threads,
            queue,
            nice: 10,
            deadline: Duration::from_secs(10),
        }
    }

    /// A caller with no known address (the shared "unknown" queue) and the default deadline.
    fn anon() -> ClientInfo {
        ClientInfo::default()
    }

    fn from(ip: &str) -> ClientInfo {
        ClientInfo::new(ip.parse().ok(), "")
    }

    fn key(ip: &str) -> Option<ClientKey> {
        from(ip).key()
    }

    fn no_deadline(client: Option<ClientKey>) -> Admission {
        Admission {
            client,
            deadline: None,
        }
    }

    fn is_pool_full(r: &Result<impl std::fmt::Debug>) -> bool {
        matches!(
            r,
            Err(Error::ResourceExhausted { message, retry_after: Some(_) }) if message == POOL_FULL_MESSAGE
        )
    }

    #[tokio::test]
    async fn hash_and_verify() -> Result<()> {
        let h = PasswordHasher::new(4, options(2, 4)).await?;
        let c = anon();
        let hash = h.hash("correct horse battery".into(), &c).await?;
        assert_eq!(hash_cost(&hash), Some(4));
        assert!(
            h.verify(Some("correct horse battery".into()), Some(&hash), &c)
                .await?
        );
        assert!(
            !h.verify(Some("wrong horse battery".into()), Some(&hash), &c)
                .await?
        );
        assert!(
            !h.verify(Some("correct horse battery".into()), None, &c)
                .await?
        );
        assert!(!h.verify(None, Some(&hash), &c).await?);
        assert_eq!(hash_cost(&h.dummy_hash), Some(4));
        // Nothing was cheaper than the configured cost: nothing was padded.
        assert_eq!(h.padded_checks(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn failures_against_cheaper_hashes_are_padded_to_the_configured_cost() -> Result<()> {
        let c = anon();
        let old = PasswordHasher::new(4, options(1, 4)).await?;
        let cheap = old.hash("correct horse battery".into(), &c).await?;
        drop(old);
        let h = PasswordHasher::new(5, options(2, 4)).await?;
        let wrong = || Some("wrong horse battery".to_owned());
        assert!(!h.verify(wrong(), Some(&cheap), &c).await?);
        assert_eq!(h.padded_checks(), 1);
        // A password that cannot match is a failure too.
        assert!(!h.verify(None, Some(&cheap), &c).await?);
        assert_eq!(h.padded_checks(), 2);
        // A success is not padded (the caller upgrades the hash), nor is a failure against a hash
        // at the configured cost, nor an unknown account (the dummy hash has the configured cost).
        assert!(
            h.verify(Some("correct horse battery".into()), Some(&cheap), &c)
                .await?
        );
        let current = h.hash("correct horse battery".into(), &c).await?;
        assert!(!h.verify(wrong(), Some(&current), &c).await?);
        assert!(!h.verify(wrong(), None, &c).await?);
        assert_eq!(h.padded_checks(), 2);
        // The padding ran at the configured cost, and was measured there.
        let state = h.pool.shared.lock();
        assert!(state.run_times.ewma[5].is_some());
        assert!(state.run_times.ewma[4].is_some());
        Ok(())
    }

    #[tokio::test]
    async fn back_to_back_calls_fit_a_pool_without_a_queue() -> Result<()> {
        // A job frees its place before its caller sees the result, so one thread and no queue serve
        // a caller that hashes and verifies one after the other.
        let h = PasswordHasher::new(4, options(1, 0)).await?;
        let c = anon();
        for _ in 0..20 {
            let hash = h.hash("correct horse battery".into(), &c).await?;
            assert!(
                h.verify(Some("correct horse battery".into()), Some(&hash), &c)
                    .await?
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_burst_from_one_client_is_served_in_full() -> Result<()> {
        // 24 checks at once from one address on 2 threads: the old rule (8 per thread) refused 6 of
        // them; with a 10 s deadline the pool finishes all of them.
        let h = Arc::new(PasswordHasher::new(4, options(2, 64)).await?);
        let hash = h.hash("correct horse battery".into(), &anon()).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..24 {
            let (h, hash) = (Arc::clone(&h), hash.clone());
            tasks.spawn(async move {
                let c = from("192.0.2.1");
                h.verify(Some("correct horse battery".into()), Some(&hash), &c)
                    .await
            });
        }
        let mut ok = 0;
        while let Some(r) = tasks.join_next().await {
            if r.map_err(Error::internal)?? {
                ok += 1;
            }
        }
        assert_eq!(ok, 24);
        Ok(())
    }

    #[tokio::test]
    async fn a_full_client_queue_refuses_at_once_and_other_clients_still_queue() -> Result<()> {
        let h = PasswordHasher::new(4, options(1, 1)).await?;
        let c = anon();
        let hash = h.hash("correct horse battery".into(), &c).await?;
        // The thread runs one hold and the unknown client's queue holds the other.
        let mut running = h.hold()?;
        running.started().await?;
        let mut waiting = h.hold()?;
        let refused = h
            .verify(Some("correct horse battery".into()), Some(&hash), &c)
            .await;
        assert!(is_pool_full(&refused), "{refused:?}");
        assert!(is_pool_full(&h.verify(None, None, &c).await));
        assert!(is_pool_full(
            &h.hash("correct horse battery".into(), &c).await
        ));
        assert!(is_pool_full(&h.hold()));
        // The pre-check (Login's, before its database work) refuses the same, and queues nothing.
        assert!(is_pool_full(&h.precheck(&c)));
        assert!(h.precheck(&from("192.0.2.1")).is_ok());
        assert_eq!(h.waiting(), 1);

        // Another client's queue is empty: its check is admitted and waits its turn.
        let other = h.hold_for(key("192.0.2.1"), Duration::from_millis(1))?;
        assert!(
            h.hold_for(key("192.0.2.1"), Duration::from_millis(1))
                .is_err()
        );

        // Once a thread takes the waiting hold, its place is free and taken again, and then the
        // queue is full again.
        running.release().await?;
        waiting.started().await?;
        let refill = h.hold()?;
        assert!(is_pool_full(
            &h.hash("correct horse battery".into(), &c).await
        ));
        waiting.release().await?;
        other.release().await?;
        refill.release().await?;
        assert!(
            h.verify(Some("correct horse battery".into()), Some(&hash), &c)
                .await?
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_expected_wait_follows_round_robin_order() -> Result<()> {
        let h = PasswordHasher::new(4, options(1, 64)).await?;
        let second = Duration::from_secs(1);
        let mut running = h.hold_for(key("192.0.2.99"), second)?;
        running.started().await?;
        // A has 3 waiting jobs, B has 1, each expected to run 1 s.
        let mut holds = Vec::new();
        for _ in 0..3 {
            holds.push(h.hold_for(key("192.0.2.1"), second)?);
        }
        holds.push(h.hold_for(key("192.0.2.2"), second)?);
        {
            let state = h.pool.shared.lock();
            // As if no time had passed since the running job started: it has 1 s left.
            let now = state.workers[0].map(|r| r.started).ok_or_else(stopped)?;
            // A new client goes after one job of A and one of B: 2 jobs + 1 s.
            assert_eq!(state.expected_wait(0, 1, now), 3.0);
            // B's second job: min(3, 2) of A + B's own 1, + 1 s.
            assert_eq!(state.expected_wait(1, 1, now), 4.0);
            // A's fourth job: all 4 waiting jobs + 1 s.
            assert_eq!(state.expected_wait(3, 1, now), 5.0);
            // Half a second later the running job has half a second left.
            let later = now + Duration::from_millis(500);
            assert_eq!(state.expected_wait(0, 1, later), 2.5);

            // Admission: run time 1 s after a wait of 3 s fits 4 s, not 3.9 s; a refusal reports its wait.
            let c = Admission {
                client: key("192.0.2.3"),
                deadline: Some(now + Duration::from_secs(4)),
            };
            assert_eq!(state.admit(&c, 1.0, 1, 64, now), Ok(3.0));
            let c = Admission {
                deadline: Some(now + Duration::from_millis(3900)),
                ..c
            };
            assert_eq!(
                state.admit(&c, 1.0, 1, 64, now),
                Err(Refusal::Deadline { wait: 3.0 })
            );
            // The per-client cap applies before the deadline.
            let a = Admission {
                client: key("192.0.2.1"),
                deadline: None,
            };
            assert_eq!(
                state.admit(&a, 1.0, 1, 3, now),
                Err(Refusal::ClientQueue { wait: 5.0 })
            );
        }
        // Dropping a hold releases it, whichever job the thread runs.
        drop(holds);
        running.release().await?;
        Ok(())
    }

    #[tokio::test]
    async fn clients_are_served_round_robin() -> Result<()> {
        let h = PasswordHasher::new(4, options(1, 64)).await?;
        let mut gate = h.hold()?;
        gate.started().await?;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut done = Vec::new();
        for (client, name) in [
            ("192.0.2.1", "a1"),
            ("192.0.2.1", "a2"),
            ("192.0.2.1", "a3"),
            ("192.0.2.2", "b1"),
            ("2001:db8:0:1::1", "c1"),
            // The same /64 as c1: the same client.
            ("2001:db8:0:1::2", "c2"),
        ] {
            let order = Arc::clone(&order);
            done.push(h.pool.submit(
                no_deadline(key(client)),
                |_| 0.0,
                move |_| order.lock().unwrap_or_else(|e| e.into_inner()).push(name),
            )?);
        }
        gate.release().await?;
        for d in done {
            d.await.map_err(|_| stopped())?;
        }
        let order = order.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(order, ["a1", "b1", "c1", "a2", "c2", "a3"]);
        Ok(())
    }

    #[test]
    fn run_time_estimates() {
        let mut t = RunTimes::default();
        // Nothing measured: a guess of 0.25 s at cost 12, halving per step down.
        assert_eq!(t.estimate(12), 0.25);
        assert_eq!(t.estimate(10), 0.0625);
        t.record(6, 0.004);
        assert_eq!(t.estimate(6), 0.004);
        // Other costs scale from the nearest measured one.
        assert_eq!(t.estimate(8), 0.016);
        assert_eq!(t.estimate(5), 0.002);
        // A moving average: one slow sample moves it a fifth of the way.
        t.record(6, 0.014);
        assert!((t.estimate(6) - 0.006).abs() < 1e-12);
    }

    #[tokio::test]
    async fn jobs_whose_caller_has_gone_are_skipped() -> Result<()> {
        let h = PasswordHasher::new(4, options(1, 8)).await?;
        let mut hold = h.hold()?;
        hold.started().await?;

        // Queued behind the hold; the first two callers go away before a thread takes their job.
        let ran = Arc::new([
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
        ]);
        let job = |i: usize| {
            let ran = Arc::clone(&ran);
            move |_: &Meter<'_>| ran[i].store(true, Ordering::SeqCst)
        };
        let who = no_deadline(None);
        drop(h.pool.submit(who, |_| 0.0, job(0))?);
        // A cancelled request: its future is polled once (the job is queued), then dropped.
        let cancelled =
            tokio::time::timeout(Duration::ZERO, h.pool.run(who, |_| 0.0, job(1))).await;
        assert!(cancelled.is_err(), "the job cannot have run yet");
        // A hash whose caller gives up (a deadline) the same way.
        let gave_up = tokio::time::timeout(
            Duration::ZERO,
            h.hash("correct horse battery".into(), &anon()),
        )
        .await;
        assert!(gave_up.is_err());
        let kept = h.pool.submit(who, |_| 0.0, job(2))?;
        assert_eq!(h.pool.shared.lock().waiting, 4);

        hold.release().await?;
        kept.await.map_err(|_| stopped())?;
        // One FIFO queue (the unknown client's): the skipped jobs were taken before the kept one.
        assert!(!ran[0].load(Ordering::SeqCst));
        assert!(!ran[1].load(Ordering::SeqCst));
        assert!(ran[2].load(Ordering::SeqCst));
        let state = h.pool.shared.lock();
        assert_eq!(state.skipped, 3);
        assert_eq!(state.waiting, 0);
        assert!(state.queues.is_empty() && state.ring.is_empty() && state.lengths.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn threads_are_named_and_niced() -> Result<()> {
        let h = PasswordHasher::new(4, options(1, 0)).await?;
        let who = no_deadline(None);
        let name = h
            .pool
            .run(
                who,
                |_| 0.0,
                |_| std::thread::current().name().map(str::to_owned),
            )
            .await?;
        assert_eq!(name.as_deref(), Some("authd-bcrypt-0"));
        #[cfg(target_os = "linux")]
        {
            // SAFETY: plain system calls on the calling thread.
            let nice_of_this_thread =
                || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
            let base = nice_of_this_thread();
            let nice = h
                .pool
                .run(who, |_| 0.0, move |_| nice_of_this_thread())
                .await?;
            // Lowering the priority is always allowed; only a process already above 10 stays there.
            assert_eq!(nice, base.max(10));
            let idle = PasswordHasher::new(
                4,
                PoolOptions {
                    nice: crate::config::BCRYPT_SCHED_IDLE,
                    ..options(1, 0)
                },
            )
            .await?;
            // SAFETY: a plain system call on the calling thread.
            let policy = idle
                .pool
                .run(who, |_| 0.0, |_| unsafe { libc::sched_getscheduler(0) })
                .await?;
            assert_eq!(policy, libc::SCHED_IDLE);
        }
        Ok(())
    }

    #[tokio::test]
    async fn threads_end_when_the_hasher_is_dropped() -> Result<()> {
        // One thread: the second job must wait in the queue (with idle threads it could start).
        let h = PasswordHasher::new(4, options(1, 4)).await?;
        let shared = h.pool.shared();
        assert_eq!(shared.lock().live_threads, 1);
        let mut hold = h.hold()?;
        hold.started().await?;
        let queued = h.hold()?;
        let queued_done = queued.done;

        drop(h);
        // The queued job is dropped unrun; its caller hears so.
        assert!(queued_done.await.is_err());
        // The running job finishes normally, then its thread ends too.
        hold.release().await?;
        let state = shared.lock();
        let (state, timeout) = shared
            .exited
            .wait_timeout_while(state, Duration::from_secs(60), |s| s.live_threads > 0)
            .unwrap_or_else(|e| e.into_inner());
        assert!(
            !timeout.timed_out(),
            "{} threads still alive",
            state.live_threads
        );
        Ok(())
    }

    #[test]
    fn pool_options_from_config() {
        let mut c = Config::defaults();
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        assert_eq!(
            PoolOptions::from_config(&c),
            PoolOptions {
                threads: cores,
                queue: 64,
                nice: 10,
                deadline: Duration::from_secs(10),
            }
        );
        c.bcrypt_concurrency = 3;
        c.bcrypt_queue = Some(0);
        c.bcrypt_nice = crate::config::BCRYPT_SCHED_IDLE;
        c.request_timeout = Duration::from_secs(3);
        assert_eq!(
            PoolOptions::from_config(&c),
            PoolOptions {
                threads: 3,
                queue: 0,
                nice: crate::config::BCRYPT_SCHED_IDLE,
                deadline: Duration::from_secs(3),
            }
        );
    }
}
