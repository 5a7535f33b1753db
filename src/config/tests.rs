//! Tests of the parsers, the redacted Debug and the defaults.

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
    c.smtp_url =
        Some("smtp://mailer:smtp-password-secret@mail.example.com:587?tls=required".into());
    // Both the Config and the settings the domain gets (the mailer's included).
    let shown = format!("{c:?} {:?}", c.domain_settings());
    for secret in [
        "master-key-secret",
        "admin-password-secret",
        "url-password-secret",
        "smtp-password-secret",
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
    assert_eq!(c.totp_issuer, f.totp_issuer);
    assert_eq!(c.mfa_max_failures, f.mfa_max_failures);
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
    assert_eq!(c.watch_max_streams, f.watch_max_streams);
    assert!(c.http_listen.is_none() && c.health_listen.is_none() && !c.grpc_web);
    assert!(c.tls_cert.is_none() && !c.tls_require_client_cert && c.cors_origins.is_empty());
    assert_eq!(c.audit_retention, f.audit_retention);
    assert_eq!(c.db_pool_size, f.db_pool_size);
}

#[test]
fn domain_settings_carry_the_flags() {
    let mut c = Config::defaults();
    c.bcrypt_concurrency = 3;
    c.bcrypt_queue = Some(0);
    c.bcrypt_nice = BCRYPT_SCHED_IDLE;
    c.request_timeout = Duration::from_secs(3);
    c.master_key = Some("k".into());
    let s = c.domain_settings();
    assert_eq!(s.passwords.bcrypt_cost, 12);
    assert_eq!(s.passwords.min_score, 3);
    assert_eq!(s.passwords.pool.concurrency, 3);
    assert_eq!(s.passwords.pool.queue, Some(0));
    assert_eq!(s.passwords.pool.nice, BCRYPT_SCHED_IDLE);
    assert_eq!(s.passwords.pool.default_deadline, Duration::from_secs(3));
    assert_eq!(s.tokens.access_token_ttl, c.access_token_ttl);
    assert_eq!(s.sessions.max_lifetime, c.session_max_lifetime);
    assert_eq!(s.keys.publish_delay, c.key_publish_delay);
    assert_eq!(
        s.keys.master_key.as_ref().map(|k| k.expose().as_str()),
        Some("k")
    );
    assert!(!format!("{s:?}").contains("\"k\""));
}

#[test]
fn totp_issuers() {
    assert_eq!(parse_totp_issuer(" Example Corp ").unwrap(), "Example Corp");
    assert!(parse_totp_issuer("").is_err());
    assert!(parse_totp_issuer("a:b").is_err());
    assert!(parse_totp_issuer("Exämple").is_err());
    assert!(parse_totp_issuer(&"x".repeat(65)).is_err());
    let s = Config::defaults().domain_settings();
    assert_eq!(s.mfa.totp_issuer, "authd");
    assert_eq!(s.mfa.max_failures, 10);
}
