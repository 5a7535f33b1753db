//! The names of the metrics the domain records (and their fixed label values): a leaf module with
//! no crate imports, so that the domain and the metrics module (which re-exports them and describes
//! them to the exporter) both import it and neither imports the other.

/// `authd_logins_total{result}`: login decisions.
pub const LOGINS: &str = "authd_logins_total";
/// `authd_refresh_reuse_detected_total`: sessions revoked because a spent refresh token came back.
pub const REFRESH_REUSE_DETECTED: &str = "authd_refresh_reuse_detected_total";
/// `authd_refresh_batches_total`: statements that wrote a batch of refresh rotations.
pub const REFRESH_BATCHES: &str = "authd_refresh_batches_total";
/// `authd_refresh_batched_rotations_total`: rotations those statements carried (divided by the
/// batches, the mean batch size).
pub const REFRESH_BATCHED_ROTATIONS: &str = "authd_refresh_batched_rotations_total";
/// `authd_bcrypt_queue_depth`: bcrypt jobs admitted and not yet finished.
pub const BCRYPT_QUEUE_DEPTH: &str = "authd_bcrypt_queue_depth";
/// `authd_bcrypt_rejected_total{reason}`: bcrypt jobs refused with RESOURCE_EXHAUSTED.
pub const BCRYPT_REJECTED: &str = "authd_bcrypt_rejected_total";
/// `authd_bcrypt_completed_total`: bcrypt runs finished by the pool.
pub const BCRYPT_COMPLETED: &str = "authd_bcrypt_completed_total";
/// `authd_bcrypt_padded_total`: failed checks padded to the configured cost.
pub const BCRYPT_PADDED: &str = "authd_bcrypt_padded_total";
/// `authd_bcrypt_expected_wait_seconds`: the expected wait of the latest password check.
pub const BCRYPT_EXPECTED_WAIT: &str = "authd_bcrypt_expected_wait_seconds";
/// `authd_ext_authz_checks_total{result}`: Envoy ext_authz Check answers (the caller authenticated).
pub const EXT_AUTHZ_CHECKS: &str = "authd_ext_authz_checks_total";

/// `authd_log_lines_dropped_total`: log lines dropped because the log writer's queue was full.
pub const LOG_LINES_DROPPED: &str = "authd_log_lines_dropped_total";

/// `authd_watch_streams`: WatchRevocations streams open on this replica.
pub const WATCH_STREAMS: &str = "authd_watch_streams";
/// `authd_mail_outbox_depth`: messages waiting in the outbox (neither sent nor failed).
pub const MAIL_OUTBOX_DEPTH: &str = "authd_mail_outbox_depth";
/// `authd_mail_oldest_unsent_seconds`: age of the oldest waiting message (0 when none waits).
pub const MAIL_OLDEST_UNSENT: &str = "authd_mail_oldest_unsent_seconds";
/// `authd_mail_sent_total`: messages delivered.
pub const MAIL_SENT: &str = "authd_mail_sent_total";
/// `authd_mail_send_failures_total`: failed delivery attempts (each retry counts).
pub const MAIL_SEND_FAILURES: &str = "authd_mail_send_failures_total";
/// `authd_mail_failed_total`: messages given up (marked failed) after their last attempt.
pub const MAIL_FAILED: &str = "authd_mail_failed_total";
/// `authd_email_verification_total{result}`: e-mail verification: `mailed` (a link queued),
/// `capped` (none: 3 links are live), `requested` (a ResendVerification accepted), `throttled`
/// (refused by its limits), `verified`, `invalid_token`.
pub const EMAIL_VERIFICATION: &str = "authd_email_verification_total";
/// `authd_email_change_total{result}`: e-mail changes: `requested` (UpdateMe), `confirmed`,
/// `conflict` (the new address was taken meanwhile), `invalid_token`, `admin` (applied at once by
/// an admin).
pub const EMAIL_CHANGE: &str = "authd_email_change_total";
/// `authd_password_reset_requests_total`: RequestPasswordReset calls accepted (one request row each,
/// known address or not).
pub const PASSWORD_RESET_REQUESTS: &str = "authd_password_reset_requests_total";
/// `authd_password_reset_mails_queued_total`: reset links created and mailed (active accounts only).
pub const PASSWORD_RESET_MAILS: &str = "authd_password_reset_mails_queued_total";
/// `authd_password_resets_total`: passwords set through ResetPassword.
pub const PASSWORD_RESETS: &str = "authd_password_resets_total";

/// `authd_mfa_verifications_total{result}`: second-factor codes checked (VerifyMfa, DisableTotp,
/// RegenerateRecoveryCodes).
pub const MFA_VERIFICATIONS: &str = "authd_mfa_verifications_total";
/// The `result` label values of [`MFA_VERIFICATIONS`]: ok (a right code), invalid (a wrong code),
/// locked (refused while the account's second factor is locked), replay (a right code whose step
/// was already used, or a spent recovery code).
pub const MFA_RESULTS: [&str; 4] = ["ok", "invalid", "locked", "replay"];

/// The `result` label values of [`LOGINS`].
pub const LOGIN_RESULTS: [&str; 5] = ["success", "failure", "disabled", "throttled", "unverified"];
/// The `result` label values of [`EXT_AUTHZ_CHECKS`]: allowed (status 0), denied (16, HTTP 401),
/// forbidden (7, HTTP 403), misconfigured (an unknown `authd_required_role`; HTTP 500), unavailable
/// (14, HTTP 503).
pub const EXT_AUTHZ_RESULTS: [&str; 5] = [
    "allowed",
    "denied",
    "forbidden",
    "misconfigured",
    "unavailable",
];
