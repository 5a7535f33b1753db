#!/usr/bin/env bash
# The bcrypt pool's admission and starvation measurements behind BENCHMARKS.md ("Flood" and
# "Starvation"). Same pinning as scripts/benchmarks.sh: authd (and its embedded PostgreSQL) on CPU 1,
# authd-bench on CPU 0. Needs the release binaries (cargo build --release --workspace).
#
#   scripts/bench_admission.sh nice VALUE [DURATION]   # validate c16; mix validate=16,login=4; login c4
#                                                      # at AUTHD_BCRYPT_NICE=VALUE (P3, P2, starvation)
#   scripts/bench_admission.sh starve VALUE [DURATION] # mix health=64,login=4 with authd-bench on BOTH CPUs,
#                                                      # so that authd's CPU is saturated by cheap calls
#   scripts/bench_admission.sh flood [DURATION]        # cost 10: flood=$FLOOD_WORKERS (48) from 4 addresses while
#                                                      # login=4 from 4 other addresses
#
# Results: one authd-bench JSON per run in $OUT (default /tmp/authd-admission), and the bcrypt
# counters of /metrics after each run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
authd="$root/target/release/authd"
bench="$root/target/release/authd-bench"
out="${OUT:-/tmp/authd-admission}"
mkdir -p "$out"
mode="${1:?usage: bench_admission.sh nice VALUE [DURATION] | flood [DURATION]}"
client_cpus=0
if [ "$mode" = nice ] || [ "$mode" = starve ]; then nice_value="${2:?VALUE}"; duration="${3:-10s}"; cost=12
else nice_value=10; duration="${2:-10s}"; cost=10; fi
data="$(mktemp -d /tmp/authd-admission.XXXXXX)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"; http_port="$(free_port)"
url="http://127.0.0.1:$port"
admin_email="admin@bench.example"
admin_password="Bench-Admin-$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
taskset -c 1 env -u DATABASE_URL AUTHD_DATA_DIR="$data" AUTHD_LISTEN="127.0.0.1:$port" \
  AUTHD_HTTP_LISTEN="127.0.0.1:$http_port" AUTHD_BCRYPT_COST="$cost" AUTHD_BCRYPT_NICE="$nice_value" \
  AUTHD_RATE_LIMIT_PER_IP=0 AUTHD_SHUTDOWN_DELAY=0 AUTHD_TRUSTED_PROXIES=127.0.0.1 \
  AUTHD_BOOTSTRAP_ADMIN_EMAIL="$admin_email" AUTHD_BOOTSTRAP_ADMIN_PASSWORD="$admin_password" \
  "$authd" serve >"$data.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data" "$data.log"' EXIT
taskset -c 0 "$bench" --addr "$url" --wait-serving 120s >&2
metrics() { curl -s "http://127.0.0.1:$http_port/metrics" | grep -E '^authd_(bcrypt|logins)' | grep -v '^#' | tr '\n' ' '; echo; }
run() {
  local name="$1"; shift
  echo "== $name: authd-bench $*" >&2
  AUTHD_BENCH_ADMIN_EMAIL="$admin_email" AUTHD_BENCH_ADMIN_PASSWORD="$admin_password" \
    taskset -c "$client_cpus" "$bench" --addr "$url" --duration "$duration" --warmup 2s --bcrypt-cost "$cost" \
    --server-cores 1 --json "$@" >"$out/$name.json"
  python3 - "$out/$name.json" <<'EOF' >&2
import json, sys
r = json.load(open(sys.argv[1]))
for g in r["groups"]:
    l = g["latency_us"] or {}
    print(f"  {g['rpc']:<9} c={g['concurrency']:<3} ok={g['ok']} ok/s={g['rps']:<10} p50={l.get('p50')}us "
          f"p99={l.get('p99')}us errors={g['errors']}")
if r.get("login_bcrypt"): print("  login ratio", r["login_bcrypt"])
EOF
  echo "  metrics: $(metrics)" >&2
  sleep 1
}
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
if [ "$mode" = nice ]; then
  run "validate-nice$nice_value" --rpc validate -c 16
  run "storm-nice$nice_value" --mix validate=16,login=4
  run "login-nice$nice_value" --rpc login -c 4
elif [ "$mode" = starve ]; then
  client_cpus=0,1
  run "starve-nice$nice_value" --mix health=64,login=4 --connections 4
else
  run "flood${FLOOD_WORKERS:-48}" --mix "flood=${FLOOD_WORKERS:-48},login=4" --flood-addresses 4 --login-addresses 4 --users 4
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
