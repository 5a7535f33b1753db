//! Issue J, cost that does not grow with the data: ListUsers' capped count and its estimate flag,
//! the partitioned `audit_events` (the migration keeps every existing event, retention drops whole
//! partitions, two replicas pruning at once), the session prune by end time, and rotations that
//! PostgreSQL makes HOT updates (P4: no index of `sessions` covers a column a rotation changes).

use super::*;
use diesel::connection::Connection;
use diesel_async::RunQueryDsl;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

async fn exec(srv: &TestServer, sql: &str) {
    diesel::sql_query(sql)
        .execute(&mut srv.db().await)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Inserts `n` users by SQL (no bcrypt): user<i>@<tag>.scale.test.
async fn insert_users(srv: &TestServer, tag: &str, n: i64) {
    exec(
        srv,
        &format!(
            "INSERT INTO users (id, email, username, password_hash, create_time, update_time) \
             SELECT gen_random_uuid(), 'user' || i || '@{tag}.scale.test', NULL, 'x', \
             now() + make_interval(secs => i), now() FROM generate_series(1, {n}) i"
        ),
    )
    .await;
}

#[tokio::test]
async fn total_size_is_exact_up_to_ten_thousand_then_an_estimate() {
    let srv = TestServer::start().await;
    let admin = srv.admin_session().await.access_token;
    insert_users(&srv, "a", 9_999).await; // and the admin: 10,000
    let page = |query: &str| proto::ListUsersRequest {
        page_size: 10,
        query: query.into(),
        ..Default::default()
    };
    let r = list_users(&srv, &admin, page("")).await.expect("ListUsers");
    assert_eq!((r.total_size, r.total_size_is_estimate), (10_000, false));
    // A query matching one of them: exact, through the prefix index.
    let r = list_users(&srv, &admin, page("user4242@a."))
        .await
        .expect("ListUsers");
    assert_eq!((r.total_size, r.total_size_is_estimate), (1, false));
    assert_eq!(r.users.len(), 1);

    insert_users(&srv, "b", 2).await;
    exec(&srv, "ANALYZE users").await;
    let r = list_users(&srv, &admin, page("")).await.expect("ListUsers");
    assert!(r.total_size_is_estimate, "{} users", r.total_size);
    assert!(r.total_size > 10_000, "{}", r.total_size);
    // On every page, the next one too.
    let next = proto::ListUsersRequest {
        page_token: r.next_page_token.clone(),
        ..page("")
    };
    let r2 = list_users(&srv, &admin, next)
        .await
        .expect("ListUsers page 2");
    assert!(r2.total_size_is_estimate);
    // A query matching 9,999 of them (not the admin, not the two b users): exact again.
    let r = list_users(&srv, &admin, page("a.scale"))
        .await
        .expect("ListUsers");
    assert_eq!((r.total_size, r.total_size_is_estimate), (9_999, false));
    let r = list_users(&srv, &admin, page("@"))
        .await
        .expect("ListUsers");
    assert!(r.total_size_is_estimate, "{}", r.total_size);
    assert!(r.total_size > 10_000, "{}", r.total_size);
}

#[tokio::test]
async fn migration_to_partitions_keeps_every_event() {
    // An empty database, migrated up to just before the partitioning, with events in it.
    let (name, url) = fresh_named_database().await;
    let mut admin = connect_db(&db_url("postgres")).await;
    let plain = format!("{name}_plain");
    diesel::sql_query(format!("CREATE DATABASE {plain} TEMPLATE template0"))
        .execute(&mut admin)
        .await
        .expect("create database");
    let plain_url = url.replace(&name, &plain);
    let u = plain_url.clone();
    let events: i64 = tokio::task::spawn_blocking(move || {
        let mut c: AsyncConnectionWrapper<diesel_async::AsyncPgConnection> =
            Connection::establish(&u).expect("connect");
        loop {
            let pending = c.pending_migrations(MIGRATIONS).expect("pending");
            let Some(next) = <[_]>::first(&pending) else {
                break;
            };
            if next.name().version().to_string().as_str() >= "20261206000081" {
                break;
            }
            c.run_next_migration(MIGRATIONS).expect("migrate");
        }
        diesel::RunQueryDsl::execute(
            diesel::sql_query(
                "INSERT INTO audit_events (id, user_id, kind, create_time) \
                 SELECT gen_random_uuid(), CASE WHEN i % 10 = 0 THEN gen_random_uuid() END, 'LOGIN_SUCCEEDED', \
                 now() - make_interval(hours => i) FROM generate_series(1, 5000) i",
            ),
            &mut c,
        )
        .expect("insert events");
        c.run_pending_migrations(MIGRATIONS).expect("migrate the rest");
        5000
    })
    .await
    .expect("migration task");

    let mut c = connect_db(&plain_url).await;
    let n: Count = diesel::sql_query("SELECT count(*) AS n FROM audit_events")
        .get_result(&mut c)
        .await
        .expect("count");
    assert_eq!(n.n, events, "every event is still there");
    let legacy: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_inherits \
         WHERE inhparent = 'audit_events'::regclass AND inhrelid = 'audit_events_legacy'::regclass",
    )
    .get_result(&mut c)
    .await
    .expect("legacy partition");
    assert_eq!(legacy.n, 1, "the old table is a partition");
    // New events go in, now and far in the future (the default partition).
    diesel::sql_query(
        "INSERT INTO audit_events (id, kind, create_time) VALUES \
         (gen_random_uuid(), 'X', now()), (gen_random_uuid(), 'X', now() + interval '3 years')",
    )
    .execute(&mut c)
    .await
    .expect("insert after the migration");
    drop(c);
    diesel::sql_query(format!("DROP DATABASE {plain} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop database");
}

async fn partitions(srv: &TestServer) -> i64 {
    sql_count(
        srv,
        "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'audit_events'::regclass",
    )
    .await
}

#[tokio::test]
async fn retention_drops_whole_partitions_and_one_replica_prunes_at_a_time() {
    let srv =
        TestServer::start_with(|c| c.audit_retention = StdDuration::from_secs(7 * 86_400)).await;
    // 300 events a week apart over 8 weeks back, in their own weekly partitions.
    exec(
        &srv,
        "SELECT authd_audit_partitions_ensure(now() - interval '70 days', 10)",
    )
    .await;
    exec(
        &srv,
        "INSERT INTO audit_events (id, kind, create_time) \
         SELECT gen_random_uuid(), 'OLD', now() - interval '63 days' + make_interval(hours => i) \
         FROM generate_series(1, 300) i",
    )
    .await;
    let before = partitions(&srv).await;
    // Two replicas at once: both succeed, the advisory lock lets one of them do the work.
    let (a, b) = tokio::join!(srv.svc.prune(), srv.svc.prune());
    let (a, b) = (a.expect("prune a"), b.expect("prune b"));
    assert_eq!(a.0 + b.0, 300, "{a:?} {b:?}");
    assert_eq!(
        sql_count(
            &srv,
            "SELECT count(*) AS n FROM audit_events WHERE kind = 'OLD'"
        )
        .await,
        0
    );
    assert!(
        partitions(&srv).await < before,
        "whole partitions were dropped"
    );
    // Nothing left: the next run prunes nothing.
    assert_eq!(srv.svc.prune().await.expect("prune").0, 0);
    // And a concurrent burst of prunes never fails.
    let mut set = JoinSet::new();
    for _ in 0..8 {
        let svc = srv.svc.clone();
        set.spawn(async move { svc.prune().await.map(|_| ()) });
    }
    for r in set.join_all().await {
        r.expect("concurrent prune");
    }
}

#[tokio::test]
async fn session_prune_finds_ended_sessions_by_end_time() {
    let srv = TestServer::start().await;
    let a = srv.admin_session().await;
    let _ = a;
    // Sessions that ended in the three ways, two days ago, and one live.
    exec(
        &srv,
        "INSERT INTO sessions (id, user_id, create_time, last_use_time, idle_expire_time, expire_time, revoke_time) \
         SELECT gen_random_uuid(), (SELECT id FROM users LIMIT 1), now() - interval '9 days', now() - interval '9 days', \
                e.idle, e.abs, e.rev \
         FROM (VALUES (now() - interval '2 days', now() + interval '1 day', NULL::timestamptz), \
                      (now() + interval '1 day', now() - interval '2 days', NULL), \
                      (now() + interval '1 day', now() + interval '1 day', now() - interval '2 days'), \
                      (now() + interval '1 day', now() + interval '1 day', NULL)) AS e(idle, abs, rev)",
    )
    .await;
    let total = sql_count(&srv, "SELECT count(*) AS n FROM sessions").await;
    let (_, ended) = srv.svc.prune().await.expect("prune");
    assert_eq!(ended, 3);
    assert_eq!(
        sql_count(&srv, "SELECT count(*) AS n FROM sessions").await,
        total - 3
    );
}

/// Inserts two sessions of the first user: `live` (idle expiry in 6 days) and `ended` (idle expiry
/// 2 days ago), told apart by their user agents.
async fn insert_live_and_ended(srv: &TestServer, live: &str, ended: &str) {
    exec(
        srv,
        &format!(
            "INSERT INTO sessions (id, user_id, create_time, last_use_time, idle_expire_time, expire_time, user_agent) \
             SELECT gen_random_uuid(), (SELECT id FROM users LIMIT 1), now() - interval '9 days', now(), \
                    e.idle, now() + interval '20 days', e.ua \
             FROM (VALUES (now() + interval '6 days', '{live}'), \
                          (now() - interval '2 days', '{ended}')) AS e(idle, ua)"
        ),
    )
    .await;
}

#[tokio::test]
async fn session_prune_moves_a_session_kept_alive_by_rotations_out_of_its_range() {
    let srv = TestServer::start().await;
    let _ = srv.admin_session().await;
    // A live session whose prune_time (a lower bound of its end that rotations leave alone) is two
    // days old, as after rotations moved its idle expiry on, and one that ended two days ago.
    insert_live_and_ended(&srv, "kept-alive", "ended").await;
    exec(
        &srv,
        "UPDATE sessions SET prune_time = now() - interval '2 days' WHERE user_agent = 'kept-alive'",
    )
    .await;
    let (_, ended) = srv.svc.prune().await.expect("prune");
    assert_eq!(ended, 1);
    // The live one stays, its prune_time moved up to its end: no later run reads it again.
    assert_eq!(
        sql_count(
            &srv,
            "SELECT count(*) AS n FROM sessions WHERE user_agent = 'kept-alive' \
             AND prune_time = idle_expire_time"
        )
        .await,
        1
    );
    assert_eq!(
        sql_count(
            &srv,
            "SELECT count(*) AS n FROM sessions WHERE user_agent = 'ended'"
        )
        .await,
        0
    );
    // Rows from before migration 000092 have no prune_time: the prune fills it in, or deletes.
    insert_live_and_ended(&srv, "old-live", "old-ended").await;
    exec(
        &srv,
        "UPDATE sessions SET prune_time = NULL WHERE user_agent LIKE 'old-%'",
    )
    .await;
    let (_, ended) = srv.svc.prune().await.expect("prune");
    assert_eq!(ended, 1);
    assert_eq!(
        sql_count(
            &srv,
            "SELECT count(*) AS n FROM sessions WHERE user_agent LIKE 'old-%' \
             AND prune_time = idle_expire_time"
        )
        .await,
        1
    );
    // A revocation brings prune_time down to the revocation (the trigger of migration 000092).
    exec(
        &srv,
        "UPDATE sessions SET revoke_time = now() - interval '2 days' WHERE user_agent = 'kept-alive'",
    )
    .await;
    let (_, ended) = srv.svc.prune().await.expect("prune");
    assert_eq!(ended, 1);
}

#[tokio::test]
async fn rotations_inside_a_grace_window_are_hot_updates() {
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    let mut token = pair.refresh_token;
    let mut auth = srv.auth().await;
    for _ in 0..4 {
        token = auth
            .refresh(proto::RefreshRequest {
                refresh_token: token,
            })
            .await
            .expect("refresh")
            .into_inner()
            .refresh_token;
    }
    // The first rotation sets the sweep time of the window (an indexed column); the three inside
    // the window change no indexed column. PostgreSQL reports its counters with a delay.
    wait_until(
        "three rotations counted as HOT updates",
        std::time::Duration::from_secs(30),
        || async {
            sql_count(
                &srv,
                "SELECT n_tup_hot_upd AS n FROM pg_stat_user_tables WHERE relname = 'sessions'",
            )
            .await
                >= 3
        },
    )
    .await;
}

#[tokio::test]
async fn prunes_racing_refreshes_keep_every_live_session_and_its_token() {
    let srv = TestServer::start().await;
    let mut tokens = Vec::new();
    for _ in 0..8 {
        tokens.push(srv.user_session().await.1.refresh_token);
    }
    // Every session is due for the prune (as after rotations moved their idle expiry on), and
    // all of them refresh while several prunes run.
    exec(
        &srv,
        "UPDATE sessions SET prune_time = now() - interval '2 days'",
    )
    .await;
    let refreshes = tokens.into_iter().map(|token| {
        let srv = &srv;
        async move {
            let mut auth = srv.auth().await;
            let mut token = token;
            for _ in 0..5 {
                token = auth
                    .refresh(proto::RefreshRequest {
                        refresh_token: token,
                    })
                    .await?
                    .into_inner()
                    .refresh_token;
            }
            Ok::<_, tonic::Status>(())
        }
    });
    let prunes = (0..4).map(|_| srv.svc.prune());
    let (refreshed, pruned) = tokio::join!(join_all(refreshes), join_all(prunes));
    for r in refreshed {
        r.expect("a refresh during the prune");
    }
    for p in pruned {
        assert_eq!(p.expect("prune").1, 0, "no live session is pruned");
    }
    // The prune skips rows a rotation holds locked at that instant (`FOR UPDATE SKIP LOCKED`: it
    // never waits for a refresh); they stay due for the next run. With nothing racing, the next
    // run moves every one of them on.
    assert_eq!(srv.svc.prune().await.expect("prune").1, 0);
    assert_eq!(
        sql_count(
            &srv,
            "SELECT count(*) AS n FROM sessions WHERE revoke_time IS NULL \
             AND prune_time > now()"
        )
        .await,
        sql_count(&srv, "SELECT count(*) AS n FROM sessions").await
    );
}
