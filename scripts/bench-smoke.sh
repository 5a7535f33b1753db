#!/usr/bin/env bash
# CI's 5-second authd-bench smoke: starts a release authd (embedded PostgreSQL in a throw-away data
# dir, random loopback port, bcrypt cost 4, per-IP rate limit off, bootstrap admin), waits for
# SERVING, runs every RPC at once for 5 s with --max-error-rate 0, checks with python3 that every
# group had successes and no error, then stops authd with SIGTERM and cleans up.
#
# Usage: scripts/bench-smoke.sh [path/to/authd] [path/to/authd-bench]
#        (default: target/release/authd and target/release/authd-bench)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/release/authd}"
bench="${2:-$root/target/release/authd-bench}"

data="$(mktemp -d /tmp/authd-bench-smoke.XXXXXX)"
log="$(mktemp /tmp/authd-bench-smoke-log.XXXXXX)"
out="$(mktemp /tmp/authd-bench-smoke-out.XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
addr="127.0.0.1:$port"
admin_email="admin@bench.example"
admin_password="Bench-Smoke-Admin-$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')"
pid=""

fail() {
  echo "BENCH SMOKE FAIL: $*" >&2
  echo "--- authd log (last 30 lines) ---" >&2
  tail -n 30 "$log" >&2 || true
  exit 1
}

cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$data" "$log" "$out"
}
trap cleanup EXIT

step() { echo "bench-smoke: $*"; }

[ -x "$bin" ] || fail "$bin is not an executable (build with cargo build --release --workspace)"
[ -x "$bench" ] || fail "$bench is not an executable (build with cargo build --release --workspace)"

step "starting $bin on $addr (embedded PostgreSQL in $data)"
env -u DATABASE_URL \
  AUTHD_DATA_DIR="$data" AUTHD_LISTEN="$addr" AUTHD_BCRYPT_COST=4 AUTHD_RATE_LIMIT_PER_IP=0 \
  AUTHD_SHUTDOWN_DELAY=0 \
  AUTHD_BOOTSTRAP_ADMIN_EMAIL="$admin_email" AUTHD_BOOTSTRAP_ADMIN_PASSWORD="$admin_password" \
  "$bin" serve >"$log" 2>&1 &
pid=$!

step "waiting for health SERVING"
"$bench" --addr "http://$addr" --wait-serving 60s || fail "authd never became SERVING"
kill -0 "$pid" 2>/dev/null || fail "authd exited during start-up"

step "authd-bench: every RPC at once for 5 s"
status=0
AUTHD_BENCH_ADMIN_EMAIL="$admin_email" AUTHD_BENCH_ADMIN_PASSWORD="$admin_password" \
  "$bench" --addr "http://$addr" --rpc mix --mix health=2,validate=2,getme=2,refresh=2,login=1 \
  --duration 5s --warmup 1s --bcrypt-cost 4 --json --max-error-rate 0 >"$out" || status=$?
[ "$status" = 0 ] || { cat "$out" >&2; fail "authd-bench exited with $status"; }

python3 - "$out" <<'EOF' || fail "the report does not show a clean run"
import json, sys
r = json.load(open(sys.argv[1]))
want = {"health", "validate", "getme", "refresh", "login"}
seen = {g["rpc"] for g in r["groups"]}
assert seen == want, f"groups {sorted(seen)} != {sorted(want)}"
for g in r["groups"]:
    lat = g["latency_us"] or {}
    print(f"  {g['rpc']:<9} workers={g['concurrency']:<2} ok={g['ok']:<6} rps={g['rps']:<9} "
          f"p50={lat.get('p50')}us p99={lat.get('p99')}us errors={g['errors']}")
    assert g["ok"] > 0, f"{g['rpc']}: no successful call"
    assert not g["errors"], f"{g['rpc']}: errors {g['errors']}"
    assert g["requests"] == g["ok"], f"{g['rpc']}: requests != ok"
assert r["errors"] == 0 and r["error_rate"] == 0
assert r["bcrypt_verify_ms"] is not None, "no bcrypt probe for the login group"
EOF

step "SIGTERM"
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=""
[ "$status" = 0 ] || fail "authd exited with $status after SIGTERM"

echo "bench-smoke: OK"
