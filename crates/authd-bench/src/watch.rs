//! `--watch-streams N`: the scale of AuthService.WatchRevocations (issue H). Not a closed loop:
//!
//! 1. setup, through the API: a service key (given, or created as the admin), `--watch-users`
//!    users with `--watch-burst / --watch-users` sessions each (one Login per session);
//! 2. opens N streams over `--connections` HTTP/2 connections (round-robin) and waits until every
//!    one has its snapshot;
//! 3. idle: for `--watch-idle`, the streams only receive heartbeats; authd's CPU time and RSS
//!    (from `/proc/<--watch-pid>/stat` and `status`) before and after;
//! 4. burst: RevokeUserSessions on every user at once (as the admin), and the time until each
//!    stream has received every one of the revoked sessions; authd's CPU time over the burst and
//!    its peak RSS (sampled every 20 ms). With `--watch-revoke-addr` the burst is revoked on
//!    another replica of the same database.
//!
//! CPU times are in clock ticks of 1/100 s (Linux's USER_HZ). Without `--watch-pid` the process
//! figures are left out.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use authd_proto::auth_service_client::AuthServiceClient;
use authd_proto::user_service_client::UserServiceClient;
use authd_proto::{RegisterRequest, RevokeUserSessionsRequest, WatchRevocationsRequest};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::cli::Cli;
use crate::setup::{self, SetupError};

/// Linux's USER_HZ: the unit of utime and stime in /proc/<pid>/stat.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of the authd process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcSample {
    /// utime + stime, in seconds.
    pub cpu_s: f64,
    pub rss_kib: u64,
}

/// Reads /proc/<pid>/stat and /proc/<pid>/status.
fn sample(pid: u32) -> Result<ProcSample, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The fields after the command name (which may hold spaces) start with the state (field 3).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("unreadable /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat has no field {}", i + 3))
    };
    let ticks = field(11)? + field(12)?; // utime (14), stime (15)
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no VmRSS in /proc/<pid>/status")?;
    Ok(ProcSample {
        cpu_s: ticks as f64 / TICKS_PER_SECOND,
        rss_kib,
    })
}

/// The report of a `--watch-streams` run.
#[derive(Debug, Serialize)]
pub struct WatchReport {
    pub streams: usize,
    /// Whether the burst was revoked on another replica (--watch-revoke-addr).
    pub revoked_on_other_replica: bool,
    pub connections: usize,
    /// Seconds from the first stream opened until every snapshot was complete.
    pub open_s: f64,
    /// authd before any stream was opened, with every stream open, and after the idle period.
    pub before_streams: Option<ProcSample>,
    pub streams_open: Option<ProcSample>,
    pub idle_s: f64,
    pub idle_end: Option<ProcSample>,
    /// authd's CPU use while idle with N streams, in % of one core.
    pub idle_cpu_percent: Option<f64>,
    /// Heartbeats received per stream per second while idle (1.0 expected).
    pub heartbeats_per_stream_s: f64,
    pub burst_sessions: usize,
    pub burst_users: usize,
    /// Seconds for the RevokeUserSessions calls themselves.
    pub revoke_calls_s: f64,
    /// Seconds from the revoke calls' start until a stream had all the burst's sessions:
    /// percentiles over the streams.
    pub all_received_s: Percentiles,
    /// Seconds from the revoke calls' start until a stream's first revocation of the burst.
    pub first_received_s: Percentiles,
    /// Streams that did not receive the whole burst within the timeout.
    pub incomplete_streams: usize,
    /// authd's CPU seconds from the burst's start until every stream had it.
    pub burst_cpu_s: Option<f64>,
    /// authd's highest RSS sampled during the burst.
    pub burst_peak_rss_kib: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let i = ((v.len() as f64 - 1.0) * q).round() as usize;
            v[i.min(v.len() - 1)]
        };
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// What one stream task measured, in seconds after the burst's start.
#[derive(Debug, Default)]
struct StreamResult {
    first: Option<f64>,
    all: Option<f64>,
}

/// Shared by the stream tasks.
struct Shared {
    burst: Arc<HashSet<String>>,
    /// Set when the burst starts.
    burst_start: watch::Receiver<Option<Instant>>,
    snapshots: AtomicUsize,
    heartbeats: AtomicU64,
    /// Streams that have received the whole burst.
    complete: AtomicUsize,
}

async fn register(
    auth: AuthServiceClient<Channel>,
    email: String,
    retry_for: Duration,
) -> Result<(String, String, String), SetupError> {
    let password = setup::new_password();
    let id = setup::retrying(retry_for, |_| {
        let mut auth = auth.clone();
        let req = setup::with_timeout(RegisterRequest {
            email: email.clone(),
            password: password.clone(),
            ..Default::default()
        });
        async move { auth.register(req).await.map(|r| r.into_inner().user) }
    })
    .await
    .map_err(|s| SetupError::rpc(format!("AuthService/Register {email}"), s))?
    .map(|u| u.id)
    .filter(|id| !id.is_empty())
    .ok_or_else(|| SetupError::msg("Register: OK without a user id"))?;
    Ok((id, email, password))
}

/// One stream: opens it, reads the snapshot, then counts heartbeats and the burst's sessions
/// until `stop`.
async fn stream_task(
    channel: Channel,
    key: MetadataValue<Ascii>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<StreamResult, String> {
    let mut req = tonic::Request::new(WatchRevocationsRequest::default());
    req.metadata_mut().insert("x-api-key", key);
    let mut stream = AuthServiceClient::new(channel)
        .watch_revocations(req)
        .await
        .map_err(|s| format!("WatchRevocations: {:?} {}", s.code(), s.message()))?
        .into_inner();
    let mut result = StreamResult::default();
    let mut got = 0usize;
    let mut snapshot_done = false;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = stop.wait_for(|s| *s) => return Ok(result),
        };
        let m = match msg {
            Ok(Some(m)) => m,
            Ok(None) => return Err("a stream ended".into()),
            Err(s) => return Err(format!("a stream failed: {:?} {}", s.code(), s.message())),
        };
        if m.snapshot_complete && !snapshot_done {
            snapshot_done = true;
            shared.snapshots.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if m.revoked_sessions.is_empty() && m.jwks.is_none() {
            shared.heartbeats.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let start = *shared.burst_start.borrow();
        if let Some(start) = start {
            let n = m
                .revoked_sessions
                .iter()
                .filter(|s| shared.burst.contains(&s.session_id))
                .count();
            if n > 0 {
                let at = start.elapsed().as_secs_f64();
                result.first.get_or_insert(at);
                got += n;
                if got >= shared.burst.len() && result.all.is_none() {
                    result.all = Some(at);
                    shared.complete.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Runs the `--watch-streams` scenario (see the module docs).
pub async fn run(
    cli: &Cli,
    streams: u32,
    log: &(dyn Fn(&str) + Sync),
) -> Result<WatchReport, String> {
    let pid = cli.watch_pid;
    let read = |what: &str| -> Option<ProcSample> {
        let p = pid?;
        match sample(p) {
            Ok(s) => Some(s),
            Err(e) => {
                log(&format!("cannot read authd's figures ({what}): {e}"));
                None
            }
        }
    };
    let endpoint = crate::client::endpoint(&cli.addr)?;
    let connections = cli.connections.max(1);
    log(&format!(
        "opening {connections} connection(s) to {}",
        cli.addr
    ));
    let channels = crate::client::connect_all(&endpoint, connections).await?;
    let setup_channel = channels.first().cloned().ok_or("no connection")?;
    let auth = AuthServiceClient::new(setup_channel.clone());
    let retry_for = cli.setup_retry_for;
    let (Some(admin_email), Some(admin_password)) =
        (cli.admin_email.as_deref(), cli.admin_password.as_deref())
    else {
        return Err("--watch-streams needs --admin-email and --admin-password (an ADMIN)".into());
    };

    // 1. Setup.
    let run_id = setup::new_run_id();
    let key: MetadataValue<Ascii> = match cli.service_key.as_deref() {
        Some(k) => k.parse().map_err(|_| "--service-key is not ASCII")?,
        None => {
            let (_, k) = setup::create_key(
                auth.clone(),
                admin_email,
                admin_password,
                &format!("authd-bench-watch-{run_id}"),
                retry_for,
            )
            .await
            .map_err(|e| e.to_string())?;
            k.parse().map_err(|_| "the new key is not ASCII")?
        }
    };
    let users = cli.watch_users.max(1) as usize;
    let per_user = (cli.watch_burst as usize).div_ceil(users);
    log(&format!(
        "registering {users} user(s) and logging in {per_user} session(s) each ({} at a time)",
        cli.setup_parallelism
    ));
    let tasks = (0..users)
        .map(|i| register(auth.clone(), setup::user_email(&run_id, i), retry_for))
        .collect();
    let registered = setup::bounded(cli.setup_parallelism, tasks)
        .await
        .map_err(|e| e.to_string())?;
    let logins = registered
        .iter()
        .flat_map(|(_, email, password)| {
            (0..per_user).map(move |_| (email.clone(), password.clone()))
        })
        .map(|(email, password)| {
            let mut auth = auth.clone();
            async move {
                setup::login(&mut auth, &email, &password, retry_for)
                    .await
                    .map(|p| p.session_id)
                    .map_err(|s| SetupError::rpc(format!("AuthService/Login {email}"), s))
            }
        })
        .collect();
    let session_ids: HashSet<String> = setup::bounded(cli.setup_parallelism, logins)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let burst_sessions = session_ids.len();
    let admin = setup::admin_bearer(&mut auth.clone(), admin_email, admin_password, retry_for)
        .await
        .map_err(|e| e.to_string())?;

    // 2. Open the streams.
    let before_streams = read("before the streams");
    let (start_tx, start_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        burst: Arc::new(session_ids),
        burst_start: start_rx,
        snapshots: AtomicUsize::new(0),
        heartbeats: AtomicU64::new(0),
        complete: AtomicUsize::new(0),
    });
    let n = streams as usize;
    log(&format!("opening {n} WatchRevocations stream(s)"));
    let opened = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let channel = channels[i % channels.len()].clone();
        tasks.spawn(stream_task(
            channel,
            key.clone(),
            shared.clone(),
            stop_rx.clone(),
        ));
    }
    let patience = Duration::from_secs(120);
    while shared.snapshots.load(Ordering::Relaxed) < n {
        if opened.elapsed() > patience || tasks.len() < n {
            let failed = match tasks.try_join_next() {
                Some(Ok(Err(e))) => e,
                _ => String::new(),
            };
            return Err(format!(
                "only {} of {n} streams had their snapshot after {:.1} s {failed}",
                shared.snapshots.load(Ordering::Relaxed),
                opened.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_s = opened.elapsed().as_secs_f64();
    log(&format!(
        "{n} streams open with their snapshots in {open_s:.2} s"
    ));

    // 3. Idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let streams_open = read("streams open");
    let hb0 = shared.heartbeats.load(Ordering::Relaxed);
    let idle_started = Instant::now();
    log(&format!("idle for {:.0} s", cli.watch_idle.as_secs_f64()));
    tokio::time::sleep(cli.watch_idle).await;
    let idle_s = idle_started.elapsed().as_secs_f64();
    let idle_end = read("after the idle period");
    let heartbeats = shared.heartbeats.load(Ordering::Relaxed) - hb0;
    let idle_cpu_percent = match (streams_open, idle_end) {
        (Some(a), Some(b)) => Some(100.0 * (b.cpu_s - a.cpu_s) / idle_s),
        _ => None,
    };

    // 4. The burst.
    log(&format!(
        "revoking {burst_sessions} session(s) of {users} user(s) at once"
    ));
    let cpu_before = read("before the burst");
    let sampling = Arc::new(AtomicU64::new(0));
    let sampler = pid.map(|p| {
        let peak = sampling.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(s) = sample(p) {
                    peak.fetch_max(s.rss_kib, Ordering::Relaxed);
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        })
    });
    let revoke_channel = match cli.watch_revoke_addr.as_deref() {
        Some(addr) => {
            log(&format!("the burst is revoked on {addr}"));
            crate::client::endpoint(addr)?
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?
        }
        None => setup_channel.clone(),
    };
    let started = Instant::now();
    let _ = start_tx.send(Some(started));
    let mut revokes = tokio::task::JoinSet::new();
    for (id, _, _) in &registered {
        let mut users = UserServiceClient::new(revoke_channel.clone());
        let mut req = setup::with_timeout(RevokeUserSessionsRequest {
            user_id: id.clone(),
        });
        req.metadata_mut().insert("authorization", admin.clone());
        revokes.spawn(async move { users.revoke_user_sessions(req).await });
    }
    while let Some(r) = revokes.join_next().await {
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(s)) if s.code() == Code::DeadlineExceeded => {
                log("a RevokeUserSessions call timed out (it may still commit)");
            }
            Ok(Err(s)) => {
                return Err(format!(
                    "RevokeUserSessions: {:?} {}",
                    s.code(),
                    s.message()
                ));
            }
            Err(e) => return Err(format!("revoke task: {e}")),
        }
    }
    let revoke_calls_s = started.elapsed().as_secs_f64();
    // Wait until every stream has the whole burst (at most a minute), then stop them all.
    let deadline = started + Duration::from_secs(60);
    while shared.complete.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_after = read("after the burst");
    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(res)) => results.push(res),
            Ok(Err(e)) => log(&format!("stream: {e}")),
            Err(e) => log(&format!("stream task: {e}")),
        }
    }
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let incomplete_streams = n - results.iter().filter(|r| r.all.is_some()).count();
    Ok(WatchReport {
        streams: n,
        revoked_on_other_replica: cli.watch_revoke_addr.is_some(),
        connections: channels.len(),
        open_s,
        before_streams,
        streams_open,
        idle_s,
        idle_end,
        idle_cpu_percent,
        heartbeats_per_stream_s: heartbeats as f64 / n as f64 / idle_s,
        burst_sessions,
        burst_users: users,
        revoke_calls_s,
        all_received_s: Percentiles::of(results.iter().filter_map(|r| r.all).collect()),
        first_received_s: Percentiles::of(results.iter().filter_map(|r| r.first).collect()),
        incomplete_streams,
        burst_cpu_s: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
            _ => None,
        },
        burst_peak_rss_kib: pid.map(|_| sampling.load(Ordering::Relaxed)),
    })
}
