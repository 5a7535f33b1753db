#!/usr/bin/env bash
# The full, reproducible benchmark run behind BENCHMARKS.md (issue E's targets P1-P4, memory and
# start-up). Builds the release binaries, then, with authd (and its embedded PostgreSQL) pinned to
# CPU 1 and every load tool pinned to CPU 0:
#
#   1. first start (fresh data dir, initdb included) and warm start (SIGTERM, start again on the same
#      data dir): seconds from exec until the health Check answers SERVING (polled every 20 ms);
#   2. idle RSS of the authd process (VmRSS; the embedded PostgreSQL is reported separately as the
#      summed PSS of its processes);
#   3. authd-bench runs, each saved as JSON in the out dir:
#        health c16, validate c16, getme c16, refresh c16, login c4 (bcrypt cost 12),
#        mix validate=16,login=4 (ValidateToken during a login storm), and
#        health with 1000 connections and 64 workers while authd's VmRSS is sampled every 100 ms;
#      h2load (health and ValidateToken alternating, 3 rounds each, 1 connection, 16 streams) with pre-encoded gRPC bodies,
#      sampling authd's CPU in each round (how busy it was, CPU µs per call: P1-h2load's server_cpu_ratio);
#   4. pgbench against the same embedded PostgreSQL over its Unix socket, -M prepared -c 16 -j 1:
#      one single-row UPDATE per transaction (a separate database, `pgbench -i -s 1`), then authd's
#      refresh statement alone on the sessions the refresh run left (PostgreSQL's share of P4);
#   5. summary.json (every ratio and raw number) and summary.md (the markdown table, also printed);
#   6. the chart: scripts/bench_chart.py writes latency.svg.
#
# Usage: scripts/benchmarks.sh [--duration 20s] [--warmup 2s] [--out docs/bench] [--no-build]
#                              [--keep-data]
# Extra AUTHD_* settings in the environment (e.g. AUTHD_BCRYPT_CONCURRENCY) reach the server.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

duration="20s"
warmup="2s"
out="docs/bench"
build=1
keep_data=0
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --duration=*) duration="${1#*=}"; shift ;;
    --warmup) warmup="$2"; shift 2 ;;
    --warmup=*) warmup="${1#*=}"; shift ;;
    --out) out="$2"; shift 2 ;;
    --out=*) out="${1#*=}"; shift ;;
    --no-build) build=0; shift ;;
    --keep-data) keep_data=1; shift ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "benchmarks.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "benchmarks: $*" >&2; }
die() { echo "benchmarks: FAILED: $*" >&2; exit 1; }

if [ "$build" = 1 ]; then
  say "cargo build --release --workspace"
  cargo build --release --workspace >&2
fi
target_dir="${CARGO_TARGET_DIR:-$root/target}"
authd="$target_dir/release/authd"
bench="$target_dir/release/authd-bench"
[ -x "$authd" ] && [ -x "$bench" ] || die "release binaries missing; run without --no-build"

# Pinning: authd on CPU 1, load tools on CPU 0. With fewer than 2 CPUs nothing is pinned.
server_cpu=1
client_cpu=0
if command -v taskset >/dev/null 2>&1 && [ "$(nproc --all)" -ge 2 ]; then
  server_pin="taskset -c $server_cpu"
  client_pin="taskset -c $client_cpu"
  pinned=true
else
  say "WARNING: taskset missing or fewer than 2 CPUs; nothing is pinned and the ratios mean less"
  server_pin=""
  client_pin=""
  pinned=false
fi

pg_bin=""
for d in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
  if [ -n "$d" ] && [ -x "$d/pgbench" ] && [ -x "$d/psql" ]; then pg_bin="$d"; break; fi
done
if [ -z "$pg_bin" ]; then
  command -v pgbench >/dev/null && command -v psql >/dev/null \
    || die "pgbench and psql not found (apt-get install postgresql-client / postgresql)"
  pg_bin="$(dirname "$(command -v pgbench)")"
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
data="$(mktemp -d /tmp/authd-benchmarks.XXXXXX)"
log="$data.authd.log"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
addr="127.0.0.1:$port"
url="http://$addr"
admin_email="admin@bench.example"
admin_password="Bench-Admin-$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
bcrypt_cost="${AUTHD_BCRYPT_COST:-12}"
pid=""
sampler=""

stop_authd() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  pid=""
}
cleanup() {
  rm -f "$data.sampling"
  if [ -n "$sampler" ]; then wait "$sampler" 2>/dev/null || true; fi
  stop_authd
  if [ "$keep_data" = 1 ]; then
    say "kept $data, $log and $data.pgbench-output"
  else
    rm -rf "$data" "$log" "$data.pgbench-output" "$data.rss-samples" "$data.refresh-tokens" "$data.h2load"
  fi
}
trap cleanup EXIT

fail_with_log() {
  echo "--- authd log (last 30 lines) ---" >&2
  tail -n 30 "$log" >&2 || true
  die "$*"
}

# Starts authd on CPU 1 and records seconds from exec until SERVING in $1.
start_authd() {
  local json="$1" t0
  t0="$(date +%s%N)"
  # taskset and env exec, so $! is authd itself.
  $server_pin env -u DATABASE_URL \
    AUTHD_DATA_DIR="$data" AUTHD_LISTEN="$addr" AUTHD_BCRYPT_COST="$bcrypt_cost" \
    AUTHD_RATE_LIMIT_PER_IP=0 AUTHD_SHUTDOWN_DELAY=0 \
    AUTHD_BOOTSTRAP_ADMIN_EMAIL="$admin_email" AUTHD_BOOTSTRAP_ADMIN_PASSWORD="$admin_password" \
    "$authd" serve >>"$log" 2>&1 &
  pid=$!
  $client_pin "$bench" --addr "$url" --wait-serving 120s --since-unix-ns "$t0" --json >"$json" \
    || fail_with_log "authd did not become SERVING"
  kill -0 "$pid" 2>/dev/null || fail_with_log "authd exited during start-up"
}

# VmRSS of a pid in KiB.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Summed PSS (KiB) of the embedded PostgreSQL: every postgres process whose cwd is the cluster.
pg_pss_kb() {
  python3 - "$data/pgdata" <<'EOF'
import os, sys
pgdata = os.path.realpath(sys.argv[1])
total = 0
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        if os.path.realpath(f"/proc/{p}/cwd") != pgdata:
            continue
        with open(f"/proc/{p}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    except OSError:
        pass
print(total)
EOF
}

# One authd-bench run on CPU 0: bench NAME ARGS...
run_bench() {
  local name="$1"; shift
  say "run $name: authd-bench $*"
  AUTHD_BENCH_ADMIN_EMAIL="$admin_email" AUTHD_BENCH_ADMIN_PASSWORD="$admin_password" \
    $client_pin "$bench" --addr "$url" --duration "$duration" --warmup "$warmup" \
    --bcrypt-cost "$bcrypt_cost" --server-cores 1 --json "$@" >"$out/$name.json" \
    || fail_with_log "authd-bench $name failed"
  python3 - "$out/$name.json" <<'EOF' >&2
import json, sys
r = json.load(open(sys.argv[1]))
for g in r["groups"]:
    l = g["latency_us"] or {}
    print(f"  {g['rpc']:<9} c={g['concurrency']:<3} ok/s={g['rps']:<10} p50={l.get('p50')}us "
          f"p99={l.get('p99')}us errors={g['errors']}")
EOF
  sleep 1
}

say "out dir $out; data dir $data; authd on $addr; duration $duration, warm-up $warmup"
# Other work on the machine skews every number: the load average goes into the summary.
loadavg_start="$(cut -d' ' -f1-3 /proc/loadavg)"

# 1. First start (initdb) and warm start.
say "first start (fresh data dir, initdb)"
start_authd "$out/startup-first.json"
sleep 2
rss_first="$(rss_kb "$pid")"
say "  SERVING after $(python3 -c "import json; print(json.load(open('$out/startup-first.json'))['elapsed_s'])") s; idle RSS ${rss_first} KiB"
stop_authd

say "warm start (same data dir)"
start_authd "$out/startup-warm.json"
sleep 2
rss_idle="$(rss_kb "$pid")"
pg_idle="$(pg_pss_kb)"
say "  SERVING after $(python3 -c "import json; print(json.load(open('$out/startup-warm.json'))['elapsed_s'])") s; idle RSS ${rss_idle} KiB; PostgreSQL PSS ${pg_idle} KiB"

# psql and pgbench reach the embedded cluster over its Unix socket.
sock="$data/run"
# The embedded cluster takes password (SCRAM) logins only; authd keeps the password in the data dir.
PGPASSWORD="$(cat "$data/pg_password")" || fail_with_log "cannot read $data/pg_password"
export PGPASSWORD
pgdb="authd_pgbench"
pgbench_secs="$(python3 -c "
import re, sys, math
s = '$duration'.strip()
m = re.fullmatch(r'([0-9.]+)\s*(ms|s|m|min|h)?', s)
v = float(m.group(1)); u = m.group(2) or 's'
print(max(1, math.ceil(v * {'ms': 1e-3, 's': 1, 'm': 60, 'min': 60, 'h': 3600}[u])))")"
psql_do() { "$pg_bin/psql" -h "$sock" -U authd -v ON_ERROR_STOP=1 -q "$@" >&2; }

# 3. The load runs.
run_bench health --rpc health -c 16
run_bench validate --rpc validate -c 16

# P1 again with a light, independent client: h2load (Debian's nghttp2-client; 1 connection,
# 16 streams, 1 thread, on CPU 0) with pre-encoded gRPC bodies (scripts/h2load-grpc.py).
"$root/scripts/install-h2load.sh" >/dev/null || die "cannot install h2load"
h2dir="$data.h2load"
mkdir -p "$h2dir"
python3 "$root/scripts/h2load-grpc.py" setup "$url" "$admin_email" "$admin_password" "$h2dir" \
  || fail_with_log "h2load setup (login, service key) failed"
# Three alternating rounds of each: one pair of runs on this shared machine swings by ±0.2 (see
# BENCHMARKS.md); each rate is the mean of its rounds (equal durations: all calls ÷ all seconds).
for round in 1 2 3; do
  for h2 in health validate; do
    case "$h2" in
      health) h2path=/grpc.health.v1.Health/Check; h2key="" ;;
      validate) h2path=/authd.v1.AuthService/ValidateToken; h2key="$(cat "$h2dir/api-key")" ;;
    esac
    say "run h2load-$h2 (round $round of 3): h2load -c 1 -m 16 -t 1 $h2path, ${pgbench_secs} s"
    $client_pin python3 "$root/scripts/h2load-grpc.py" run "h2load-$h2" "$url" "$h2path" \
      "$h2dir/$h2.bin" "$pgbench_secs" $h2key --server-pid "$pid" >"$h2dir/$h2-$round.json" \
      || fail_with_log "h2load $h2 failed"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); s=d.get('server') or {}; print(f\"  h2load {d['name']}: {d['rps']} req/s, {d['failed']} failed; authd busy {s.get('busy')}, {s.get('cpu_us_per_call')} us CPU per call\")" "$h2dir/$h2-$round.json" >&2
    sleep 1
  done
done
for h2 in health validate; do
  python3 - "$h2dir/$h2-1.json" "$h2dir/$h2-2.json" "$h2dir/$h2-3.json" >"$out/h2load-$h2.json" <<'EOF'
import json, sys
rounds = [json.load(open(f)) for f in sys.argv[1:]]
d = dict(rounds[0])
d["rps"] = round(sum(r["rps"] for r in rounds) / len(rounds), 1)
for k in ("requests", "succeeded", "failed"):
    d[k] = sum(r[k] for r in rounds)
d["seconds"] = sum(float(r["seconds"]) for r in rounds)
d["rounds_rps"] = [r["rps"] for r in rounds]
# authd's CPU per call and how busy it was, per round: the rate ratio is the server's only in
# rounds where authd was busy (see BENCHMARKS.md, issue J third pass).
d.pop("server", None)
servers = [r.get("server") for r in rounds]
if all(servers):
    d["rounds_server_busy"] = [s["busy"] for s in servers]
    d["rounds_server_cpu_us_per_call"] = [s["cpu_us_per_call"] for s in servers]
    calls = sum(r["rps"] * s["window_s"] for r, s in zip(rounds, servers))
    d["server_cpu_us_per_call"] = round(sum(s["cpu_s"] for s in servers) / calls * 1e6, 2)
print(json.dumps(d))
EOF
done
rm -rf "$h2dir"
run_bench getme --rpc getme -c 16
# P4: refreshes spread over 1,024 sessions seeded by SQL (no bcrypt logins); each token's first
# rotation (from the previous token format) falls in the warm-up, see scripts/seed-refresh-sessions.sql.
refresh_tokens_file="$data.refresh-tokens"
"$pg_bin/psql" -h "$sock" -U authd -d authd -v ON_ERROR_STOP=1 -q -At -v n=1024 \
  -f "$root/scripts/seed-refresh-sessions.sql" >"$refresh_tokens_file" \
  || fail_with_log "cannot seed the refresh sessions"
say "seeded $(wc -l <"$refresh_tokens_file") refresh sessions by SQL"
run_bench refresh --rpc refresh -c 16 --users 1 --refresh-tokens "$refresh_tokens_file"
rm -f "$refresh_tokens_file"
run_bench login --rpc login -c 4
run_bench mix-validate-login --rpc mix --mix validate=16,login=4

say "sampling authd VmRSS every 100 ms during the 1000-connection run"
rss_samples="$data.rss-samples"
rss_flag="$data.sampling"
touch "$rss_flag"
$client_pin python3 - "$pid" "$rss_samples" "$rss_flag" <<'EOF' &
import os, sys, time
pid, path, flag = sys.argv[1], sys.argv[2], sys.argv[3]
with open(path, "w") as out:
    while os.path.exists(flag):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out.write(line.split()[1] + "\n")
                        out.flush()
        except OSError:
            break
        time.sleep(0.1)
EOF
sampler=$!
run_bench health-1000conn --rpc health --connections 1000 -c 64
rm -f "$rss_flag"
wait "$sampler" 2>/dev/null || true
sampler=""
rss_1000_max="$(sort -n "$rss_samples" | tail -n 1)"
rss_1000_n="$(wc -l <"$rss_samples")"
rm -f "$rss_samples"
sleep 2
rss_after="$(rss_kb "$pid")"
say "  max RSS with 1000 connections ${rss_1000_max} KiB (${rss_1000_n} samples); idle after the runs ${rss_after} KiB"

# 4. pgbench against the same PostgreSQL: the single-row UPDATE the P4 target compares against,
#    then (for the P4 analysis, not a target) authd's own refresh statement alone, so PostgreSQL's
#    share of a refresh is measured without authd in the loop.
# run_pgbench <json name> <database> <description>: runs the script on stdin, -M prepared -c 16 -j 1.
run_pgbench() {
  local name="$1" db="$2" what="$3" script pgout
  script="$(mktemp /tmp/authd-pgbench.XXXXXX.sql)"
  cat >"$script"
  pgout="$data.pgbench-output"
  say "pgbench $name: $what, ${pgbench_secs} s"
  $client_pin "$pg_bin/pgbench" -n -h "$sock" -U authd -M prepared -c 16 -j 1 -T "$pgbench_secs" \
    -f "$script" "$db" >"$pgout" 2>&1 || { rm -f "$script"; cat "$pgout" >&2; fail_with_log "pgbench $name failed"; }
  rm -f "$script"
  python3 - "$out/$name.json" "$pgbench_secs" "$pgout" "$what" <<'EOF'
import json, re, sys
text = open(sys.argv[3]).read()
def num(pattern, kind=float):
    m = re.search(pattern, text)
    return kind(m.group(1)) if m else None
tps = num(r"tps = ([0-9.]+) \(without initial connection time\)") or num(r"tps = ([0-9.]+)")
doc = {
    "tool": "pgbench",
    "script": sys.argv[4],
    "clients": 16, "threads": 1, "protocol": "prepared",
    "duration_s": int(sys.argv[2]),
    "transactions": num(r"number of transactions actually processed: ([0-9]+)", int),
    "failed": num(r"number of failed transactions: ([0-9]+)", int),
    "latency_avg_ms": num(r"latency average = ([0-9.]+) ms"),
    "tps": round(tps, 1) if tps is not None else None,
}
if tps is None:
    sys.exit("no tps in pgbench output:\n" + text)
json.dump(doc, open(sys.argv[1], "w"), indent=2)
print(f"  pgbench tps {tps}", file=sys.stderr)
EOF
}

psql_do -d postgres -c "DROP DATABASE IF EXISTS $pgdb" -c "CREATE DATABASE $pgdb" \
  || fail_with_log "cannot create the pgbench database"
$client_pin "$pg_bin/pgbench" -h "$sock" -U authd -i -s 1 -q "$pgdb" >/dev/null 2>&1 \
  || fail_with_log "pgbench -i failed"
run_pgbench pgbench "$pgdb" "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid (random aid, scale 1)" <<'EOF'
\set aid random(1, 100000 * :scale)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
EOF

# authd's refresh statement (db::rotations::rotate, copied here: keep the two in step), on the live
# sessions the refresh run left in authd's database: one single-row UPDATE of the session guarded
# by its current token's hash and generation. Each client rotates sessions of its own. This is a
# lone refresh's statement: concurrent refreshes are written in batches (authd_rotate_sessions,
# migration 000093), which cost PostgreSQL less per refresh than this, so the refresh run can
# exceed this rate.
psql_do -d authd -c "DROP TABLE IF EXISTS bench_refresh_sessions" \
  -c "CREATE TABLE bench_refresh_sessions AS SELECT row_number() OVER () AS n, id FROM sessions WHERE revoke_time IS NULL AND expire_time > now() AND idle_expire_time > now() AND refresh_hash IS NOT NULL" \
  -c "ALTER TABLE bench_refresh_sessions ADD PRIMARY KEY (n)" -c "ANALYZE" \
  || fail_with_log "cannot prepare the refresh-statement pgbench"
refresh_sessions="$("$pg_bin/psql" -h "$sock" -U authd -d authd -Atc "SELECT count(*) FROM bench_refresh_sessions")"
per_client=$((refresh_sessions / 16))
[ "$per_client" -gt 0 ] || fail_with_log "fewer than 16 live sessions for the refresh-statement pgbench"
run_pgbench pgbench-refresh-sql authd "authd's refresh statement alone (each client on its own $per_client of $refresh_sessions sessions)" <<EOF
\\set k 1 + :client_id + 16 * random(0, $((per_client - 1)))
UPDATE sessions s SET generation = s.generation + 1, refresh_hash = sha256(convert_to(random()::text, 'UTF8')), last_use_time = now(), idle_expire_time = LEAST(now() + interval '30 days', s.expire_time), access_expire_time = GREATEST(s.access_expire_time, LEAST(now() + interval '15 minutes', now() + interval '30 days', s.expire_time)), replay_box = sha256(convert_to(random()::text, 'UTF8')) || sha256(convert_to(random()::text, 'UTF8')) || sha256(convert_to(random()::text, 'UTF8')), replay_until = now() + interval '5 seconds', replay_sweep_time = COALESCE(s.replay_sweep_time, now() + interval '5 seconds'), rotate_ip = '127.0.0.1' FROM users u, bench_refresh_sessions b, sessions cur WHERE b.n = :k AND cur.id = b.id AND s.id = b.id AND s.generation = cur.generation AND s.refresh_hash IS NOT DISTINCT FROM cur.refresh_hash AND s.revoke_time IS NULL AND s.expire_time > now() AND s.idle_expire_time > now() AND u.id = s.user_id RETURNING s.*, u.email AS user_email, u.username AS user_username, u.role AS user_role, u.active AS user_active;
EOF
psql_do -d authd -c "DROP TABLE bench_refresh_sessions"

stop_authd
loadavg_end="$(cut -d' ' -f1-3 /proc/loadavg)"

# 5. Summary.
python3 - "$out" <<EOF
import json, os, platform, subprocess, sys, datetime
out = sys.argv[1]
def load(name):
    with open(os.path.join(out, name + ".json")) as f:
        return json.load(f)
def group(doc, rpc):
    for g in doc["groups"]:
        if g["rpc"] == rpc:
            return g
    raise SystemExit(f"no {rpc} group")
def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
def git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None
def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None

health, validate, getme = load("health"), load("validate"), load("getme")
refresh, login, mix = load("refresh"), load("login"), load("mix-validate-login")
conn1000, pgb, pgr = load("health-1000conn"), load("pgbench"), load("pgbench-refresh-sql")
first, warm = load("startup-first"), load("startup-warm")
h2h, h2v = load("h2load-health"), load("h2load-validate")
h, v, gm, rf = group(health, "health"), group(validate, "validate"), group(getme, "getme"), group(refresh, "refresh")
lg, mv, ml = group(login, "login"), group(mix, "validate"), group(mix, "login")
lb = login.get("login_bcrypt") or {}
p99 = lambda g: (g["latency_us"] or {}).get("p99")

ratios = [
    {"id": "P1", "ratio": "ValidateToken req/s ÷ health Check req/s (c16)", "target": ">= 0.9",
     "measured": ratio(v["rps"], h["rps"]), "ok": None,
     "raw": {"validate_rps": v["rps"], "health_rps": h["rps"]}},
    {"id": "P1-h2load", "ratio": "ValidateToken req/s ÷ health Check req/s (h2load, 1 conn, 16 streams)",
     "target": ">= 0.9", "measured": ratio(h2v["rps"], h2h["rps"]), "ok": None,
     "raw": {"validate_rps": h2v["rps"], "health_rps": h2h["rps"],
             "validate_failed": h2v["failed"], "health_failed": h2h["failed"],
             # health's CPU per call ÷ ValidateToken's: the rate ratio a busy server would give.
             "server_cpu_ratio": ratio(h2h.get("server_cpu_us_per_call"), h2v.get("server_cpu_us_per_call")),
             "server_busy_health": h2h.get("rounds_server_busy"),
             "server_busy_validate": h2v.get("rounds_server_busy")}},
    {"id": "P2", "ratio": "Login/s ÷ (server cores ÷ bcrypt verify time), c4", "target": ">= 0.9",
     "measured": lb.get("ratio"), "ok": None,
     "raw": {"login_rps": lg["rps"], "bcrypt_cost": lb.get("bcrypt_cost"),
             "bcrypt_verify_ms": lb.get("bcrypt_verify_ms"), "server_cores": lb.get("server_cores"),
             "bcrypt_bound_rps": lb.get("bcrypt_bound_rps")}},
    {"id": "P3", "ratio": "ValidateToken p99 during login storm ÷ idle p99", "target": "<= 2",
     "measured": ratio(p99(mv), p99(v)), "ok": None,
     "raw": {"validate_p99_us_storm": p99(mv), "validate_p99_us_idle": p99(v),
             "storm_login_rps": ml["rps"], "storm_validate_rps": mv["rps"]}},
    {"id": "P4", "ratio": "Refresh/s ÷ pgbench single-row UPDATE tps", "target": ">= 0.5",
     "measured": ratio(rf["rps"], pgb["tps"]), "ok": None,
     "raw": {"refresh_rps": rf["rps"], "pgbench_tps": pgb["tps"],
             "refresh_statement_alone_tps": pgr["tps"],
             "ceiling_without_authd": ratio(pgr["tps"], pgb["tps"])}},
]
limits = [
    {"id": "M1", "ratio": "authd RSS idle (MB)", "target": "<= 40",
     "measured": round($rss_idle / 1024, 1), "ok": None,
     "raw": {"rss_idle_kb_warm": $rss_idle, "rss_idle_kb_first": $rss_first,
             "rss_idle_kb_after_runs": $rss_after, "postgres_pss_kb_idle": $pg_idle}},
    {"id": "M2", "ratio": "authd max RSS with 1000 connections (MB)", "target": "<= 100",
     "measured": round($rss_1000_max / 1024, 1), "ok": None,
     "raw": {"rss_max_kb": $rss_1000_max, "samples": $rss_1000_n,
             "connections": conn1000["connections"], "rps": group(conn1000, "health")["rps"]}},
    {"id": "S1", "ratio": "warm start to SERVING (s)", "target": "<= 2",
     "measured": round(warm["elapsed_s"], 3), "ok": None, "raw": {"checks": warm["attempts"]}},
    {"id": "S2", "ratio": "first start (initdb) to SERVING (s)", "target": "<= 5",
     "measured": round(first["elapsed_s"], 3), "ok": None, "raw": {"checks": first["attempts"]}},
]
for row in ratios + limits:
    m, t = row["measured"], row["target"]
    op, bound = t.split()
    bound = float(bound)
    row["ok"] = None if m is None else (m >= bound if op == ">=" else m <= bound)

runs = {}
for name, doc in [("health", health), ("validate", validate), ("getme", getme), ("refresh", refresh),
                  ("login", login), ("mix-validate-login", mix), ("health-1000conn", conn1000)]:
    runs[name] = [{"rpc": g["rpc"], "concurrency": g["concurrency"], "rps": g["rps"],
                   "requests": g["requests"], "errors": g["errors"], "latency_us": g["latency_us"]}
                  for g in doc["groups"]]
summary = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "kernel": platform.release(),
                "pinned": "$pinned" == "true", "server_cpu": $server_cpu, "client_cpu": $client_cpu,
                "loadavg_start": "$loadavg_start", "loadavg_end": "$loadavg_end"},
    "git": {"commit": git("rev-parse", "--short", "HEAD"),
            # The run's own output (tracked when it is docs/bench) does not make the tree dirty.
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".",
                              ":(exclude)" + os.path.abspath(out)))},
    "duration": "$duration", "warmup": "$warmup", "bcrypt_cost": $bcrypt_cost,
    "targets": ratios, "limits": limits, "runs": runs, "pgbench": pgb,
    "pgbench_refresh_statement": pgr, "h2load": {"health": h2h, "validate": h2v},
    "startup_s": {"first": first["elapsed_s"], "warm": warm["elapsed_s"]},
}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)

def fmt(x):
    if x is None:
        return "n/a"
    if isinstance(x, bool) or isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return str(int(x)) if x.is_integer() else f"{x:.6g}"
    return str(x)
def raw(d):
    return ", ".join(f"{k}={fmt(v)}" for k, v in d.items())
lines = [f"authd benchmarks, {summary['date']}, {summary['machine']['cpus']} CPUs "
         f"({summary['machine']['cpu_model']}), commit {summary['git']['commit']}"
         f"{' (dirty)' if summary['git']['dirty'] else ''}, {summary['duration']} per run; "
         f"load average {summary['machine']['loadavg_start']} at the start, "
         f"{summary['machine']['loadavg_end']} at the end", "",
         "| id | ratio | target | measured | pass | raw numbers |", "|---|---|---|---|---|---|"]
for row in ratios + limits:
    verdict = "n/a" if row["ok"] is None else ("pass" if row["ok"] else "FAIL")
    lines.append(f"| {row['id']} | {row['ratio']} | {row['target']} | {fmt(row['measured'])} | "
                 f"{verdict} | {raw(row['raw'])} |")
lines += ["", "| run | rpc | workers | ok/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | errors |",
          "|---|---|---|---|---|---|---|---|---|---|"]
for name, groups in runs.items():
    for g in groups:
        l = g["latency_us"] or {}
        errs = ", ".join(f"{k}={v}" for k, v in g["errors"].items()) or "0"
        lines.append(f"| {name} | {g['rpc']} | {g['concurrency']} | {fmt(g['rps'])} | {fmt(l.get('p50'))} | "
                     f"{fmt(l.get('p90'))} | {fmt(l.get('p99'))} | {fmt(l.get('p999'))} | "
                     f"{fmt(l.get('max'))} | {errs} |")
lines.append(f"| h2load-health | health | 1 conn × 16 streams | {fmt(h2h['rps'])} | | | | | | {fmt(h2h['failed'])} |")
lines.append(f"| h2load-validate | validate | 1 conn × 16 streams | {fmt(h2v['rps'])} | | | | | | {fmt(h2v['failed'])} |")
lines.append(f"| pgbench | UPDATE | 16 | {fmt(pgb['tps'])} | | | | | | {fmt(pgb['failed'])} |")
lines.append(f"| pgbench | refresh statement | 16 | {fmt(pgr['tps'])} | | | | | | {fmt(pgr['failed'])} |")
text = "\n".join(lines) + "\n"
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(text)
print(text)
EOF

# 6. The chart.
python3 "$root/scripts/bench_chart.py" "$out" >&2
say "done: $out/summary.json, $out/summary.md, $out/latency.svg"
