//! The background loops of a serving process: pruning, the sweep of refresh-token replays, the
//! revocation and service-key views, the reload of signing keys, and the mail sender. Each ends when `stop` changes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::{Authd, views};

/// How often expired audit events and long-ended sessions are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// How often the sealed successors of refresh-token grace replays are cleared once their window
/// is over.
const REPLAY_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often the signing keys are re-read, so a rotation on any replica is picked up.
pub const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Prunes audit events past `AUTHD_AUDIT_RETENTION` and sessions that ended over a day ago, shortly
/// after start and then hourly. Every replica does it; the deletes are idempotent.
pub(crate) async fn prune_loop(svc: Arc<Authd>, mut stop: watch::Receiver<bool>) {
    let mut wait = Duration::from_secs(30);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        wait = PRUNE_INTERVAL;
        match svc.prune().await {
            Ok((events, sessions)) if events + sessions > 0 => {
                tracing::info!(events, sessions, "pruned old audit events and sessions");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning failed; will retry"),
        }
    }
}

/// Clears, every [`REPLAY_SWEEP_INTERVAL`], what grace replays of refresh tokens needed once their
/// window is over (issue F, 4b: nothing of a successor stays in the database after it). One indexed
/// UPDATE (a partial index holds only the sessions inside a window); every replica does it.
pub(crate) async fn replay_sweep_loop(svc: Arc<Authd>, mut stop: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REPLAY_SWEEP_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        match svc.clear_replays().await {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "clearing expired refresh replays failed; will retry");
            }
            Err(_) => {}
        }
    }
}

/// Polls the revocation and service-key views every [`views::SYNC_INTERVAL`] (see
/// [`crate::domain::views`]). A failure is logged once per outage; while polls fail the views go
/// stale and token checks fail closed.
pub(crate) async fn view_sync_loop(svc: Arc<Authd>, mut stop: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(views::SYNC_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        match svc.sync_views().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("revocation view refreshed again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "refreshing the revocation view failed; token checks fail closed once it is stale");
            }
            Err(_) => {}
        }
    }
}

/// Re-reads the signing keys every [`KEY_RELOAD_INTERVAL`]: a rotation by any replica, or a new key
/// reaching its activation time, takes effect within seconds. Also trims the rate limiter's memory.
pub(crate) async fn key_reload_loop(svc: Arc<Authd>, mut stop: watch::Receiver<bool>) {
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(KEY_RELOAD_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = svc.reload_keys().await {
            tracing::warn!(error = %e, "reloading signing keys failed; keeping the current ones");
        }
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(30) {
            svc.rate_limit_housekeeping();
        }
    }
}

/// The password-reset job (see [`crate::domain::password_reset`]): turns RequestPasswordReset
/// requests into reset mails, at once when this process took a request, else every
/// `AUTHD_MAIL_POLL_INTERVAL` (requests taken by other replicas). Every replica runs it; a request
/// is claimed by one. A failure is logged once per outage.
pub(crate) async fn password_reset_loop(svc: Arc<Authd>, mut stop: watch::Receiver<bool>) {
    let poll = svc.mailer().settings().poll_interval;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = svc.password_reset_woken() => {}
            _ = stop.changed() => return,
        }
        match svc.process_password_resets().await {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("password reset job works again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "password reset job round failed; will retry");
            }
            Err(_) => {}
        }
    }
}

/// How often the sender records the outbox gauges.
const MAIL_GAUGE_INTERVAL: Duration = Duration::from_secs(15);

/// The mail sender (see [`crate::api::mail`]): every `AUTHD_MAIL_POLL_INTERVAL`, or at once when
/// this process queued mail, turns pending ResendVerification requests into messages
/// ([`Authd::process_verification_requests`]), then claims due messages and delivers them. Every replica runs it; a
/// message is claimed by one. Also records the outbox gauges and prunes old messages hourly.
/// A failure is logged once per outage.
pub(crate) async fn mail_sender_loop(svc: Arc<Authd>, mut stop: watch::Receiver<bool>) {
    let poll = svc.mailer().settings().poll_interval;
    let mut failing = false;
    let mut gauges_at = tokio::time::Instant::now();
    let mut prune_at = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = svc.mailer().woken() => {}
            _ = stop.changed() => return,
        }
        // ResendVerification requests become messages first, so that they go out in this round.
        if let Err(e) = svc.process_verification_requests().await
            && !failing
        {
            tracing::warn!(error = %e, "handling verification requests failed; will retry");
        }
        // Deliver until a round finds nothing more to do (a batch may leave more due messages).
        loop {
            match svc.deliver_mail().await {
                Ok(report) => {
                    if failing {
                        failing = false;
                        tracing::info!("mail sender works again");
                    }
                    if report.sent + report.retried + report.failed
                        < crate::api::mail::CLAIM_BATCH as usize
                    {
                        break;
                    }
                }
                Err(e) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %e, "mail sender round failed; will retry");
                    }
                    break;
                }
            }
            if *stop.borrow() {
                return;
            }
        }
        let now = tokio::time::Instant::now();
        if now >= gauges_at {
            gauges_at = now + MAIL_GAUGE_INTERVAL;
            let prune = now >= prune_at;
            if prune {
                prune_at = now + PRUNE_INTERVAL;
            }
            match svc.mail_housekeeping(prune).await {
                Ok(n) if n > 0 => tracing::info!(messages = n, "pruned old outbox messages"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox gauges or prune failed; will retry"),
            }
        }
    }
}
