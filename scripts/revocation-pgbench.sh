#!/usr/bin/env bash
# Revocations/s one PostgreSQL carries (issue J, README "Capacity"): Logout's transaction (the
# session UPDATE with its trigger row in session_revocations, and the audit event), sent by pgbench
# with 16 clients over N sessions seeded by SQL, each client revoking its own share at random,
# against pgbench's single-row UPDATE in the same run, alternating twice. authd's embedded
# PostgreSQL runs on CPU 1 and pgbench on CPU 0, as in scripts/benchmarks.sh. Outside CI.
#
# Usage: [SECS=8] [N=300000] scripts/revocation-pgbench.sh     (needs a release build and pgbench)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${CARGO_TARGET_DIR:-$root/target}/release"; secs=${SECS:-8}; n=${N:-300000}
[ -x "$bin/authd" ] && [ -x "$bin/authd-bench" ] || { echo "release build missing ($bin/authd)" >&2; exit 1; }
data="$(mktemp -d /tmp/rv.XXXXXX)"; chmod 755 "$data"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
pid=""; cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$data"; }; trap cleanup EXIT
taskset -c 1 env -u DATABASE_URL AUTHD_DATA_DIR="$data/authd" AUTHD_LISTEN="127.0.0.1:$port" AUTHD_BCRYPT_COST=4 \
  AUTHD_SHUTDOWN_DELAY=0 "$bin/authd" serve >"$data/log" 2>&1 &
pid=$!
"$bin/authd-bench" --addr "http://127.0.0.1:$port" --wait-serving 300s >/dev/null
pgbin=""; for d in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do if [ -n "$d" ] && [ -x "$d/pgbench" ]; then pgbin="$d"; break; fi; done
sock="$data/authd/run"; export PGPASSWORD="$(cat "$data/authd/pg_password")"
[ -n "$pgbin" ] || { echo "pgbench missing" >&2; exit 1; }
psqlc() { "$pgbin/psql" -h "$sock" -U authd -d authd -v ON_ERROR_STOP=1 "$@"; }
psqlc -q -v n=$n -At -f $root/scripts/seed-refresh-sessions.sql >/dev/null
psqlc -q -c "CREATE TABLE bench_rev AS SELECT row_number() OVER () AS n, id, user_id FROM sessions WHERE revoke_time IS NULL" -c "ALTER TABLE bench_rev ADD PRIMARY KEY (n)" -c "CREATE TABLE bench_upd (id int PRIMARY KEY, v int)" -c "INSERT INTO bench_upd SELECT g, 0 FROM generate_series(1, 100000) g" -c "ANALYZE"
per=$((n / 16))
cat > "$data/rev.sql" <<SQL
\set k (:client_id * $per) + random(1, $per)
BEGIN;
UPDATE sessions s SET revoke_time = now(), revoke_reason = 'logout', replay_box = NULL, replay_until = NULL, rotate_ip = NULL FROM bench_rev b WHERE b.n = :k AND s.id = b.id AND s.revoke_time IS NULL;
INSERT INTO audit_events (id, user_id, actor_id, kind, ip_address, user_agent, detail, create_time) SELECT gen_random_uuid(), b.user_id, b.user_id, 'LOGOUT', '127.0.0.1', 'pgbench', 'session ' || b.id, now() FROM bench_rev b WHERE b.n = :k;
COMMIT;
SQL
cat > "$data/upd.sql" <<SQL
\set k random(1, 100000)
UPDATE bench_upd SET v = v + 1 WHERE id = :k;
SQL
chmod 644 "$data"/*.sql
for r in 1 2; do
  for s in upd rev; do
    out="$(taskset -c 0 "$pgbin/pgbench" -h "$sock" -U authd -n -c 16 -j 1 -T $secs -f "$data/$s.sql" authd 2>&1)"
    echo "$s: $(echo "$out" | grep -E '^tps' | head -1)"
  done
done
psqlc -At -c "SELECT 'sessions revoked: ' || count(*) FILTER (WHERE revoke_time IS NOT NULL) || ' of ' || count(*) FROM sessions"
