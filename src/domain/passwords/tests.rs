//! Tests of the password rules, the hasher and the bcrypt pool.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::domain::settings::{BCRYPT_SCHED_IDLE, BcryptPoolSettings};
use crate::domain::{ClientInfo, ClientKey, Error, Result};

use super::hasher::*;
use super::jobs::*;
use super::policy::*;
use super::pool::*;

#[test]
fn rules_apply_to_the_normalized_password() {
    // U+FB01 (ﬁ) normalizes to "fi" under NFKC.
    assert_eq!(normalize("\u{FB01}"), "fi");
    assert!(new_password("password", "short").is_err());
    assert!(new_password("password", "").is_err());
    // 7 ligatures -> 14 characters after NFKC.
    assert!(new_password("password", &"\u{FB01}".repeat(7)).is_ok());
    assert!(new_password("password", &"a".repeat(72)).is_ok());
    assert!(new_password("password", &"a".repeat(73)).is_err());
    // 24 three-byte characters = 72 bytes; 25 = 75 bytes.
    assert!(new_password("password", &"€".repeat(24)).is_ok());
    assert!(new_password("password", &"€".repeat(25)).is_err());
    assert!(new_password("password", &"a".repeat(5000)).is_err());
}

#[test]
fn presented_passwords_that_cannot_match() {
    assert!(presented_password("password", "").is_err());
    assert!(matches!(
        presented_password("password", &"a".repeat(73)),
        Ok(None)
    ));
    assert!(presented_password("password", &"a".repeat(2000)).is_err());
    assert!(matches!(
        presented_password("password", "correct horse"),
        Ok(Some(_))
    ));
}

#[test]
fn strength() {
    assert!(check_strength("password", "password1", 3, &[]).is_err());
    assert!(check_strength("password", "Correct-Horse-Battery-Staple-42", 3, &[]).is_ok());
    // The account's own e-mail is a known word.
    let email = "margaret.hamilton.apollo@example.com";
    assert!(check_strength("password", "margaret.hamilton.apollo", 3, &[email]).is_err());
    assert!(check_strength("password", "password1", 0, &[]).is_ok());
    let err = check_strength("password", "qwertyuiop", 3, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("too weak"), "{err}");
}

#[test]
fn costs() {
    assert_eq!(hash_cost("$2b$04$abcdefghijklmnopqrstuv"), Some(4));
    assert_eq!(hash_cost("$2y$12$x"), Some(12));
    assert_eq!(hash_cost("garbage"), None);
}

fn options(threads: usize, queue: usize) -> PoolOptions {
    PoolOptions {
        threads,
        queue,
        nice: 10,
        deadline: Duration::from_secs(10),
    }
}

/// A caller with no known address (the shared "unknown" queue) and the default deadline.
fn anon() -> ClientInfo {
    ClientInfo::default()
}

fn from(ip: &str) -> ClientInfo {
    ClientInfo::new(ip.parse().ok(), "")
}

fn key(ip: &str) -> Option<ClientKey> {
    from(ip).key()
}

fn no_deadline(client: Option<ClientKey>) -> Admission {
    Admission {
        client,
        deadline: None,
    }
}

fn is_pool_full(r: &Result<impl std::fmt::Debug>) -> bool {
    matches!(
        r,
        Err(Error::ResourceExhausted { message, retry_after: Some(_) }) if message == POOL_FULL_MESSAGE
    )
}

#[tokio::test]
async fn hash_and_verify() -> Result<()> {
    let h = PasswordHasher::new(4, options(2, 4)).await?;
    let c = anon();
    let hash = h.hash("correct horse battery".into(), &c).await?;
    assert_eq!(hash_cost(&hash), Some(4));
    assert!(
        h.verify(Some("correct horse battery".into()), Some(&hash), &c)
            .await?
    );
    assert!(
        !h.verify(Some("wrong horse battery".into()), Some(&hash), &c)
            .await?
    );
    assert!(
        !h.verify(Some("correct horse battery".into()), None, &c)
            .await?
    );
    assert!(!h.verify(None, Some(&hash), &c).await?);
    assert_eq!(hash_cost(&h.dummy_hash), Some(4));
    // Nothing was cheaper than the configured cost: nothing was padded.
    assert_eq!(h.padded_checks(), 0);
    Ok(())
}

#[tokio::test]
async fn failures_against_cheaper_hashes_are_padded_to_the_configured_cost() -> Result<()> {
    let c = anon();
    let old = PasswordHasher::new(4, options(1, 4)).await?;
    let cheap = old.hash("correct horse battery".into(), &c).await?;
    drop(old);
    let h = PasswordHasher::new(5, options(2, 4)).await?;
    let wrong = || Some("wrong horse battery".to_owned());
    assert!(!h.verify(wrong(), Some(&cheap), &c).await?);
    assert_eq!(h.padded_checks(), 1);
    // A password that cannot match is a failure too.
    assert!(!h.verify(None, Some(&cheap), &c).await?);
    assert_eq!(h.padded_checks(), 2);
    // A success is not padded (the caller upgrades the hash), nor is a failure against a hash
    // at the configured cost, nor an unknown account (the dummy hash has the configured cost).
    assert!(
        h.verify(Some("correct horse battery".into()), Some(&cheap), &c)
            .await?
    );
    let current = h.hash("correct horse battery".into(), &c).await?;
    assert!(!h.verify(wrong(), Some(&current), &c).await?);
    assert!(!h.verify(wrong(), None, &c).await?);
    assert_eq!(h.padded_checks(), 2);
    // The padding ran at the configured cost, and was measured there.
    let state = h.pool.shared.lock();
    assert!(state.run_times.ewma[5].is_some());
    assert!(state.run_times.ewma[4].is_some());
    Ok(())
}

#[tokio::test]
async fn back_to_back_calls_fit_a_pool_without_a_queue() -> Result<()> {
    // A job frees its place before its caller sees the result, so one thread and no queue serve
    // a caller that hashes and verifies one after the other.
    let h = PasswordHasher::new(4, options(1, 0)).await?;
    let c = anon();
    for _ in 0..20 {
        let hash = h.hash("correct horse battery".into(), &c).await?;
        assert!(
            h.verify(Some("correct horse battery".into()), Some(&hash), &c)
                .await?
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_burst_from_one_client_is_served_in_full() -> Result<()> {
    // 24 checks at once from one address on 2 threads: the old rule (8 per thread) refused 6 of
    // them; with a 10 s deadline the pool finishes all of them.
    let h = Arc::new(PasswordHasher::new(4, options(2, 64)).await?);
    let hash = h.hash("correct horse battery".into(), &anon()).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let (h, hash) = (Arc::clone(&h), hash.clone());
        tasks.spawn(async move {
            let c = from("192.0.2.1");
            h.verify(Some("correct horse battery".into()), Some(&hash), &c)
                .await
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        if r.map_err(Error::internal)?? {
            ok += 1;
        }
    }
    assert_eq!(ok, 24);
    Ok(())
}

#[tokio::test]
async fn a_full_client_queue_refuses_at_once_and_other_clients_still_queue() -> Result<()> {
    let h = PasswordHasher::new(4, options(1, 1)).await?;
    let c = anon();
    let hash = h.hash("correct horse battery".into(), &c).await?;
    // The thread runs one hold and the unknown client's queue holds the other.
    let mut running = h.hold()?;
    running.started().await?;
    let mut waiting = h.hold()?;
    let refused = h
        .verify(Some("correct horse battery".into()), Some(&hash), &c)
        .await;
    assert!(is_pool_full(&refused), "{refused:?}");
    assert!(is_pool_full(&h.verify(None, None, &c).await));
    assert!(is_pool_full(
        &h.hash("correct horse battery".into(), &c).await
    ));
    assert!(is_pool_full(&h.hold()));
    // The pre-check (Login's, before its database work) refuses the same, and queues nothing.
    assert!(is_pool_full(&h.precheck(&c)));
    assert!(h.precheck(&from("192.0.2.1")).is_ok());
    assert_eq!(h.waiting(), 1);

    // Another client's queue is empty: its check is admitted and waits its turn.
    let other = h.hold_for(key("192.0.2.1"), Duration::from_millis(1))?;
    assert!(
        h.hold_for(key("192.0.2.1"), Duration::from_millis(1))
            .is_err()
    );

    // Once a thread takes the waiting hold, its place is free and taken again, and then the
    // queue is full again.
    running.release().await?;
    waiting.started().await?;
    let refill = h.hold()?;
    assert!(is_pool_full(
        &h.hash("correct horse battery".into(), &c).await
    ));
    waiting.release().await?;
    other.release().await?;
    refill.release().await?;
    assert!(
        h.verify(Some("correct horse battery".into()), Some(&hash), &c)
            .await?
    );
    Ok(())
}

#[tokio::test]
async fn the_expected_wait_follows_round_robin_order() -> Result<()> {
    let h = PasswordHasher::new(4, options(1, 64)).await?;
    let second = Duration::from_secs(1);
    let mut running = h.hold_for(key("192.0.2.99"), second)?;
    running.started().await?;
    // A has 3 waiting jobs, B has 1, each expected to run 1 s.
    let mut holds = Vec::new();
    for _ in 0..3 {
        holds.push(h.hold_for(key("192.0.2.1"), second)?);
    }
    holds.push(h.hold_for(key("192.0.2.2"), second)?);
    {
        let state = h.pool.shared.lock();
        // As if no time had passed since the running job started: it has 1 s left.
        let now = state.workers[0].map(|r| r.started).ok_or_else(stopped)?;
        // A new client goes after one job of A and one of B: 2 jobs + 1 s.
        assert_eq!(state.expected_wait(0, 1, now), 3.0);
        // B's second job: min(3, 2) of A + B's own 1, + 1 s.
        assert_eq!(state.expected_wait(1, 1, now), 4.0);
        // A's fourth job: all 4 waiting jobs + 1 s.
        assert_eq!(state.expected_wait(3, 1, now), 5.0);
        // Half a second later the running job has half a second left.
        let later = now + Duration::from_millis(500);
        assert_eq!(state.expected_wait(0, 1, later), 2.5);

        // Admission: run time 1 s after a wait of 3 s fits 4 s, not 3.9 s; a refusal reports its wait.
        let c = Admission {
            client: key("192.0.2.3"),
            deadline: Some(now + Duration::from_secs(4)),
        };
        assert_eq!(state.admit(&c, 1.0, 1, 64, now), Ok(3.0));
        let c = Admission {
            deadline: Some(now + Duration::from_millis(3900)),
            ..c
        };
        assert_eq!(
            state.admit(&c, 1.0, 1, 64, now),
            Err(Refusal::Deadline { wait: 3.0 })
        );
        // The per-client cap applies before the deadline.
        let a = Admission {
            client: key("192.0.2.1"),
            deadline: None,
        };
        assert_eq!(
            state.admit(&a, 1.0, 1, 3, now),
            Err(Refusal::ClientQueue { wait: 5.0 })
        );
    }
    // Dropping a hold releases it, whichever job the thread runs.
    drop(holds);
    running.release().await?;
    Ok(())
}

#[tokio::test]
async fn clients_are_served_round_robin() -> Result<()> {
    let h = PasswordHasher::new(4, options(1, 64)).await?;
    let mut gate = h.hold()?;
    gate.started().await?;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut done = Vec::new();
    for (client, name) in [
        ("192.0.2.1", "a1"),
        ("192.0.2.1", "a2"),
        ("192.0.2.1", "a3"),
        ("192.0.2.2", "b1"),
        ("2001:db8:0:1::1", "c1"),
        // The same /64 as c1: the same client.
        ("2001:db8:0:1::2", "c2"),
    ] {
        let order = Arc::clone(&order);
        done.push(h.pool.submit(
            no_deadline(key(client)),
            |_| 0.0,
            move |_| order.lock().unwrap_or_else(|e| e.into_inner()).push(name),
        )?);
    }
    gate.release().await?;
    for d in done {
        d.await.map_err(|_| stopped())?;
    }
    let order = order.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(order, ["a1", "b1", "c1", "a2", "c2", "a3"]);
    Ok(())
}

#[test]
fn run_time_estimates() {
    let mut t = RunTimes::default();
    // Nothing measured: a guess of 0.25 s at cost 12, halving per step down.
    assert_eq!(t.estimate(12), 0.25);
    assert_eq!(t.estimate(10), 0.0625);
    t.record(6, 0.004);
    assert_eq!(t.estimate(6), 0.004);
    // Other costs scale from the nearest measured one.
    assert_eq!(t.estimate(8), 0.016);
    assert_eq!(t.estimate(5), 0.002);
    // A moving average: one slow sample moves it a fifth of the way.
    t.record(6, 0.014);
    assert!((t.estimate(6) - 0.006).abs() < 1e-12);
}

#[tokio::test]
async fn jobs_whose_caller_has_gone_are_skipped() -> Result<()> {
    let h = PasswordHasher::new(4, options(1, 8)).await?;
    let mut hold = h.hold()?;
    hold.started().await?;

    // Queued behind the hold; the first two callers go away before a thread takes their job.
    let ran = Arc::new([
        AtomicBool::new(false),
        AtomicBool::new(false),
        AtomicBool::new(false),
    ]);
    let job = |i: usize| {
        let ran = Arc::clone(&ran);
        move |_: &Meter<'_>| ran[i].store(true, Ordering::SeqCst)
    };
    let who = no_deadline(None);
    drop(h.pool.submit(who, |_| 0.0, job(0))?);
    // A cancelled request: its future is polled once (the job is queued), then dropped.
    let cancelled = tokio::time::timeout(Duration::ZERO, h.pool.run(who, |_| 0.0, job(1))).await;
    assert!(cancelled.is_err(), "the job cannot have run yet");
    // A hash whose caller gives up (a deadline) the same way.
    let gave_up = tokio::time::timeout(
        Duration::ZERO,
        h.hash("correct horse battery".into(), &anon()),
    )
    .await;
    assert!(gave_up.is_err());
    let kept = h.pool.submit(who, |_| 0.0, job(2))?;
    assert_eq!(h.pool.shared.lock().waiting, 4);

    hold.release().await?;
    kept.await.map_err(|_| stopped())?;
    // One FIFO queue (the unknown client's): the skipped jobs were taken before the kept one.
    assert!(!ran[0].load(Ordering::SeqCst));
    assert!(!ran[1].load(Ordering::SeqCst));
    assert!(ran[2].load(Ordering::SeqCst));
    let state = h.pool.shared.lock();
    assert_eq!(state.skipped, 3);
    assert_eq!(state.waiting, 0);
    assert!(state.queues.is_empty() && state.ring.is_empty() && state.lengths.is_empty());
    Ok(())
}

#[tokio::test]
async fn threads_are_named_and_niced() -> Result<()> {
    let h = PasswordHasher::new(4, options(1, 0)).await?;
    let who = no_deadline(None);
    let name = h
        .pool
        .run(
            who,
            |_| 0.0,
            |_| std::thread::current().name().map(str::to_owned),
        )
        .await?;
    assert_eq!(name.as_deref(), Some("authd-bcrypt-0"));
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread.
        let nice_of_this_thread =
            || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let base = nice_of_this_thread();
        let nice = h
            .pool
            .run(who, |_| 0.0, move |_| nice_of_this_thread())
            .await?;
        // Lowering the priority is always allowed; only a process already above 10 stays there.
        assert_eq!(nice, base.max(10));
        let idle = PasswordHasher::new(
            4,
            PoolOptions {
                nice: BCRYPT_SCHED_IDLE,
                ..options(1, 0)
            },
        )
        .await?;
        // SAFETY: a plain system call on the calling thread.
        let policy = idle
            .pool
            .run(who, |_| 0.0, |_| unsafe { libc::sched_getscheduler(0) })
            .await?;
        assert_eq!(policy, libc::SCHED_IDLE);
    }
    Ok(())
}

#[tokio::test]
async fn threads_end_when_the_hasher_is_dropped() -> Result<()> {
    // One thread: the second job must wait in the queue (with idle threads it could start).
    let h = PasswordHasher::new(4, options(1, 4)).await?;
    let shared = h.pool.shared();
    assert_eq!(shared.lock().live_threads, 1);
    let mut hold = h.hold()?;
    hold.started().await?;
    let queued = h.hold()?;
    let queued_done = queued.done;

    drop(h);
    // The queued job is dropped unrun; its caller hears so.
    assert!(queued_done.await.is_err());
    // The running job finishes normally, then its thread ends too.
    hold.release().await?;
    let state = shared.lock();
    let (state, timeout) = shared
        .exited
        .wait_timeout_while(state, Duration::from_secs(60), |s| s.live_threads > 0)
        .unwrap_or_else(|e| e.into_inner());
    assert!(
        !timeout.timed_out(),
        "{} threads still alive",
        state.live_threads
    );
    Ok(())
}

#[test]
fn pool_options_from_settings() {
    let mut s = BcryptPoolSettings {
        concurrency: 0,
        queue: None,
        nice: 10,
        default_deadline: Duration::from_secs(10),
    };
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    assert_eq!(
        PoolOptions::from_settings(&s),
        PoolOptions {
            threads: cores,
            queue: 64,
            nice: 10,
            deadline: Duration::from_secs(10),
        }
    );
    s.concurrency = 3;
    s.queue = Some(0);
    s.nice = BCRYPT_SCHED_IDLE;
    s.default_deadline = Duration::from_secs(3);
    assert_eq!(
        PoolOptions::from_settings(&s),
        PoolOptions {
            threads: 3,
            queue: 0,
            nice: BCRYPT_SCHED_IDLE,
            deadline: Duration::from_secs(3),
        }
    );
}
