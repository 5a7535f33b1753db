#!/usr/bin/env bash
# The WatchRevocations scale run behind BENCHMARKS.md, section "WatchRevocations (issue H)".
# Starts the release authd (embedded PostgreSQL, bcrypt cost 4 so that the 10,000 logins of the
# setup are quick; the burst itself does no bcrypt), then runs
#   authd-bench --watch-streams N --connections C --watch-burst B --watch-users U --watch-pid <authd>
# and prints its JSON report: authd's RSS and CPU idle with N streams open, and the time until
# every stream has every session of a B-session revocation burst (RevokeUserSessions on U users
# at once). authd is pinned to CPU 1 and the bench to CPU 0 when taskset and 2 CPUs exist.
#
# Usage: scripts/bench-watch.sh [--streams 1000] [--connections 1000] [--burst 10000] [--users 10]
#                               [--idle 10s] [--target-dir DIR] [--no-build] [--two-replicas]
# --two-replicas starts a second authd on the same embedded PostgreSQL and revokes the burst there,
# so the streams (on the first) learn of it through their replica's 250 ms poll.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
streams=1000
connections=1000
burst=10000
users=10
idle=10s
target="${CARGO_TARGET_DIR:-$root/target}"
build=1
two=0
while [ $# -gt 0 ]; do
  case "$1" in
    --streams) streams="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --burst) burst="$2"; shift 2 ;;
    --users) users="$2"; shift 2 ;;
    --idle) idle="$2"; shift 2 ;;
    --target-dir) target="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --two-replicas) two=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-watch.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "bench-watch: $*" >&2; }
if [ "$build" = 1 ]; then
  say "cargo build --release -p authd -p authd-bench"
  CARGO_TARGET_DIR="$target" cargo build --release -p authd -p authd-bench >&2
fi
authd="$target/${PROFILE_DIR:-release}/authd"
bench="$target/${PROFILE_DIR:-release}/authd-bench"

if command -v taskset >/dev/null 2>&1 && [ "$(nproc --all)" -ge 2 ]; then
  server_pin="taskset -c 1"; client_pin="taskset -c 0"
else
  server_pin=""; client_pin=""
fi
data="$(mktemp -d /tmp/authd-bench-watch.XXXXXX)"
log="$data.log"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
admin_email="admin@bench.example"
admin_password="Bench-Admin-$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
pid=""
pid2=""
cleanup() {
  if [ -n "$pid2" ] && kill -0 "$pid2" 2>/dev/null; then kill -TERM "$pid2"; wait "$pid2" 2>/dev/null || true; fi
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$data" "$log" "$log.2"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
$server_pin env -u DATABASE_URL AUTHD_DATA_DIR="$data" AUTHD_LISTEN="127.0.0.1:$port" \
  AUTHD_BCRYPT_COST=4 AUTHD_RATE_LIMIT_PER_IP=0 AUTHD_SHUTDOWN_DELAY=0 AUTHD_MIN_PASSWORD_SCORE=0 \
  AUTHD_BOOTSTRAP_ADMIN_EMAIL="$admin_email" AUTHD_BOOTSTRAP_ADMIN_PASSWORD="$admin_password" \
  "$authd" serve >>"$log" 2>&1 &
pid=$!
$client_pin "$bench" --addr "$url" --wait-serving 120s >&2 || { tail -30 "$log" >&2; exit 1; }
extra=()
if [ "$two" = 1 ]; then
  port2="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  $server_pin env -u DATABASE_URL AUTHD_DATA_DIR="$data" AUTHD_LISTEN="127.0.0.1:$port2" \
    AUTHD_BCRYPT_COST=4 AUTHD_RATE_LIMIT_PER_IP=0 AUTHD_SHUTDOWN_DELAY=0 AUTHD_MIN_PASSWORD_SCORE=0 \
    "$authd" serve >>"$log.2" 2>&1 &
  pid2=$!
  $client_pin "$bench" --addr "http://127.0.0.1:$port2" --wait-serving 120s >&2 || { tail -30 "$log.2" >&2; exit 1; }
  extra=(--watch-revoke-addr "http://127.0.0.1:$port2")
  say "second replica pid $pid2 on port $port2 (same database): the burst is revoked there"
fi
say "authd pid $pid on $url; $streams streams over $connections connections; burst $burst sessions of $users users"
AUTHD_BENCH_ADMIN_EMAIL="$admin_email" AUTHD_BENCH_ADMIN_PASSWORD="$admin_password" \
  $client_pin "$bench" --addr "$url" --watch-streams "$streams" --connections "$connections" \
  --watch-burst "$burst" --watch-users "$users" --watch-idle "$idle" --watch-pid "$pid" \
  --setup-parallelism 16 "${extra[@]}" \
  || { tail -30 "$log" >&2; exit 1; }
