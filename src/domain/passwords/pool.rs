//! The bcrypt pool.
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
//! - **Shutdown**: dropping the hasher (with its [`Authd`](crate::domain::Authd)) drops the queued jobs
//!   (their callers get INTERNAL) and ends each thread after its current job, without blocking.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::jobs::*;
use crate::domain::{ClientKey, Error, Result};

/// The queue of a client: its [`ClientKey`], or None for calls with no known address.
pub(super) type QueueKey = Option<ClientKey>;

/// A fixed set of named OS threads that take jobs from per-client queues, round-robin. Dropping
/// the pool drops the jobs still queued (their callers get an error) and lets each thread end
/// after its current job; nothing blocks on that.
pub(super) struct Pool {
    pub(super) shared: Arc<Shared>,
    pub(super) threads: usize,
    /// Jobs of one client that may wait beyond the running ones.
    pub(super) per_client: usize,
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// Signalled when a job is queued or the pool shuts down.
    pub(super) work: Condvar,
    /// Signalled when a thread ends.
    pub(super) exited: Condvar,
    /// Whether a failure to lower the threads' priority was logged (once per pool is enough).
    pub(super) nice_warned: AtomicBool,
}

#[derive(Default)]
pub(super) struct State {
    /// The waiting jobs of each client that has any.
    pub(super) queues: HashMap<QueueKey, VecDeque<Job>>,
    /// The clients with waiting jobs, in serving order: a thread serves the front one's oldest job
    /// and moves it to the back if it has more.
    pub(super) ring: VecDeque<QueueKey>,
    /// How many clients have a queue of each length (lengths ≥ 1), for the expected wait.
    pub(super) lengths: BTreeMap<usize, usize>,
    /// Waiting jobs, and the sum of their expected run times (seconds).
    pub(super) waiting: usize,
    pub(super) waiting_secs: f64,
    /// The job each thread runs: when it started and its expected run time.
    pub(super) workers: Vec<Option<Running>>,
    pub(super) busy: usize,
    pub(super) run_times: RunTimes,
    pub(super) live_threads: usize,
    pub(super) shutdown: bool,
    /// Jobs dropped unrun because their caller had gone.
    pub(super) skipped: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Running {
    pub(super) started: Instant,
    pub(super) expected: f64,
}

/// Why a job was refused (the `reason` label of `authd_bcrypt_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Refusal {
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
    pub(super) fn expected_wait(&self, depth: usize, threads: usize, now: Instant) -> f64 {
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
    pub(super) fn admit(
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
    pub(super) fn relength(&mut self, from: usize, to: usize) {
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

    pub(super) fn push(&mut self, key: QueueKey, job: Job) {
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
    pub(super) fn pop(&mut self) -> Option<Job> {
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
pub(super) struct Job {
    pub(super) run: Box<dyn FnOnce(Slot<'_>) + Send>,
    pub(super) depth: QueueDepth,
    /// Expected run time, seconds.
    pub(super) expected: f64,
}

/// A job's place among the running ones. Dropping it (before the result is sent, or while unwinding)
/// frees the place, so a caller that has its result can submit again at once.
pub(super) struct Slot<'a> {
    pub(super) shared: &'a Shared,
    pub(super) worker: usize,
    pub(super) _depth: QueueDepth,
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
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock, so a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Pool {
    pub(super) fn start(options: PoolOptions) -> Result<Self> {
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
    pub(super) fn estimate(&self, cost: u32) -> f64 {
        self.shared.lock().run_times.estimate(cost)
    }

    /// The admission rule applied to a job of `who` expected to run `expected` seconds, with the
    /// refusal's metrics and error.
    pub(super) fn admit(&self, state: &State, who: &Admission, expected: f64) -> Result<()> {
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
    pub(super) fn precheck(
        &self,
        who: Admission,
        expected: impl FnOnce(&RunTimes) -> f64,
    ) -> Result<()> {
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
    pub(super) fn submit<T: Send + 'static>(
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
    pub(super) async fn run<T: Send + 'static>(
        &self,
        who: Admission,
        expected: impl FnOnce(&RunTimes) -> f64,
        f: impl FnOnce(&Meter<'_>) -> T + Send + 'static,
    ) -> Result<T> {
        self.submit(who, expected, f)?.await.map_err(|_| stopped())
    }

    /// The state the threads share, which outlives the pool until the last thread ends.
    #[cfg(test)]
    pub(super) fn shared(&self) -> Arc<Shared> {
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
pub(super) fn worker(shared: Arc<Shared>, index: usize, nice: u8) {
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
/// [`crate::domain::settings::BCRYPT_SCHED_IDLE`] the SCHED_IDLE policy: a thread that any other runnable
/// thread of the process preempts at once.
#[cfg(target_os = "linux")]
pub(super) fn set_nice(nice: u8) -> std::io::Result<()> {
    if nice >= crate::domain::settings::BCRYPT_SCHED_IDLE {
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
pub(super) fn set_nice(nice: u8) -> std::io::Result<()> {
    if nice == 0 {
        Ok(())
    } else {
        Err(std::io::Error::other(
            "per-thread priorities are only set on Linux",
        ))
    }
}

/// One unit of `authd_bcrypt_queue_depth`, released on drop.
pub(super) struct QueueDepth;

impl QueueDepth {
    pub(super) fn enter() -> Self {
        metrics::gauge!(crate::metric_names::BCRYPT_QUEUE_DEPTH).increment(1.0);
        QueueDepth
    }
}

impl Drop for QueueDepth {
    fn drop(&mut self) {
        metrics::gauge!(crate::metric_names::BCRYPT_QUEUE_DEPTH).decrement(1.0);
    }
}

pub(super) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a job may use while it runs: a timer that feeds [`RunTimes`].
pub struct Meter<'a> {
    pub(super) shared: &'a Shared,
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
