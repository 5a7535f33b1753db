//! Runtime configuration: every option is a clap flag backed by an environment variable.
//!
//! | env var | flag | default |
//! |---|---|---|
//! | `DATABASE_URL` | `--database-url` | unset: run the embedded PostgreSQL |
//! | `AUTHD_LISTEN` | `--listen` | `127.0.0.1:50051` |
//! | `AUTHD_DATA_DIR` | `--data-dir` | `/var/lib/authd` as root, else `$XDG_DATA_HOME/authd` (`~/.local/share/authd`) |
//! | `AUTHD_ACCESS_TOKEN_TTL` | `--access-token-ttl` | `15m` |
//! | `AUTHD_REFRESH_TOKEN_TTL` | `--refresh-token-ttl` | `7d` (idle lifetime of a session) |
//! | `AUTHD_SESSION_MAX_LIFETIME` | `--session-max-lifetime` | `30d` (absolute lifetime) |
//! | `AUTHD_REFRESH_REUSE_GRACE` | `--refresh-reuse-grace` | `5s` (`0` = strict) |
//! | `AUTHD_REFRESH_REPLAY_SAME_CLIENT` | `--refresh-replay-same-client` | `true` (a grace replay is honoured only from the client, address or IPv6 /64, that spent the token) |
//! | `AUTHD_BCRYPT_COST` | `--bcrypt-cost` | `12` (4-31) |
//! | `AUTHD_BCRYPT_CONCURRENCY` | `--bcrypt-concurrency` | `0` = the cores available to the process (bcrypt threads) |
//! | `AUTHD_BCRYPT_QUEUE` | `--bcrypt-queue` | unset = `64` password checks one client may have waiting for a bcrypt thread (a memory cap; admission is by deadline) |
//! | `AUTHD_BCRYPT_NICE` | `--bcrypt-nice` | `10` (nice value 0-19 of the bcrypt threads, or `idle` for SCHED_IDLE, which can starve them) |
//! | `AUTHD_ISSUER` | `--issuer` | `authd` |
//! | `AUTHD_AUDIENCE` | `--audience` | `authd` |
//! | `AUTHD_BOOTSTRAP_ADMIN_EMAIL` | `--bootstrap-admin-email` | unset (admin created at start-up while no active admin exists) |
//! | `AUTHD_BOOTSTRAP_ADMIN_PASSWORD` | `--bootstrap-admin-password` | unset |
//! | `AUTHD_VALIDATE_REQUIRE_KEY` | `--validate-require-key` | `true` |
//! | `AUTHD_ALLOW_REGISTRATION` | `--allow-registration` | `true` |
//! | `AUTHD_AUDIT_RETENTION` | `--audit-retention` | `90d` |
//! | `AUTHD_LOGIN_MAX_FAILURES` | `--login-max-failures` | `5` (per identifier and client: IPv4 address or IPv6 /64) |
//! | `AUTHD_LOGIN_MAX_FAILURES_PER_HOUR` | `--login-max-failures-per-hour` | `100` (per identifier; past it one check per doubling slot) |
//! | `AUTHD_RATE_LIMIT_PER_IP` | `--rate-limit-per-ip` | `60` (requests per minute per IPv4 address or IPv6 /64; `0` = off) |
//! | `AUTHD_PROXY_KEY_MAX_FAILURES_PER_MINUTE` | `--proxy-key-max-failures-per-minute` | `600` (failed password checks per proxy service key, per replica; `0` = off) |
//! | `AUTHD_TRUSTED_PROXIES` | `--trusted-proxies` | empty (comma-separated IPs or CIDRs) |
//! | `AUTHD_MIN_PASSWORD_SCORE` | `--min-password-score` | `3` (zxcvbn score, 0-4) |
//! | `AUTHD_REQUEST_TIMEOUT` | `--request-timeout` | `10s` |
//! | `AUTHD_KEY_PUBLISH_DELAY` | `--key-publish-delay` | `10m` |
//! | `AUTHD_MASTER_KEY` | `--master-key` | unset (32 bytes, base64 or hex) |
//! | `AUTHD_HTTP_LISTEN` | `--http-listen` | unset (off): `/metrics`, `/.well-known/jwks.json`, `/livez`, `/readyz` |
//! | `AUTHD_HEALTH_LISTEN` | `--health-listen` | unset (off): plaintext `grpc.health.v1` only, for kubelet probes |
//! | `AUTHD_LOG_FORMAT` | `--log-format` | `text` (or `json`) |
//! | `AUTHD_SHUTDOWN_DELAY` | `--shutdown-delay` | `5s` (readiness off, then new connections refused) |
//! | `AUTHD_SHUTDOWN_GRACE` | `--shutdown-grace` | `30s` (in-flight calls may finish) |
//! | `AUTHD_HANDSHAKE_TIMEOUT` | `--handshake-timeout` | `10s` (TLS handshake, HTTP/2 preface or HTTP/1 request headers of a new connection; `0` = no limit) |
//! | `AUTHD_TLS_CERT` | `--tls-cert` | unset (PEM certificate chain; with `AUTHD_TLS_KEY` turns on TLS) |
//! | `AUTHD_TLS_KEY` | `--tls-key` | unset (PEM private key) |
//! | `AUTHD_TLS_CLIENT_CA` | `--tls-client-ca` | unset (PEM CA that verifies client certificates) |
//! | `AUTHD_TLS_REQUIRE_CLIENT_CERT` | `--tls-require-client-cert` | `false` |
//! | `AUTHD_GRPC_WEB` | `--grpc-web` | `false` |
//! | `AUTHD_CORS_ORIGINS` | `--cors-origins` | empty (comma-separated allowed origins for gRPC-Web) |
//! | `AUTHD_DB_POOL_SIZE` | `--db-pool-size` | `10` |
//! | `AUTHD_DB_TIMEOUT` | `--db-timeout` | `5s` (pool wait, connect and statement timeout) |
//! | `AUTHD_LOG` | `--log` | `info` (a `tracing` filter such as `authd=debug,info`) |
//! | `AUTHD_TOKEN_CACHE_SIZE` | `--token-cache-size` | `10000` (verified access tokens kept in memory; `0` = off) |
//!
//! Durations are written as a number and a unit: `500ms`, `90s`, `15m`, `12h`, `7d` (a bare `0` is zero).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Every setting of the server; also used by the CLI subcommands that touch the database.
#[derive(Clone, Args)]
pub struct Config {
    /// PostgreSQL URL. When unset, authd runs its own PostgreSQL in the data directory.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Address of the gRPC listener.
    #[arg(
        long,
        env = "AUTHD_LISTEN",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen: SocketAddr,

    /// Directory of the embedded PostgreSQL (used only without DATABASE_URL).
    /// Default: /var/lib/authd as root, else $XDG_DATA_HOME/authd or ~/.local/share/authd.
    #[arg(long, env = "AUTHD_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Lifetime of an access token.
    #[arg(long, env = "AUTHD_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration, global = true)]
    pub access_token_ttl: Duration,

    /// Idle lifetime of a session: its refresh token expires after this long unused.
    #[arg(long, env = "AUTHD_REFRESH_TOKEN_TTL", default_value = "7d", value_parser = parse_duration, global = true)]
    pub refresh_token_ttl: Duration,

    /// Absolute lifetime of a session, however often it is refreshed.
    #[arg(long, env = "AUTHD_SESSION_MAX_LIFETIME", default_value = "30d", value_parser = parse_duration, global = true)]
    pub session_max_lifetime: Duration,

    /// How long a just-spent refresh token may be presented again and get the same successor. 0 = strict.
    #[arg(long, env = "AUTHD_REFRESH_REUSE_GRACE", default_value = "5s", value_parser = parse_duration, global = true)]
    pub refresh_reuse_grace: Duration,

    /// Honour a grace replay of a just-spent refresh token only from the client (IPv4 address, or
    /// IPv6 /64) whose refresh spent it; from any other client it is reuse and revokes the session.
    /// `false` honours replays from anywhere (for clients that hop networks mid-refresh).
    #[arg(long, env = "AUTHD_REFRESH_REPLAY_SAME_CLIENT", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub refresh_replay_same_client: bool,

    /// bcrypt cost for new password hashes (4-31).
    #[arg(long, env = "AUTHD_BCRYPT_COST", default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31), global = true)]
    pub bcrypt_cost: u32,

    /// Threads that run bcrypt. 0 = one per core available to the process (CPU affinity and cgroup
    /// quota respected).
    #[arg(long, env = "AUTHD_BCRYPT_CONCURRENCY", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1024), global = true)]
    pub bcrypt_concurrency: u32,

    /// Password checks of one client (an IPv4 address or IPv6 /64) that may wait for a bcrypt thread:
    /// a memory cap, past which that client's checks are refused (RESOURCE_EXHAUSTED). Admission
    /// itself is by deadline: a check is admitted when its expected wait fits the call's deadline.
    /// Unset = 64; 0 = a client's check is admitted only when a thread is free for it.
    #[arg(long, env = "AUTHD_BCRYPT_QUEUE", value_parser = clap::value_parser!(u32).range(0..=1_000_000), global = true)]
    pub bcrypt_queue: Option<u32>,

    /// Scheduling priority of the bcrypt threads, so that cheap calls win the CPU from them: a nice
    /// value 0-19 (default 10: a CPU share of about 1/10 of a busy core's each, so they keep
    /// progressing under load) or `idle` (SCHED_IDLE: they run only when nothing else wants the
    /// CPU, and starve while cheap calls saturate it). Stored as 0-19, with 20 meaning `idle`.
    #[arg(long, env = "AUTHD_BCRYPT_NICE", default_value = "10", value_parser = parse_bcrypt_priority, global = true)]
    pub bcrypt_nice: u8,

    /// The `iss` claim of access tokens.
    #[arg(long, env = "AUTHD_ISSUER", default_value = "authd", global = true)]
    pub issuer: String,

    /// The `aud` claim of access tokens.
    #[arg(long, env = "AUTHD_AUDIENCE", default_value = "authd", global = true)]
    pub audience: String,

    /// E-mail of an admin to create at start-up while no active admin exists (a deleted bootstrap
    /// admin is not recreated while another admin is active).
    #[arg(long, env = "AUTHD_BOOTSTRAP_ADMIN_EMAIL", global = true)]
    pub bootstrap_admin_email: Option<String>,

    /// Password of the bootstrap admin.
    #[arg(
        long,
        env = "AUTHD_BOOTSTRAP_ADMIN_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub bootstrap_admin_password: Option<String>,

    /// Whether ValidateToken requires an `x-api-key` service key.
    #[arg(long, env = "AUTHD_VALIDATE_REQUIRE_KEY", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub validate_require_key: bool,

    /// Whether anyone may Register. When false, only admins create accounts.
    #[arg(long, env = "AUTHD_ALLOW_REGISTRATION", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub allow_registration: bool,

    /// How long audit events are kept; older ones are pruned in the background.
    #[arg(long, env = "AUTHD_AUDIT_RETENTION", default_value = "90d", value_parser = parse_duration, global = true)]
    pub audit_retention: Duration,

    /// Consecutive failed logins for one identifier from one client (an IPv4 address, or an IPv6
    /// /64) before that client must wait (1 s, doubling, at most 15 min).
    #[arg(long, env = "AUTHD_LOGIN_MAX_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub login_max_failures: u32,

    /// Failed password verifications per identifier per hour, across all clients; past it the
    /// identifier gets one check per D in total (D = 1 s, doubling, at most 15 min), except from
    /// clients with a successful login for the account in the last 30 days.
    #[arg(long, env = "AUTHD_LOGIN_MAX_FAILURES_PER_HOUR", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub login_max_failures_per_hour: u32,

    /// Register, Login, Refresh and Logout-by-refresh-token requests per minute per client IP (token
    /// bucket); 0 turns it off.
    #[arg(
        long,
        env = "AUTHD_RATE_LIMIT_PER_IP",
        default_value_t = 60,
        global = true
    )]
    pub rate_limit_per_ip: u32,

    /// Password checks per minute that may fail through one proxy service key (a gateway that
    /// names its users' addresses), per replica; past it, checks through that key are refused.
    /// 0 turns the budget off.
    #[arg(
        long,
        env = "AUTHD_PROXY_KEY_MAX_FAILURES_PER_MINUTE",
        default_value_t = 600,
        global = true
    )]
    pub proxy_key_max_failures_per_minute: u32,

    /// Peers whose `x-forwarded-for` is believed: comma-separated IPs or CIDRs.
    #[arg(long, env = "AUTHD_TRUSTED_PROXIES", default_value = "", hide_default_value = true, value_parser = parse_trusted_proxies, global = true)]
    pub trusted_proxies: TrustedProxies,

    /// Minimum zxcvbn strength score (0-4) of a new password.
    #[arg(long, env = "AUTHD_MIN_PASSWORD_SCORE", default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=4), global = true)]
    pub min_password_score: u8,

    /// Server-side limit on one request; past it the call gets DEADLINE_EXCEEDED.
    #[arg(long, env = "AUTHD_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true)]
    pub request_timeout: Duration,

    /// How long a new signing key is published in JWKS before it starts signing.
    #[arg(long, env = "AUTHD_KEY_PUBLISH_DELAY", default_value = "10m", value_parser = parse_duration, global = true)]
    pub key_publish_delay: Duration,

    /// 32-byte key (base64 or hex) that encrypts signing keys and server secrets in the database.
    #[arg(long, env = "AUTHD_MASTER_KEY", hide_env_values = true, global = true)]
    pub master_key: Option<String>,

    /// Address of the optional HTTP listener (metrics, JWKS, liveness and readiness). Off when unset.
    #[arg(long, env = "AUTHD_HTTP_LISTEN", global = true)]
    pub http_listen: Option<SocketAddr>,

    /// Address of an optional plaintext listener serving only grpc.health.v1 (for kubelet probes
    /// when the main listener uses TLS). Off when unset.
    #[arg(long, env = "AUTHD_HEALTH_LISTEN", global = true)]
    pub health_listen: Option<SocketAddr>,

    /// Log format: `text` (human-readable) or `json`.
    #[arg(long, env = "AUTHD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,

    /// On SIGTERM/SIGINT: how long readiness reports NOT_SERVING before new connections are refused.
    #[arg(long, env = "AUTHD_SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration, global = true)]
    pub shutdown_delay: Duration,

    /// On SIGTERM/SIGINT: how long in-flight calls may take to finish.
    #[arg(long, env = "AUTHD_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration, global = true)]
    pub shutdown_grace: Duration,

    /// A new connection that has not finished its TLS handshake, its HTTP/2 preface (and first
    /// SETTINGS frame) or its first HTTP/1 request headers this long after it was accepted is
    /// closed. Applies to every listener. 0 = no limit.
    #[arg(long, env = "AUTHD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true)]
    pub handshake_timeout: Duration,

    /// PEM certificate chain of the gRPC listener; with AUTHD_TLS_KEY it turns on TLS.
    #[arg(long, env = "AUTHD_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the gRPC listener.
    #[arg(long, env = "AUTHD_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle that verifies client certificates (mTLS) when they are presented.
    #[arg(long, env = "AUTHD_TLS_CLIENT_CA", global = true)]
    pub tls_client_ca: Option<PathBuf>,

    /// Refuse TLS clients without a certificate signed by AUTHD_TLS_CLIENT_CA.
    #[arg(long, env = "AUTHD_TLS_REQUIRE_CLIENT_CERT", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub tls_require_client_cert: bool,

    /// Serve gRPC-Web (browser clients) too.
    #[arg(long, env = "AUTHD_GRPC_WEB", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub grpc_web: bool,

    /// Origins allowed to call gRPC-Web from a browser (CORS), comma-separated.
    #[arg(long, env = "AUTHD_CORS_ORIGINS", value_delimiter = ',', global = true)]
    pub cors_origins: Vec<String>,

    /// Maximum number of database connections.
    #[arg(long, env = "AUTHD_DB_POOL_SIZE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub db_pool_size: u32,

    /// How long to wait for a pooled connection, a new connection, or one statement.
    #[arg(long, env = "AUTHD_DB_TIMEOUT", default_value = "5s", value_parser = parse_duration, global = true)]
    pub db_timeout: Duration,

    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "AUTHD_LOG", default_value = "info", global = true)]
    pub log: String,

    /// How many verified access tokens to keep in memory, so that a token seen before is not
    /// verified again until it expires (`0` = no cache).
    #[arg(
        long,
        env = "AUTHD_TOKEN_CACHE_SIZE",
        default_value_t = 10_000,
        global = true
    )]
    pub token_cache_size: u64,
}

impl std::fmt::Debug for Config {
    /// Every setting, with the master key and the bootstrap admin's password hidden and the
    /// password of `DATABASE_URL` masked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new setting cannot be added without deciding how it is shown.
        let Config {
            database_url,
            listen,
            data_dir,
            access_token_ttl,
            refresh_token_ttl,
            session_max_lifetime,
            refresh_reuse_grace,
            refresh_replay_same_client,
            bcrypt_cost,
            bcrypt_concurrency,
            bcrypt_queue,
            bcrypt_nice,
            issuer,
            audience,
            bootstrap_admin_email,
            bootstrap_admin_password,
            validate_require_key,
            allow_registration,
            audit_retention,
            login_max_failures,
            login_max_failures_per_hour,
            rate_limit_per_ip,
            proxy_key_max_failures_per_minute,
            trusted_proxies,
            min_password_score,
            request_timeout,
            key_publish_delay,
            master_key,
            http_listen,
            health_listen,
            log_format,
            shutdown_delay,
            shutdown_grace,
            handshake_timeout,
            tls_cert,
            tls_key,
            tls_client_ca,
            tls_require_client_cert,
            grpc_web,
            cors_origins,
            db_pool_size,
            db_timeout,
            log,
            token_cache_size,
        } = self;
        let hidden = |s: &Option<String>| s.as_ref().map(|_| REDACTED);
        f.debug_struct("Config")
            .field("database_url", &database_url.as_deref().map(redact_url))
            .field("listen", listen)
            .field("data_dir", data_dir)
            .field("access_token_ttl", access_token_ttl)
            .field("refresh_token_ttl", refresh_token_ttl)
            .field("session_max_lifetime", session_max_lifetime)
            .field("refresh_reuse_grace", refresh_reuse_grace)
            .field("refresh_replay_same_client", refresh_replay_same_client)
            .field("bcrypt_cost", bcrypt_cost)
            .field("bcrypt_concurrency", bcrypt_concurrency)
            .field("bcrypt_queue", bcrypt_queue)
            .field("bcrypt_nice", bcrypt_nice)
            .field("issuer", issuer)
            .field("audience", audience)
            .field("bootstrap_admin_email", bootstrap_admin_email)
            .field(
                "bootstrap_admin_password",
                &hidden(bootstrap_admin_password),
            )
            .field("validate_require_key", validate_require_key)
            .field("allow_registration", allow_registration)
            .field("audit_retention", audit_retention)
            .field("login_max_failures", login_max_failures)
            .field("login_max_failures_per_hour", login_max_failures_per_hour)
            .field("rate_limit_per_ip", rate_limit_per_ip)
            .field(
                "proxy_key_max_failures_per_minute",
                proxy_key_max_failures_per_minute,
            )
            .field("trusted_proxies", trusted_proxies)
            .field("min_password_score", min_password_score)
            .field("request_timeout", request_timeout)
            .field("key_publish_delay", key_publish_delay)
            .field("master_key", &hidden(master_key))
            .field("http_listen", http_listen)
            .field("health_listen", health_listen)
            .field("log_format", log_format)
            .field("shutdown_delay", shutdown_delay)
            .field("shutdown_grace", shutdown_grace)
            .field("handshake_timeout", handshake_timeout)
            .field("tls_cert", tls_cert)
            .field("tls_key", tls_key)
            .field("tls_client_ca", tls_client_ca)
            .field("tls_require_client_cert", tls_require_client_cert)
            .field("grpc_web", grpc_web)
            .field("cors_origins", cors_origins)
            .field("db_pool_size", db_pool_size)
            .field("db_timeout", db_timeout)
            .field("log", log)
            .field("token_cache_size", token_cache_size)
            .finish()
    }
}

/// What Debug shows in place of a secret setting.
const REDACTED: &str = "<redacted>";

/// `url` with its password replaced by `<redacted>`: the one in `user:password@` and any
/// `password=` parameter (URL query or `key=value` connection string).
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = out[authority_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| authority_start + i);
        if let Some(at) = out[authority_start..authority_end].rfind('@') {
            let userinfo = &out[authority_start..authority_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(authority_start + colon + 1..authority_start + at, REDACTED);
            }
        }
    }
    let mut from = 0;
    while let Some(i) = out[from..].to_ascii_lowercase().find("password=") {
        let value_start = from + i + "password=".len();
        let value_end = out[value_start..]
            .find(['&', ' ', '\t', '\n'])
            .map_or(out.len(), |j| value_start + j);
        out.replace_range(value_start..value_end, REDACTED);
        from = value_start + REDACTED.len();
    }
    out
}

impl Config {
    /// The bootstrap admin's credentials, when both are set.
    pub fn bootstrap_admin(&self) -> Option<(&str, &str)> {
        match (&self.bootstrap_admin_email, &self.bootstrap_admin_password) {
            (Some(e), Some(p)) if !e.is_empty() && !p.is_empty() => Some((e, p)),
            _ => None,
        }
    }

    /// The settings with their defaults, as if no flag or variable were given.
    pub fn defaults() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        // Parsing no arguments cannot fail: every field has a default or is optional. Fall back to the
        // same values written out should clap ever disagree.
        Wrapper::try_parse_from(["authd"])
            .map(|w| w.config)
            .unwrap_or_else(|_| Self::fallback())
    }

    fn fallback() -> Self {
        Config {
            database_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: None,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(7 * 86400),
            session_max_lifetime: Duration::from_secs(30 * 86400),
            refresh_reuse_grace: Duration::from_secs(5),
            refresh_replay_same_client: true,
            bcrypt_cost: 12,
            bcrypt_concurrency: 0,
            bcrypt_queue: None,
            bcrypt_nice: 10,
            issuer: "authd".into(),
            audience: "authd".into(),
            bootstrap_admin_email: None,
            bootstrap_admin_password: None,
            validate_require_key: true,
            allow_registration: true,
            login_max_failures: 5,
            login_max_failures_per_hour: 100,
            rate_limit_per_ip: 60,
            proxy_key_max_failures_per_minute: 600,
            trusted_proxies: TrustedProxies::default(),
            min_password_score: 3,
            request_timeout: Duration::from_secs(10),
            key_publish_delay: Duration::from_secs(600),
            master_key: None,
            http_listen: None,
            health_listen: None,
            log_format: "text".into(),
            shutdown_delay: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_require_client_cert: false,
            grpc_web: false,
            cors_origins: Vec::new(),
            audit_retention: Duration::from_secs(90 * 86400),
            db_pool_size: 10,
            db_timeout: Duration::from_secs(5),
            log: "info".into(),
            token_cache_size: 10_000,
        }
    }
}

/// `AUTHD_BCRYPT_NICE=idle`, as stored in [`Config::bcrypt_nice`].
pub const BCRYPT_SCHED_IDLE: u8 = 20;

/// `idle`, or a nice value 0-19.
fn parse_bcrypt_priority(s: &str) -> Result<u8, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("idle") {
        return Ok(BCRYPT_SCHED_IDLE);
    }
    match s.parse::<u8>() {
        Ok(n) if n <= 19 => Ok(n),
        _ => Err(format!("{s:?} is neither `idle` nor a nice value 0-19")),
    }
}

/// `AUTHD_TRUSTED_PROXIES`: IPs and CIDR networks. Empty items, and an empty value, mean none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl std::ops::Deref for TrustedProxies {
    type Target = [ipnet::IpNet];
    fn deref(&self) -> &[ipnet::IpNet] {
        &self.0
    }
}

impl From<Vec<ipnet::IpNet>> for TrustedProxies {
    fn from(v: Vec<ipnet::IpNet>) -> Self {
        Self(v)
    }
}

/// Parses a comma-separated list of IPs and CIDR networks, ignoring empty items.
pub fn parse_trusted_proxies(s: &str) -> Result<TrustedProxies, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_net)
        .collect::<Result<Vec<_>, _>>()
        .map(TrustedProxies)
}

/// Parses an IP address or a CIDR network.
pub fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))
}

/// Parses `500ms`, `90s`, `15m`, `12h`, `7d`, or a bare `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("missing unit in duration {s:?} (use ms, s, m, h or d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid number in duration {s:?}"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} is too large"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => Err(format!(
            "unknown unit {unit:?} in duration {s:?} (use ms, s, m, h or d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxy_lists() {
        assert!(parse_trusted_proxies("").unwrap().is_empty());
        assert!(parse_trusted_proxies(" , ").unwrap().is_empty());
        assert_eq!(
            parse_trusted_proxies("10.0.0.0/8, 127.0.0.1,")
                .unwrap()
                .len(),
            2
        );
        assert!(parse_trusted_proxies("10.0.0.0/8,nope").is_err());
    }

    #[test]
    fn nets() {
        assert!(parse_net("10.0.0.0/8").is_ok());
        assert!(parse_net(" 127.0.0.1 ").is_ok());
        assert!(parse_net("::1").is_ok());
        assert!(parse_net("nope").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let mut c = Config::defaults();
        c.master_key = Some("master-key-secret".into());
        c.bootstrap_admin_password = Some("admin-password-secret".into());
        c.database_url = Some("postgres://authd:url-password-secret@db:5432/authd".into());
        let shown = format!("{c:?}");
        for secret in [
            "master-key-secret",
            "admin-password-secret",
            "url-password-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("postgres://authd:<redacted>@db:5432/authd"),
            "{shown}"
        );
        assert!(shown.contains("bcrypt_cost: 12"), "{shown}");
        assert_eq!(
            redact_url("host=db user=authd password=sekrit dbname=authd"),
            "host=db user=authd password=<redacted> dbname=authd"
        );
        assert_eq!(
            redact_url("postgres:///authd?host=/run&password=sekrit&x=1"),
            "postgres:///authd?host=/run&password=<redacted>&x=1"
        );
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(
            redact_url("postgres://u:p@w@h/d"),
            "postgres://u:<redacted>@h/d"
        );
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::defaults();
        let f = Config::fallback();
        assert_eq!(c.listen, f.listen);
        assert_eq!(c.access_token_ttl, f.access_token_ttl);
        assert_eq!(c.refresh_token_ttl, f.refresh_token_ttl);
        assert_eq!(c.session_max_lifetime, f.session_max_lifetime);
        assert_eq!(c.refresh_reuse_grace, f.refresh_reuse_grace);
        assert!(c.refresh_replay_same_client && f.refresh_replay_same_client);
        assert_eq!(c.bcrypt_cost, f.bcrypt_cost);
        assert_eq!(c.bcrypt_concurrency, f.bcrypt_concurrency);
        assert_eq!(c.bcrypt_queue, f.bcrypt_queue);
        assert_eq!(c.bcrypt_nice, f.bcrypt_nice);
        assert_eq!(c.issuer, f.issuer);
        assert_eq!(c.audience, f.audience);
        assert!(c.validate_require_key);
        assert!(c.allow_registration);
        assert_eq!(c.login_max_failures, f.login_max_failures);
        assert_eq!(c.login_max_failures_per_hour, f.login_max_failures_per_hour);
        assert_eq!(c.rate_limit_per_ip, f.rate_limit_per_ip);
        assert_eq!(
            c.proxy_key_max_failures_per_minute,
            f.proxy_key_max_failures_per_minute
        );
        assert_eq!(c.min_password_score, f.min_password_score);
        assert_eq!(c.request_timeout, f.request_timeout);
        assert_eq!(c.key_publish_delay, f.key_publish_delay);
        assert!(c.trusted_proxies.is_empty() && c.master_key.is_none());
        assert_eq!(c.shutdown_delay, f.shutdown_delay);
        assert_eq!(c.shutdown_grace, f.shutdown_grace);
        assert_eq!(c.handshake_timeout, f.handshake_timeout);
        assert_eq!(c.log_format, f.log_format);
        assert_eq!(c.token_cache_size, f.token_cache_size);
        assert!(c.http_listen.is_none() && c.health_listen.is_none() && !c.grpc_web);
        assert!(c.tls_cert.is_none() && !c.tls_require_client_cert && c.cors_origins.is_empty());
        assert_eq!(c.audit_retention, f.audit_retention);
        assert_eq!(c.db_pool_size, f.db_pool_size);
    }
}
