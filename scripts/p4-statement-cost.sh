#!/usr/bin/env bash
# What PostgreSQL itself spends on a refresh's statement (BENCHMARKS.md, P4): pgbench runs
# variants of db::sessions::rotate's UPDATE straight against authd's schema, with no authd in the
# path, and reports PostgreSQL's CPU per statement for each beside pgbench's own single-row UPDATE.
# Starts a release authd on a fresh embedded data directory pinned to CPU 1 (its PostgreSQL
# inherits the pin, as in scripts/benchmarks.sh) only to create and migrate the cluster, seeds
# 1,024 users and sessions with predictable ids, and from CPU 0 runs, each for --duration seconds
# (pgbench -M prepared -c 16 -j 1, a random session of the 1,024 per statement):
#
#   base     pgbench's single-row UPDATE of pgbench_accounts (scale 1), P4's denominator
#   rotate   the rotation as authd sends it: every column it sets, the guards, the join with
#            users and the RETURNING list a token needs
#   nojoin   the same without the join with users (RETURNING only the session's columns)
#   minimal  UPDATE sessions SET generation = generation + 1, refresh_hash = ... WHERE id = ...
#   select   the session joined with its user, read only
#
# CPU is sampled from /proc/<pid>/stat of every process of the cluster over the steady part of each
# run and divided by the commits counted in pg_stat_database over the same window.
#
# Usage: scripts/p4-statement-cost.sh [--bin DIR] [--duration SECONDS] [--variants "base rotate ..."]
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bindir="$root/target/release"
secs=8
variants="base rotate nojoin minimal select"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bindir="$2"; shift 2 ;;
    --duration) secs="$2"; shift 2 ;;
    --variants) variants="$2"; shift 2 ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "p4-statement-cost.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$secs" -ge 6 ] || { echo "p4-statement-cost.sh: --duration must be at least 6 (seconds)" >&2; exit 2; }
[ -x "$bindir/authd" ] && [ -x "$bindir/authd-bench" ] || { echo "p4-statement-cost.sh: no authd and authd-bench in $bindir" >&2; exit 1; }
command -v pgbench >/dev/null && command -v psql >/dev/null || { echo "p4-statement-cost.sh: needs pgbench and psql" >&2; exit 1; }

data="$(mktemp -d /tmp/authd-p4-stmt-data.XXXXXX)"
work="$(mktemp -d /tmp/authd-p4-stmt.XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$data" "$work"
}
trap cleanup EXIT

taskset -c 1 env -u DATABASE_URL AUTHD_DATA_DIR="$data" AUTHD_LISTEN="127.0.0.1:$port" \
  AUTHD_SHUTDOWN_DELAY=0 "$bindir/authd" serve >"$work/authd.log" 2>&1 &
pid=$!
taskset -c 0 "$bindir/authd-bench" --addr "http://127.0.0.1:$port" --wait-serving 120s --json >/dev/null
sock="$data/run"
PGPASSWORD="$(cat "$data/pg_password")"
export PGPASSWORD
pg() { psql -h "$sock" -U authd -v ON_ERROR_STOP=1 "$@"; }
pgdata="$(realpath "$data/pgdata")"
# Session i has the id 00000000-0000-0000-0000-<i in hex>, its user 00000000-0000-0000-0001-<i>.
pg -d authd -q <<'SQL'
INSERT INTO users (id, email, first_name, last_name, password_hash, role, active, create_time, update_time)
SELECT ('00000000-0000-0000-0001-' || lpad(to_hex(i), 12, '0'))::uuid, 'x' || i || '@bench.invalid', 'S', 'U', '!x', 'user', true, now(), now()
FROM generate_series(1, 1024) i;
INSERT INTO sessions (id, user_id, generation, create_time, last_use_time, idle_expire_time, expire_time, user_agent, ip_address, access_expire_time, refresh_hash)
SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, ('00000000-0000-0000-0001-' || lpad(to_hex(i), 12, '0'))::uuid, 0, now(), now(), now() + interval '7 days', now() + interval '30 days', 'seed-refresh-sessions.sql', '127.0.0.1', now() + interval '15 minutes', sha256('x'::bytea)
FROM generate_series(1, 1024) i;
VACUUM ANALYZE sessions; VACUUM ANALYZE users;
SQL
pg -d postgres -q -c "DROP DATABASE IF EXISTS p4_pgbench" -c "CREATE DATABASE p4_pgbench" 2>/dev/null
taskset -c 0 pgbench -h "$sock" -U authd -i -s 1 -q p4_pgbench >/dev/null 2>&1
# CPU ticks of every process of the cluster.
pgticks() { python3 - "$pgdata" <<'PY'
import os, sys
pgdata = sys.argv[1]; tot = 0
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            if os.path.realpath(f"/proc/{p}/cwd") == pgdata:
                f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split(); tot += int(f[11]) + int(f[12])
        except OSError: pass
print(tot)
PY
}
commits() { pg -d postgres -Atc "SELECT sum(xact_commit) FROM pg_stat_database WHERE datname IN ('authd','p4_pgbench')"; }
# The statements, with pgbench's :r for the session (or account) and now() for authd's binds.
S="('00000000-0000-0000-0000-' || lpad(to_hex(:r::int), 12, '0'))::uuid"
# A replay box of the size authd seals (see domain::opaque::ReplayBox).
BOX="'\\x$(od -An -tx1 -N100 /dev/urandom | tr -d ' \n')'::bytea"
HASH="sha256(:r::int::text::bytea)"
NOW="now()"
declare -A V
V[base]="UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :r;"
V[rotate]="UPDATE sessions s SET generation = s.generation + 1, refresh_hash = $HASH, last_use_time = $NOW, idle_expire_time = LEAST($NOW + interval '7 days', s.expire_time), access_expire_time = GREATEST(s.access_expire_time, LEAST($NOW + interval '15 minutes', $NOW + interval '7 days', s.expire_time)), replay_box = $BOX, replay_until = $NOW + interval '10 s', replay_sweep_time = COALESCE(s.replay_sweep_time, $NOW + interval '10 s'), rotate_ip = '127.0.0.1' FROM users u WHERE s.id = $S AND s.refresh_hash IS NOT DISTINCT FROM s.refresh_hash AND s.revoke_time IS NULL AND s.expire_time > $NOW AND s.idle_expire_time > $NOW AND u.id = s.user_id RETURNING s.id, s.user_id, s.idle_expire_time, s.expire_time, s.amr, u.email AS user_email, u.username AS user_username, u.role AS user_role, u.active AS user_active;"
V[nojoin]="UPDATE sessions s SET generation = s.generation + 1, refresh_hash = $HASH, last_use_time = $NOW, idle_expire_time = LEAST($NOW + interval '7 days', s.expire_time), access_expire_time = GREATEST(s.access_expire_time, LEAST($NOW + interval '15 minutes', $NOW + interval '7 days', s.expire_time)), replay_box = $BOX, replay_until = $NOW + interval '10 s', replay_sweep_time = COALESCE(s.replay_sweep_time, $NOW + interval '10 s'), rotate_ip = '127.0.0.1' WHERE s.id = $S AND s.refresh_hash IS NOT DISTINCT FROM s.refresh_hash AND s.revoke_time IS NULL AND s.expire_time > $NOW AND s.idle_expire_time > $NOW RETURNING s.id, s.user_id, s.idle_expire_time, s.expire_time, s.amr;"
V[minimal]="UPDATE sessions SET generation = generation + 1, refresh_hash = $HASH WHERE id = $S;"
V[select]="SELECT s.id, s.user_id, s.idle_expire_time, s.expire_time, s.amr, u.email, u.username, u.role, u.active FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $S;"
for v in $variants; do
  db=authd; [ "$v" = base ] && db=p4_pgbench
  max=1024; [ "$v" = base ] && max=100000
  printf '\\set r random(1, %s)\n%s\n' "$max" "${V[$v]}" >"$work/stmt.sql"
  taskset -c 0 pgbench -n -h "$sock" -U authd -M prepared -c 16 -j 1 -T "$secs" -f "$work/stmt.sql" "$db" \
    >"$work/$v.txt" 2>&1 &
  b=$!
  sleep 2
  g0=$(pgticks); x0=$(commits); t0=$(date +%s.%N)
  sleep $((secs - 3))
  g1=$(pgticks); x1=$(commits); t1=$(date +%s.%N)
  wait $b || { echo "p4-statement-cost.sh: pgbench failed on $v:" >&2; tail -5 "$work/$v.txt" >&2; exit 1; }
  python3 -c "
import re,os
hz=os.sysconf('SC_CLK_TCK'); dt=$t1-$t0; n=$x1-$x0
tps=float(re.search(r'tps = ([0-9.]+)', open('$work/$v.txt').read()).group(1))
print(f'{\"$v\":<8} {tps:8.0f} tps, PostgreSQL {($g1-$g0)/hz/dt*100:5.1f} % of a CPU, {($g1-$g0)/hz/n*1e6:6.1f} us CPU per statement')"
done
