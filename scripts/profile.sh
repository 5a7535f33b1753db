#!/usr/bin/env bash
# The profiles behind BENCHMARKS.md's analysis of P1 and P4. Starts a release authd on a fresh
# embedded data directory pinned to CPU 1 (as scripts/benchmarks.sh does), drives one RPC from
# CPU 0 with authd-bench (16 in flight), and then either
#
#   perf       records both CPUs (`perf record -a -g`) for a few seconds of steady load and prints
#              the split of each CPU by process and DSO, then the top symbols on authd's CPU;
#   callgrind  runs authd under valgrind's callgrind with instrumentation off until the load is
#              running, instruments a window, counts the calls in it from authd's /metrics, and
#              prints instructions per call, in total and for the top inclusive functions.
#              Instruction counts repeat from run to run whatever else the machine does. valgrind
#              hides SHA-NI, so SHA-256 costs about ten times what it does natively.
#
# Usage: scripts/profile.sh perf|callgrind <health|validate|getme|refresh> [--out DIR]
#   Results (perf.data or callgrind.out, the bench output, a summary) go to DIR
#   (default: a new temp dir, printed at the end). Needs a release build (cargo build --release --workspace).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
mode="${1:-}"
rpc="${2:-}"
shift 2 || { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    *) echo "profile.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$mode" in perf|callgrind) ;; *) echo "profile.sh: mode must be perf or callgrind" >&2; exit 2 ;; esac
case "$rpc" in health|validate|getme|refresh) ;; *) echo "profile.sh: unknown rpc $rpc" >&2; exit 2 ;; esac
authd="$root/target/release/authd"
bench="$root/target/release/authd-bench"
[ -x "$authd" ] && [ -x "$bench" ] || { echo "profile.sh: run cargo build --release --workspace first" >&2; exit 1; }
if [ "$mode" = perf ]; then command -v perf >/dev/null || { echo "profile.sh: perf not found (apt-get install linux-perf)" >&2; exit 1; }; fi
if [ "$mode" = callgrind ]; then command -v valgrind >/dev/null || { echo "profile.sh: valgrind not found" >&2; exit 1; }; fi
[ -n "$out" ] || out="$(mktemp -d /tmp/authd-profile.XXXXXX)"
mkdir -p "$out"

server_pin=() client_pin=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  server_pin=(taskset -c 1) client_pin=(taskset -c 0)
fi
port=$((40000 + RANDOM % 20000))
data="$(mktemp -d /tmp/authd-profile-data.XXXXXX)"
admin_email=admin@profile.example
admin_password=Profile-Admin-Passphrase-90210
pid="" load=""
cleanup() {
  [ -n "$load" ] && kill "$load" 2>/dev/null || true
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$data"
}
trap cleanup EXIT

wrapper=()
if [ "$mode" = callgrind ]; then
  wrapper=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.out")
fi
env -u DATABASE_URL AUTHD_DATA_DIR="$data" AUTHD_LISTEN="127.0.0.1:$port" \
  AUTHD_HTTP_LISTEN="127.0.0.1:$((port + 1))" AUTHD_RATE_LIMIT_PER_IP=0 AUTHD_SHUTDOWN_DELAY=0 \
  AUTHD_BCRYPT_COST=4 AUTHD_REQUEST_TIMEOUT=60s \
  AUTHD_BOOTSTRAP_ADMIN_EMAIL="$admin_email" AUTHD_BOOTSTRAP_ADMIN_PASSWORD="$admin_password" \
  "${server_pin[@]}" "${wrapper[@]}" "$authd" serve >"$out/authd.log" 2>&1 &
pid=$!
export AUTHD_BENCH_ADMIN_EMAIL="$admin_email" AUTHD_BENCH_ADMIN_PASSWORD="$admin_password"
"${client_pin[@]}" "$bench" --addr "http://127.0.0.1:$port" --wait-serving 120s >/dev/null

handled() {
  curl -fsS "http://127.0.0.1:$((port + 1))/metrics" \
    | awk '/^grpc_server_handled_total/ { s += $NF } END { printf "%d\n", s }'
}
# Setup and warm-up run before the window; the load outlasts it.
"${client_pin[@]}" "$bench" --addr "http://127.0.0.1:$port" --rpc "$rpc" -c 16 -d 40s --warmup 2s \
  --timeout 30s >"$out/bench.txt" 2>&1 &
load=$!
sleep 15
c0="$(handled)"
if [ "$mode" = perf ]; then
  perf record -F 1999 -g -a -o "$out/perf.data" -- sleep 5 >/dev/null 2>&1
else
  callgrind_control -i on "$pid" >/dev/null 2>&1
  sleep 10
  callgrind_control -i off "$pid" >/dev/null 2>&1
fi
c1="$(handled)"
calls=$((c1 - c0))
kill "$load" 2>/dev/null || true
wait "$load" 2>/dev/null || true
load=""
if [ "$mode" = callgrind ]; then callgrind_control -d "$pid" >/dev/null 2>&1; sleep 1; fi
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
pid=""

{
  echo "# authd profile: $mode, rpc $rpc, $calls calls in the window ($(date -u +%FT%TZ), commit $(git -C "$root" rev-parse --short HEAD))"
  if [ "$mode" = perf ]; then
    echo; echo "## samples by CPU, process and DSO (CPU 1: authd and its PostgreSQL; CPU 0: the load tool)"
    perf report -i "$out/perf.data" --no-children --sort cpu,comm,dso -g none 2>/dev/null \
      | grep -v '^#' | grep '%' | head -n 16
    echo; echo "## top symbols on CPU 1"
    perf report -i "$out/perf.data" --no-children --cpu 1 --sort comm,dso,symbol -g none 2>/dev/null \
      | grep -v '^#' | grep '%' | cut -c1-150 | head -n 40
  else
    # The dump taken right after the window (the file written at exit holds nothing).
    file="$out/callgrind.out.1"
    python3 - "$file" "$calls" <<'EOF'
import re, subprocess, sys
path, calls = sys.argv[1], max(1, int(sys.argv[2]))
text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=99", path],
                      capture_output=True, text=True, check=True).stdout
rows = []
for line in text.splitlines():
    m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(.*)", line)
    if m:
        name = re.sub(r" \[[^\]]*\]$", "", m.group(2)).replace("???:", "")
        rows.append((int(m.group(1).replace(",", "")) / calls, name))
total = next((v for v, n in rows if n == "PROGRAM TOTALS"), 0)
print(f"\ninstructions per call: {total:,.0f}\n\n## top inclusive functions, instructions per call")
seen = set()
for v, n in rows:
    if n in seen or n == "PROGRAM TOTALS":
        continue
    seen.add(n)
    if len(seen) > 60:
        break
    print(f"{v:10,.0f}  {n[:150]}")
EOF
  fi
} | tee "$out/summary.txt"
echo "profile.sh: results in $out" >&2
