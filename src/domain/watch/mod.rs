//! WatchRevocations: the revocation view and the signing keys, pushed to the services that verify
//! access tokens locally. A [`RevocationWatch`] is one stream's state; the grpc layer maps its
//! [`WatchMessage`]s to protobuf and ends the stream at the drain.
//!
//! **Snapshot.** A stream without a usable resume token starts with every tombstone the view holds
//! (the sessions whose access tokens may still be presented, each with its `keep_until`) and the
//! published keys, in messages of at most [`MAX_SESSIONS_PER_MESSAGE`] sessions; the last one has
//! `snapshot_complete`. The snapshot is taken under the view's lock together with the feed's
//! position, so the stream continues exactly where it ends.
//!
//! **Live.** Each poll of the view (every 250 ms, see [`crate::domain::views`]) publishes what it
//! added to the [`Feed`](crate::domain::revocation_feed::Feed), which wakes every stream; a stream
//! reads the records after its position and sends them in one message (or several, for a large
//! burst). A stream whose position fell off the ring (its client reads too slowly) gets a fresh
//! snapshot, never a gap.
//!
//! **Heartbeat.** Without anything else to send, a stream sends an empty message every
//! [`HEARTBEAT_INTERVAL`] while the view is fresh, and none while it is stale, so a client knows
//! within seconds that it may be missing revocations.
//!
//! **Keys.** When the published key set changes (a rotation on any replica, or a key retiring,
//! as the key reload sees it), the next message carries the whole set.
//!
//! **Resume.** Every message carries a signed resume token ([`resume`]): the database watermark
//! below which the stream has delivered every tombstone, and the fingerprint of the keys it
//! delivered. Any replica continues from it: it takes its own feed position first, then reads the
//! tombstones at or above the watermark back from the database and sends them (duplicates are
//! harmless), then follows its feed from that position. Whatever commits after the database read
//! is published by a later poll of its own view, so nothing falls between the two. A token that
//! is not a resume point (see [`resume::verify`]), or a failed read, gets a fresh snapshot: a
//! bad token is never an error.
//!
//! **Limit.** At most `AUTHD_WATCH_MAX_STREAMS` streams per replica; beyond it RESOURCE_EXHAUSTED.

pub mod resume;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::db::sessions;
use crate::domain::revocation_feed::{Catchup, Record, Tombstone};
use crate::domain::tokens::PublicJwk;
use crate::domain::views::SYNC_INTERVAL;
use crate::domain::{Authd, Error, Result};

pub use resume::{RESUME_SECRET, ResumePoint};

/// How often a stream with nothing else to send sends an empty message (while the view is fresh).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// The most sessions one message carries (about 55 bytes each on the wire, about 100 in memory as
/// protobuf). Small, because what a burst costs is what every stream holds at once: a stream keeps
/// only the message in hand and the one queued as its own, the rest stays in the feed's shared
/// records (see BENCHMARKS.md, "WatchRevocations").
pub const MAX_SESSIONS_PER_MESSAGE: usize = 250;

/// One message of a stream.
#[derive(Debug, Clone, Default)]
pub struct WatchMessage {
    /// Sessions that ended, each with the `exp` of its last access token.
    pub revoked: Vec<Tombstone>,
    /// The whole published key set, when it is part of a snapshot or changed; `None` = unchanged.
    pub keys: Option<Vec<PublicJwk>>,
    pub snapshot_complete: bool,
    pub resume_token: String,
}

impl WatchMessage {
    /// A message with no sessions and no keys: a heartbeat.
    pub fn is_heartbeat(&self) -> bool {
        self.revoked.is_empty() && self.keys.is_none() && !self.snapshot_complete
    }
}

/// A place among this replica's open streams; given back when the stream ends.
#[derive(Debug)]
struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| {
            metrics::gauge!(crate::metric_names::WATCH_STREAMS).increment(1.0);
            Self(open.clone())
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(crate::metric_names::WATCH_STREAMS).decrement(1.0);
    }
}

/// One WatchRevocations stream: see the module docs. [`RevocationWatch::next`] never ends the
/// stream; the caller does (client gone, drain).
#[derive(Debug)]
pub struct RevocationWatch {
    svc: Arc<Authd>,
    pending: VecDeque<Batch>,
    /// The feed position delivered (or queued in `pending`).
    seq: u64,
    /// Every tombstone below this watermark has been delivered (or queued).
    watermark: i64,
    /// The key set delivered.
    keys: u64,
    feed: watch::Receiver<u64>,
    keys_changed: watch::Receiver<u64>,
    /// The version of `keys_changed` last looked at.
    keys_version: u64,
    next_heartbeat: Instant,
    _slot: StreamSlot,
}

impl Authd {
    /// Opens a stream for a caller already authenticated with [`Authd::authenticate_verifier`]:
    /// a snapshot, or (with a token this deployment issued, recently enough) the tombstones since
    /// the token's watermark. RESOURCE_EXHAUSTED when `AUTHD_WATCH_MAX_STREAMS` streams are open.
    pub async fn watch_revocations(
        self: &Arc<Self>,
        resume_token: &str,
    ) -> Result<RevocationWatch> {
        let Some(slot) =
            StreamSlot::take(&self.watch_streams, self.settings.access.watch_max_streams)
        else {
            return Err(Error::ResourceExhausted {
                message: "too many WatchRevocations streams on this server; retry later".into(),
                retry_after: Some(Duration::from_secs(5)),
            });
        };
        let mut w = RevocationWatch {
            svc: self.clone(),
            pending: VecDeque::new(),
            seq: 0,
            watermark: 0,
            keys: 0,
            feed: self.views.feed().subscribe(),
            keys_changed: self.keys_changed.subscribe(),
            keys_version: 0,
            next_heartbeat: Instant::now() + HEARTBEAT_INTERVAL,
            _slot: slot,
        };
        w.feed.borrow_and_update();
        let point = resume::verify(&self.resume_secret, resume_token, self.now());
        match point {
            Some(point) => w.resume(point).await,
            None => w.snapshot(),
        }
        Ok(w)
    }

    /// How many WatchRevocations streams are open on this replica.
    pub fn watch_streams(&self) -> usize {
        self.watch_streams.load(Ordering::Acquire)
    }
}

impl RevocationWatch {
    /// The next message to send: queued ones first, then what the feed and the keys have, else a
    /// heartbeat when due and the view is fresh. Cancel-safe: it awaits only wake-ups and timers,
    /// and changes the stream's state only after they fire.
    pub async fn next(&mut self) -> WatchMessage {
        loop {
            if let Some(m) = self.take_message() {
                self.next_heartbeat = Instant::now() + HEARTBEAT_INTERVAL;
                return m;
            }
            self.catch_up();
            if !self.pending.is_empty() {
                continue;
            }
            tokio::select! {
                () = changed(&mut self.feed) => {}
                () = changed(&mut self.keys_changed) => {}
                () = tokio::time::sleep_until(self.next_heartbeat) => {
                    // The feed's watermark moves with every poll: the heartbeat's token follows it.
                    self.catch_up();
                    if !self.pending.is_empty() {
                        continue;
                    }
                    if self.svc.views.check_fresh().is_ok() {
                        let m = self.message(Vec::new(), None, false, true);
                        self.next_heartbeat = Instant::now() + HEARTBEAT_INTERVAL;
                        return m;
                    }
                    // Stale: no heartbeat; look again soon, so heartbeats resume with the view.
                    self.next_heartbeat = Instant::now() + SYNC_INTERVAL;
                }
            }
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.svc.now()
    }

    /// A message with this stream's current resume token (`resumable`), or one that resumes
    /// nowhere (inside a snapshot).
    fn message(
        &self,
        revoked: Vec<Tombstone>,
        keys: Option<Vec<PublicJwk>>,
        snapshot_complete: bool,
        resumable: bool,
    ) -> WatchMessage {
        let secret = &self.svc.resume_secret;
        let resume_token = if resumable {
            resume::sign(
                secret,
                &ResumePoint {
                    issued: self.now(),
                    watermark: self.watermark,
                    keys: self.keys,
                },
            )
        } else {
            resume::no_resume(secret, self.now())
        };
        WatchMessage {
            revoked,
            keys,
            snapshot_complete,
            resume_token,
        }
    }

    /// The next message of the first queued batch: at most [`MAX_SESSIONS_PER_MESSAGE`] of its
    /// tombstones, copied from the shared records only now, so that a stream never holds more
    /// than one message's worth of its own.
    fn take_message(&mut self) -> Option<WatchMessage> {
        let b = self.pending.front_mut()?;
        let mut out = Vec::new();
        while out.len() < MAX_SESSIONS_PER_MESSAGE && b.record < b.records.len() {
            let ended = &b.records[b.record].ended;
            let take = (MAX_SESSIONS_PER_MESSAGE - out.len()).min(ended.len() - b.offset);
            if out.capacity() == 0 {
                out.reserve_exact(take);
            }
            out.extend_from_slice(&ended[b.offset..b.offset + take]);
            b.offset += take;
            if b.offset == ended.len() {
                b.record += 1;
                b.offset = 0;
            }
        }
        let done = b.record >= b.records.len();
        let keys = b.keys.take();
        let snapshot = b.snapshot;
        if done {
            // With the batch's last message, the stream's watermark moves to the batch's.
            let watermark = b.watermark;
            self.pending.pop_front();
            self.watermark = self.watermark.max(watermark);
        }
        // Inside a live batch the token keeps the previous watermark (a resume reads the rest
        // again); inside a snapshot it resumes nowhere.
        Some(self.message(out, keys, done && snapshot, done || !snapshot))
    }

    /// The current key set and its fingerprint, marking the key notifications seen.
    fn current_keys(&mut self) -> (Vec<PublicJwk>, u64) {
        self.keys_version = *self.keys_changed.borrow_and_update();
        let keys = self.svc.jwks();
        let fp = resume::keys_fingerprint(&keys);
        (keys, fp)
    }

    /// Queues a fresh snapshot: every tombstone of the view and the keys.
    fn snapshot(&mut self) {
        let (keys, fp) = self.current_keys();
        let (ended, at) = self.svc.views.snapshot();
        self.seq = at.seq;
        self.keys = fp;
        self.pending.clear();
        self.pending.push_back(Batch::new(
            vec![Arc::new(Record {
                seq: at.seq,
                watermark: at.watermark,
                ended,
            })],
            Some(keys),
            true,
            at.watermark,
        ));
    }

    /// Continues from a resume point: this replica's feed position first, then what the database
    /// holds at or above the point's watermark (see the module docs).
    async fn resume(&mut self, point: ResumePoint) {
        let at = self.svc.views.feed().position();
        let since = self.now() - self.svc.views.retention();
        let read = async {
            let mut conn = self.svc.conn().await?;
            Ok::<_, Error>(sessions::revocations_since(&mut conn, point.watermark, since).await?)
        };
        let batch = match read.await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "WatchRevocations could not resume from the database; sending a snapshot");
                return self.snapshot();
            }
        };
        self.seq = at.seq;
        self.watermark = point.watermark;
        let (keys, fp) = self.current_keys();
        let keys = (fp != point.keys).then_some(keys);
        self.keys = fp;
        // One message at once, even if empty: the client knows it is resumed.
        self.pending.push_back(Batch::new(
            vec![Arc::new(Record {
                seq: at.seq,
                watermark: batch.watermark,
                ended: batch.ended,
            })],
            keys,
            false,
            batch.watermark,
        ));
    }

    /// Queues what the feed published after this stream's position, and the keys if they changed.
    fn catch_up(&mut self) {
        self.feed.borrow_and_update();
        // By version, not `has_changed`: the wait in `next` has already marked a change seen.
        let keys = if *self.keys_changed.borrow() != self.keys_version {
            let (keys, fp) = self.current_keys();
            (fp != self.keys).then(|| {
                self.keys = fp;
                keys
            })
        } else {
            None
        };
        match self.svc.views.feed().since(self.seq) {
            Catchup::FellBehind => {
                tracing::info!(
                    "a WatchRevocations stream fell behind the revocation feed; sending a fresh snapshot"
                );
                self.snapshot();
            }
            Catchup::Records(records, at) => {
                self.seq = at.seq;
                if records.is_empty() && keys.is_none() {
                    self.watermark = self.watermark.max(at.watermark);
                } else {
                    self.pending
                        .push_back(Batch::new(records, keys, false, at.watermark));
                }
            }
        }
    }
}

/// Tombstones (shared records of the feed, or a snapshot) queued for one stream, sent in messages
/// of at most [`MAX_SESSIONS_PER_MESSAGE`].
#[derive(Debug)]
struct Batch {
    records: Vec<Arc<Record>>,
    /// The next tombstone to send: `records[record].ended[offset]`.
    record: usize,
    offset: usize,
    /// Keys to send with the first message.
    keys: Option<Vec<PublicJwk>>,
    /// A snapshot: its last message has `snapshot_complete`, the others resume nowhere.
    snapshot: bool,
    /// The stream's watermark once the last message is out.
    watermark: i64,
}

impl Batch {
    fn new(
        records: Vec<Arc<Record>>,
        keys: Option<Vec<PublicJwk>>,
        snapshot: bool,
        watermark: i64,
    ) -> Self {
        Self {
            records,
            record: 0,
            offset: 0,
            keys,
            snapshot,
            watermark,
        }
    }
}

/// Resolves when `rx` changes; never, if its sender is gone.
async fn changed(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
