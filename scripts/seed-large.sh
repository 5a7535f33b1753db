#!/usr/bin/env bash
# Seeds an authd database (already migrated: run `authd migrate` first) by SQL for the issue J
# measurements: 1,000,000 users, 1,000,000 sessions of which 100,000 revoked, 10,000,000 audit
# events spread over the last 136 days (so about 6.6 M are older than 46 days, the retention the
# audit prune of BENCHMARKS.md is measured with).
# No bcrypt: every seeded account has the same placeholder hash (no password logs in).
#
#   scripts/seed-large.sh DATABASE_URL [SCALE]
#
# SCALE multiplies every count (default 1; 0.001 gives the "small" database of BENCHMARKS.md).
# Disk: about 4 GB at SCALE 1 (audit events 2.6 GB with their indexes, users 0.6 GB with the
# trigram indexes, sessions 0.4 GB), plus WAL. Takes a few minutes on two cores. Never run by CI.
set -euo pipefail
url=${1:?usage: seed-large.sh DATABASE_URL [SCALE]}
scale=${2:-1}
users=$(python3 -c "print(max(1, int(1000000 * $scale)))")
sessions=$users
revoked=$(( sessions / 10 ))
events=$(python3 -c "print(max(1, int(10000000 * $scale)))")
chunk=1000000

psql() { command psql "$url" -v ON_ERROR_STOP=1 -q "$@"; }

echo "seeding $users users, $sessions sessions ($revoked revoked), $events audit events"
psql <<SQL
SET synchronous_commit = off;
-- Users: user<i>@example.com / user<i>, one a second over the last $users seconds.
INSERT INTO users (id, email, username, password_hash, role, active, create_time, update_time)
SELECT gen_random_uuid(), 'user' || i || '@example.com', 'User' || i,
       '\$2b\$12\$seededseededseededseedeOseededseededseededseededseede',
       CASE WHEN i % 1000 = 0 THEN 'moderator' ELSE 'user' END, i % 50 <> 0,
       now() - make_interval(secs => $users - i), now() - make_interval(secs => $users - i)
FROM generate_series(1, $users) i;
-- Sessions: one per user, live for 30 days, idle for 7 days.
INSERT INTO sessions (id, user_id, create_time, last_use_time, idle_expire_time, expire_time)
SELECT gen_random_uuid(), u.id, now() - interval '1 hour', now() - interval '1 hour',
       now() + interval '7 days', now() + interval '29 days'
FROM users u;
-- Revoked within the last hour (so nothing is prunable yet): through the trigger, as in real use.
UPDATE sessions SET revoke_time = now() - interval '30 minutes', revoke_reason = 'seeded'
WHERE id IN (SELECT id FROM sessions ORDER BY id LIMIT $revoked);
SQL

# Audit events: weekly partitions for the whole span first, then the rows in chunks.
psql -c "SELECT authd_audit_partitions_ensure(now() - interval '140 days', 25)" >/dev/null
done_rows=0
while [ "$done_rows" -lt "$events" ]; do
  n=$(( events - done_rows < chunk ? events - done_rows : chunk ))
  psql <<SQL
SET synchronous_commit = off;
INSERT INTO audit_events (id, user_id, actor_id, kind, ip_address, user_agent, detail, create_time)
SELECT gen_random_uuid(), NULL, NULL,
       (ARRAY['LOGIN_SUCCEEDED','LOGIN_FAILED','TOKEN_REFRESHED','LOGOUT'])[1 + (i % 4)],
       '192.0.2.' || (i % 250), 'seed/1.0', '',
       now() - make_interval(secs => (136.0 * 86400 * i / $events))
FROM generate_series($done_rows + 1, $done_rows + $n) i;
SQL
  done_rows=$(( done_rows + n ))
  echo "  audit events: $done_rows"
done
# Give the events a user: one user's events in every 1,000th row.
psql -c "UPDATE audit_events SET user_id = (SELECT id FROM users ORDER BY create_time LIMIT 1) WHERE ip_address = '192.0.2.7' AND create_time > now() - interval '1 day'" >/dev/null
psql -c "VACUUM ANALYZE" >/dev/null
psql -c "SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM sessions) AS sessions, (SELECT count(*) FROM sessions WHERE revoke_time IS NOT NULL) AS revoked, (SELECT reltuples::bigint FROM pg_class WHERE relname = 'audit_events_default') AS default_rows, pg_size_pretty(pg_database_size(current_database())) AS size"
