#!/usr/bin/env bash
# CI: runs every cargo-fuzz target briefly (default 60 s each), starting from the checked-in seeds
# in fuzz/seeds/<target>/, and fails if any target crashes, panics, leaks past the RSS limit or hangs.
#
# Only the stable toolchain is available, so cargo-fuzz runs with RUSTC_BOOTSTRAP=1. AddressSanitizer
# is used when a probe program links and runs with it; otherwise the targets are built with `-s none`.
#
# Usage: scripts/fuzz-smoke.sh [seconds-per-target]
#   FUZZ_SANITIZER=address|none  skip the fallback logic and use this sanitizer
#   FUZZ_TARGETS="a b"           run only these targets (default: all in fuzz/Cargo.toml)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds="${1:-${FUZZ_SECONDS:-60}}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
start=$(date +%s)
say() { echo "[fuzz-smoke $(($(date +%s) - start))s] $*"; }

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
say "$(cargo fuzz --version)"

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
# AddressSanitizer needs its runtime in the toolchain; probe for it with a one-line program rather
# than by a failing fuzz build (a compile error must fail the run, not trigger a second full build).
asan_works() {
  local dir
  dir="$(mktemp -d)"
  echo 'fn main() { let v = vec![1u8; 8]; std::process::exit(i32::from(v[7]) - 1) }' >"$dir/p.rs"
  rustc -Zsanitizer=address --target "$(rustc -vV | sed -n 's/^host: //p')" \
    -o "$dir/p" "$dir/p.rs" >"$dir/log" 2>&1 && "$dir/p"
  local rc=$?
  rm -rf "$dir"
  return $rc
}
sanitizer="${FUZZ_SANITIZER:-}"
if [ -z "$sanitizer" ]; then
  if asan_works; then
    sanitizer=address
  else
    say "AddressSanitizer runtime not usable with this toolchain; falling back to -s none"
    sanitizer=none
  fi
fi
say "building with -s $sanitizer"
cargo fuzz build -s "$sanitizer"
say "built (sanitizer: $sanitizer)"

failed=()
for t in $targets; do
  corpus="$PWD/fuzz/corpus/$t"
  seeds="$PWD/fuzz/seeds/$t"
  artifacts="$PWD/fuzz/artifacts/$t"
  log="$PWD/fuzz/artifacts/$t.smoke.log"
  mkdir -p "$corpus" "$seeds" "$artifacts"
  extra=()
  [ -f "fuzz/$t.dict" ] && extra+=("-dict=$PWD/fuzz/$t.dict")
  say "fuzzing $t for ${seconds}s"
  before=$(find "$artifacts" -type f | wc -l)
  rc=0
  cargo fuzz run -s "$sanitizer" "$t" "$corpus" "$seeds" -- \
    -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
    "${extra[@]}" >"$log" 2>&1 || rc=$?
  after=$(find "$artifacts" -type f | wc -l)
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" || true
  if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
    say "FAIL: $t (exit $rc); log: $log"
    tail -n 60 "$log"
    ls -t "$artifacts" | head -n 5
    failed+=("$t")
  else
    say "ok: $t"
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  say "crashed: ${failed[*]} (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -s $sanitizer <target> fuzz/artifacts/<target>/<file>)"
  exit 1
fi
say "all targets ran ${seconds}s without a crash"
