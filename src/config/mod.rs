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
//! | `AUTHD_REFRESH_BATCH_MAX` | `--refresh-batch-max` | `32` (1-1000; most refresh rotations per statement and commit, `1` = no batching) |
//! | `AUTHD_REFRESH_BATCH_WRITERS` | `--refresh-batch-writers` | `1` (1-64; batches written at once) |
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
//! | `AUTHD_KEY_PUBLISH_DELAY` | `--key-publish-delay` | `15m` (must exceed every verifier's JWKS cache: Envoy's is 600 s) |
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
//! | `AUTHD_WATCH_MAX_STREAMS` | `--watch-max-streams` | `10000` (WatchRevocations streams per replica; beyond, RESOURCE_EXHAUSTED) |
//! | `AUTHD_SMTP_URL` | `--smtp-url` | unset: mail is written as `.eml` files into `AUTHD_MAIL_DIR` (`smtp://user:pass@host:587?tls=required`, `smtps://host:465`) |
//! | `AUTHD_MAIL_FROM` | `--mail-from` | `authd@localhost` (From address; its domain names the Message-IDs) |
//! | `AUTHD_SMTP_CA` | `--smtp-ca` | unset (PEM bundle trusted for the SMTP server, next to the public roots) |
//! | `AUTHD_MAIL_DIR` | `--mail-dir` | `<data dir>/mail` (the data directory as in `AUTHD_DATA_DIR`, also with `DATABASE_URL`) |
//! | `AUTHD_MAIL_TEMPLATES` | `--mail-templates` | unset (built-in templates; a directory of `<kind>.subject.txt`, `<kind>.txt`, `<kind>.html` overrides them) |
//! | `AUTHD_MAIL_MAX_ATTEMPTS` | `--mail-max-attempts` | `10` (then the message is marked failed) |
//! | `AUTHD_MAIL_RETRY_BASE` | `--mail-retry-base` | `30s` (first retry delay, doubled per attempt, at most 1h) |
//! | `AUTHD_MAIL_POLL_INTERVAL` | `--mail-poll-interval` | `1s` (how often each replica's sender looks for due mail) |
//! | `AUTHD_MAIL_RETENTION` | `--mail-retention` | `7d` (sent and failed messages are then deleted) |
//! | `AUTHD_PASSWORD_RESET_TTL` | `--password-reset-ttl` | `30m` (lifetime of a mailed password-reset link) |
//! | `AUTHD_PASSWORD_RESET_PER_ADDRESS` | `--password-reset-per-address` | `5` (RequestPasswordReset calls per e-mail address per hour, all replicas; `0` = no limit) |
//! | `AUTHD_PASSWORD_RESET_PER_IP` | `--password-reset-per-ip` | `20` (RequestPasswordReset calls per client IP, or IPv6 /64, per hour, all replicas; `0` = no limit) |
//! | `AUTHD_LINK_BASE_URL` | `--link-base-url` | `http://localhost:3000/auth` (the application's pages that mailed links point at: `…/verify-email?token=…`, `…/reset-password?token=…`, `…/confirm-email-change?token=…`) |
//! | `AUTHD_EMAIL_VERIFY_TTL` | `--email-verify-ttl` | `24h` (lifetime of verification and e-mail change links) |
//! | `AUTHD_REQUIRE_VERIFIED_EMAIL` | `--require-verified-email` | `false` (refuse Login with the right password for an unverified address) |
//! | `AUTHD_VERIFY_RESEND_PER_ADDRESS` | `--verify-resend-per-address` | `5` (ResendVerification requests per address per hour; `0` = off) |
//! | `AUTHD_VERIFY_RESEND_PER_IP` | `--verify-resend-per-ip` | `20` (ResendVerification requests per client per hour; `0` = off) |
//! | `AUTHD_TOTP_ISSUER` | `--totp-issuer` | `authd` (the issuer that authenticator apps show for a TOTP secret; 1-64 printable ASCII characters, no `:`) |
//! | `AUTHD_MFA_MAX_FAILURES` | `--mfa-max-failures` | `10` (consecutive wrong second-factor codes of an account, across logins, before its second factor is locked for 5 min, doubling per further lock, at most 24 h) |
//!
//! Durations are written as a number and a unit: `500ms`, `90s`, `15m`, `12h`, `7d` (a bare `0` is zero).
//!
//! Secrets (`DATABASE_URL`, `AUTHD_BOOTSTRAP_ADMIN_PASSWORD`, `AUTHD_MASTER_KEY`, `AUTHD_SMTP_URL`) are held as
//! [`Secret`]s: their Debug is redacted and their value is read only through `expose()`.
//!
//! Files (one per concern): this one holds the flat clap [`Config`] (its field names and variables
//! are the interface) and its defaults; `domain.rs` builds the domain's plain settings from it
//! ([`Config::domain_settings`]); `parse.rs` the value parsers, `debug.rs` the redacted Debug.
//! The server, the transport and the layers read their own options from [`Config`] directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

mod debug;
mod domain;
mod parse;
#[cfg(test)]
mod tests;

pub use crate::domain::settings::BCRYPT_SCHED_IDLE;
pub use crate::secret::Secret;
pub use debug::redact_url;
pub use parse::{TrustedProxies, parse_duration, parse_net, parse_trusted_proxies};
use parse::{parse_bcrypt_priority, parse_link_base_url, parse_totp_issuer};

/// Every setting of the server; also used by the CLI subcommands that touch the database.
#[derive(Clone, Args)]
pub struct Config {
    /// PostgreSQL URL. When unset, authd runs its own PostgreSQL in the data directory.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<Secret<String>>,

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

    /// Most refresh rotations written by one statement and one commit (group commit). Concurrent
    /// refreshes that queue while earlier batches are written share the next one; nothing waits for
    /// a batch to fill. 1 = every refresh writes its own statement.
    #[arg(long, env = "AUTHD_REFRESH_BATCH_MAX", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub refresh_batch_max: u32,

    /// Batches of refresh rotations written at once, each on a database connection of its own. One
    /// writer makes the largest batches (the least database CPU per refresh); more keep refreshes
    /// moving while one batch waits on a row lock.
    #[arg(long, env = "AUTHD_REFRESH_BATCH_WRITERS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64), global = true)]
    pub refresh_batch_writers: u32,

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
    pub bootstrap_admin_password: Option<Secret<String>>,

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

    /// How long a new signing key is published in JWKS before it starts signing. The rule: longer
    /// than the longest JWKS cache of any verifier plus a margin. Envoy's jwt_authn caches for
    /// `cache_duration` (600 s by default) and ignores Cache-Control; the JWKS's max-age is at most
    /// 300 s; JOSE libraries re-fetch on an unknown kid after 30 s. 15 minutes leaves 5 minutes of
    /// margin over Envoy's default.
    #[arg(long, env = "AUTHD_KEY_PUBLISH_DELAY", default_value = "15m", value_parser = parse_duration, global = true)]
    pub key_publish_delay: Duration,

    /// 32-byte key (base64 or hex) that encrypts signing keys and server secrets in the database.
    #[arg(long, env = "AUTHD_MASTER_KEY", hide_env_values = true, global = true)]
    pub master_key: Option<Secret<String>>,

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

    /// How many WatchRevocations streams one replica serves at once; beyond it a new stream gets
    /// RESOURCE_EXHAUSTED (`0` = WatchRevocations is refused).
    #[arg(
        long,
        env = "AUTHD_WATCH_MAX_STREAMS",
        default_value_t = 10_000,
        global = true
    )]
    pub watch_max_streams: usize,

    /// SMTP server for outgoing mail: `smtp://user:pass@host:587?tls=required` (STARTTLS),
    /// `?tls=opportunistic`, no `tls` (plaintext), or `smtps://host:465` (TLS from the start).
    /// Unset: messages are written as `.eml` files into AUTHD_MAIL_DIR.
    #[arg(long, env = "AUTHD_SMTP_URL", hide_env_values = true, global = true)]
    pub smtp_url: Option<Secret<String>>,

    /// From address of outgoing mail; its domain names the Message-IDs.
    #[arg(
        long,
        env = "AUTHD_MAIL_FROM",
        default_value = "authd@localhost",
        global = true
    )]
    pub mail_from: String,

    /// PEM bundle of certificates trusted for the SMTP server (a private mail server).
    #[arg(long, env = "AUTHD_SMTP_CA", global = true)]
    pub smtp_ca: Option<PathBuf>,

    /// Directory of the `.eml` files written without AUTHD_SMTP_URL. Default: `mail` in the data
    /// directory (AUTHD_DATA_DIR or its default), also when DATABASE_URL is set.
    #[arg(long, env = "AUTHD_MAIL_DIR", global = true)]
    pub mail_dir: Option<PathBuf>,

    /// Directory of mail templates overriding the built-in ones.
    #[arg(long, env = "AUTHD_MAIL_TEMPLATES", global = true)]
    pub mail_templates: Option<PathBuf>,

    /// Delivery attempts of one message before it is marked failed.
    #[arg(long, env = "AUTHD_MAIL_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub mail_max_attempts: u32,

    /// Delay before the first retry of a failed delivery; doubled per attempt, at most 1 hour.
    #[arg(long, env = "AUTHD_MAIL_RETRY_BASE", default_value = "30s", value_parser = parse_duration, global = true)]
    pub mail_retry_base: Duration,

    /// How often each replica's sender looks for due mail (it is also woken by a local queue).
    #[arg(long, env = "AUTHD_MAIL_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration, global = true)]
    pub mail_poll_interval: Duration,

    /// How long sent and failed messages stay in the outbox.
    #[arg(long, env = "AUTHD_MAIL_RETENTION", default_value = "7d", value_parser = parse_duration, global = true)]
    pub mail_retention: Duration,

    /// Base URL of the application's pages that mailed links point at (authd speaks only gRPC):
    /// `<base>/verify-email?token=…`, `<base>/reset-password?token=…`,
    /// `<base>/confirm-email-change?token=…`. The page calls the matching RPC with the token.
    #[arg(long, env = "AUTHD_LINK_BASE_URL", default_value = "http://localhost:3000/auth", value_parser = parse_link_base_url, global = true)]
    pub link_base_url: String,

    /// Lifetime of e-mail verification links (Register, ResendVerification) and of e-mail change
    /// confirmation links (UpdateMe).
    #[arg(long, env = "AUTHD_EMAIL_VERIFY_TTL", default_value = "24h", value_parser = parse_duration, global = true)]
    pub email_verify_ttl: Duration,

    /// When true, Login with the right password for an unverified address is refused
    /// (FAILED_PRECONDITION "email not verified", reason EMAIL_NOT_VERIFIED).
    #[arg(long, env = "AUTHD_REQUIRE_VERIFIED_EMAIL", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub require_verified_email: bool,

    /// ResendVerification requests per address per hour (counted whether or not an account has
    /// the address, across replicas); 0 turns the limit off.
    #[arg(
        long,
        env = "AUTHD_VERIFY_RESEND_PER_ADDRESS",
        default_value_t = 5,
        global = true
    )]
    pub verify_resend_per_address: u32,

    /// ResendVerification requests per client (an IPv4 address, or an IPv6 /64) per hour, across
    /// replicas; 0 turns the limit off.
    #[arg(
        long,
        env = "AUTHD_VERIFY_RESEND_PER_IP",
        default_value_t = 20,
        global = true
    )]
    pub verify_resend_per_ip: u32,
    /// Lifetime of a mailed password-reset link (the token is single use).
    #[arg(long, env = "AUTHD_PASSWORD_RESET_TTL", default_value = "30m", value_parser = parse_duration, global = true)]
    pub password_reset_ttl: Duration,

    /// RequestPasswordReset calls per e-mail address per hour, counted on every replica together
    /// (known and unknown addresses alike); 0 turns the limit off.
    #[arg(
        long,
        env = "AUTHD_PASSWORD_RESET_PER_ADDRESS",
        default_value_t = 5,
        global = true
    )]
    pub password_reset_per_address: u32,

    /// RequestPasswordReset calls per client IP (an IPv6 /64) per hour, counted on every replica
    /// together; 0 turns the limit off.
    #[arg(
        long,
        env = "AUTHD_PASSWORD_RESET_PER_IP",
        default_value_t = 20,
        global = true
    )]
    pub password_reset_per_ip: u32,

    /// The issuer named in TOTP enrolment URIs (`otpauth://totp/<issuer>:<e-mail>`), which
    /// authenticator apps show next to the code. 1-64 printable ASCII characters, no `:`.
    #[arg(long, env = "AUTHD_TOTP_ISSUER", default_value = "authd", value_parser = parse_totp_issuer, global = true)]
    pub totp_issuer: String,

    /// Consecutive wrong second-factor codes of an account (across logins; a right code resets the
    /// count) before its second factor is locked: 5 minutes, doubling per further lock, at most 24
    /// hours. The owner gets a mail on each lock.
    #[arg(long, env = "AUTHD_MFA_MAX_FAILURES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub mfa_max_failures: u32,
}

impl Config {
    /// The bootstrap admin's credentials, when both are set.
    pub fn bootstrap_admin(&self) -> Option<(&str, &Secret<String>)> {
        match (&self.bootstrap_admin_email, &self.bootstrap_admin_password) {
            (Some(e), Some(p)) if !e.is_empty() && !p.expose().is_empty() => Some((e, p)),
            _ => None,
        }
    }

    /// `DATABASE_URL`, when it is set and not empty.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url
            .as_ref()
            .map(|u| u.expose().as_str())
            .filter(|u| !u.is_empty())
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
            refresh_batch_max: 32,
            refresh_batch_writers: 1,
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
            key_publish_delay: Duration::from_secs(900),
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
            watch_max_streams: 10_000,
            smtp_url: None,
            mail_from: "authd@localhost".into(),
            smtp_ca: None,
            mail_dir: None,
            mail_templates: None,
            mail_max_attempts: 10,
            mail_retry_base: Duration::from_secs(30),
            mail_poll_interval: Duration::from_secs(1),
            mail_retention: Duration::from_secs(7 * 86400),
            link_base_url: "http://localhost:3000/auth".to_string(),
            email_verify_ttl: Duration::from_secs(24 * 3600),
            require_verified_email: false,
            verify_resend_per_address: 5,
            verify_resend_per_ip: 20,
            password_reset_ttl: Duration::from_secs(30 * 60),
            password_reset_per_address: 5,
            password_reset_per_ip: 20,
            totp_issuer: "authd".into(),
            mfa_max_failures: 10,
        }
    }
}
