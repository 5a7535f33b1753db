//! The background chores of the domain: pruning old rows, clearing spent grace-replay boxes, and
//! forgetting idle rate-limit buckets (and expired second-factor challenges).
//!
//! The prune (issue J) costs nothing when there is nothing to prune: audit events go by whole
//! weekly partitions (a `DROP`), the rest of the straddling week by a primary-key range, sessions
//! by their end-time index; one replica at a time, under an advisory lock.

use crate::db::{audit as audit_db, sessions};
use crate::domain::authd::chrono_duration;
use crate::domain::throttle;
use crate::domain::{Authd, Result};

impl Authd {
    /// Deletes audit events past the retention, sessions that ended over a day ago, stale throttle
    /// state, signing keys retired over a day ago, mailed tokens expired over a day ago, and
    /// ResendVerification requests handled over a day ago. One replica at a time: the others find
    /// the advisory lock [`crate::db::PRUNE_LOCK_KEY`] taken and skip this run (returning zeros).
    /// Returns (events, sessions) pruned.
    pub async fn prune(&self) -> Result<(usize, usize)> {
        let mut conn = self.conn().await?;
        if !crate::db::try_advisory_lock(&mut conn, crate::db::PRUNE_LOCK_KEY).await? {
            tracing::debug!("another replica is pruning; skipped");
            return Ok((0, 0));
        }
        let result = self.prune_locked(&mut conn).await;
        // On an error the connection may be broken, which released the lock anyway.
        let unlocked = crate::db::advisory_unlock(&mut conn, crate::db::PRUNE_LOCK_KEY).await;
        let pruned = result?;
        unlocked?;
        Ok(pruned)
    }

    async fn prune_locked(&self, conn: &mut crate::db::PgConn) -> Result<(usize, usize)> {
        const BATCH: i64 = 5000;
        let now = self.now();
        let events_before = now - chrono_duration(self.settings.audit_retention);
        let sessions_before = now - chrono::Duration::days(1);
        // Whole weekly partitions first (a DROP each), then the few events of the partition
        // that straddles the bound.
        let dropped = audit_db::maintain_partitions(conn, now, events_before).await?;
        let mut events = usize::try_from(dropped).unwrap_or(0);
        loop {
            let n = audit_db::prune(conn, events_before, BATCH).await?;
            events += n;
            if (n as i64) < BATCH {
                break;
            }
        }
        let mut ended = 0;
        loop {
            let b = sessions::prune(conn, sessions_before, BATCH).await?;
            ended += b.deleted;
            if (b.visited as i64) < BATCH {
                break;
            }
        }
        // Throttle state: failures older than the hourly window, counts idle for a day, slots
        // idle for an hour, known clients without a success for 30 days.
        crate::db::throttle::prune(
            conn,
            crate::db::throttle::PruneBefore {
                failures: now - chrono::Duration::hours(1),
                counts: sessions_before,
                guards: now - chrono::Duration::hours(1),
                known_clients: now - chrono::Duration::days(throttle::KNOWN_CLIENT_DAYS),
            },
        )
        .await?;
        crate::db::keys::delete_retired(conn, sessions_before).await?;
        // Password reset requests, once processed and out of the rate limits' window.
        crate::db::password_resets::prune(
            conn,
            now - chrono::Duration::seconds(crate::domain::password_reset::RATE_WINDOW_SECS),
        )
        .await?;
        // Second-factor challenges of logins: a day after they expired.
        crate::db::mfa::prune_challenges(conn, sessions_before).await?;
        // Tombstones go a day after the last access token of their session expired.
        let tombstones_before = now - self.views().retention().max(chrono::Duration::days(1));
        sessions::prune_revocations(conn, tombstones_before).await?;
        // Mailed tokens a day after they expired; handled ResendVerification requests after a day
        // (their limits count only the last hour).
        crate::db::account_tokens::prune(conn, sessions_before).await?;
        crate::db::verification_requests::prune(conn, sessions_before).await?;
        Ok((events, ended))
    }

    /// Clears what grace replays needed once their windows are over (the background sweep, every
    /// second): after the window nothing of a successor stays in the database, even sealed.
    pub async fn clear_replays(&self) -> Result<usize> {
        Ok(sessions::clear_replays(&mut *self.conn().await?, self.now()).await?)
    }
}
