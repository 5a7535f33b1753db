//! Mail that is never lost (issue I): an outbox in the database and a background sender.
//!
//! - A producer calls [`Mailer::queue`] with its own connection, inside the transaction of the
//!   change that causes the message: the message commits with the change or not at all. After the
//!   commit it may call [`Mailer::wake`] so the sender does not wait for its next tick.
//!   [`crate::domain::Authd::queue_mail`] does both for a message on its own.
//! - The message is rendered at once ([`templates`]) and stored with a stable Message-ID
//!   (`<outbox id@domain of AUTHD_MAIL_FROM>`). A body that holds a live link is sealed under
//!   `AUTHD_MASTER_KEY` when one is set (the keystore's XChaCha20-Poly1305, bound to the row id),
//!   and blanked once sent.
//! - The sender ([`Mailer::deliver_due`], run by `server::background::mail_sender_loop` on every
//!   replica) claims due messages (see [`crate::db::outbox`]: `FOR UPDATE SKIP LOCKED`, each claim
//!   moves the message one lease ahead), delivers them through the [`transport::Transport`], and
//!   records the outcome: sent; or due again after an exponential backoff
//!   (`AUTHD_MAIL_RETRY_BASE` doubling per attempt, at most [`MAX_BACKOFF`]); or, after
//!   `AUTHD_MAIL_MAX_ATTEMPTS` attempts (or a permanent 5xx refusal), failed, with a WARN log and
//!   the `authd_mail_failed_total` metric. Sent and failed messages are pruned after
//!   `AUTHD_MAIL_RETENTION`.

mod outbox;
pub mod templates;
pub mod transport;

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;

pub use outbox::{DeliveryReport, Mailer};

/// A failed attempt is retried after `AUTHD_MAIL_RETRY_BASE * 2^(attempts - 1)`, at most this long.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How long a claimed message is not due for any other sender: longer than an SMTP conversation
/// may take (the transport's timeout is 30 s per command).
pub const CLAIM_LEASE: Duration = Duration::from_secs(300);
/// Messages claimed per round.
pub const CLAIM_BATCH: i64 = 20;

/// Mail settings (`AUTHD_SMTP_URL`, `AUTHD_MAIL_*`).
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// `AUTHD_MAIL_FROM`: the From address; its domain names the Message-IDs.
    pub from: String,
    /// `AUTHD_SMTP_URL`; None = write `.eml` files into `dir`.
    pub smtp_url: Option<Secret<String>>,
    /// `AUTHD_SMTP_CA`: a PEM bundle trusted for the SMTP server's certificate.
    pub smtp_ca: Option<PathBuf>,
    /// `AUTHD_MAIL_DIR`: where `.eml` files go without an SMTP URL.
    pub dir: PathBuf,
    /// `AUTHD_MAIL_TEMPLATES`: a directory of templates that override the built-in ones.
    pub templates: Option<PathBuf>,
    /// `AUTHD_MAIL_MAX_ATTEMPTS`: attempts before a message is marked failed.
    pub max_attempts: u32,
    /// `AUTHD_MAIL_RETRY_BASE`: the first retry delay, doubled per attempt.
    pub retry_base: Duration,
    /// `AUTHD_MAIL_POLL_INTERVAL`: how often the sender looks for due messages.
    pub poll_interval: Duration,
    /// `AUTHD_MAIL_RETENTION`: how long sent and failed messages are kept.
    pub retention: Duration,
    /// `AUTHD_LINK_BASE_URL`: the application's pages that mailed links point at, without a
    /// trailing `/` (e.g. `https://app.example.com/auth`).
    pub link_base_url: String,
}

/// A message to queue.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The recipient's address.
    pub to: String,
    /// The template kind (see [`templates`]), e.g. `generic`.
    pub kind: String,
    /// The templates' context.
    pub context: serde_json::Value,
    /// The body holds a live link (a single-use token): seal it at rest, blank it once sent.
    pub live_link: bool,
}

/// The retry delay after `attempts` failed attempts (1 = the first).
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << doublings).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Duration::from_secs(30);
        assert_eq!(backoff(b, 1), Duration::from_secs(30));
        assert_eq!(backoff(b, 2), Duration::from_secs(60));
        assert_eq!(backoff(b, 4), Duration::from_secs(240));
        assert_eq!(backoff(b, 8), MAX_BACKOFF);
        assert_eq!(backoff(b, u32::MAX), MAX_BACKOFF);
    }
}
