//! The domain's settings ([`crate::domain::settings::Settings`]), built from [`Config`]: the one
//! place that knows which flag feeds which rule.

use super::Config;
use crate::domain::mail::MailSettings;
use crate::domain::settings::{
    AccessSettings, AccountSettings, BcryptPoolSettings, KeySettings, MfaSettings,
    PasswordResetSettings, PasswordSettings, SessionSettings, Settings, ThrottleSettings,
    TokenSettings,
};

impl Config {
    /// The settings `domain::Authd` runs with.
    pub fn domain_settings(&self) -> Settings {
        Settings {
            tokens: TokenSettings {
                issuer: self.issuer.clone(),
                audience: self.audience.clone(),
                access_token_ttl: self.access_token_ttl,
            },
            sessions: SessionSettings {
                refresh_token_ttl: self.refresh_token_ttl,
                max_lifetime: self.session_max_lifetime,
                refresh_reuse_grace: self.refresh_reuse_grace,
                replay_same_client: self.refresh_replay_same_client,
                refresh_batch_max: self.refresh_batch_max,
                refresh_batch_writers: self.refresh_batch_writers,
            },
            passwords: PasswordSettings {
                bcrypt_cost: self.bcrypt_cost,
                min_score: self.min_password_score,
                pool: BcryptPoolSettings {
                    concurrency: self.bcrypt_concurrency,
                    queue: self.bcrypt_queue,
                    nice: self.bcrypt_nice,
                    default_deadline: self.request_timeout,
                },
            },
            throttle: ThrottleSettings {
                login_max_failures: self.login_max_failures,
                login_max_failures_per_hour: self.login_max_failures_per_hour,
                rate_limit_per_ip: self.rate_limit_per_ip,
                proxy_key_max_failures_per_minute: self.proxy_key_max_failures_per_minute,
            },
            accounts: AccountSettings {
                allow_registration: self.allow_registration,
                email_verify_ttl: self.email_verify_ttl,
                require_verified_email: self.require_verified_email,
                verify_resend_per_address: self.verify_resend_per_address,
                verify_resend_per_ip: self.verify_resend_per_ip,
            },
            access: AccessSettings {
                validate_require_key: self.validate_require_key,
                token_cache_size: self.token_cache_size,
                watch_max_streams: self.watch_max_streams,
            },
            keys: KeySettings {
                publish_delay: self.key_publish_delay,
                master_key: self.master_key.clone(),
            },
            audit_retention: self.audit_retention,
            mail: MailSettings {
                from: self.mail_from.clone(),
                smtp_url: self.smtp_url.clone(),
                smtp_ca: self.smtp_ca.clone(),
                dir: self.mail_dir.clone().unwrap_or_else(|| {
                    self.data_dir
                        .clone()
                        .unwrap_or_else(crate::embedded_pg::default_data_dir)
                        .join("mail")
                }),
                templates: self.mail_templates.clone(),
                max_attempts: self.mail_max_attempts,
                retry_base: self.mail_retry_base,
                poll_interval: self.mail_poll_interval,
                retention: self.mail_retention,
                link_base_url: self.link_base_url.clone(),
            },
            password_reset: PasswordResetSettings {
                ttl: self.password_reset_ttl,
                per_address_per_hour: self.password_reset_per_address,
                per_ip_per_hour: self.password_reset_per_ip,
            },
            mfa: MfaSettings {
                totp_issuer: self.totp_issuer.clone(),
                max_failures: self.mfa_max_failures,
            },
        }
    }
}
