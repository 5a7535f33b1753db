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
//! wrong password.
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
//! - **Priority**: each thread sets its own priority from `AUTHD_BCRYPT_NICE`: by default `idle`
//!   (the SCHED_IDLE policy, so any other runnable authd thread preempts it at once), or a nice value
//!   with `setpriority(PRIO_PROCESS, gettid(), n)` (Linux). The runtime's workers stay at the process's
//!   priority, so Health, ValidateToken, GetMe and the rest of the cheap calls win the CPU from
//!   hashing; none of them ever waits for this pool. If the nice value cannot be set, one warning is
//!   logged and the threads run at the process's priority.
//! - **Queue**: at most `AUTHD_BCRYPT_QUEUE` jobs (default 8 per thread) wait beyond the running
//!   ones, first in first out. Past that, a call fails at once with RESOURCE_EXHAUSTED, "too many
//!   password checks in progress; retry shortly", with a one-second `retry-after`, instead of
//!   queueing into unbounded latency. A refused Login has checked nothing: it does not count as a
//!   failed attempt.
//! - **Cancellation**: a job whose caller has gone away (a cancelled request, a deadline) when a
//!   thread takes it is skipped, not computed.
//! - **Metrics**: `authd_bcrypt_queue_depth` counts the admitted jobs not yet finished (waiting plus
//!   running); `authd_bcrypt_rejected_total` counts the refusals.
//! - **Shutdown**: dropping the hasher (with its [`Authd`](super::Authd)) drops the queued jobs
//!   (their callers get INTERNAL) and ends each thread after its current job, without blocking.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use unicode_normalization::UnicodeNormalization;

use super::{Error, Result};
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
    /// Jobs that may wait for a thread beyond the running ones.
    pub queue: usize,
    /// Nice value of the threads (0-19).
    pub nice: u8,
}

impl PoolOptions {
    /// `AUTHD_BCRYPT_CONCURRENCY` (0 = the cores available to the process), `AUTHD_BCRYPT_QUEUE`
    /// (unset = 8 per thread) and `AUTHD_BCRYPT_NICE`.
    pub fn from_config(config: &Config) -> Self {
        let threads = match config.bcrypt_concurrency {
            0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            n => usize::try_from(n).unwrap_or(1),
        };
        let queue = config.bcrypt_queue.map_or(threads.saturating_mul(8), |q| {
            usize::try_from(q).unwrap_or(usize::MAX)
        });
        Self {
            threads,
            queue,
            nice: config.bcrypt_nice.min(crate::config::BCRYPT_SCHED_IDLE),
        }
    }
}

/// What a caller gets when every bcrypt thread is busy and the queue is full.
pub const POOL_FULL_MESSAGE: &str = "too many password checks in progress; retry shortly";
/// The `retry-after` of [`POOL_FULL_MESSAGE`].
pub const POOL_FULL_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Hashes and verifies passwords on its own bounded pool of bcrypt threads (see the module docs).
/// The threads end when the hasher is dropped.
pub struct PasswordHasher {
    cost: u32,
    dummy_hash: String,
    pool: Pool,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("cost", &self.cost)
            .field("threads", &self.pool.threads)
            .field("queue", &(self.pool.capacity - self.pool.threads))
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// The hasher the configuration describes (`AUTHD_BCRYPT_COST`, `AUTHD_BCRYPT_CONCURRENCY`,
    /// `AUTHD_BCRYPT_QUEUE`, `AUTHD_BCRYPT_NICE`).
    pub async fn from_config(config: &Config) -> Result<Self> {
        Self::new(config.bcrypt_cost, PoolOptions::from_config(config)).await
    }

    /// Starts the pool's threads and prepares the dummy hash for unknown accounts (one bcrypt run at
    /// `cost`, on the pool).
    pub async fn new(cost: u32, options: PoolOptions) -> Result<Self> {
        let pool = Pool::start(options)?;
        tracing::info!(
            threads = pool.threads,
            queue = pool.capacity - pool.threads,
            nice = options.nice,
            cost,
            "bcrypt pool started"
        );
        let dummy_hash = pool
            .run(move || {
                let mut seed = [0u8; 16];
                rand::Rng::fill(&mut rand::thread_rng(), &mut seed);
                bcrypt::hash(hex_encode(&seed), cost).map_err(Error::internal)
            })
            .await??;
        Ok(Self {
            cost,
            dummy_hash,
            pool,
        })
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// Hashes a normalized password (see [`new_password`]).
    pub async fn hash(&self, password: String) -> Result<String> {
        let cost = self.cost;
        self.pool
            .run(move || bcrypt::hash(password, cost).map_err(Error::internal))
            .await?
    }

    /// Verifies a normalized password against `hash`, or against the dummy hash when `hash` is None
    /// (unknown account) or the password cannot match, so every failure costs the same.
    pub async fn verify(&self, password: Option<String>, hash: Option<&str>) -> Result<bool> {
        let real = password.is_some() && hash.is_some();
        let hash = hash.unwrap_or(&self.dummy_hash).to_owned();
        let password = password.unwrap_or_default();
        let ok = self
            .pool
            .run(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await?;
        Ok(real && ok)
    }

    /// For tests: occupies one place in the pool (a thread, or a place in the queue until a thread
    /// takes it) with a job that blocks until the returned [`Hold`] is released or dropped. Fails
    /// like a password check would when the pool is full.
    #[doc(hidden)]
    pub fn hold(&self) -> Result<Hold> {
        let (started_tx, started) = oneshot::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let done = self.pool.submit(move || {
            let _ = started_tx.send(());
            // Returns when the Hold's sender is dropped.
            let _ = release_rx.recv();
        })?;
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

// ----- the pool ------------------------------------------------------------------------------------

/// A fixed set of named OS threads that take jobs from one bounded FIFO queue. Dropping the pool
/// drops the jobs still queued (their callers get an error) and lets each thread end after its
/// current job; nothing blocks on that.
struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    /// Running plus waiting jobs allowed: threads + queue.
    capacity: usize,
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
    queue: VecDeque<Job>,
    running: usize,
    live_threads: usize,
    shutdown: bool,
    /// Jobs dropped unrun because their caller had gone.
    skipped: u64,
}

/// A queued closure, and its unit of `authd_bcrypt_queue_depth`. The closure owns the sender of
/// its caller's oneshot.
struct Job {
    run: Box<dyn FnOnce(Slot<'_>) + Send>,
    depth: QueueDepth,
}

/// A job's place among the running ones. Dropping it (before the result is sent, or while unwinding)
/// frees the place, so a caller that has its result can submit again at once.
struct Slot<'a> {
    shared: &'a Shared,
    _depth: QueueDepth,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.running = state.running.saturating_sub(1);
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
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            exited: Condvar::new(),
            nice_warned: AtomicBool::new(false),
        });
        // Built first, so that the threads already started end if a later one cannot start.
        let pool = Pool {
            shared,
            threads,
            capacity: threads.saturating_add(options.queue),
        };
        for i in 0..threads {
            let shared = Arc::clone(&pool.shared);
            let nice = options.nice;
            pool.shared.lock().live_threads += 1;
            let spawned = std::thread::Builder::new()
                .name(format!("authd-bcrypt-{i}"))
                .spawn(move || worker(shared, nice));
            if let Err(e) = spawned {
                pool.shared.lock().live_threads -= 1;
                return Err(Error::internal(format!(
                    "cannot start bcrypt thread {i}: {e}"
                )));
            }
        }
        Ok(pool)
    }

    /// Queues `f`, or refuses at once with RESOURCE_EXHAUSTED when `capacity` jobs are already
    /// running or waiting. The job is skipped if the receiver is gone by the time a thread takes it.
    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.shared.lock();
        if state.shutdown {
            return Err(stopped());
        }
        if state.queue.len() + state.running >= self.capacity {
            drop(state);
            metrics::counter!(crate::metrics::BCRYPT_REJECTED).increment(1);
            tracing::debug!(capacity = self.capacity, "bcrypt pool full; job refused");
            return Err(Error::ResourceExhausted {
                message: POOL_FULL_MESSAGE.into(),
                retry_after: Some(POOL_FULL_RETRY_AFTER),
            });
        }
        state.queue.push_back(Job {
            run: Box::new(move |slot: Slot<'_>| {
                if tx.is_closed() {
                    slot.shared.lock().skipped += 1;
                    drop(slot);
                    tracing::debug!("bcrypt job skipped: its caller has gone");
                    return;
                }
                let value = f();
                drop(slot);
                let _ = tx.send(value);
            }),
            depth: QueueDepth::enter(),
        });
        drop(state);
        self.shared.work.notify_one();
        Ok(rx)
    }

    /// Submits `f` and waits for its result without blocking the async runtime.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.submit(f)?.await.map_err(|_| stopped())
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
            std::mem::take(&mut state.queue)
        };
        self.shared.work.notify_all();
        // Outside the lock: dropping a job drops its sender, which wakes its caller.
        drop(queued);
    }
}

/// The loop of one pool thread.
fn worker(shared: Arc<Shared>, nice: u8) {
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
                if let Some(job) = state.queue.pop_front() {
                    state.running += 1;
                    break Some(job);
                }
                state = shared.work.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        let Some(Job { run, depth }) = job else {
            break;
        };
        let slot = Slot {
            shared: &shared,
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
        metrics::gauge!(crate::metrics::BCRYPT_QUEUE_DEPTH).increment(1.0);
        QueueDepth
    }
}

impl Drop for QueueDepth {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::BCRYPT_QUEUE_DEPTH).decrement(1.0);
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
        let hash = h.hash("correct horse battery".into()).await?;
        assert_eq!(hash_cost(&hash), Some(4));
        assert!(
            h.verify(Some("correct horse battery".into()), Some(&hash))
                .await?
        );
        assert!(
            !h.verify(Some("wrong horse battery".into()), Some(&hash))
                .await?
        );
        assert!(!h.verify(Some("correct horse battery".into()), None).await?);
        assert!(!h.verify(None, Some(&hash)).await?);
        assert_eq!(hash_cost(&h.dummy_hash), Some(4));
        Ok(())
    }

    #[tokio::test]
    async fn back_to_back_calls_fit_a_pool_without_a_queue() -> Result<()> {
        // A job frees its place before its caller sees the result, so one thread and no queue serve
        // a caller that hashes and verifies one after the other.
        let h = PasswordHasher::new(4, options(1, 0)).await?;
        for _ in 0..20 {
            let hash = h.hash("correct horse battery".into()).await?;
            assert!(
                h.verify(Some("correct horse battery".into()), Some(&hash))
                    .await?
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_full_pool_refuses_at_once() -> Result<()> {
        let h = PasswordHasher::new(4, options(1, 1)).await?;
        let hash = h.hash("correct horse battery".into()).await?;
        // The thread runs one hold and the queue holds the other.
        let mut running = h.hold()?;
        running.started().await?;
        let waiting = h.hold()?;
        let refused = h
            .verify(Some("correct horse battery".into()), Some(&hash))
            .await;
        assert!(is_pool_full(&refused), "{refused:?}");
        assert!(is_pool_full(&h.verify(None, None).await));
        assert!(is_pool_full(&h.hash("correct horse battery".into()).await));
        assert!(is_pool_full(&h.hold()));

        // A freed place is taken again, and then the pool is full again.
        running.release().await?;
        let refill = h.hold()?;
        assert!(is_pool_full(&h.hash("correct horse battery".into()).await));
        waiting.release().await?;
        refill.release().await?;
        assert!(
            h.verify(Some("correct horse battery".into()), Some(&hash))
                .await?
        );
        Ok(())
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
            move || ran[i].store(true, Ordering::SeqCst)
        };
        drop(h.pool.submit(job(0))?);
        // A cancelled request: its future is polled once (the job is queued), then dropped.
        let cancelled = tokio::time::timeout(Duration::ZERO, h.pool.run(job(1))).await;
        assert!(cancelled.is_err(), "the job cannot have run yet");
        // A hash whose caller gives up (a deadline) the same way.
        let gave_up =
            tokio::time::timeout(Duration::ZERO, h.hash("correct horse battery".into())).await;
        assert!(gave_up.is_err());
        let kept = h.pool.submit(job(2))?;
        assert_eq!(h.pool.shared.lock().queue.len(), 4);

        hold.release().await?;
        kept.await.map_err(|_| stopped())?;
        // One FIFO thread: the skipped jobs were taken before the kept one.
        assert!(!ran[0].load(Ordering::SeqCst));
        assert!(!ran[1].load(Ordering::SeqCst));
        assert!(ran[2].load(Ordering::SeqCst));
        let state = h.pool.shared.lock();
        assert_eq!(state.skipped, 3);
        assert!(state.queue.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn threads_are_named_and_niced() -> Result<()> {
        let h = PasswordHasher::new(4, options(1, 0)).await?;
        let name = h
            .pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await?;
        assert_eq!(name.as_deref(), Some("authd-bcrypt-0"));
        #[cfg(target_os = "linux")]
        {
            // SAFETY: plain system calls on the calling thread.
            let nice_of_this_thread =
                || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
            let base = nice_of_this_thread();
            let nice = h.pool.run(nice_of_this_thread).await?;
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
                .run(|| unsafe { libc::sched_getscheduler(0) })
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
                queue: 8 * cores,
                nice: crate::config::BCRYPT_SCHED_IDLE
            }
        );
        c.bcrypt_concurrency = 3;
        assert_eq!(PoolOptions::from_config(&c).queue, 24);
        c.bcrypt_queue = Some(0);
        c.bcrypt_nice = 0;
        assert_eq!(
            PoolOptions::from_config(&c),
            PoolOptions {
                threads: 3,
                queue: 0,
                nice: 0
            }
        );
    }
}
