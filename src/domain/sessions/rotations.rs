//! Group commit of refresh rotations: concurrent refreshes share one statement and one commit.
//!
//! A refresh's normal case is one guarded single-row UPDATE ([`rotations::rotate`]). Most of what
//! that costs PostgreSQL is per statement and per commit, not per row (100-160 µs of PostgreSQL CPU
//! per lone rotation against 33-42 µs per rotation in a statement of 4-16; BENCHMARKS.md, issue J,
//! fifth pass). So a refresh hands its rotation to [`RotationBatcher`], and a dispatcher task writes
//! whatever has queued as one [`rotations::rotate_many`] (the function `authd_rotate_sessions` of
//! migration 000093, whose plan PostgreSQL keeps per connection):
//!
//! - No timer: a batch is what queued while the previous ones were being written. At low load every
//!   batch is a single rotation and nothing waits; under load batches grow by themselves.
//! - At most `AUTHD_REFRESH_BATCH_WRITERS` batches (default 1) are written at once, each on a
//!   connection of its own, and a batch holds at most `AUTHD_REFRESH_BATCH_MAX` rotations (`1`
//!   turns batching off). One writer gave the most refreshes per CPU in the P4 runs: its batches
//!   are the largest (about 7 rotations at 16 concurrent refreshes, against 4 with two writers).
//! - Every rotation keeps its own guards, so the outcome of each is what its own statement would
//!   have given. The few the batch does not rotate (a replay, reuse, a dead session, two refreshes
//!   of one session in one batch) are judged by the caller exactly as before, under the session's
//!   lock.
//! - If a batch fails (a deadlock with a statement that locks many sessions, a lost connection),
//!   nothing of it was written, and each caller runs its rotation alone, with its own error. If no
//!   connection can be had for it at all, its callers fail with UNAVAILABLE at once, as a lone
//!   refresh would, rather than each wait for a connection again.
//! - A caller that has gone (its deadline passed, the client went away) before its batch is written
//!   is left out of it, so its token stays unspent. If a caller goes while its batch's statement
//!   runs (waiting on a row lock, say), the statement is abandoned as a lone refresh's would be,
//!   and the batch's other callers run alone: a rotation commits only while its caller still waits.

use std::sync::Arc;
use std::task::Poll;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::db::rotations::{self, OwnedRotation, Rotated, Rotation};
use crate::db::{self, DbError, Pool};
use crate::metric_names::{REFRESH_BATCHED_ROTATIONS, REFRESH_BATCHES};

/// Rotations that may wait for a writer; with the queue full, a refresh runs its own statement.
const QUEUE: usize = 4096;

/// What the batch did with one rotation.
pub(in crate::domain) enum Batched {
    /// Rotated: what [`rotations::rotate`] would have returned.
    Rotated(Box<Rotated>),
    /// The guards did not match (or another refresh of the session in the same batch won): what
    /// [`rotations::rotate`] answers with `None`.
    NotRotated,
    /// Not written by a batch (batching is off, the queue is full, or the batch failed): the caller
    /// runs the rotation itself.
    RunAlone,
    /// No database connection could be had for the batch (the pool's wait ran out, or the database
    /// is down): the caller fails with it rather than wait for a connection a second time.
    Unavailable(String),
}

/// Queues rotations for the dispatcher task (see the module docs).
pub(in crate::domain) struct RotationBatcher {
    queue: Option<mpsc::Sender<Job>>,
}

struct Job {
    rotation: OwnedRotation,
    reply: oneshot::Sender<Batched>,
}

impl RotationBatcher {
    /// Starts the dispatcher on the current tokio runtime, batching up to `max_rows` rotations
    /// per statement, with up to `writers` statements at once. With `max_rows <= 1` (or outside a
    /// runtime) nothing is batched.
    pub(in crate::domain) fn start(pool: Pool, max_rows: usize, writers: usize) -> Self {
        let queue = match tokio::runtime::Handle::try_current() {
            Ok(runtime) if max_rows > 1 => {
                let (queue, jobs) = mpsc::channel(QUEUE);
                runtime.spawn(dispatch(pool, jobs, max_rows, writers.max(1)));
                Some(queue)
            }
            _ => None,
        };
        RotationBatcher { queue }
    }

    /// Rotates in the next batch. [`Batched::RunAlone`] when batching is off, the queue is full,
    /// or the batch failed.
    pub(in crate::domain) async fn rotate(&self, rotation: &Rotation<'_>) -> Batched {
        let Some(queue) = &self.queue else {
            return Batched::RunAlone;
        };
        let rotation = rotation.to_owned_rotation();
        let (reply, answer) = oneshot::channel();
        if queue.try_send(Job { rotation, reply }).is_err() {
            return Batched::RunAlone;
        }
        answer.await.unwrap_or(Batched::RunAlone)
    }
}

/// Takes a writer, then everything queued (up to `max_rows`), and writes it in a task of its own.
/// Ends when the [`RotationBatcher`] is dropped.
async fn dispatch(pool: Pool, mut jobs: mpsc::Receiver<Job>, max_rows: usize, writers: usize) {
    let writers = Arc::new(Semaphore::new(writers));
    loop {
        let Ok(writer) = writers.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = jobs.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_rows {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            write(&pool, batch).await;
            drop(writer);
        });
    }
}

/// Writes one batch and answers each of its callers.
async fn write(pool: &Pool, mut batch: Vec<Job>) {
    batch.retain(|job| !job.reply.is_closed());
    if batch.is_empty() {
        return;
    }
    let (rotations, mut replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|j| (j.rotation, j.reply)).unzip();
    let mut conn = match db::conn(pool).await {
        Ok(conn) => conn,
        Err(e) => {
            let reason = match e {
                DbError::Unavailable(reason) => reason,
                other => other.to_string(),
            };
            for reply in replies {
                let _ = reply.send(Batched::Unavailable(reason.clone()));
            }
            return;
        }
    };
    let written = {
        let statement = conn.guarded(async |c| rotations::rotate_many(c, &rotations).await);
        // Resolves when any caller has gone (its deadline passed, its client went away).
        let caller_gone = std::future::poll_fn(|cx| {
            if replies.iter_mut().any(|r| r.poll_closed(cx).is_ready()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::select! {
            written = statement => written.map_err(Some),
            // A gone caller's rotation must not be committed (its client never learns the
            // successor; with no grace window, its retry would be reuse). Dropping the
            // statement closes or rolls back its connection (`db::Conn`), as for a lone
            // refresh; the callers still waiting each run alone, under their own deadlines.
            () = caller_gone => Err(None),
        }
    };
    match written {
        Ok(rotated) => {
            metrics::counter!(REFRESH_BATCHES).increment(1);
            metrics::counter!(REFRESH_BATCHED_ROTATIONS).increment(rotations.len() as u64);
            let mut answers: Vec<Batched> = replies.iter().map(|_| Batched::NotRotated).collect();
            for (i, r) in rotated {
                if let Some(answer) = answers.get_mut(i) {
                    *answer = Batched::Rotated(Box::new(r));
                }
            }
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        Err(failure) => {
            match failure {
                Some(e) => tracing::warn!(
                    error = %e,
                    rotations = rotations.len(),
                    "a batch of refresh rotations failed; each runs alone"
                ),
                None => tracing::debug!(
                    rotations = rotations.len(),
                    "a caller left while its batch of refresh rotations ran; the batch was \
                     abandoned and the others run alone"
                ),
            }
            for reply in replies {
                let _ = reply.send(Batched::RunAlone);
            }
        }
    }
}
