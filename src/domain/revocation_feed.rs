//! The revocation feed: what each poll of the revocation view added, in order, for the
//! WatchRevocations streams (`domain::watch`) to push to verifiers.
//!
//! [`Feed`] is a ring log of *records*, one per poll that found new (or longer-kept) tombstones,
//! each numbered by a sequence number and carrying the view's database watermark after that poll
//! (the transaction-id horizon of [`crate::db::sessions::revocations_since`]: every tombstone
//! below it has been read by this poll or an earlier one). A stream remembers the last sequence
//! number it delivered and reads the records after it; [`Feed::subscribe`] wakes it (a
//! `tokio::sync::watch` channel of the latest sequence number, so one poll wakes every stream once,
//! however many records it missed).
//!
//! The ring holds at most [`RING_CAPACITY`] tombstones (the newest record is always kept, whatever
//! its size). A stream whose position fell off the ring gets [`Catchup::FellBehind`] and must start
//! over with a fresh snapshot of the view: never a gap.
//!
//! This is a leaf module (no imports from the rest of the crate), so that the view
//! (`domain::views`), which appends, and the streams, which read, both import it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

/// How many tombstones the ring keeps for streams that are behind: a burst of this many
/// revocations reaches every stream without a new snapshot. About 40 bytes each.
pub const RING_CAPACITY: usize = 131_072;

/// A session that ended, and until when its access tokens may be presented (the tombstone's
/// `keep_until`: the `exp` of its last access token).
pub type Tombstone = (Uuid, DateTime<Utc>);

/// What one poll of the view added.
#[derive(Debug)]
pub struct Record {
    pub seq: u64,
    /// The view's database watermark after this poll.
    pub watermark: i64,
    pub ended: Vec<Tombstone>,
}

/// Where the feed stands: the last sequence number and the view's watermark after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub watermark: i64,
}

/// What a stream at some position has to deliver next.
#[derive(Debug)]
pub enum Catchup {
    /// The records after the position, oldest first (empty: nothing new), and where the feed
    /// stands now.
    Records(Vec<Arc<Record>>, Position),
    /// Records after the position have left the ring: take a fresh snapshot.
    FellBehind,
}

#[derive(Debug)]
struct State {
    records: VecDeque<Arc<Record>>,
    /// Tombstones held by `records`.
    held: usize,
    at: Position,
}

/// See the module docs.
#[derive(Debug)]
pub struct Feed {
    state: Mutex<State>,
    latest: watch::Sender<u64>,
    capacity: usize,
}

impl Default for Feed {
    fn default() -> Self {
        Self::with_capacity(RING_CAPACITY)
    }
}

impl Feed {
    /// An empty feed that keeps at most `capacity` tombstones.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                records: VecDeque::new(),
                held: 0,
                at: Position {
                    seq: 0,
                    watermark: 0,
                },
            }),
            latest: watch::channel(0).0,
            capacity: capacity.max(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a poll: the tombstones it added (none: only the watermark moves, no record and no
    /// wake-up) and the view's watermark after it. The view calls this while it holds its own lock,
    /// so that a snapshot of the view and the feed's position agree.
    pub fn publish(&self, ended: Vec<Tombstone>, watermark: i64) {
        let mut s = self.state();
        s.at.watermark = s.at.watermark.max(watermark);
        if ended.is_empty() {
            return;
        }
        s.at.seq += 1;
        let record = Record {
            seq: s.at.seq,
            watermark: s.at.watermark,
            ended,
        };
        s.held += record.ended.len();
        s.records.push_back(Arc::new(record));
        while s.held > self.capacity && s.records.len() > 1 {
            if let Some(old) = s.records.pop_front() {
                s.held -= old.ended.len();
            }
        }
        let seq = s.at.seq;
        drop(s);
        self.latest.send_replace(seq);
    }

    /// Where the feed stands now.
    pub fn position(&self) -> Position {
        self.state().at
    }

    /// A receiver that changes whenever a record is added.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// What a stream that has delivered everything up to `seq` must deliver next.
    pub fn since(&self, seq: u64) -> Catchup {
        let s = self.state();
        if seq >= s.at.seq {
            return Catchup::Records(Vec::new(), s.at);
        }
        match s.records.front() {
            Some(first) if first.seq <= seq + 1 => {
                let skip = usize::try_from(seq + 1 - first.seq).unwrap_or(usize::MAX);
                Catchup::Records(s.records.iter().skip(skip).cloned().collect(), s.at)
            }
            _ => Catchup::FellBehind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u128) -> Tombstone {
        (Uuid::from_u128(n), Utc::now())
    }

    fn seqs(c: &Catchup) -> Vec<u64> {
        match c {
            Catchup::Records(r, _) => r.iter().map(|r| r.seq).collect(),
            Catchup::FellBehind => vec![u64::MAX],
        }
    }

    #[test]
    fn records_are_read_in_order_from_a_position() {
        let f = Feed::with_capacity(10);
        f.publish(vec![], 5);
        assert_eq!(
            f.position(),
            Position {
                seq: 0,
                watermark: 5
            }
        );
        f.publish(vec![t(1)], 7);
        f.publish(vec![t(2), t(3)], 6);
        assert_eq!(
            f.position(),
            Position {
                seq: 2,
                watermark: 7
            },
            "the watermark never goes back"
        );
        assert_eq!(seqs(&f.since(0)), [1, 2]);
        assert_eq!(seqs(&f.since(1)), [2]);
        assert_eq!(seqs(&f.since(2)), Vec::<u64>::new());
        assert_eq!(seqs(&f.since(9)), Vec::<u64>::new());
    }

    #[test]
    fn a_stream_behind_the_ring_falls_behind_never_skips() {
        let f = Feed::with_capacity(3);
        f.publish(vec![t(1), t(2)], 1); // seq 1
        f.publish(vec![t(3), t(4)], 2); // seq 2: 4 held > 3, seq 1 goes
        assert_eq!(seqs(&f.since(1)), [2]);
        assert!(matches!(f.since(0), Catchup::FellBehind));
        // One record larger than the ring is still kept, alone.
        f.publish((10..20).map(t).collect(), 3); // seq 3
        assert_eq!(seqs(&f.since(2)), [3]);
        assert!(matches!(f.since(1), Catchup::FellBehind));
    }

    #[tokio::test]
    async fn subscribers_wake_on_records_only() {
        let f = Feed::default();
        let mut rx = f.subscribe();
        f.publish(vec![], 1);
        assert!(!rx.has_changed().unwrap());
        f.publish(vec![t(1)], 2);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 1);
    }
}
