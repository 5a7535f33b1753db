#!/usr/bin/env bash
# Where the CPU of a refresh goes (BENCHMARKS.md, P4). Starts a release authd on a fresh embedded data
# directory pinned to CPU 1 (its PostgreSQL inherits the pin, as in scripts/benchmarks.sh), seeds
# 1,024 refresh sessions by SQL (scripts/seed-refresh-sessions.sql), and from CPU 0 runs:
#
#   1. authd-bench --rpc refresh -c 16 over those sessions (the 2 s warm-up rotates each seeded
#      token out of the previous format), sampling /proc/<pid>/stat (utime + stime) of authd, of
#      every PostgreSQL process of the cluster and of authd-bench over the steady part of the run:
#      CPU µs per refresh for each; and pg_stat_user_tables' n_tup_upd / n_tup_hot_upd of
#      `sessions` and the commits (HOT share, transactions per refresh);
#   2. pgbench's single-row UPDATE (-M prepared -c 16 -j 1, scale 1) against the same PostgreSQL:
#      tps and PostgreSQL's CPU µs per transaction, sampled the same way while it runs.
#
# It prints both and the P4 ratio of this run. Numbers per call are CPU time, so they hold better
# than rates on a shared machine, but the two CPUs' other load still inflates them.
#
# With --statements "VARIANT ...", it runs instead what PostgreSQL itself spends on the rotation
# statement: pgbench (-M prepared -c 16 -j 1, --duration seconds each) straight against authd's
# schema, no authd in the path, over 1,024 more sessions seeded with predictable ids, printing
# tps and PostgreSQL's CPU µs per statement (commits counted in pg_stat_database) for each of
#   base     pgbench's single-row UPDATE of pgbench_accounts (scale 1), P4's denominator
#   rotate   db::rotations::rotate as authd sends it alone: every column it sets, the guards, the join
#            with users and the RETURNING a token needs
#   nojoin   the same without the join with users (RETURNING only the session's columns)
#   minimal  UPDATE sessions SET generation = generation + 1, refresh_hash = ... WHERE id = ...
#   select   the session joined with its user, read only
#
# Usage: scripts/p4-cpu.sh [--bin DIR] [--duration SECONDS] [--out DIR] [--statements "VARIANT ..."]
#   --bin: where authd and authd-bench are (default target/release). Extra AUTHD_* settings in
#   the environment reach the server; P4_PRESQL, if set, runs in authd's database after seeding.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bindir="$root/target/release"
secs=15
out=""
statements=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bindir="$2"; shift 2 ;;
    --duration) secs="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --statements) statements="$2"; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "p4-cpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$secs" -ge 8 ] || { echo "p4-cpu.sh: --duration must be at least 8 (seconds)" >&2; exit 2; }
[ -x "$bindir/authd" ] && [ -x "$bindir/authd-bench" ] || { echo "p4-cpu.sh: no authd and authd-bench in $bindir" >&2; exit 1; }
command -v pgbench >/dev/null && command -v psql >/dev/null || { echo "p4-cpu.sh: needs pgbench and psql" >&2; exit 1; }
[ -n "$out" ] || out="$(mktemp -d /tmp/authd-p4-cpu.XXXXXX)"
mkdir -p "$out"

data="$(mktemp -d /tmp/authd-p4-cpu-data.XXXXXX)"
log="$out/authd.log"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$data" "$data.tokens" "$data.pgb.sql" "$data.stmt.sql"
}
trap cleanup EXIT

taskset -c 1 env -u DATABASE_URL AUTHD_DATA_DIR="$data" AUTHD_LISTEN="127.0.0.1:$port" \
  AUTHD_RATE_LIMIT_PER_IP=0 AUTHD_SHUTDOWN_DELAY=0 "$bindir/authd" serve >>"$log" 2>&1 &
pid=$!
taskset -c 0 "$bindir/authd-bench" --addr "$url" --wait-serving 120s --json >/dev/null
sock="$data/run"
PGPASSWORD="$(cat "$data/pg_password")"
export PGPASSWORD
pg() { psql -h "$sock" -U authd -v ON_ERROR_STOP=1 "$@"; }
pg -d authd -q -At -v n=1024 -f "$root/scripts/seed-refresh-sessions.sql" >"$data.tokens"
if [ -n "${P4_PRESQL:-}" ]; then pg -d authd -c "$P4_PRESQL"; fi
pgdata="$(realpath "$data/pgdata")"

# CPU ticks of authd, of the cluster's processes (summed) and of the optional pid $1.
ticks() {
  python3 - "$pid" "$pgdata" "${1:-0}" <<'EOF'
import os, sys
apid, pgdata, other = sys.argv[1], sys.argv[2], sys.argv[3]
def t(p):
    try:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except OSError:
        return 0
pg = 0
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            if os.path.realpath(f"/proc/{p}/cwd") == pgdata:
                pg += t(p)
        except OSError:
            pass
print(t(apid), pg, t(other) if other != "0" else 0)
EOF
}
now() { date +%s.%N; }
table_stats() {
  pg -d authd -At -c "SELECT n_tup_upd, n_tup_hot_upd, (SELECT xact_commit FROM pg_stat_database WHERE datname = 'authd') FROM pg_stat_user_tables WHERE relname = 'sessions'"
}

# --statements: PostgreSQL's CPU per statement for variants of the rotation (see the header).
statement_costs() {
  # Session i has the id 00000000-0000-0000-0000-<i in hex>, its user 00000000-0000-0000-0001-<i>.
  pg -d authd -q <<'SQL'
INSERT INTO users (id, email, first_name, last_name, password_hash, role, active, create_time, update_time)
SELECT ('00000000-0000-0000-0001-' || lpad(to_hex(i), 12, '0'))::uuid, 'x' || i || '@bench.invalid', 'S', 'U', '!x', 'user', true, now(), now()
FROM generate_series(1, 1024) i;
INSERT INTO sessions (id, user_id, generation, create_time, last_use_time, idle_expire_time, expire_time, user_agent, ip_address, access_expire_time, refresh_hash)
SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, ('00000000-0000-0000-0001-' || lpad(to_hex(i), 12, '0'))::uuid, 0, now(), now(), now() + interval '7 days', now() + interval '30 days', 'p4-cpu.sh --statements', '127.0.0.1', now() + interval '15 minutes', sha256('x'::bytea)
FROM generate_series(1, 1024) i;
VACUUM ANALYZE sessions; VACUUM ANALYZE users;
SQL
  pg -d postgres -q -c "DROP DATABASE IF EXISTS p4_pgbench" -c "CREATE DATABASE p4_pgbench" 2>/dev/null
  taskset -c 0 pgbench -h "$sock" -U authd -i -s 1 -q p4_pgbench >/dev/null 2>&1
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
  for v in $statements; do
    db=authd; [ "$v" = base ] && db=p4_pgbench
    max=1024; [ "$v" = base ] && max=100000
    printf '\\set r random(1, %s)\n%s\n' "$max" "${V[$v]}" >"$data.stmt.sql"
    taskset -c 0 pgbench -n -h "$sock" -U authd -M prepared -c 16 -j 1 -T "$secs" -f "$data.stmt.sql" "$db" \
      >"$out/statement-$v.txt" 2>&1 &
    b=$!
    sleep 2
    g0=$(ticks | cut -d' ' -f2); x0=$(commits); t0=$(date +%s.%N)
    sleep $((secs - 3))
    g1=$(ticks | cut -d' ' -f2); x1=$(commits); t1=$(date +%s.%N)
    wait $b || { echo "p4-cpu.sh: pgbench failed on $v:" >&2; tail -5 "$out/statement-$v.txt" >&2; exit 1; }
    python3 -c "
import re, os
hz = os.sysconf('SC_CLK_TCK'); dt = $t1 - $t0; n = $x1 - $x0
tps = float(re.search(r'tps = ([0-9.]+)', open('$out/statement-$v.txt').read()).group(1))
print(f'{\"$v\":<8} {tps:8.0f} tps, PostgreSQL {($g1 - $g0) / hz / dt * 100:5.1f} % of a CPU, {($g1 - $g0) / hz / n * 1e6:6.1f} us CPU per statement')" | tee -a "$out/statements.txt"
  done
}

if [ -n "$statements" ]; then
  statement_costs
  exit 0
fi

# 1. Refresh.
s0="$(table_stats)"
taskset -c 0 "$bindir/authd-bench" --addr "$url" --duration "${secs}s" --warmup 2s --users 1 --server-cores 1 \
  --rpc refresh -c 16 --refresh-tokens "$data.tokens" --json >"$out/refresh.json" 2>"$out/refresh.stderr" &
bench=$!
sleep 3
c0="$(ticks "$bench")"; t0="$(now)"
sleep $((secs - 3))
c1="$(ticks "$bench")"; t1="$(now)"
wait "$bench"
s1="$(table_stats)"

# 2. pgbench's single-row UPDATE against the same PostgreSQL.
pg -d postgres -q -c "DROP DATABASE IF EXISTS p4_pgbench" -c "CREATE DATABASE p4_pgbench" 2>/dev/null
taskset -c 0 pgbench -h "$sock" -U authd -i -s 1 -q p4_pgbench >/dev/null 2>&1
printf '\\set aid random(1, 100000 * :scale)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n' >"$data.pgb.sql"
taskset -c 0 pgbench -n -h "$sock" -U authd -M prepared -c 16 -j 1 -T "$secs" -f "$data.pgb.sql" p4_pgbench \
  >"$out/pgbench.txt" 2>&1 &
gbench=$!
sleep 3
g0="$(ticks)"; u0="$(now)"
x0="$(pg -d postgres -Atc "SELECT xact_commit FROM pg_stat_database WHERE datname = 'p4_pgbench'")"
sleep $((secs - 5))
g1="$(ticks)"; u1="$(now)"
x1="$(pg -d postgres -Atc "SELECT xact_commit FROM pg_stat_database WHERE datname = 'p4_pgbench'")"
wait "$gbench"

python3 - "$out" "$c0" "$c1" "$t0" "$t1" "$s0" "$s1" "$g0" "$g1" "$u0" "$u1" "$x0" "$x1" <<'EOF' | tee "$out/summary.txt"
import json, os, re, sys
out = sys.argv[1]
c0, c1 = (list(map(int, a.split())) for a in sys.argv[2:4])
dt = float(sys.argv[5]) - float(sys.argv[4])
s0, s1 = (list(map(int, a.split("|"))) for a in sys.argv[6:8])
g0, g1 = (list(map(int, a.split())) for a in sys.argv[8:10])
du = float(sys.argv[11]) - float(sys.argv[10])
x0, x1 = int(sys.argv[12]), int(sys.argv[13])
hz = os.sysconf("SC_CLK_TCK")
g = json.load(open(f"{out}/refresh.json"))["groups"][0]
rps = g["rps"]
# The sampled window's own rate for per-call CPU: the bench's rate over its whole run is close enough.
print(f"refresh: {rps} /s (authd-bench, 16 workers), errors {g['errors'] or 0}, p50 {g['latency_us'].get('p50')} us")
for name, a, b in zip(["authd", "postgres", "authd-bench"], c0, c1):
    sec = (b - a) / hz
    print(f"  {name:<12} {sec / dt * 100:5.1f} % of a CPU, {sec / dt / rps * 1e6:6.1f} us CPU per refresh")
upd, hot, commits = (b - a for a, b in zip(s0, s1))
print(f"  sessions: {upd} rows updated, {hot} HOT ({hot / max(upd, 1) * 100:.1f} %); {commits} commits")
tps = float(re.search(r"tps = ([0-9.]+)", open(f"{out}/pgbench.txt").read()).group(1))
pgsec = (g1[1] - g0[1]) / hz
win_tps = (x1 - x0) / du
print(f"pgbench single-row UPDATE: {tps:.1f} tps; postgres {pgsec / du * 100:.1f} % of a CPU, "
      f"{pgsec / du / win_tps * 1e6:.1f} us CPU per transaction")
print(f"P4 (this run): {rps / tps:.3f}")
EOF
echo "p4-cpu.sh: results in $out" >&2
