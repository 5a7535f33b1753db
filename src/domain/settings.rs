//! [`Settings`]: what the domain is configured with, as plain values grouped by concern. No clap
//! here: the `config` module builds them from the command line and the environment
//! (`Config::domain_settings`), so the arrow points from the configuration into the domain. Secrets
//! arrive wrapped in [`Secret`].

use std::time::Duration;

use crate::secret::Secret;

/// `AUTHD_BCRYPT_NICE=idle`: the value of [`BcryptPoolSettings::nice`] that stands for SCHED_IDLE.
pub const BCRYPT_SCHED_IDLE: u8 = 20;

/// Every setting of [`crate::domain::Authd`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub tokens: TokenSettings,
    pub sessions: SessionSettings,
    pub passwords: PasswordSettings,
    pub throttle: ThrottleSettings,
    pub accounts: AccountSettings,
    pub access: AccessSettings,
    pub keys: KeySettings,
    /// How long audit events are kept (`AUTHD_AUDIT_RETENTION`).
    pub audit_retention: Duration,
    /// The outbox and its delivery.
    pub mail: crate::domain::mail::MailSettings,
    /// Password reset (issue I).
    pub password_reset: PasswordResetSettings,
    /// The second factor (TOTP).
    pub mfa: MfaSettings,
}

/// Password reset: the link's lifetime and the request limits.
#[derive(Debug, Clone, Copy)]
pub struct PasswordResetSettings {
    /// `AUTHD_PASSWORD_RESET_TTL`: lifetime of a reset token.
    pub ttl: Duration,
    /// `AUTHD_PASSWORD_RESET_PER_ADDRESS`: requests per e-mail address per hour (0 = no limit).
    pub per_address_per_hour: u32,
    /// `AUTHD_PASSWORD_RESET_PER_IP`: requests per client key per hour (0 = no limit).
    pub per_ip_per_hour: u32,
}

/// The second factor (src/domain/mfa).
#[derive(Debug, Clone)]
pub struct MfaSettings {
    /// The issuer named in `otpauth://` URIs, which authenticator apps show (`AUTHD_TOTP_ISSUER`).
    pub totp_issuer: String,
    /// Consecutive wrong second-factor codes of an account, across logins, before it is locked
    /// (`AUTHD_MFA_MAX_FAILURES`).
    pub max_failures: u32,
}

/// Access tokens: their claims and lifetime.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// The `iss` claim (`AUTHD_ISSUER`).
    pub issuer: String,
    /// The `aud` claim (`AUTHD_AUDIENCE`).
    pub audience: String,
    /// Lifetime of an access token (`AUTHD_ACCESS_TOKEN_TTL`).
    pub access_token_ttl: Duration,
}

/// Sessions and their refresh tokens.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// Idle lifetime (`AUTHD_REFRESH_TOKEN_TTL`).
    pub refresh_token_ttl: Duration,
    /// Absolute lifetime (`AUTHD_SESSION_MAX_LIFETIME`).
    pub max_lifetime: Duration,
    /// How long a spent refresh token may be replayed (`AUTHD_REFRESH_REUSE_GRACE`).
    pub refresh_reuse_grace: Duration,
    /// Honour a grace replay only from the spending client (`AUTHD_REFRESH_REPLAY_SAME_CLIENT`).
    pub replay_same_client: bool,
    /// Most rotations written by one statement (`AUTHD_REFRESH_BATCH_MAX`; 1 = no batching).
    pub refresh_batch_max: u32,
    /// Batches written at once (`AUTHD_REFRESH_BATCH_WRITERS`).
    pub refresh_batch_writers: u32,
}

/// Password hashing and the strength rule.
#[derive(Debug, Clone, Copy)]
pub struct PasswordSettings {
    /// bcrypt cost of new hashes (`AUTHD_BCRYPT_COST`).
    pub bcrypt_cost: u32,
    /// Minimum zxcvbn score of a new password (`AUTHD_MIN_PASSWORD_SCORE`).
    pub min_score: u8,
    pub pool: BcryptPoolSettings,
}

/// The bcrypt thread pool, as configured (0 and unset still mean "auto" and "default" here; the
/// pool resolves them in `PoolOptions::from_settings`).
#[derive(Debug, Clone, Copy)]
pub struct BcryptPoolSettings {
    /// `AUTHD_BCRYPT_CONCURRENCY`: threads, 0 = the cores available to the process.
    pub concurrency: u32,
    /// `AUTHD_BCRYPT_QUEUE`: checks one client may have waiting; unset = the default.
    pub queue: Option<u32>,
    /// `AUTHD_BCRYPT_NICE`: 0-19, or [`BCRYPT_SCHED_IDLE`].
    pub nice: u8,
    /// `AUTHD_REQUEST_TIMEOUT`: the deadline of a check whose call carries none.
    pub default_deadline: Duration,
}

/// The login throttle and the request budgets.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// `AUTHD_LOGIN_MAX_FAILURES`.
    pub login_max_failures: u32,
    /// `AUTHD_LOGIN_MAX_FAILURES_PER_HOUR`.
    pub login_max_failures_per_hour: u32,
    /// `AUTHD_RATE_LIMIT_PER_IP` (0 = off).
    pub rate_limit_per_ip: u32,
    /// `AUTHD_PROXY_KEY_MAX_FAILURES_PER_MINUTE` (0 = off).
    pub proxy_key_max_failures_per_minute: u32,
}

/// Who may create accounts.
#[derive(Debug, Clone, Copy)]
pub struct AccountSettings {
    /// Whether anyone may Register (`AUTHD_ALLOW_REGISTRATION`).
    pub allow_registration: bool,
    /// Lifetime of verification and e-mail change links (`AUTHD_EMAIL_VERIFY_TTL`).
    pub email_verify_ttl: Duration,
    /// Refuse Login for unverified addresses (`AUTHD_REQUIRE_VERIFIED_EMAIL`).
    pub require_verified_email: bool,
    /// ResendVerification requests per address per hour (`AUTHD_VERIFY_RESEND_PER_ADDRESS`, 0 = off).
    pub verify_resend_per_address: u32,
    /// ResendVerification requests per client per hour (`AUTHD_VERIFY_RESEND_PER_IP`, 0 = off).
    pub verify_resend_per_ip: u32,
}

/// Token checks: ValidateToken and the verified-token cache.
#[derive(Debug, Clone, Copy)]
pub struct AccessSettings {
    /// Whether ValidateToken needs a service key (`AUTHD_VALIDATE_REQUIRE_KEY`).
    pub validate_require_key: bool,
    /// Verified access tokens kept in memory (`AUTHD_TOKEN_CACHE_SIZE`, 0 = off).
    pub token_cache_size: u64,
    /// Open WatchRevocations streams per replica (`AUTHD_WATCH_MAX_STREAMS`).
    pub watch_max_streams: usize,
}

/// Signing keys and the key that seals key material at rest.
#[derive(Debug, Clone)]
pub struct KeySettings {
    /// How long a new signing key is published before it signs (`AUTHD_KEY_PUBLISH_DELAY`).
    pub publish_delay: Duration,
    /// `AUTHD_MASTER_KEY`: 32 bytes, base64 or hex; None = key material stored unencrypted.
    pub master_key: Option<Secret<String>>,
}
