//! The background chores of the domain: pruning old rows, clearing spent grace-replay boxes, and
//! forgetting idle rate-limit buckets (and expired second-factor challenges).

use crate::db::{audit as audit_db, sessions};
use crate::domain::authd::chrono_duration;
use crate::domain::throttle;
use crate::domain::{Authd, Result};

impl Authd {
    /// Deletes audit events past the retention, sessions that ended over a day ago, stale throttle
    /// state, and signing keys retired over a day ago.
    /// Returns (events, sessions) pruned.
    pub async fn prune(&self) -> Result<(usize, usize)> {
        const BATCH: i64 = 5000;
        let now = self.now();
        let events_before = now - chrono_duration(self.settings.audit_retention);
        let sessions_before = now - chrono::Duration::days(1);
        let mut conn = self.conn().await?;
        let mut events = 0;
        loop {
            let n = audit_db::prune(&mut conn, events_before, BATCH).await?;
            events += n;
            if (n as i64) < BATCH {
                break;
            }
        }
        let mut ended = 0;
        loop {
            let n = sessions::prune(&mut conn, sessions_before, BATCH).await?;
            ended += n;
            if (n as i64) < BATCH {
                break;
            }
        }
        // Throttle state: failures older than the hourly window, counts idle for a day, slots
        // idle for an hour, known clients without a success for 30 days.
        crate::db::throttle::prune(
            &mut conn,
            crate::db::throttle::PruneBefore {
                failures: now - chrono::Duration::hours(1),
                counts: sessions_before,
                guards: now - chrono::Duration::hours(1),
                known_clients: now - chrono::Duration::days(throttle::KNOWN_CLIENT_DAYS),
            },
        )
        .await?;
        crate::db::keys::delete_retired(&mut conn, sessions_before).await?;
        // Second-factor challenges of logins: a day after they expired.
        crate::db::mfa::prune_challenges(&mut conn, sessions_before).await?;
        // Tombstones go a day after the last access token of their session expired.
        let tombstones_before = now - self.views().retention().max(chrono::Duration::days(1));
        sessions::prune_revocations(&mut conn, tombstones_before).await?;
        Ok((events, ended))
    }

    /// Clears what grace replays needed once their windows are over (the background sweep, every
    /// second): after the window nothing of a successor stays in the database, even sealed.
    pub async fn clear_replays(&self) -> Result<usize> {
        Ok(sessions::clear_replays(&mut *self.conn().await?, self.now()).await?)
    }
}
