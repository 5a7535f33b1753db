//! Command line of `authd-bench`: every option (clap derive, with `--help` text), the parsing of
//! durations and of `--mix` worker groups, and [`Cli::plan`], which turns the options into the
//! worker groups of one run. Pure code, no I/O.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Closed-loop gRPC load generator for authd, in the spirit of pgbench and redis-benchmark.
///
/// Each worker sends one request, waits for the reply, records its latency and repeats. Workers
/// are spread round-robin over HTTP/2 connections that are opened before the run and held until
/// its end. Replies are checked: only OK with a sane body counts as a success; everything else is
/// counted by gRPC status code (INVALID_REPLY for an OK with a wrong body) and kept out of the
/// latency histogram.
///
/// Setup goes through the API only: the tool registers its own users (unique per run), logs them
/// in, and creates a service key as the admin when ValidateToken is targeted and no key is given.
/// Run the server with AUTHD_RATE_LIMIT_PER_IP=0, or setup and the run hit the per-IP limit.
///
/// Exit codes: 0 success, 1 setup or run failure, 2 bad usage, 3 error rate above
/// --max-error-rate, 4 --wait-serving timed out.
#[derive(Debug, Clone, Parser)]
#[command(name = "authd-bench", version, verbatim_doc_comment)]
pub struct Cli {
    /// The authd gRPC endpoint (plaintext HTTP/2).
    #[arg(
        long,
        env = "AUTHD_BENCH_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,

    /// The RPC every worker calls, or `mix` for the worker groups given by --mix.
    /// health = grpc.health.v1 Check (""), validate = AuthService/ValidateToken (with x-api-key),
    /// getme = UserService/GetMe (bearer), login = AuthService/Login (one bcrypt verify each),
    /// refresh = AuthService/Refresh (each worker rotates its own session's refresh token),
    /// flood = AuthService/Login for a new random unknown e-mail each call (an attacker's flood:
    /// an answered UNAUTHENTICATED counts as its success, i.e. a password check that ran;
    /// RESOURCE_EXHAUSTED is a refusal). Default: mix when --mix is given, else health.
    #[arg(long, value_enum)]
    pub rpc: Option<RpcArg>,

    /// Worker groups for --rpc mix, as RPC=WORKERS pairs separated by commas, e.g.
    /// `validate=16,login=4`: 16 workers call ValidateToken while 4 call Login, and each group is
    /// reported separately. An RPC may appear once.
    #[arg(long, value_parser = parse_mix)]
    pub mix: Option<Mix>,

    /// Workers (concurrent closed-loop callers) for a single-RPC run. Ignored with --mix.
    #[arg(short = 'c', long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// HTTP/2 connections, opened before the run and held open until its end. Worker w uses
    /// connection w mod N; when there are more connections than workers, each worker takes its
    /// turn on every connection it owns (w, w+workers, ...) so that every connection carries calls.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,

    /// Source addresses of the flood workers: flood worker w sends `x-forwarded-for:
    /// 198.18.0.<1 + w mod N>` (RFC 2544's benchmarking range). The server must trust the bench's
    /// own address as a proxy (AUTHD_TRUSTED_PROXIES=127.0.0.1 on loopback), so that it keys the
    /// bcrypt pool's fair queues by these addresses.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=254))]
    pub flood_addresses: u32,

    /// Source addresses of the login workers, as for --flood-addresses but from 198.18.1.x. 0 (the
    /// default) sends no x-forwarded-for: the server sees the bench's own address.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=254))]
    pub login_addresses: u32,

    /// Length of the measured run (e.g. 10s, 500ms, 2m). The access tokens made at setup must
    /// outlive warm-up and run (AUTHD_ACCESS_TOKEN_TTL, 15m by default).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Warm-up before the measured run; its results are discarded.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Deadline of one request (sent as grpc-timeout and enforced by the client); a request past
    /// it counts as DEADLINE_EXCEEDED.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print the results as one JSON object on stdout (progress and logs go to stderr).
    #[arg(long)]
    pub json: bool,

    /// E-mail of an ADMIN account, used only to create a service key when ValidateToken is
    /// targeted and --service-key is not given.
    #[arg(long, env = "AUTHD_BENCH_ADMIN_EMAIL")]
    pub admin_email: Option<String>,

    /// Password of the --admin-email account.
    #[arg(long, env = "AUTHD_BENCH_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// Service key sent as x-api-key on ValidateToken. When absent and validate is targeted,
    /// one is created through the API as the admin (and revoked at the end).
    #[arg(long, env = "AUTHD_BENCH_SERVICE_KEY", hide_env_values = true)]
    pub service_key: Option<String>,

    /// Bench users to register. Default: one per login, refresh and getme worker (at least 1),
    /// so that those workers never share an account. Workers use user w mod N; every refresh
    /// worker always has its own session.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub users: Option<u32>,

    /// Concurrent setup calls (Register and Login each cost a bcrypt hash on the server).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub setup_parallelism: u32,

    /// How long one setup call may keep being retried on RESOURCE_EXHAUSTED or UNAVAILABLE.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub setup_retry_for: Duration,

    /// bcrypt cost the server hashes with (AUTHD_BCRYPT_COST). Before a run with login workers,
    /// one bcrypt verify at this cost is timed in-process (median of 5) to put login/s in
    /// relation to what the server's cores can do at best.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// CPU cores the server may use, for the login ratio: login/s / (server_cores / verify time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub server_cores: u32,

    /// Fail (exit code 3) when errors / requests, over all groups, is above this (0 = no error
    /// allowed). Default: no limit.
    #[arg(long)]
    pub max_error_rate: Option<f64>,

    /// Refresh workers rotate these refresh tokens (a file, one per line, e.g. of sessions seeded
    /// by SQL: see scripts/seed-refresh-sessions.sql) instead of one logged-in session each. The
    /// tokens are dealt out round-robin; each worker cycles through its own, so refreshes spread
    /// over every session. No session is logged in for refresh workers then.
    #[arg(long)]
    pub refresh_tokens: Option<std::path::PathBuf>,

    /// Threads of the client's async runtime. Default: the CPUs this process may run on.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Do not benchmark: poll the health service ("") every --poll-interval until it answers
    /// SERVING, for at most this long (exit code 4 on timeout). Prints the time until SERVING.
    #[arg(long, value_parser = parse_duration, value_name = "TIMEOUT")]
    pub wait_serving: Option<Duration>,

    /// With --wait-serving: the interval between health checks.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Do not benchmark RPCs: measure AuthService.WatchRevocations with this many streams (spread
    /// over --connections): authd's RSS and CPU idle with them open, then a revocation burst of
    /// --watch-burst sessions and the time until every stream has all of them. Needs
    /// --admin-email/--admin-password.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub watch_streams: Option<u32>,

    /// With --watch-streams: authd's process id, to read its CPU time and RSS from /proc.
    #[arg(long)]
    pub watch_pid: Option<u32>,

    /// With --watch-streams: how long to measure the streams idle (heartbeats only).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub watch_idle: Duration,

    /// With --watch-streams: sessions revoked in the burst (logged in at setup).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub watch_burst: u32,

    /// With --watch-streams: the users the burst's sessions belong to; RevokeUserSessions is
    /// called on all of them at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub watch_users: u32,

    /// With --watch-streams: send the burst's RevokeUserSessions to this replica (of the same
    /// database) instead of --addr, to measure how a revocation reaches the streams of another
    /// replica (through its 250 ms poll).
    #[arg(long)]
    pub watch_revoke_addr: Option<String>,

    /// With --wait-serving: measure from this instant (Unix time in nanoseconds, e.g. from
    /// `date +%s%N` right before starting the server) instead of from this tool's start.
    #[arg(long)]
    pub since_unix_ns: Option<u128>,
}

/// The `--rpc` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RpcArg {
    Health,
    Validate,
    Getme,
    Login,
    Refresh,
    Flood,
    Mix,
}

/// One RPC a worker group calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rpc {
    Health,
    Validate,
    GetMe,
    Login,
    Refresh,
    Flood,
}

impl Rpc {
    pub const ALL: [Rpc; 6] = [
        Rpc::Health,
        Rpc::Validate,
        Rpc::GetMe,
        Rpc::Login,
        Rpc::Refresh,
        Rpc::Flood,
    ];

    /// The name used on the command line and in the JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Health => "health",
            Rpc::Validate => "validate",
            Rpc::GetMe => "getme",
            Rpc::Login => "login",
            Rpc::Refresh => "refresh",
            Rpc::Flood => "flood",
        }
    }

    /// The gRPC method, for messages.
    pub fn method(self) -> &'static str {
        match self {
            Rpc::Health => "grpc.health.v1.Health/Check",
            Rpc::Validate => "authd.v1.AuthService/ValidateToken",
            Rpc::GetMe => "authd.v1.UserService/GetMe",
            Rpc::Login => "authd.v1.AuthService/Login",
            Rpc::Refresh => "authd.v1.AuthService/Refresh",
            Rpc::Flood => "authd.v1.AuthService/Login (unknown accounts)",
        }
    }

    /// Whether its workers act as a bench user (and so need accounts).
    pub fn needs_user(self) -> bool {
        matches!(self, Rpc::GetMe | Rpc::Login | Rpc::Refresh | Rpc::Validate)
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Rpc {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Rpc::ALL
            .into_iter()
            .find(|r| r.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                format!(
                    "unknown RPC {s:?} (expected one of: {})",
                    Rpc::ALL.map(Rpc::name).join(", ")
                )
            })
    }
}

/// A worker group: `workers` closed-loop callers of `rpc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSpec {
    pub rpc: Rpc,
    pub workers: u32,
}

/// The parsed `--mix` value, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix(pub Vec<GroupSpec>);

/// Parses `validate=16,login=4`.
pub fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut groups: Vec<GroupSpec> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, n) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected RPC=WORKERS, e.g. validate=16"))?;
        let rpc: Rpc = name.parse()?;
        let workers: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{part:?}: {n:?} is not a worker count"))?;
        if workers == 0 {
            return Err(format!("{part:?}: a group needs at least one worker"));
        }
        if groups.iter().any(|g| g.rpc == rpc) {
            return Err(format!("{rpc} appears more than once"));
        }
        groups.push(GroupSpec { rpc, workers });
    }
    if groups.is_empty() {
        return Err("empty mix: give RPC=WORKERS pairs, e.g. validate=16,login=4".into());
    }
    Ok(Mix(groups))
}

/// Parses `10s`, `500ms`, `2m`, `1h`, `250us`, or a bare number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use us, ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// What one run does, derived from the options.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `mix` or the single RPC's name, for the report.
    pub mode: &'static str,
    pub groups: Vec<GroupSpec>,
    /// Bench users to register (0 when no group needs one).
    pub users: u32,
}

impl Plan {
    pub fn workers(&self) -> u32 {
        self.groups.iter().map(|g| g.workers).sum()
    }

    pub fn workers_of(&self, rpc: Rpc) -> u32 {
        self.groups
            .iter()
            .filter(|g| g.rpc == rpc)
            .map(|g| g.workers)
            .sum()
    }

    pub fn has(&self, rpc: Rpc) -> bool {
        self.workers_of(rpc) > 0
    }
}

impl Cli {
    /// Checks the combination of options and derives the worker groups.
    pub fn plan(&self) -> Result<Plan, String> {
        let rpc = match (self.rpc, &self.mix) {
            (None, Some(_)) => RpcArg::Mix,
            (None, None) => RpcArg::Health,
            (Some(r), _) => r,
        };
        let (mode, groups) = match (rpc, &self.mix) {
            (RpcArg::Mix, Some(mix)) => ("mix", mix.0.clone()),
            (RpcArg::Mix, None) => {
                return Err("--rpc mix needs --mix, e.g. --mix validate=16,login=4".into());
            }
            (_, Some(_)) => {
                return Err("--mix goes with --rpc mix (or without --rpc)".into());
            }
            (single, None) => {
                let rpc = match single {
                    RpcArg::Health => Rpc::Health,
                    RpcArg::Validate => Rpc::Validate,
                    RpcArg::Getme => Rpc::GetMe,
                    RpcArg::Login => Rpc::Login,
                    RpcArg::Refresh => Rpc::Refresh,
                    RpcArg::Flood => Rpc::Flood,
                    RpcArg::Mix => Rpc::Health,
                };
                (
                    rpc.name(),
                    vec![GroupSpec {
                        rpc,
                        workers: self.concurrency,
                    }],
                )
            }
        };
        if self.duration.is_zero() {
            return Err("--duration must be more than 0".into());
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be more than 0".into());
        }
        if let Some(rate) = self.max_error_rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err("--max-error-rate must be between 0 and 1".into());
        }
        let needs_users = groups.iter().any(|g| g.rpc.needs_user());
        let default_users = groups
            .iter()
            .filter(|g| matches!(g.rpc, Rpc::Login | Rpc::Refresh | Rpc::GetMe))
            .map(|g| g.workers)
            .sum::<u32>()
            .max(1);
        let users = if needs_users {
            self.users.unwrap_or(default_users)
        } else {
            0
        };
        Ok(Plan {
            mode,
            groups,
            users,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("authd-bench").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_every_option() {
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            if matches!(arg.get_id().as_str(), "help" | "version") {
                continue;
            }
            assert!(
                arg.get_help().is_some() || arg.get_long_help().is_some(),
                "--{} has no help",
                arg.get_id()
            );
        }
    }

    #[test]
    fn defaults() {
        let c = cli(&[]).unwrap();
        assert_eq!(c.addr, "http://127.0.0.1:50051");
        assert_eq!(c.concurrency, 16);
        assert_eq!(c.connections, 1);
        assert_eq!(c.duration, Duration::from_secs(10));
        assert_eq!(c.warmup, Duration::from_secs(2));
        assert_eq!(c.bcrypt_cost, 12);
        assert_eq!(c.server_cores, 1);
        assert_eq!(c.max_error_rate, None);
        let plan = c.plan().unwrap();
        assert_eq!(plan.mode, "health");
        assert_eq!(
            plan.groups,
            vec![GroupSpec {
                rpc: Rpc::Health,
                workers: 16
            }]
        );
        assert_eq!(plan.users, 0);
    }

    #[test]
    fn parses_mix() {
        let m = parse_mix("validate=16, login=4").unwrap();
        assert_eq!(
            m.0,
            vec![
                GroupSpec {
                    rpc: Rpc::Validate,
                    workers: 16
                },
                GroupSpec {
                    rpc: Rpc::Login,
                    workers: 4
                }
            ]
        );
        assert!(parse_mix("health=2,getme=2,refresh=2,login=1,validate=2").is_ok());
        assert!(parse_mix("").is_err());
        assert!(parse_mix("validate").is_err());
        assert!(parse_mix("validate=0").is_err());
        assert!(parse_mix("validate=x").is_err());
        assert!(parse_mix("nosuch=1").is_err());
        assert!(parse_mix("login=1,login=2").is_err());
        assert!(parse_mix("GETME=3").is_ok());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn mix_mode_and_users() {
        let c = cli(&["--rpc", "mix", "--mix", "validate=16,login=4"]).unwrap();
        let p = c.plan().unwrap();
        assert_eq!(p.mode, "mix");
        assert_eq!(p.workers(), 20);
        assert_eq!(p.workers_of(Rpc::Login), 4);
        assert!(p.has(Rpc::Validate));
        assert!(!p.has(Rpc::Refresh));
        assert_eq!(p.users, 4);

        // --mix alone implies mix.
        let p = cli(&["--mix", "getme=3,refresh=2,health=5"])
            .unwrap()
            .plan()
            .unwrap();
        assert_eq!(p.mode, "mix");
        assert_eq!(p.users, 5);

        let p = cli(&["--rpc", "validate", "-c", "8"])
            .unwrap()
            .plan()
            .unwrap();
        assert_eq!(p.users, 1);
        assert_eq!(p.workers(), 8);

        let p = cli(&["--rpc", "login", "-c", "4", "--users", "2"])
            .unwrap()
            .plan()
            .unwrap();
        assert_eq!(p.users, 2);
    }

    #[test]
    fn rejects_bad_combinations() {
        assert!(cli(&["--rpc", "mix"]).unwrap().plan().is_err());
        assert!(
            cli(&["--rpc", "login", "--mix", "login=1"])
                .unwrap()
                .plan()
                .is_err()
        );
        assert!(cli(&["-d", "0s"]).unwrap().plan().is_err());
        assert!(cli(&["--max-error-rate", "1.5"]).unwrap().plan().is_err());
        assert!(cli(&["--rpc", "nosuch"]).is_err());
        assert!(cli(&["-c", "0"]).is_err());
        assert!(cli(&["--connections", "0"]).is_err());
        assert!(cli(&["--bcrypt-cost", "3"]).is_err());
    }

    #[test]
    fn long_options() {
        let c = cli(&[
            "--addr",
            "http://127.0.0.1:1",
            "--rpc",
            "refresh",
            "--concurrency",
            "64",
            "--connections",
            "1000",
            "--duration",
            "20s",
            "--warmup",
            "1s",
            "--timeout",
            "2s",
            "--json",
            "--admin-email",
            "a@b.example",
            "--admin-password",
            "pw",
            "--service-key",
            "k",
            "--bcrypt-cost",
            "4",
            "--server-cores",
            "2",
            "--max-error-rate",
            "0",
        ])
        .unwrap();
        assert_eq!(c.connections, 1000);
        assert_eq!(c.concurrency, 64);
        assert!(c.json);
        assert_eq!(c.max_error_rate, Some(0.0));
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.plan().unwrap().mode, "refresh");
    }
}
