//! The Debug of [`Config`]: every setting, with the secrets hidden and the password of
//! `DATABASE_URL` masked.

use super::Config;
use crate::secret::REDACTED;

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
            refresh_batch_max,
            refresh_batch_writers,
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
            watch_max_streams,
            smtp_url,
            mail_from,
            smtp_ca,
            mail_dir,
            mail_templates,
            mail_max_attempts,
            mail_retry_base,
            mail_poll_interval,
            mail_retention,
            link_base_url,
            email_verify_ttl,
            require_verified_email,
            verify_resend_per_address,
            verify_resend_per_ip,
            password_reset_ttl,
            password_reset_per_address,
            password_reset_per_ip,
            totp_issuer,
            mfa_max_failures,
        } = self;
        let smtp = smtp_url.as_ref().map(|u| redact_url(u.expose()));
        let url = database_url.as_ref().map(|u| redact_url(u.expose()));
        f.debug_struct("Config")
            .field("database_url", &url)
            .field("listen", listen)
            .field("data_dir", data_dir)
            .field("access_token_ttl", access_token_ttl)
            .field("refresh_token_ttl", refresh_token_ttl)
            .field("session_max_lifetime", session_max_lifetime)
            .field("refresh_reuse_grace", refresh_reuse_grace)
            .field("refresh_replay_same_client", refresh_replay_same_client)
            .field("refresh_batch_max", refresh_batch_max)
            .field("refresh_batch_writers", refresh_batch_writers)
            .field("bcrypt_cost", bcrypt_cost)
            .field("bcrypt_concurrency", bcrypt_concurrency)
            .field("bcrypt_queue", bcrypt_queue)
            .field("bcrypt_nice", bcrypt_nice)
            .field("issuer", issuer)
            .field("audience", audience)
            .field("bootstrap_admin_email", bootstrap_admin_email)
            .field("bootstrap_admin_password", bootstrap_admin_password)
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
            .field("master_key", master_key)
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
            .field("watch_max_streams", watch_max_streams)
            .field("smtp_url", &smtp)
            .field("mail_from", mail_from)
            .field("smtp_ca", smtp_ca)
            .field("mail_dir", mail_dir)
            .field("mail_templates", mail_templates)
            .field("mail_max_attempts", mail_max_attempts)
            .field("mail_retry_base", mail_retry_base)
            .field("mail_poll_interval", mail_poll_interval)
            .field("mail_retention", mail_retention)
            .field("link_base_url", link_base_url)
            .field("email_verify_ttl", email_verify_ttl)
            .field("require_verified_email", require_verified_email)
            .field("verify_resend_per_address", verify_resend_per_address)
            .field("verify_resend_per_ip", verify_resend_per_ip)
            .field("password_reset_ttl", password_reset_ttl)
            .field("password_reset_per_address", password_reset_per_address)
            .field("password_reset_per_ip", password_reset_per_ip)
            .field("totp_issuer", totp_issuer)
            .field("mfa_max_failures", mfa_max_failures)
            .finish()
    }
}

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
