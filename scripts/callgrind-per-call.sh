#!/usr/bin/env bash
# Instructions per call (valgrind's callgrind) of the gRPC health Check and of ValidateToken (a
# valid, cached token with a service key), each sent N times by h2load (1 connection, 16 streams),
# against the release authd running under callgrind. The idle cost of the same wall time (the
# revocation view's polls, timers) is measured separately and subtracted. Issue J, P1.
#
# Usage: scripts/callgrind-per-call.sh [N=3000]      (needs valgrind, h2load, nghttp, a release build)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
n="${1:-3000}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
authd="$target_dir/release/authd"
bench="$target_dir/release/authd-bench"
[ -x "$authd" ] && [ -x "$bench" ] || { echo "release build missing ($authd)" >&2; exit 1; }
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || { echo "valgrind missing" >&2; exit 1; }
"$root/scripts/install-h2load.sh" >/dev/null
data="$(mktemp -d /tmp/authd-callgrind.XXXXXX)"
# The embedded PostgreSQL runs as `postgres` and must reach its data directory.
chmod 755 "$data"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
email="admin@callgrind.example"
password="Callgrind-$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')"
pid=""
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$data"; }
trap cleanup EXIT
env -u DATABASE_URL AUTHD_DATA_DIR="$data/authd" AUTHD_LISTEN="127.0.0.1:$port" AUTHD_BCRYPT_COST=4 \
  AUTHD_RATE_LIMIT_PER_IP=0 AUTHD_SHUTDOWN_DELAY=0 AUTHD_LOG=info \
  AUTHD_BOOTSTRAP_ADMIN_EMAIL="$email" AUTHD_BOOTSTRAP_ADMIN_PASSWORD="$password" \
  valgrind --tool=callgrind --callgrind-out-file="$data/cg.%p" "$authd" serve >"$data/log" 2>&1 &
pid=$!
"$bench" --addr "$url" --wait-serving 300s >/dev/null || { tail -20 "$data/log" >&2; exit 1; }
python3 "$root/scripts/h2load-grpc.py" setup "$url" "$email" "$password" "$data"
key="$(cat "$data/api-key")"

# ir_of <label> <command...>: zeroes the counters, runs the command, dumps; prints "Ir seconds".
ir_of() {
  local label="$1"; shift
  callgrind_control -z "$pid" >/dev/null
  local t0 t1
  t0="$(date +%s.%N)"
  "$@" >"$data/$label.out" 2>&1
  t1="$(date +%s.%N)"
  callgrind_control -d "$label" "$pid" >/dev/null
  sleep 1
  local f
  f="$(ls -t "$data"/cg.*.* 2>/dev/null | head -n 1)"
  local ir
  ir="$(awk '/^totals:/ {print $2}' "$f")"
  rm -f "$f"
  echo "$ir $(python3 -c "print($t1 - $t0)")"
}
h2() { h2load -n "$n" -c 1 -m 16 -t 1 -H 'content-type: application/grpc' -H 'te: trailers' "$@"; }
read -r ir_h secs_h < <(ir_of health h2 -d "$data/health.bin" "$url/grpc.health.v1.Health/Check")
read -r ir_v secs_v < <(ir_of validate h2 -d "$data/validate.bin" -H "x-api-key: $key" "$url/authd.v1.AuthService/ValidateToken")
read -r ir_i secs_i < <(ir_of idle sleep "$secs_v")
grep -h "requests:" "$data/health.out" "$data/validate.out" >&2
python3 - "$n" "$ir_h" "$secs_h" "$ir_v" "$secs_v" "$ir_i" "$secs_i" <<'PY'
import json, sys
n, ir_h, s_h, ir_v, s_v, ir_i, s_i = int(sys.argv[1]), *map(float, sys.argv[2:])
idle_rate = ir_i / s_i if s_i else 0
h = (ir_h - idle_rate * s_h) / n
v = (ir_v - idle_rate * s_v) / n
print(json.dumps({"calls": n, "health_ir_per_call": round(h), "validate_ir_per_call": round(v),
                  "ratio_validate_over_health": round(v / h, 3),
                  "raw": {"health_ir": ir_h, "health_s": s_h, "validate_ir": ir_v, "validate_s": s_v,
                          "idle_ir": ir_i, "idle_s": s_i}}, indent=1))
PY
