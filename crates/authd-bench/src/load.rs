//! The closed loop: one task per worker sends a request, waits for the reply, checks it, records
//! the latency in its own HDR histogram and repeats until the end of the run. Nothing is shared
//! between workers on the hot path (no locks, no shared counters); [`run`] returns each worker's
//! [`WorkerStats`] and the report merges them.
//!
//! Timeline: all workers start together; replies that arrive during the warm-up are dropped, the
//! ones that arrive within the measured window `[warmup, warmup + duration)` are counted, and the
//! call in flight when the window closes is abandoned (cancelled) and not counted.

use std::collections::BTreeMap;
use std::time::Duration;

use authd_proto::auth_service_client::AuthServiceClient;
use authd_proto::user_service_client::UserServiceClient;
use authd_proto::{
    GetMeRequest, LoginRequest, RefreshRequest, ValidateTokenRequest, login_request,
};
use hdrhistogram::Histogram;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::cli::{Plan, Rpc};
use crate::setup::{Prepared, SetupError, bearer};
use authd_proto::code_name::canonical as code_name;

/// Error name for an OK reply whose body is wrong (e.g. valid=false, empty tokens).
pub const INVALID_REPLY: &str = "INVALID_REPLY";
/// Significant figures of every latency histogram.
pub const SIGFIGS: u8 = 3;

/// What one worker measured.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    pub rpc: Rpc,
    /// Latencies of successful calls in the measured window, in microseconds.
    pub hist: Histogram<u64>,
    pub ok: u64,
    /// Failed calls in the measured window, by status code name.
    pub errors: BTreeMap<&'static str, u64>,
    /// Calls completed during the warm-up (not reported except as a count).
    pub warmup_calls: u64,
    /// Refresh workers: sessions lost (UNAUTHENTICATED) and logged in again.
    pub relogins: u64,
}

impl WorkerStats {
    pub fn new(rpc: Rpc) -> Result<Self, String> {
        Ok(Self {
            rpc,
            hist: new_histogram()?,
            ok: 0,
            errors: BTreeMap::new(),
            warmup_calls: 0,
            relogins: 0,
        })
    }

    pub fn record_ok(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        // An auto-resizing histogram grows to fit; clamp only if it cannot.
        if self.hist.record(us).is_err() {
            self.hist.saturating_record(us);
        }
        self.ok += 1;
    }

    pub fn record_error(&mut self, code: &'static str) {
        *self.errors.entry(code).or_insert(0) += 1;
    }
}

/// An auto-resizing histogram from 1 µs, 3 significant figures.
pub fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new(SIGFIGS).map_err(|e| format!("histogram: {e}"))
}

/// Why one call did not count as a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Status(Code),
    InvalidReply,
}

impl Failure {
    pub fn name(self) -> &'static str {
        match self {
            Failure::Status(c) => code_name(c),
            Failure::InvalidReply => INVALID_REPLY,
        }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Status(s.code())
    }
}

/// The stubs of one connection.
#[derive(Clone)]
struct Stubs {
    auth: AuthServiceClient<Channel>,
    users: UserServiceClient<Channel>,
    health: HealthClient<Channel>,
}

impl Stubs {
    fn new(channel: &Channel) -> Self {
        Self {
            auth: AuthServiceClient::new(channel.clone()),
            users: UserServiceClient::new(channel.clone()),
            health: HealthClient::new(channel.clone()),
        }
    }
}

/// What a worker sends, with the credentials it holds.
#[derive(Debug, Clone)]
pub enum Job {
    Health,
    Validate {
        key: Option<MetadataValue<Ascii>>,
        token: String,
    },
    GetMe {
        bearer: MetadataValue<Ascii>,
        email: String,
    },
    Login {
        email: String,
        password: String,
        /// The client address the server should see (`x-forwarded-for`), if any.
        from: Option<MetadataValue<Ascii>>,
    },
    /// Logins for unknown accounts: `flood-<run>-<worker>-<n>@bench.invalid`, n counting up.
    Flood {
        prefix: String,
        n: u64,
        from: MetadataValue<Ascii>,
    },
    Refresh {
        refresh_token: String,
        email: String,
        password: String,
    },
    /// Refreshes spread over many sessions (`--refresh-tokens`): each call rotates the next token.
    RefreshMany {
        tokens: Vec<String>,
        next: usize,
    },
}

impl Job {
    pub fn rpc(&self) -> Rpc {
        match self {
            Job::Health => Rpc::Health,
            Job::Validate { .. } => Rpc::Validate,
            Job::GetMe { .. } => Rpc::GetMe,
            Job::Login { .. } => Rpc::Login,
            Job::Refresh { .. } | Job::RefreshMany { .. } => Rpc::Refresh,
            Job::Flood { .. } => Rpc::Flood,
        }
    }
}

/// `198.18.<net>.<1 + w mod n>` as `x-forwarded-for` metadata.
fn source_address(net: u8, w: usize, n: u32) -> Result<MetadataValue<Ascii>, SetupError> {
    let host = w % n.max(1) as usize + 1;
    format!("198.18.{net}.{host}")
        .parse()
        .map_err(|_| SetupError {
            what: "internal: a source address is not valid metadata".into(),
            status: None,
            hint: None,
        })
}

/// Source addresses of the flood and login workers (see `--flood-addresses`).
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub flood: u32,
    pub login: u32,
}

/// The jobs of every worker, in group order: worker w of group g gets user w mod users.
pub fn jobs(
    plan: &Plan,
    prepared: &Prepared,
    addresses: Addresses,
) -> Result<Vec<Job>, SetupError> {
    let missing = |what: &str| SetupError {
        what: format!("internal: no {what} was prepared"),
        status: None,
        hint: None,
    };
    let mut jobs = Vec::with_capacity(plan.workers() as usize);
    let mut refresh_index = 0usize;
    for group in &plan.groups {
        for w in 0..group.workers as usize {
            let job = match group.rpc {
                Rpc::Health => Job::Health,
                Rpc::Validate => {
                    let n = prepared.shared_sessions.len().max(1);
                    let s = prepared
                        .shared_sessions
                        .get(w % n)
                        .ok_or_else(|| missing("session for validate"))?;
                    Job::Validate {
                        key: prepared.service_key.clone(),
                        token: s.access_token.clone(),
                    }
                }
                Rpc::GetMe => {
                    let n = prepared.shared_sessions.len().max(1);
                    let s = prepared
                        .shared_sessions
                        .get(w % n)
                        .ok_or_else(|| missing("session for getme"))?;
                    let user = prepared
                        .users
                        .get(s.user)
                        .ok_or_else(|| missing("user for getme"))?;
                    Job::GetMe {
                        bearer: bearer(&s.access_token)?,
                        email: user.email.clone(),
                    }
                }
                Rpc::Login => {
                    let n = prepared.users.len().max(1);
                    let user = prepared
                        .users
                        .get(w % n)
                        .ok_or_else(|| missing("user for login"))?;
                    let from = if addresses.login > 0 {
                        Some(source_address(1, w, addresses.login)?)
                    } else {
                        None
                    };
                    Job::Login {
                        email: user.email.clone(),
                        password: user.password.clone(),
                        from,
                    }
                }
                Rpc::Flood => Job::Flood {
                    prefix: format!("flood-{}-{w}", prepared.run_id),
                    n: 0,
                    from: source_address(0, w, addresses.flood)?,
                },
                Rpc::Refresh => {
                    let s = prepared
                        .refresh_sessions
                        .get(refresh_index)
                        .ok_or_else(|| missing("session for refresh"))?;
                    refresh_index += 1;
                    let user = prepared
                        .users
                        .get(s.user)
                        .ok_or_else(|| missing("user for refresh"))?;
                    Job::Refresh {
                        refresh_token: s.refresh_token.clone(),
                        email: user.email.clone(),
                        password: user.password.clone(),
                    }
                }
            };
            jobs.push(job);
        }
    }
    Ok(jobs)
}

/// Like [`jobs`], but refresh workers rotate `tokens` (dealt out round-robin) instead of one
/// logged-in session each.
pub fn jobs_with_refresh_tokens(
    plan: &Plan,
    prepared: &Prepared,
    addresses: Addresses,
    tokens: Vec<String>,
) -> Result<Vec<Job>, SetupError> {
    let refresh_workers = plan.workers_of(Rpc::Refresh) as usize;
    if refresh_workers == 0 || tokens.len() < refresh_workers {
        return Err(SetupError {
            what: format!(
                "--refresh-tokens: {} token(s) for {refresh_workers} refresh worker(s); \
                 need at least one each",
                tokens.len()
            ),
            status: None,
            hint: None,
        });
    }
    let mut dealt: Vec<Vec<String>> = vec![Vec::new(); refresh_workers];
    for (i, t) in tokens.into_iter().enumerate() {
        if let Some(d) = dealt.get_mut(i % refresh_workers) {
            d.push(t);
        }
    }
    let mut dealt = dealt.into_iter();
    let mut out = Vec::new();
    for group in &plan.groups {
        for _ in 0..group.workers {
            let job = if group.rpc == Rpc::Refresh {
                Job::RefreshMany {
                    tokens: dealt.next().unwrap_or_default(),
                    next: 0,
                }
            } else {
                Job::Health
            };
            out.push(job);
        }
    }
    // The other groups' jobs as `jobs` makes them (it needs no refresh sessions for those).
    let others = jobs(&without_refresh(plan), prepared, addresses)?;
    let mut others = others.into_iter();
    for job in &mut out {
        if !matches!(job, Job::RefreshMany { .. })
            && let Some(o) = others.next()
        {
            *job = o;
        }
    }
    Ok(out)
}

/// `plan` without its refresh group.
fn without_refresh(plan: &Plan) -> Plan {
    let mut p = plan.clone();
    p.groups.retain(|g| g.rpc != Rpc::Refresh);
    p
}

/// The timing of a run.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
}

/// Runs every job in its own task against `channels` (worker w on connection w mod N, cycling
/// through w, w+workers, ... when there are more connections than workers) and returns each
/// worker's stats, in job order.
pub async fn run(
    jobs: Vec<Job>,
    channels: &[Channel],
    timing: Timing,
) -> Result<Vec<WorkerStats>, String> {
    let workers = jobs.len();
    if channels.is_empty() {
        return Err("no connection to run on".into());
    }
    let start = Instant::now();
    let measure_from = start + timing.warmup;
    let end = measure_from + timing.duration;
    let mut handles = Vec::with_capacity(workers);
    for (w, job) in jobs.into_iter().enumerate() {
        let own: Vec<Stubs> = connections_of(w, workers, channels.len())
            .into_iter()
            .filter_map(|i| channels.get(i))
            .map(Stubs::new)
            .collect();
        if own.is_empty() {
            return Err(format!("internal: worker {w} has no connection"));
        }
        let stats = WorkerStats::new(job.rpc())?;
        handles.push(tokio::spawn(worker(
            job,
            own,
            stats,
            measure_from,
            end,
            timing.timeout,
        )));
    }
    let mut out = Vec::with_capacity(workers);
    for h in handles {
        out.push(h.await.map_err(|e| format!("a worker task failed: {e}"))?);
    }
    Ok(out)
}

/// Before the run, one call of the first worker of each RPC, so that a bad service key, a closed
/// registration or a misconfigured server fails setup with a clear message instead of a run of
/// 100 % errors. Retries RESOURCE_EXHAUSTED and UNAVAILABLE a few times.
pub async fn preflight(
    jobs: &mut [Job],
    channel: &Channel,
    timeout: Duration,
) -> Result<(), String> {
    const ATTEMPTS: u32 = 5;
    let stubs = Stubs::new(channel);
    let mut done: Vec<Rpc> = Vec::new();
    for job in jobs.iter_mut() {
        let rpc = job.rpc();
        if done.contains(&rpc) {
            continue;
        }
        done.push(rpc);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match tokio::time::timeout(timeout, call(job, &stubs, timeout)).await {
                Ok(r) => r,
                Err(_) => Err(Failure::Status(Code::DeadlineExceeded)),
            };
            match outcome {
                Ok(()) => break,
                Err(Failure::Status(Code::ResourceExhausted | Code::Unavailable))
                    if attempt < ATTEMPTS =>
                {
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(f) => {
                    let hint = match (rpc, f) {
                        (Rpc::Validate, Failure::Status(Code::Unauthenticated)) => {
                            " (is the service key valid?)"
                        }
                        (Rpc::Validate, Failure::InvalidReply) => {
                            " (OK but valid=false: the token was not accepted)"
                        }
                        _ => "",
                    };
                    return Err(format!(
                        "setup failed: pre-flight {} answered {}{hint}",
                        rpc.method(),
                        f.name()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Which connections worker `w` of `workers` uses when there are `connections`.
pub fn connections_of(w: usize, workers: usize, connections: usize) -> Vec<usize> {
    if connections <= workers {
        vec![w % connections]
    } else {
        (w..connections).step_by(workers.max(1)).collect()
    }
}

async fn worker(
    mut job: Job,
    stubs: Vec<Stubs>,
    mut stats: WorkerStats,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
) -> WorkerStats {
    let mut turn = 0usize;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let Some(s) = stubs.get(turn % stubs.len()) else {
            break;
        };
        turn = turn.wrapping_add(1);
        let deadline = (sent + timeout).min(end);
        let outcome = match tokio::time::timeout_at(deadline, call(&mut job, s, timeout)).await {
            Ok(r) => r,
            // The window closed with this call in flight: abandon it, count nothing.
            Err(_) if Instant::now() >= end => break,
            Err(_) => Err(Failure::Status(Code::DeadlineExceeded)),
        };
        let done = Instant::now();
        if done >= end {
            break;
        }
        if done < measure_from {
            stats.warmup_calls += 1;
        } else {
            match outcome {
                Ok(()) => stats.record_ok(done - sent),
                Err(f) => stats.record_error(f.name()),
            }
        }
        if outcome == Err(Failure::Status(Code::Unauthenticated)) {
            relogin(&mut job, s, timeout, end, &mut stats).await;
        }
    }
    stats
}

/// A refresh worker whose session was revoked logs in again (outside the measurements).
async fn relogin(
    job: &mut Job,
    s: &Stubs,
    timeout: Duration,
    end: Instant,
    stats: &mut WorkerStats,
) {
    let Job::Refresh {
        refresh_token,
        email,
        password,
    } = job
    else {
        return;
    };
    let mut auth = s.auth.clone();
    let mut req = Request::new(LoginRequest {
        identifier: Some(login_request::Identifier::Email(email.clone())),
        password: password.clone(),
    });
    req.set_timeout(timeout);
    if let Ok(Ok(reply)) = tokio::time::timeout_at(end, auth.login(req)).await {
        let pair = reply.into_inner();
        if !pair.refresh_token.is_empty() {
            *refresh_token = pair.refresh_token;
            stats.relogins += 1;
        }
    }
}

/// One call and the check of its reply.
async fn call(job: &mut Job, s: &Stubs, timeout: Duration) -> Result<(), Failure> {
    match job {
        Job::Health => {
            let mut req = Request::new(HealthCheckRequest {
                service: String::new(),
            });
            req.set_timeout(timeout);
            let reply = s.health.clone().check(req).await?.into_inner();
            check(reply.status == ServingStatus::Serving as i32)
        }
        Job::Validate { key, token } => {
            let mut req = Request::new(ValidateTokenRequest {
                access_token: token.clone(),
            });
            req.set_timeout(timeout);
            if let Some(key) = key {
                req.metadata_mut().insert("x-api-key", key.clone());
            }
            let reply = s.auth.clone().validate_token(req).await?.into_inner();
            check(reply.valid && !reply.user_id.is_empty())
        }
        Job::GetMe { bearer, email } => {
            let mut req = Request::new(GetMeRequest {});
            req.set_timeout(timeout);
            req.metadata_mut().insert("authorization", bearer.clone());
            let user = s.users.clone().get_me(req).await?.into_inner();
            check(!user.id.is_empty() && user.email == *email)
        }
        Job::Login {
            email,
            password,
            from,
        } => {
            let mut req = Request::new(LoginRequest {
                identifier: Some(login_request::Identifier::Email(email.clone())),
                password: password.clone(),
            });
            req.set_timeout(timeout);
            if let Some(from) = from {
                req.metadata_mut().insert("x-forwarded-for", from.clone());
            }
            let pair = s.auth.clone().login(req).await?.into_inner();
            check(!pair.access_token.is_empty() && !pair.refresh_token.is_empty())
        }
        Job::Flood { prefix, n, from } => {
            *n += 1;
            let mut req = Request::new(LoginRequest {
                identifier: Some(login_request::Identifier::Email(format!(
                    "{prefix}-{n}@bench.invalid"
                ))),
                password: "Flood-Guess-Correct-Horse-9".into(),
            });
            req.set_timeout(timeout);
            req.metadata_mut().insert("x-forwarded-for", from.clone());
            // An unknown account: the password check ran and said no, which is the flood's
            // "success"; an OK would be a bug.
            match s.auth.clone().login(req).await {
                Err(status) if status.code() == Code::Unauthenticated => Ok(()),
                Err(status) => Err(status.into()),
                Ok(_) => Err(Failure::InvalidReply),
            }
        }
        Job::Refresh { refresh_token, .. } => {
            let mut req = Request::new(RefreshRequest {
                refresh_token: refresh_token.clone(),
            });
            req.set_timeout(timeout);
            let pair = s.auth.clone().refresh(req).await?.into_inner();
            if pair.access_token.is_empty() || pair.refresh_token.is_empty() {
                return Err(Failure::InvalidReply);
            }
            // The presented token is spent: the next call must use its successor.
            *refresh_token = pair.refresh_token;
            Ok(())
        }
        Job::RefreshMany { tokens, next } => {
            let n = tokens.len().max(1);
            let i = *next % n;
            *next = (i + 1) % n;
            let Some(token) = tokens.get_mut(i) else {
                return Err(Failure::InvalidReply);
            };
            let mut req = Request::new(RefreshRequest {
                refresh_token: token.clone(),
            });
            req.set_timeout(timeout);
            let pair = s.auth.clone().refresh(req).await?.into_inner();
            if pair.access_token.is_empty() || pair.refresh_token.is_empty() {
                return Err(Failure::InvalidReply);
            }
            *token = pair.refresh_token;
            Ok(())
        }
    }
}

fn check(sane: bool) -> Result<(), Failure> {
    if sane {
        Ok(())
    } else {
        Err(Failure::InvalidReply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_assignment() {
        // Fewer connections than workers: round-robin.
        assert_eq!(connections_of(0, 16, 1), vec![0]);
        assert_eq!(connections_of(5, 16, 4), vec![1]);
        // More connections than workers: every connection has exactly one owner.
        let mut seen = vec![0; 1000];
        for w in 0..64 {
            for c in connections_of(w, 64, 1000) {
                seen[c] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
        assert_eq!(connections_of(63, 64, 1000).len(), 15);
        assert_eq!(connections_of(0, 64, 1000).len(), 16);
    }

    #[test]
    fn records_only_successes_in_histogram() {
        let mut s = WorkerStats::new(Rpc::Validate).unwrap();
        s.record_ok(Duration::from_micros(250));
        s.record_ok(Duration::from_secs(3));
        s.record_ok(Duration::from_nanos(10));
        s.record_error("UNAVAILABLE");
        s.record_error(Failure::InvalidReply.name());
        s.record_error("UNAVAILABLE");
        assert_eq!(s.ok, 3);
        assert_eq!(s.hist.len(), 3);
        assert_eq!(s.hist.min(), 1);
        // Auto-resized, not clamped.
        assert!(s.hist.max() >= 2_999_000, "{}", s.hist.max());
        assert_eq!(s.errors.get("UNAVAILABLE"), Some(&2));
        assert_eq!(s.errors.get(INVALID_REPLY), Some(&1));
    }
}
