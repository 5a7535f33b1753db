//! The queue API ([`Mailer::queue`]) and one round of the sender ([`Mailer::deliver_due`]); the
//! rules are in the module doc of [`crate::domain::mail`].

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use tokio::sync::Notify;
use uuid::Uuid;

use super::templates::{Rendered, Templates};
use super::transport::{FileTransport, SmtpTransport, Transport};
use super::{CLAIM_BATCH, CLAIM_LEASE, Mail, MailSettings, backoff};
use crate::clock::SharedClock;
use crate::db::outbox::{self as rows, NewOutboxRow, OutboxRow};
use crate::db::{self, Pool};
use crate::domain::keystore::MasterKey;
use crate::domain::{Authd, Error, Result};
use crate::metric_names as m;

/// Longest `last_error` kept.
const MAX_ERROR_CHARS: usize = 500;

/// The outbox: queues messages and delivers due ones. One per process.
pub struct Mailer {
    settings: MailSettings,
    from: Mailbox,
    /// The domain of the Message-IDs.
    domain: String,
    master: Option<MasterKey>,
    templates: Templates,
    transport: Box<dyn Transport>,
    wake: Notify,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("transport", &self.transport.describe())
            .finish_non_exhaustive()
    }
}

/// What one sender round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryReport {
    pub sent: usize,
    pub retried: usize,
    pub failed: usize,
}

fn aad(id: Uuid) -> String {
    format!("outbox:{id}")
}

impl Mailer {
    /// Loads the templates, reads `AUTHD_SMTP_CA` and sets up the transport. `master_key` is
    /// `AUTHD_MASTER_KEY` (already checked by the keystore).
    pub fn new(settings: MailSettings, master_key: Option<&str>) -> Result<Self> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| Error::invalid(format!("AUTHD_MAIL_FROM {:?}: {e}", settings.from)))?;
        let domain = from.email.domain().to_owned();
        let master = master_key.map(MasterKey::parse).transpose()?;
        let templates = Templates::load(settings.templates.as_deref())?;
        let transport: Box<dyn Transport> = match &settings.smtp_url {
            Some(url) if !url.expose().is_empty() => {
                let ca = settings
                    .smtp_ca
                    .as_ref()
                    .map(|p| {
                        std::fs::read(p).map_err(|e| {
                            Error::invalid(format!("AUTHD_SMTP_CA {}: {e}", p.display()))
                        })
                    })
                    .transpose()?;
                Box::new(SmtpTransport::new(url, ca.as_deref())?)
            }
            _ => Box::new(FileTransport::new(&settings.dir)),
        };
        tracing::info!(transport = %transport.describe(), "mail delivery");
        Ok(Self {
            settings,
            from,
            domain,
            master,
            templates,
            transport,
            wake: Notify::new(),
        })
    }

    pub fn settings(&self) -> &MailSettings {
        &self.settings
    }

    /// Renders `mail` and inserts it into the outbox on `conn`: inside the caller's transaction,
    /// it commits with the caller's change. Returns the outbox id. Call [`Mailer::wake`] after the
    /// commit for a prompt delivery.
    pub async fn queue(
        &self,
        conn: &mut AsyncPgConnection,
        mail: &Mail,
        now: DateTime<Utc>,
    ) -> Result<Uuid> {
        mail.to
            .parse::<Mailbox>()
            .map_err(|e| Error::invalid(format!("not a mail address: {e}")))?;
        let rendered = self.templates.render(&mail.kind, &mail.context)?;
        let id = Uuid::now_v7();
        let plain = serde_json::to_vec(&rendered).map_err(Error::internal)?;
        let (body, sealed) = match (&self.master, mail.live_link) {
            (Some(key), true) => (key.seal(&plain, &aad(id))?, true),
            _ => (plain, false),
        };
        let message_id = format!("<{id}@{}>", self.domain);
        rows::enqueue(
            conn,
            &NewOutboxRow {
                id,
                create_time: now,
                recipient: &mail.to,
                subject: &rendered.subject,
                kind: &mail.kind,
                body: &body,
                body_sealed: sealed,
                live_link: mail.live_link,
                message_id: &message_id,
                next_attempt_time: now,
            },
        )
        .await?;
        Ok(id)
    }

    /// Wakes the sender of this process (after a commit that queued mail).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when [`Mailer::wake`] was called (or had been since the last wait).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// The message of an outbox row, as sent.
    fn message(&self, row: &OutboxRow) -> Result<Message> {
        let plain = if row.body_sealed {
            let key = self.master.as_ref().ok_or_else(|| {
                Error::internal("a sealed mail body needs AUTHD_MASTER_KEY, which is not set")
            })?;
            key.open(&row.body, &aad(row.id))?
        } else {
            row.body.clone()
        };
        let body: Rendered = serde_json::from_slice(&plain)
            .map_err(|e| Error::internal(format!("mail body of {}: {e}", row.id)))?;
        let to: Mailbox = row
            .recipient
            .parse()
            .map_err(|e| Error::invalid(format!("not a mail address: {e}")))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(body.subject)
            .message_id(Some(row.message_id.clone()))
            .date(row.create_time.into())
            .multipart(MultiPart::alternative_plain_html(body.text, body.html))
            .map_err(|e| Error::internal(format!("building mail {}: {e}", row.id)))
    }

    /// One round of the sender: claims due messages and delivers them. Never sends a claimed
    /// message twice in a round; a message claimed by another sender is not seen here until its
    /// lease ends.
    pub async fn deliver_due(&self, pool: &Pool, clock: &SharedClock) -> Result<DeliveryReport> {
        let mut report = DeliveryReport::default();
        let now = clock.now();
        let lease = chrono::Duration::from_std(CLAIM_LEASE).map_err(Error::internal)?;
        let claimed = {
            let mut conn = db::conn(pool).await?;
            rows::claim(&mut conn, now, now + lease, CLAIM_BATCH).await?
        };
        for row in claimed {
            let attempts = u32::try_from(row.attempts).unwrap_or(u32::MAX);
            let outcome = match self.message(&row) {
                Ok(message) => self
                    .transport
                    .deliver(row.id, &message)
                    .await
                    .map_err(|e| (e.message, e.permanent)),
                // A message that cannot be built (a bad address, a body that cannot be opened)
                // will not get better.
                Err(e) => Err((e.to_string(), true)),
            };
            let now = clock.now();
            let mut conn = db::conn(pool).await?;
            match outcome {
                Ok(()) => {
                    rows::mark_sent(&mut conn, row.id, now).await?;
                    metrics::counter!(m::MAIL_SENT).increment(1);
                    tracing::info!(id = %row.id, kind = %row.kind, attempts, "mail sent");
                    report.sent += 1;
                }
                Err((error, permanent)) => {
                    let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
                    metrics::counter!(m::MAIL_SEND_FAILURES).increment(1);
                    if permanent || attempts >= self.settings.max_attempts {
                        rows::mark_failed(&mut conn, row.id, now, &error).await?;
                        metrics::counter!(m::MAIL_FAILED).increment(1);
                        tracing::warn!(id = %row.id, kind = %row.kind, attempts, %error,
                            "mail delivery failed for good; the message is marked failed");
                        report.failed += 1;
                    } else {
                        let delay =
                            chrono::Duration::from_std(backoff(self.settings.retry_base, attempts))
                                .map_err(Error::internal)?;
                        rows::mark_retry(&mut conn, row.id, now + delay, &error).await?;
                        tracing::info!(id = %row.id, kind = %row.kind, attempts, %error,
                            retry_in = ?delay.to_std().unwrap_or_default(), "mail delivery failed; will retry");
                        report.retried += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Records the outbox depth and the age of its oldest waiting message as gauges.
    pub async fn record_depth(&self, pool: &Pool, now: DateTime<Utc>) -> Result<()> {
        let mut conn = db::conn(pool).await?;
        let d = rows::depth(&mut conn).await?;
        metrics::gauge!(m::MAIL_OUTBOX_DEPTH).set(d.waiting as f64);
        let age = d
            .oldest
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        metrics::gauge!(m::MAIL_OLDEST_UNSENT).set(age);
        Ok(())
    }

    /// Deletes messages sent or failed longer than `AUTHD_MAIL_RETENTION` ago.
    pub async fn prune(&self, pool: &Pool, now: DateTime<Utc>) -> Result<usize> {
        let retention =
            chrono::Duration::from_std(self.settings.retention).map_err(Error::internal)?;
        let mut conn = db::conn(pool).await?;
        Ok(rows::prune(&mut conn, now - retention).await?)
    }
}

impl Authd {
    /// The outbox.
    pub fn mailer(&self) -> &Arc<Mailer> {
        &self.mailer
    }

    /// Queues one message on its own (its own connection and commit) and wakes the sender.
    pub async fn queue_mail(&self, mail: &Mail) -> Result<Uuid> {
        let mut conn = db::conn(&self.pool).await?;
        let id = self.mailer.queue(&mut conn, mail, self.now()).await?;
        drop(conn);
        self.mailer.wake();
        Ok(id)
    }

    /// One round of the sender (see [`Mailer::deliver_due`]).
    pub async fn deliver_mail(&self) -> Result<DeliveryReport> {
        self.mailer.deliver_due(&self.pool, &self.clock).await
    }

    /// Outbox gauges and the retention prune, for the sender loop.
    pub async fn mail_housekeeping(&self, prune: bool) -> Result<usize> {
        let now = self.now();
        self.mailer.record_depth(&self.pool, now).await?;
        if prune {
            return self.mailer.prune(&self.pool, now).await;
        }
        Ok(0)
    }
}
